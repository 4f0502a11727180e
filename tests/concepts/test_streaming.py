"""Streaming fits: every estimator fits a lazy activation store in bounded memory.

The store here is a test-only memory-mapped view (``lazy_store.NpyStore``)
implementing the protocol of ``LayerPairs.open``; the shuffle buffer is
made tiny (``CLVQLEARN_STREAM_BUFFER_MB``) so fits run over many buffers.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from lazy_store import NpyStore, write_store

from clvqlearn import CrossLayerVQ, LayerPairs, SingleLayerVQ
from clvqlearn.concepts._data import BLOCKS_PER_BUFFER, BUFFER_ENV, StreamData, is_lazy_pairs, stream_buffer_bytes
from clvqlearn.concepts._stream import StoreDocuments
from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.concepts.sae import SparseAutoencoder

#: 40 KiB buffers: 640 token rows of 8 + 8 float32 features
BUFFER_MB = "0.0390625"
BUFFER_TOKENS = 640


def _pairs(n_docs, seed, d=8):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    centers = rng.normal(size=(12, d)) * 3
    low = (centers[rng.integers(0, 12, size=offsets[-1])] + 0.3 * rng.normal(size=(offsets[-1], d)))
    mixing = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    high = np.tanh(low @ mixing)
    return LayerPairs(low=low.astype(np.float32), high=high.astype(np.float32), offsets=offsets,
                      layers=(1, 2), model_name="synthetic")


@pytest.fixture
def small_buffer(monkeypatch):
    monkeypatch.setenv(BUFFER_ENV, BUFFER_MB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    train, test = _pairs(500, 0), _pairs(120, 1)
    folder = write_store(tmp_path_factory.mktemp("store") / "train", train)
    return train, test, folder


FAST_VQ = dict(decoder="mlp", decoder_hidden=32, max_epochs=4, batch_size=16, learning_rate=3e-3, warmup_steps=0,
               device="cpu", random_state=0)
ESTIMATORS = {
    "CrossLayerVQ": lambda: CrossLayerVQ(k=12, **FAST_VQ),
    "SingleLayerVQ": lambda: SingleLayerVQ(k=12, layer="high", **FAST_VQ),
    "KMeansConcepts": lambda: KMeansConcepts(k=12, algorithm="minibatch", batch_size=256, random_state=0),
    "SparseAutoencoder": lambda: SparseAutoencoder(k=24, l1=1e-3, batch_size=128, learning_rate=1e-2, max_epochs=6,
                                                   device="cpu", random_state=0),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_streamed_fit_matches_an_in_memory_fit_on_held_out_documents(name, corpus, small_buffer):
    train, test, folder = corpus
    store = NpyStore(folder)
    streamed = ESTIMATORS[name]().fit(store)
    in_memory = ESTIMATORS[name]().fit(train)
    held_out = streamed.score(test), in_memory.score(test)
    assert min(held_out) > 0.1, held_out  # both learned something
    assert abs(held_out[0] - held_out[1]) < 0.06, held_out
    # no read came near the whole store: the data went through buffers
    assert max(store.reads) < train.n_tokens / 2, (max(store.reads), train.n_tokens)
    assert streamed.n_features_in_ == 16 and streamed.layer_widths_ == (8, 8)
    assert streamed.pairs_model_name_ == "synthetic" and streamed.pairs_layers_ == (1, 2)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_streamed_fitted_statistics_cover_the_whole_store(name, corpus, small_buffer):
    train, _, folder = corpus
    est = ESTIMATORS[name]().fit(NpyStore(folder))
    ids = est.predict(train)
    np.testing.assert_allclose(est.usage_, np.bincount(ids, minlength=est.k) / ids.size, atol=1e-12)
    if name == "KMeansConcepts":
        assert est.labels_ is None  # per-token labels of a store are not kept (bounded memory)
        np.testing.assert_array_equal(est.counts_, np.bincount(ids, minlength=est.k))
        residual = train.high - est.reconstruct(train)
        np.testing.assert_allclose(est.inertia_, float((residual.astype(np.float64) ** 2).sum()), rtol=1e-4)
    if name == "CrossLayerVQ":
        for c in np.flatnonzero(est.source_counts_):
            np.testing.assert_allclose(est.source_means_[c], train.low[ids == c].mean(axis=0), atol=1e-4)
    if name == "SparseAutoencoder":
        latents = est.transform(train)
        np.testing.assert_allclose(est.firing_rate_, (latents > 0).mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(est.l0_, (latents > 0).sum(axis=1).mean(), rtol=1e-9)


def test_reads_are_bounded_by_the_buffer(corpus, small_buffer):
    train, _, folder = corpus
    store = NpyStore(folder)
    CrossLayerVQ(k=12, **{**FAST_VQ, "max_epochs": 2, "decoder_init": "random"}).fit(store)
    longest = int(train.lengths.max())
    # a buffer gathers BLOCKS_PER_BUFFER blocks, each may overshoot by one
    # document; the validation and initialisation samples are capped at a buffer
    assert max(store.reads) <= BUFFER_TOKENS + BLOCKS_PER_BUFFER * longest
    assert len(store.reads) > 2 * train.n_tokens / BUFFER_TOKENS  # two epochs of several buffers


def test_the_store_score_equals_the_in_memory_score(corpus, small_buffer):
    train, _, folder = corpus
    est = KMeansConcepts(k=12, random_state=0).fit(train)
    assert est.score(NpyStore(folder)) == pytest.approx(est.score(train), rel=1e-9, abs=1e-12)


def test_validation_documents_are_whole_held_out_and_capped(corpus, small_buffer):
    train, _, folder = corpus
    data = StreamData(pairs=NpyStore(folder), source_role="low", target_role="high",
                      offsets=train.offsets, dtype=np.dtype(np.float32), widths=(8, 8))
    train_part, val_part = StoreDocuments(data).split(0.5, np.random.RandomState(0))
    held = val_part.source_t.shape[0]
    assert 0 < held <= data.buffer_tokens < 0.5 * train.n_tokens  # the cap binds
    assert train_part.n_docs + val_part.n_docs == train.n_docs
    seen = sum(b.n_tokens for b in train_part.batches(_config(), np.random.RandomState(0), True, "cpu"))
    assert seen + held == train.n_tokens  # every other token is trained on, each once per epoch


def _config():
    from clvqlearn.concepts._training import TrainConfig

    return TrainConfig(batch_size=8)


def test_a_store_path_is_opened_with_layerpairs_open(corpus, small_buffer, monkeypatch):
    train, test, folder = corpus
    monkeypatch.setattr(LayerPairs, "open", NpyStore, raising=False)
    by_path = KMeansConcepts(k=12, random_state=0, batch_size=256).fit(str(folder))
    by_view = KMeansConcepts(k=12, random_state=0, batch_size=256).fit(NpyStore(folder))
    np.testing.assert_array_equal(by_path.components_, by_view.components_)
    # transform / predict read a store into memory (their output is per token anyway)
    np.testing.assert_array_equal(by_path.predict(str(folder)), by_path.predict(train))
    with pytest.raises(TypeError, match="no activation store exists there"):
        KMeansConcepts(k=3).fit(str(folder) + "-missing")


def test_streamed_fits_refuse_what_needs_all_tokens_and_other_provenance(corpus, small_buffer):
    train, _, folder = corpus
    for algorithm in ("kmeans", "agglomerative"):
        with pytest.raises(ValueError, match="activation store.*algorithm='auto' or 'minibatch'"):
            KMeansConcepts(k=4, algorithm=algorithm).fit(NpyStore(folder))
    est = KMeansConcepts(k=4, random_state=0).fit(train)
    other = LayerPairs(low=train.low, high=train.high, offsets=train.offsets, layers=(3, 4), model_name="other")
    other_folder = write_store(folder.parent / "other", other)
    with pytest.raises(ValueError, match="model 'other'"):
        est.score(NpyStore(other_folder))


def test_non_finite_store_values_are_refused_when_read(corpus, small_buffer, tmp_path):
    train, _, _ = corpus
    high = train.high.copy()
    high[-3] = np.nan
    folder = write_store(tmp_path / "nan", LayerPairs(low=train.low, high=high, offsets=train.offsets))
    with pytest.raises(ValueError, match="NaN"):
        KMeansConcepts(k=4, random_state=0).fit(NpyStore(folder))


def test_a_buffer_smaller_than_k_tokens_is_refused(corpus, monkeypatch):
    _, _, folder = corpus
    monkeypatch.setenv(BUFFER_ENV, "0.001")  # 16 token rows
    with pytest.raises(ValueError, match=f"buffer holds 16 token rows.*k=20.*{BUFFER_ENV}"):
        KMeansConcepts(k=20).fit(NpyStore(folder))


def test_the_buffer_size_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(BUFFER_ENV, raising=False)
    assert stream_buffer_bytes() == 256 * 2**20
    monkeypatch.setenv(BUFFER_ENV, "1.5")
    assert stream_buffer_bytes() == int(1.5 * 2**20)
    for bad in ("0", "-2", "lots", "nan"):
        monkeypatch.setenv(BUFFER_ENV, bad)
        with pytest.raises(ValueError, match=BUFFER_ENV):
            stream_buffer_bytes()


@pytest.mark.slow
def test_a_real_minilm_store_streams_like_its_pairs(tmp_path, small_buffer):
    from clvqlearn import LayerPairExtractor
    from clvqlearn.datasets import load_bbc_news

    texts = list(load_bbc_news().texts[:30])
    extractor = LayerPairExtractor("minilm", layers=(4, 6), max_length=64)
    folder = tmp_path / "s"
    LayerPairExtractor("minilm", layers=(4, 6), max_length=64, store=folder, shard_size=4).fit_transform(texts)
    pairs = extractor.fit_transform(texts)
    view = LayerPairs.open(folder)
    assert is_lazy_pairs(view) and len(pickle.dumps(view)) < 10_000  # streamed; pickles without activations
    est = KMeansConcepts(k=8, random_state=0, batch_size=256, max_iter=5).fit(view)
    assert est.pairs_model_name_ == pairs.model_name and est.pairs_layers_ == (4, 6)
    np.testing.assert_array_equal(est.counts_, np.bincount(est.predict(pairs), minlength=8))
    assert est.score(view) == pytest.approx(est.score(pairs), rel=1e-5)
    vq = CrossLayerVQ(k=8, **{**FAST_VQ, "max_epochs": 2}).fit(folder)  # by path
    assert vq.pairs_layers_ == (4, 6) and np.isfinite(vq.score(pairs))
    np.testing.assert_allclose(vq.usage_, np.bincount(vq.predict(pairs), minlength=8) / pairs.n_tokens)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["CrossLayerVQ", "SparseAutoencoder"])
def test_a_streamed_fit_on_the_gpu_matches_the_cpu_one(name, corpus, small_buffer):
    train, test, folder = corpus
    cpu = ESTIMATORS[name]().fit(NpyStore(folder))
    gpu = ESTIMATORS[name]().set_params(device="cuda").fit(NpyStore(folder))
    assert abs(gpu.score(test) - cpu.score(test)) < 0.05
    np.testing.assert_allclose(gpu.usage_.sum(), 1.0)


# ------------------------------------------------------------------ partial_fit after set_params (issue 23, item 4)
SMALL = {
    "CrossLayerVQ": lambda: CrossLayerVQ(k=4, **{**FAST_VQ, "decoder_hidden": 8, "encoder_hidden": 8, "top_k": 2}),
    "SingleLayerVQ": lambda: SingleLayerVQ(k=4, **{**FAST_VQ, "decoder_hidden": 8, "top_k": 2}),
    "KMeansConcepts": lambda: KMeansConcepts(k=4, batch_size=64, random_state=0),
    "SparseAutoencoder": lambda: SparseAutoencoder(k=4, batch_size=64, device="cpu", random_state=0),
}
#: A setting that shapes the fitted state, changed after the first call: (estimator, change, fitted value).
STRUCTURAL_CHANGES = [
    *[(name, {"k": 6}, "k=4") for name in sorted(SMALL)],
    ("SingleLayerVQ", {"layer": "low"}, "layer='high'"),
    ("KMeansConcepts", {"layer": "low"}, "layer='high'"),
    ("SparseAutoencoder", {"layer": "high"}, "layer=None"),
    ("CrossLayerVQ", {"decoder_hidden": 16}, "decoder_hidden=8"),
    ("CrossLayerVQ", {"encoder_hidden": 16}, "encoder_hidden=8"),
    ("CrossLayerVQ", {"decoder": "transformer-codes", "decoder_heads": 2}, "decoder='mlp'"),
    ("SingleLayerVQ", {"encoder": "mlp"}, "encoder='linear'"),
    ("CrossLayerVQ", {"decoder_skip": True}, "decoder_skip=False"),
]


@pytest.mark.parametrize("name, change, fitted", STRUCTURAL_CHANGES,
                         ids=[f"{n}-{'-'.join(c)}" for n, c, _ in STRUCTURAL_CHANGES])
def test_partial_fit_refuses_a_structural_setting_changed_since_fit(name, change, fitted):
    first, second = _pairs(30, 0), _pairs(30, 1)
    est = SMALL[name]().partial_fit(first)
    before = {key: value.copy() for key, value in vars(est).items() if isinstance(value, np.ndarray)}
    n_iter, params = est.n_iter_, est.get_params()
    est.set_params(**change)
    changed = sorted(change)[0]
    with pytest.raises(ValueError, match=rf"{changed}.* changed since fit: {name} was fitted with .*{fitted}"
                                         r".*Call fit \(not partial_fit"):
        est.partial_fit(second)
    assert est.n_iter_ == n_iter  # nothing was done
    for key, value in before.items():
        np.testing.assert_array_equal(getattr(est, key), value)
    est.set_params(**params).partial_fit(second)  # set back, the stream goes on
    assert est.n_iter_ > n_iter
    est.set_params(**change).fit(first)  # fit starts over with the new setting
    est.partial_fit(second)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_inference_refuses_a_k_changed_since_fit(name):
    est = SMALL[name]().fit(_pairs(30, 0))
    est.set_params(k=5)
    for method in ("predict", "transform", "reconstruct", "score"):
        with pytest.raises(ValueError, match=r"k changed since fit: .* fitted with k=4"):
            getattr(est, method)(_pairs(10, 1))
    with pytest.raises(ValueError, match="k changed since fit"):
        est.concept_directions(0)


def test_a_behavioural_setting_changed_since_fit_takes_effect_at_once():
    pairs = _pairs(40, 0)
    sae = SMALL["SparseAutoencoder"]().fit(pairs)
    assert (sae.transform(pairs) > 0).sum(axis=1).max() > 1
    sae.set_params(activation="topk", top_k=1)  # same shapes: allowed, and no longer ignored by the cached network
    latents = sae.transform(pairs)
    assert (latents > 0).sum(axis=1).max() == 1
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sae)).transform(pairs), latents)
    sae.partial_fit(pairs)
    assert (sae.transform(pairs) > 0).sum(axis=1).max() == 1
