"""The estimator base (``concepts/_base.py``, ``_data.py``): provenance, layer splits, extreme values.

Issue 15: every test here failed on the code before the fix (a silent wrong
result, a deep crash, or an error that does not say what was expected).
The validation of saved models is in ``test_persistence.py``.
"""

import dataclasses

import numpy as np
import pytest
import torch

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairs, SingleLayerVQ, SparseAutoencoder
from clvqlearn.nn.codebook import sample_codes

_VQ = dict(k=3, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=1, batch_size=16, random_state=0)
FACTORIES = {
    "CrossLayerVQ": lambda: CrossLayerVQ(**_VQ),
    "SingleLayerVQ": lambda: SingleLayerVQ(**_VQ),
    "KMeansConcepts": lambda: KMeansConcepts(k=3, random_state=0),
    "SparseAutoencoder": lambda: SparseAutoencoder(k=3, max_epochs=1, random_state=0),
}
TORCH = ["CrossLayerVQ", "SingleLayerVQ", "SparseAutoencoder"]


def _pairs(d_low=3, d_high=5, n=40, model="org/model-a", layers=(1, 2), seed=0):
    rng = np.random.default_rng(seed)
    return LayerPairs(low=rng.normal(size=(n, d_low)), high=rng.normal(size=(n, d_high)),
                      offsets=np.arange(0, n + 1, 4), layers=layers, model_name=model)


def _plain(est, pairs):
    return np.asarray(pairs) if est._is_cross_layer() else getattr(pairs, est._source_layer())


# ------------------------------------------------------------------ provenance
@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("other", [dict(model="org/model-b"), dict(layers=(1, 3))])
def test_pairs_of_another_model_or_layer_pair_are_refused(name, other):
    est = FACTORIES[name]().fit(_pairs())
    assert est.pairs_model_name_ == "org/model-a" and est.pairs_layers_ == (1, 2)
    foreign = _pairs(**other)
    for method in ("transform", "predict", "reconstruct", "score", "partial_fit"):
        if not hasattr(est, method):
            continue
        with pytest.raises(ValueError, match=r"fitted on layers \(1, 2\) of model 'org/model-a'"):
            getattr(est, method)(foreign)


@pytest.mark.parametrize("name", FACTORIES)
def test_plain_arrays_carry_no_provenance_and_are_accepted(name):
    pairs = _pairs()
    est = FACTORIES[name]().fit(pairs)
    foreign = _pairs(model="org/model-b")
    np.testing.assert_array_equal(est.predict(_plain(est, foreign)), est.predict(dataclasses.replace(
        foreign, model_name="org/model-a")))


@pytest.mark.parametrize("name", FACTORIES)
def test_provenance_survives_save_and_load(name, tmp_path):
    est = FACTORIES[name]().fit(_pairs())
    loaded = type(est).load(est.save(tmp_path / "est"))
    assert loaded.pairs_model_name_ == "org/model-a" and loaded.pairs_layers_ == (1, 2)
    assert loaded.layer_widths_ == (3, 5)
    with pytest.raises(ValueError, match="org/model-b"):
        loaded.predict(_pairs(model="org/model-b"))


# ------------------------------------------------------------------ layer split
@pytest.mark.parametrize("name", FACTORIES)
def test_same_width_other_split_names_both_splits(name):
    est = FACTORIES[name]().fit(_pairs(3, 5, model=""))
    with pytest.raises(ValueError, match=r"low 5 \+ high 3.*low 3 \+ high 5"):
        est.predict(_pairs(5, 3, model=""))


@pytest.mark.parametrize("name", ["CrossLayerVQ", "SparseAutoencoder"])
def test_plain_array_is_split_as_at_fit_time(name):
    pairs = _pairs(3, 5)
    est = FACTORIES[name]().fit(pairs)
    np.testing.assert_allclose(est.reconstruct(np.asarray(pairs)), est.reconstruct(pairs), rtol=1e-6)
    est.set_params(n_low_features=4)
    with pytest.raises(ValueError, match=r"n_low_features=4 .*fitted on low 3 \+ high 5"):
        est.predict(np.asarray(pairs))


@pytest.mark.parametrize("name", ["SingleLayerVQ", "KMeansConcepts"])
def test_single_layer_estimator_fitted_on_pairs_reads_one_plain_layer(name):
    pairs = _pairs(3, 5)
    est = FACTORIES[name]().fit(pairs)
    np.testing.assert_array_equal(est.predict(pairs.high), est.predict(pairs))
    with pytest.raises(ValueError, match="'high' layer of LayerPairs, 5 features wide"):
        est.predict(np.asarray(pairs))


# ------------------------------------------------------------------ extreme values
@pytest.mark.parametrize("name", TORCH)
@pytest.mark.parametrize("scale", [1e19, 1e30, 1e200])
def test_huge_finite_values_are_not_reported_as_nan(name, scale):
    X = np.random.default_rng(0).normal(size=(40, 6)) * scale
    with pytest.raises(ValueError, match=r"X holds values up to .* Rescale X") as info:
        FACTORIES[name]().fit(X)
    assert "NaN" not in str(info.value)


@pytest.mark.parametrize("name", TORCH)
def test_large_values_within_the_bound_fit(name):
    X = np.random.default_rng(0).normal(size=(40, 6)) * 1e9
    est = FACTORIES[name]().fit(X)
    assert np.isfinite(est.reconstruct(X)).all() and np.isfinite(est.score(X))


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 1e300])
def test_sampling_survives_extreme_temperatures(temperature):
    d = torch.tensor([[0.0, 5.0, 9.0], [3e38, 3e38, float("inf")], [1e20, 2e20, 3e20]])
    ids = sample_codes(d, 2, temperature, torch.Generator().manual_seed(0))
    assert ids.shape == (3,) and ((ids >= 0) & (ids < 3)).all()
    X = np.random.default_rng(0).normal(size=(40, 4))
    SingleLayerVQ(**{**_VQ, "temperature": temperature}).fit(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale, offset", [(1e-30, 0.0), (1e19, 0.0), (1e15, 1e20), (1.0, 1e5), (1e160, 0.0)])
def test_kmeans_partial_fit_does_not_collapse_extreme_data(dtype, scale, offset):
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 4, [10.0] * 4, [-10.0, 10.0, -10.0, 10.0]])
    X = centres[rng.integers(0, 3, 300)] + rng.normal(size=(300, 4))
    with np.errstate(over="ignore"):
        X = (X * scale + offset).astype(dtype)
    if not np.isfinite(X).all():
        pytest.skip("not representable in this dtype")
    est = KMeansConcepts(k=3, batch_size=100, random_state=0)
    est.partial_fit(X[:150]).partial_fit(X[150:])
    ids = est.predict(X)
    assert len(np.unique(ids)) == 3
    np.testing.assert_array_equal(ids[150:], est.labels_)
    full = KMeansConcepts(k=3, random_state=0).fit(X)
    np.testing.assert_array_equal(full.predict(X), full.labels_)
    assert np.isfinite(full.score(X))


@pytest.mark.parametrize("name", FACTORIES)
def test_inverse_transform_overflow_is_a_clear_error(name):
    est = FACTORIES[name]().fit(np.random.default_rng(0).normal(size=(40, 6)))
    est.components_ = np.ones_like(est.components_)  # so that three weights of 1e308 overflow
    with pytest.raises(ValueError, match=r"X holds concept weights"):
        est.inverse_transform(np.full((2, 3), 1e308))


@pytest.mark.parametrize("name", FACTORIES)
def test_failed_fit_keeps_the_previous_fit(name):
    X = np.random.default_rng(0).normal(size=(40, 6))
    est = FACTORIES[name]().fit(X)
    before = est.predict(X)
    with pytest.raises(ValueError, match="X"):
        est.fit(np.full((40, 6), np.nan))
    np.testing.assert_array_equal(est.predict(X), before)
