"""Property test (issue 15): random bad inputs to every public estimator method.

For each of the four estimators and each of ``fit``, ``partial_fit``,
``transform``, ``predict``, ``reconstruct``, ``score`` and
``inverse_transform``, hypothesis draws an input that is wrong in shape,
dtype or values (NaN, inf, huge or tiny values, empty and one-row arrays,
texts, None, ...).  The method must either

* return a result of the documented shape with finite values, or
* raise ValueError or TypeError whose message names the argument ``X``,

and after an exception the estimator's parameters and fitted attributes
are exactly as they were before the call.
"""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clvqlearn import CrossLayerVQ, KMeansConcepts, SingleLayerVQ, SparseAutoencoder

K, D = 3, 6  # concepts; columns of the good input ([low 3 | high 3])
_VQ = dict(k=K, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=1, batch_size=16, random_state=0)
FACTORIES = {
    "CrossLayerVQ": lambda: CrossLayerVQ(**_VQ),
    "SingleLayerVQ": lambda: SingleLayerVQ(**_VQ),
    "KMeansConcepts": lambda: KMeansConcepts(k=K, random_state=0),
    "SparseAutoencoder": lambda: SparseAutoencoder(k=K, max_epochs=1, random_state=0),
    "KMeansConcepts-distance": lambda: KMeansConcepts(k=K, transform_output="distance", random_state=0),
    "SparseAutoencoder-topk": lambda: SparseAutoencoder(k=K, activation="topk", top_k=2, max_epochs=1,
                                                        random_state=0),
}
METHODS = ["fit", "partial_fit", "transform", "predict", "reconstruct", "score", "inverse_transform"]
DOCUMENTED_ERRORS = (ValueError, TypeError)
_GOOD = np.random.default_rng(0).normal(size=(40, D))
_FITTED: dict = {}


def _fitted(name):
    if name not in _FITTED:
        _FITTED[name] = FACTORIES[name]().fit(_GOOD)
    return copy.deepcopy(_FITTED[name])


# ------------------------------------------------------------------ bad inputs
def _with_values(n_cols):
    """Arrays of the right width holding NaN, inf, huge, tiny or constant values."""
    special = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 3e38, 1e30, 1e19, 4e9,
                               1e-300, 5e-324, 0.0])
    return st.tuples(st.integers(1, 12), st.sampled_from(["one", "all", "row"]), special,
                     st.sampled_from([np.float64, np.float32]), st.integers(0, 2**16)).map(
        lambda t: _plant(n_cols, *t))


def _plant(n_cols, n, where, value, dtype, seed):
    X = np.random.default_rng(seed).normal(size=(n, n_cols))
    if where == "one":
        X[seed % n, seed % n_cols] = value
    elif where == "row":
        X[seed % n] = value
    else:
        X[:] = value
    with np.errstate(over="ignore"):
        return X.astype(dtype)


def _bad_shape(n_cols):
    rng = np.random.default_rng(1)
    return st.sampled_from([
        rng.normal(size=n_cols),  # 1-D
        rng.normal(size=(2, n_cols, 2)),  # 3-D
        np.zeros((0, n_cols)),  # empty
        rng.normal(size=(1, n_cols)),  # one row
        rng.normal(size=(5, n_cols + 1)),  # one column too many
        rng.normal(size=(5, max(n_cols - 1, 1))),  # one column too few
        np.zeros((5, 0)),  # no columns
        np.float64(3.0),  # a scalar
    ])


def _bad_kind(n_cols):
    rng = np.random.default_rng(2)
    return st.sampled_from([
        None,
        "some text",
        ["a text", "another text"],
        [[1.0] * n_cols, [2.0] * (n_cols - 1)],  # ragged
        np.full((4, n_cols), "x", dtype=object),
        rng.normal(size=(4, n_cols)) + 1j,  # complex
        rng.integers(0, 5, size=(12, n_cols)),  # integers (valid: converted)
        rng.normal(size=(12, n_cols)).astype(np.float16),  # float16 (valid: converted)
        rng.normal(size=(12, n_cols)) > 0,  # booleans
        rng.normal(size=(12, n_cols)).tolist(),  # a list of lists (valid)
        {"X": 1},
    ])


def bad_inputs(n_cols):
    return st.one_of(_with_values(n_cols), _bad_shape(n_cols), _bad_kind(n_cols))


# ------------------------------------------------------------------ state snapshot
def _state(est):
    return est.get_params(deep=False), {k: copy.deepcopy(v) for k, v in vars(est).items()
                                        if k.endswith("_") and not k.startswith("_")}


def _same(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------ the contract
def _check_result(est, method, X, result):
    n = np.asarray(X).shape[0] if method != "score" else None
    if method in ("fit", "partial_fit"):
        assert result is est
        assert est.components_.shape[0] == K and np.isfinite(est.components_).all()
        return
    if method == "score":
        assert isinstance(result, float) and np.isfinite(result)
        return
    result = np.asarray(result)
    assert np.isfinite(result).all(), f"{method} returned non-finite values"
    if method == "transform":
        assert result.shape == (n, K)
    elif method == "predict":
        assert result.shape == (n,) and ((result >= 0) & (result < K)).all()
    elif method == "reconstruct":
        assert result.shape == (n, est.reconstruct(_GOOD[:1]).shape[1])
    elif method == "inverse_transform":
        assert result.shape == (n, est.components_.shape[1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FACTORIES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fitted=st.booleans())
def test_bad_input_gives_valid_result_or_documented_error(name, method, data, fitted):
    if method in ("fit", "partial_fit"):
        est = _fitted(name) if fitted else FACTORIES[name]()
    else:
        est = _fitted(name)
    X = data.draw(bad_inputs(K if method == "inverse_transform" else D), label="X")
    before = _state(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = getattr(est, method)(X)
        except DOCUMENTED_ERRORS as exc:
            assert re.search(r"\bX\b", str(exc)), f"the message does not name X: {exc}"
            after = _state(est)
            assert before[0] == after[0], "parameters changed after an exception"
            assert before[1].keys() == after[1].keys(), "fitted attributes added or removed after an exception"
            for key in before[1]:
                assert _same(before[1][key], after[1][key]), f"{key} changed after an exception"
            return
    _check_result(est, method, X, result)
