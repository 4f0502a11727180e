"""clvqlearn.metrics: reconstruction and codebook-usage metrics."""

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import r2_score

import clvqlearn
from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairs, metrics
from clvqlearn.metrics import code_usage, fraction_of_variance_explained, usage_perplexity

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def test_metrics_is_a_public_module():
    assert clvqlearn.metrics is metrics and "metrics" in clvqlearn.__all__
    assert set(metrics.__all__) == {"code_usage", "fraction_of_variance_explained", "usage_perplexity"}


# ------------------------------------------------------------------ FVE
@st.composite
def _target_and_prediction(draw):
    n, d = draw(st.integers(2, 12)), draw(st.integers(1, 4))
    return draw(arrays(np.float64, (n, d), elements=finite)), draw(arrays(np.float64, (n, d), elements=finite))


@settings(max_examples=80, deadline=None)
@given(_target_and_prediction())
def test_fve_is_the_variance_weighted_r2(case):
    target, prediction = case
    fve = fraction_of_variance_explained(target, prediction)
    per_feature = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    if per_feature.sum() > 1e-6:
        assert fve == pytest.approx(1 - ((target - prediction) ** 2).sum() / per_feature.sum(), rel=1e-9, abs=1e-9)
    if per_feature.min() > 1e-6:  # (sklearn leaves constant features out of its weights)
        assert fve == pytest.approx(r2_score(target, prediction, multioutput="variance_weighted"), rel=1e-9, abs=1e-9)
    assert fraction_of_variance_explained(target, target) == 1.0
    assert fve <= 1.0


@settings(max_examples=60, deadline=None)
@given(_target_and_prediction(), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_fve_ignores_a_common_scale_and_shift(case, scale, shift):
    target, prediction = case
    if ((target - target.mean(axis=0)) ** 2).sum() < 1e-6:
        return
    moved = fraction_of_variance_explained(scale * target + shift, scale * prediction + shift)
    assert moved == pytest.approx(fraction_of_variance_explained(target, prediction), rel=1e-6, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_fve_over_several_row_chunks_is_the_whole_array_formula(chunks, width, seed):
    # chunks of 500 bytes (a few rows), in float32 as the estimators pass them
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, 500 // (8 * width))
    n = chunks * rows_per_chunk + int(rng.integers(1, rows_per_chunk + 1))
    target = (rng.normal(size=(n, width)) * np.linspace(0.1, 5.0, width) + 7).astype(np.float32)
    prediction = (target + rng.normal(scale=0.5, size=(n, width))).astype(np.float32)
    t, p = target.astype(np.float64), prediction.astype(np.float64)
    expected = 1 - ((t - p) ** 2).sum() / ((t - t.mean(axis=0)) ** 2).sum()
    with mock.patch.object(metrics, "_FVE_CHUNK_BYTES", 500):
        assert len(list(metrics._scaled_chunks(1.0, target))) == -(-n // rows_per_chunk) > chunks
        assert fraction_of_variance_explained(target, prediction) == pytest.approx(expected, rel=1e-10)


def test_fve_chunks_hold_about_32_mib_whatever_the_width():
    wide = np.zeros((3, 2**20), dtype=np.float32)  # 8 MiB per float64 row: 4 rows per chunk
    assert [c.shape for (c,) in metrics._scaled_chunks(1.0, wide)] == [(3, 2**20)]
    narrow = np.zeros((2**20 + 1, 4), dtype=np.float32)
    assert [c.shape[0] for (c,) in metrics._scaled_chunks(1.0, narrow)] == [2**20, 1]


def test_fve_reads_numeric_strings_as_before():
    assert fraction_of_variance_explained(np.array(["0", "2"]), np.array(["0.5", "1.5"])) == pytest.approx(0.75)


def test_fve_reference_values_and_edge_cases():
    target = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mean = np.broadcast_to(target.mean(axis=0), target.shape)
    assert fraction_of_variance_explained(target, mean) == pytest.approx(0.0, abs=1e-15)
    assert fraction_of_variance_explained(target, mean + 1) < 0  # worse than the mean
    assert fraction_of_variance_explained(target[:, 0], target[:, 0] + 0.0) == 1.0  # 1-D
    constant = np.ones((3, 2))
    assert fraction_of_variance_explained(constant, constant) == 1.0
    assert fraction_of_variance_explained(constant, constant + 1) == 0.0
    huge = np.array([[1e300], [-1e300]])  # squares would overflow without the exact rescaling
    assert fraction_of_variance_explained(huge, huge / 2) == pytest.approx(0.75)
    largest = np.array([[1.7e308], [-1.7e308]])  # the power of two above it is infinite
    assert fraction_of_variance_explained(largest, largest / 2) == pytest.approx(0.75)


@pytest.mark.parametrize(("target", "prediction"), [
    (np.zeros((3, 2)), np.zeros((3, 3))),
    (np.zeros((3, 2)), np.zeros((2, 2))),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2))),
])
def test_fve_refuses_mismatched_shapes(target, prediction):
    with pytest.raises(ValueError, match="same shape"):
        fraction_of_variance_explained(target, prediction)


def test_estimator_score_is_the_fve_of_its_reconstruction():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(120, 3)).astype(np.float32)
    pairs = LayerPairs(low=low, high=np.tanh(low @ rng.normal(size=(3, 2))).astype(np.float32),
                       offsets=np.arange(0, 121, 6))
    for est in (KMeansConcepts(k=4, random_state=0),
                CrossLayerVQ(k=4, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=2, random_state=0)):
        est.fit(pairs)
        expected = fraction_of_variance_explained(pairs.high, est.reconstruct(pairs))
        assert est.score(pairs) == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- usage
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 10), st.data())
def test_code_usage_is_the_share_of_each_code(k, data):
    ids = np.asarray(data.draw(st.lists(st.integers(0, k - 1), max_size=40)), dtype=np.int64)
    usage = code_usage(ids, k)
    assert usage.shape == (k,) and usage.dtype == np.float64
    for code in range(k):
        assert usage[code] == pytest.approx(np.mean(ids == code) if ids.size else 0.0)
    assert usage.sum() == pytest.approx(1.0 if ids.size else 0.0)
    np.testing.assert_array_equal(code_usage(ids[::-1], k), usage)  # order does not matter


@pytest.mark.parametrize(("ids", "k", "match"), [
    ([0, 3], 3, r"in \[0, 3\)"),
    ([-1, 0], 3, r"in \[0, 3\)"),
    ([0.5, 1.0], 3, "integer concept ids"),
    ([[0, 1]], 3, "1-D"),
    ([0], 0, "positive integer"),
    ([0], 2.0, "positive integer"),
    ([0], True, "positive integer"),
])
def test_code_usage_refuses_bad_ids(ids, k, match):
    with pytest.raises(ValueError, match=match):
        code_usage(ids, k)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12), st.floats(0.01, 100))
def test_perplexity_lies_between_one_and_the_used_codes(counts, factor):
    counts = np.asarray(counts, dtype=np.float64)
    p = usage_perplexity(counts)
    n_used = int((counts > 0).sum())
    assert 1.0 - 1e-12 <= p <= max(n_used, 1) + 1e-9
    assert usage_perplexity(counts * factor) == pytest.approx(p)  # counts or shares alike
    assert usage_perplexity(counts[::-1]) == pytest.approx(p)
    if n_used:
        shares = counts[counts > 0] / counts.sum()
        assert p == pytest.approx(float(np.exp(-(shares * np.log(shares)).sum())))


def test_perplexity_reference_values_and_bad_input():
    assert usage_perplexity(np.full(7, 1 / 7)) == pytest.approx(7.0)
    assert usage_perplexity([0, 5, 0]) == 1.0
    assert usage_perplexity([0.0, 0.0]) == 1.0
    assert usage_perplexity([1, 1, 2]) == pytest.approx(np.exp(1.5 * np.log(2)))
    for bad in ([-0.1, 1.1], [np.nan, 1.0], [[0.5, 0.5]]):
        with pytest.raises(ValueError, match="non-negative"):
            usage_perplexity(bad)


def test_vq_usage_attributes_are_these_metrics():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    vq = CrossLayerVQ(k=5, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=1, random_state=0).fit(X)
    usage = code_usage(vq.predict(X), vq.k)
    np.testing.assert_allclose(vq.usage_, usage)
    assert vq.perplexity_ == pytest.approx(usage_perplexity(usage))
