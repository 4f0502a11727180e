"""Graded activations (``decision_function``) of the four concept estimators (issue 25, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clvqlearn.concepts._base import softmax_of_distances
from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.concepts.sae import SparseAutoencoder
from clvqlearn.concepts.vq import CrossLayerVQ, SingleLayerVQ

FAST = dict(top_k=2, max_epochs=2, decoder="mlp", random_state=0, device="cpu")


def _data(seed=0, n=120, d=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(4, d))
    return (centers[rng.integers(0, 4, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    X = _data()
    return X, {
        "kmeans": KMeansConcepts(k=4, random_state=0).fit(X),
        "single": SingleLayerVQ(k=4, **FAST).fit(X),
        "cross": CrossLayerVQ(k=4, **FAST).fit(X),
        "sae": SparseAutoencoder(k=4, max_epochs=2, random_state=0, device="cpu").fit(X),
    }


@pytest.mark.parametrize("name", ["kmeans", "single", "cross"])
def test_distance_estimators_give_probabilities_whose_argmax_is_predict(fitted, name):
    X, models = fitted
    est = models[name]
    graded = est.decision_function(X)
    assert graded.shape == (X.shape[0], 4) and graded.dtype == np.float64
    np.testing.assert_allclose(graded.sum(axis=1), 1.0, rtol=1e-12)
    assert (graded >= 0).all()
    np.testing.assert_array_equal(graded.argmax(axis=1), est.predict(X))
    assert (graded > 0).all() and (graded.max(axis=1) < 1).any()  # graded, not one-hot


def test_sae_graded_activations_are_its_latents(fitted):
    X, models = fitted
    sae = models["sae"]
    graded = sae.decision_function(X)
    assert graded.dtype == np.float64 and (graded >= 0).all()
    np.testing.assert_allclose(graded, sae.transform(X), rtol=1e-6)


def test_vq_temperature_sharpens_the_softmax(fitted):
    X, models = fitted
    est = models["single"]
    soft = est.decision_function(X).max(axis=1).mean()
    est.set_params(temperature=0.01)
    try:
        sharp = est.decision_function(X).max(axis=1).mean()
    finally:
        est.set_params(temperature=1.0)
    assert sharp > soft and sharp > 0.99


def test_kmeans_temperature_is_the_mixture_variance(fitted):
    """The softmax equals the posterior of an isotropic Gaussian mixture at the k-means variance."""
    X, models = fitted
    est = models["kmeans"]
    squared = ((X[:, None, :].astype(np.float64) - est.components_[None]) ** 2).sum(-1)
    temperature = 2 * est.loss_curve_[-1] / X.shape[1]
    expected = np.exp(-(squared - squared.min(1, keepdims=True)) / temperature)
    np.testing.assert_allclose(est.decision_function(X), expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_decision_function_refuses_an_unfitted_estimator():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        KMeansConcepts(k=2).decision_function(np.zeros((3, 2)))


@settings(max_examples=25)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), scale=st.floats(0.01, 100.0))
def test_kmeans_argmax_is_predict_for_any_data(seed, k, scale):
    X = _data(seed, n=40, d=3) * np.float32(scale)
    est = KMeansConcepts(k=k, random_state=0, n_init=1).fit(X)
    Y = _data(seed + 1, n=30, d=3) * np.float32(scale)
    np.testing.assert_array_equal(est.decision_function(Y).argmax(axis=1), est.predict(Y))


@settings(max_examples=50)
@given(rows=st.lists(st.lists(st.floats(0, 1e6), min_size=3, max_size=3), min_size=1, max_size=8),
       temperature=st.floats(1e-3, 1e3))
def test_softmax_of_distances_is_a_distribution_peaked_at_the_nearest(rows, temperature):
    distances = np.array(rows)
    weights = softmax_of_distances(distances, temperature)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    nearest = distances.argmin(axis=1)
    assert (weights[np.arange(len(rows)), nearest] == weights.max(axis=1)).all()
