"""KMeansConcepts: agreement with scikit-learn, the concept contract, streaming, errors."""

import copy
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.cluster import AgglomerativeClustering, KMeans, MiniBatchKMeans
from sklearn.exceptions import NotFittedError

from clvqlearn.concepts import kmeans as kmeans_module
from clvqlearn.concepts.kmeans import KMeansConcepts, agglomerative_memory_bytes
from clvqlearn.pairs import LayerPairs


def _blobs(n=300, d=5, centers=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(centers, d))
    labels = rng.integers(0, centers, size=n)
    return (means[labels] + rng.normal(size=(n, d))).astype(dtype)


def _pairs(n_docs=30, d_low=4, d_high=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 9, size=n_docs)
    n = int(lengths.sum())
    low = rng.normal(size=(n, d_low)).astype(np.float32)
    high = (low @ rng.normal(size=(d_low, d_high)) + 0.1 * rng.normal(size=(n, d_high))).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(lengths)]), layers=(4, 6))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(10, 120),
    d=st.integers(1, 6),
    k=st.integers(1, 8),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_matches_sklearn_kmeans_and_contract(seed, n, d, k, dtype):
    X = np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)
    est = KMeansConcepts(k=k, algorithm="kmeans", random_state=seed).fit(X)
    ref = KMeans(n_clusters=k, random_state=seed).fit(X)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    np.testing.assert_allclose(est.components_, ref.cluster_centers_, rtol=1e-6, atol=1e-6)
    assert est.inertia_ == pytest.approx(ref.inertia_, rel=1e-6)

    codes = est.transform(X)
    ids = est.predict(X)
    assert codes.shape == (n, k) and codes.dtype == dtype
    assert ids.shape == (n,) and ids.dtype == np.int64
    np.testing.assert_array_equal(codes.sum(axis=1), np.ones(n))  # one-hot rows
    np.testing.assert_array_equal(ids, codes.argmax(axis=1))
    np.testing.assert_array_equal(ids, ref.predict(X))
    recon = est.reconstruct(X)
    assert recon.dtype == dtype
    np.testing.assert_allclose(recon, est.components_[ids], rtol=1e-6)
    np.testing.assert_allclose(est.inverse_transform(codes), recon, rtol=1e-6)
    np.testing.assert_allclose(est.usage_, np.bincount(ref.labels_, minlength=k) / n)
    assert est.loss_curve_ == [pytest.approx(ref.inertia_ / n, rel=1e-6)]
    assert est.n_iter_ == ref.n_iter_


def test_score_is_one_minus_inertia_over_total_variance():
    X = _blobs()
    est = KMeansConcepts(k=4, random_state=0).fit(X)
    sst = ((X - X.mean(0)) ** 2).sum()
    assert est.score(X) == pytest.approx(1 - est.inertia_ / sst)
    assert est.score(X) > 0.9  # four well-separated blobs


def test_distance_output_matches_sklearn_transform():
    X = _blobs(dtype=np.float32)
    est = KMeansConcepts(k=4, transform_output="distance", random_state=1).fit(X)
    ref = KMeans(n_clusters=4, random_state=1).fit(X)
    np.testing.assert_allclose(est.transform(X), ref.transform(X), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(est.predict(X), est.transform(X).argmin(axis=1))


def test_minibatch_fit_matches_sklearn():
    X = _blobs(n=2000)
    est = KMeansConcepts(k=4, algorithm="minibatch", batch_size=256, random_state=0).fit(X)
    ref = MiniBatchKMeans(n_clusters=4, batch_size=256, random_state=0).fit(X)
    np.testing.assert_allclose(est.components_, ref.cluster_centers_)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.algorithm_ == "minibatch" and est.n_iter_ == ref.n_iter_


def test_auto_switches_to_minibatch_above_threshold(monkeypatch):
    X = _blobs(n=400)
    assert KMeansConcepts(k=3, random_state=0).fit(X).algorithm_ == "kmeans"
    monkeypatch.setattr(kmeans_module, "AUTO_MINIBATCH_MIN_TOKENS", 399)
    assert KMeansConcepts(k=3, random_state=0).fit(X).algorithm_ == "minibatch"


def test_agglomerative_is_sklearn_ward_with_centroids():
    X = _blobs(n=200, seed=3)
    est = KMeansConcepts(k=4, algorithm="agglomerative").fit(X)
    ref = AgglomerativeClustering(n_clusters=4, linkage="ward").fit(X)
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    for j in range(4):
        np.testing.assert_allclose(est.components_[j], X[ref.labels_ == j].mean(axis=0))
    # new data: nearest centroid of the fitted clusters
    new = _blobs(n=50, seed=3) + 0.01
    dist = ((new[:, None, :] - est.components_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(est.predict(new), dist.argmin(1))
    assert est.score(X) > 0.9
    assert not hasattr(est, "partial_fit")
    with pytest.raises(AttributeError, match="partial_fit") as info:
        est.partial_fit(X)
    assert "Ward clustering needs all tokens" in str(info.value.__cause__)


def test_agglomerative_refuses_inputs_whose_distance_matrix_exhausts_memory():
    X = np.zeros((2_000_000, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"2,000,000 tokens .* GiB"):
        KMeansConcepts(k=2, algorithm="agglomerative").fit(X)
    assert agglomerative_memory_bytes(2_000_000) == 8 * 2_000_000 * 1_999_999 // 2


def test_partial_fit_first_call_is_sklearn_minibatch_partial_fit():
    X = _blobs(n=600, seed=1)
    est = KMeansConcepts(k=5, batch_size=200, random_state=0).partial_fit(X)
    ref = MiniBatchKMeans(n_clusters=5, batch_size=200, random_state=0)
    for start in range(0, 600, 200):
        ref.partial_fit(X[start:start + 200])
    np.testing.assert_allclose(est.components_, ref.cluster_centers_)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3
    assert est.counts_.sum() == 600


def test_partial_fit_resumes_with_counts_as_learning_rates():
    X = _blobs(n=1000, seed=2)
    est = KMeansConcepts(k=4, random_state=0).fit(X)
    centers, counts = est.components_.copy(), est.counts_.copy()
    batch = _blobs(n=100, seed=2) + 0.5
    labels = est.predict(batch)
    est.partial_fit(batch)  # one mini-batch (100 <= batch_size)
    for j in range(4):
        members = batch[labels == j]
        expected = (centers[j] * counts[j] + members.sum(0)) / (counts[j] + len(members))
        np.testing.assert_allclose(est.components_[j], expected, rtol=1e-10)
    np.testing.assert_allclose(est.counts_.sum(), 1100)


def test_partial_fit_after_pickling_continues_identically():
    X = _blobs(n=900, seed=4)
    a = KMeansConcepts(k=4, batch_size=300, random_state=0).partial_fit(X[:300])
    b = pickle.loads(pickle.dumps(a))
    a.partial_fit(X[300:])
    b.partial_fit(X[300:])
    np.testing.assert_array_equal(a.components_, b.components_)


@pytest.mark.parametrize(
    "bad, match",
    [(np.full((20, 5), np.nan), "NaN"), (np.ones((20, 3)), "3 features")],
)
def test_partial_fit_failure_leaves_state_unchanged(bad, match):
    X = _blobs(n=300)
    est = KMeansConcepts(k=4, random_state=0).fit(X)
    before = {k: np.copy(v) for k, v in vars(est).items() if isinstance(v, np.ndarray)}
    curve = list(est.loss_curve_)
    with pytest.raises(ValueError, match=match):
        est.partial_fit(bad)
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(est, name), value)
    assert est.loss_curve_ == curve


def test_layer_pairs_layer_choice():
    pairs = _pairs()
    high = KMeansConcepts(k=3, layer="high", random_state=0).fit(pairs)
    low = KMeansConcepts(k=3, layer="low", random_state=0).fit(pairs)
    assert high.components_.shape == (3, 6) and low.components_.shape == (3, 4)
    assert high.n_features_in_ == low.n_features_in_ == 10
    np.testing.assert_array_equal(high.predict(pairs), KMeans(3, random_state=0).fit(pairs.high).labels_)
    assert high.concept_space_ == "high" and low.concept_space_ == "low"
    direction = high.concept_directions(1)
    np.testing.assert_allclose(direction[0], high.components_[1] / np.linalg.norm(high.components_[1]), rtol=1e-6)


def test_bad_input_errors():
    X = _blobs(n=50)
    with pytest.raises(NotFittedError):
        KMeansConcepts(k=3).predict(X)
    with pytest.raises(ValueError, match="NaN"):
        KMeansConcepts(k=3).fit(np.where(X > 5, np.nan, X))
    with pytest.raises(ValueError, match="need at least k token rows"):
        KMeansConcepts(k=51).fit(X)
    est = KMeansConcepts(k=3, random_state=0).fit(X)
    with pytest.raises(ValueError, match="5 features"):
        est.transform(X[:, :2])
    with pytest.raises(ValueError, match="3 columns"):
        est.inverse_transform(np.ones((2, 4)))
    with pytest.raises(TypeError, match="LayerPairExtractor"):
        est.predict(["a text"])
    with pytest.raises(ValueError, match="algorithm"):
        KMeansConcepts(algorithm="ward").fit(X)
    with pytest.raises(ValueError, match="concept must be an integer"):
        est.concept_directions(3)


def test_save_load_and_pickle_round_trip(tmp_path):
    X = _blobs(n=200, dtype=np.float32)
    est = KMeansConcepts(k=4, random_state=0).fit(X)
    loaded = KMeansConcepts.load(est.save(tmp_path / "km"))
    np.testing.assert_array_equal(loaded.components_, est.components_)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    assert loaded.get_params() == est.get_params() and loaded.loss_curve_ == est.loss_curve_
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X), est.transform(X))


def test_explicit_non_cpu_device_warns(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(UserWarning, match="CPU"):
        KMeansConcepts(k=2, device="cuda", random_state=0).fit(_blobs(n=20))


@pytest.mark.slow
def test_minilm_kmeans_beats_random_centroids_on_held_out_texts(minilm_pairs):
    train, test = minilm_pairs[:160], minilm_pairs[160:]
    est = KMeansConcepts(k=50, random_state=0).fit(train)
    held_out = est.score(test)
    # control: 50 random training tokens as centres
    rng = np.random.default_rng(0)
    control = copy.copy(est)
    control.components_ = train.high[rng.choice(train.n_tokens, 50, replace=False)].astype(np.float32)
    # 8k tokens, k=50: about 0.11 measured; random centres explain ~0
    assert held_out > 0.05
    assert held_out > control.score(test) + 0.05
    assert est.usage_.min() > 0 and est.usage_.sum() == pytest.approx(1.0)
