"""CrossLayerVQ / SingleLayerVQ: behaviour, invariants, persistence, bad input."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from clvqlearn import CrossLayerVQ, LayerPairs, SingleLayerVQ
from clvqlearn.nn.codebook import EMACodebook, sample_codes

FAST = dict(top_k=2, decoder="mlp", decoder_hidden=16, max_epochs=3, batch_size=32)


def _pairs(n_docs=20, length=6, d=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=n_docs)
    n = int(lengths.sum())
    low = rng.normal(size=(n, d)).astype(dtype)
    high = (np.tanh(low @ rng.normal(size=(d, d))) + 0.05 * rng.normal(size=(n, d))).astype(dtype)
    return LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(lengths)]))


# ----------------------------------------------------------------- codebook
def test_ema_update_matches_the_formula():
    book = EMACodebook(k=2, dim=1, decay=0.9, eps=0.0, top_k=1)
    book.initialize(torch.tensor([[0.0], [10.0]]))
    book.train()
    book(torch.tensor([[1.0], [2.0], [9.0]]))
    # counts (2, 1); N = 0.9 * 1 + 0.1 * counts; M = 0.9 * e + 0.1 * sums
    n = torch.tensor([1.1, 1.0])
    m = torch.tensor([[0.9 * 0.0 + 0.1 * 3.0], [0.9 * 10.0 + 0.1 * 9.0]])
    torch.testing.assert_close(book.cluster_size, n)
    torch.testing.assert_close(book.codes, m / n[:, None])


def test_codebook_is_initialised_together():
    book = EMACodebook(k=3, dim=2)
    codes = torch.arange(6.0).reshape(3, 2)
    book.initialize(codes)
    torch.testing.assert_close(book.code_sum, codes)
    torch.testing.assert_close(book.cluster_size, torch.ones(3))


def test_eval_mode_does_not_update_the_codebook():
    book = EMACodebook(k=3, dim=2)
    book.initialize(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
    before = book.codes.clone()
    book.eval()(torch.randn(10, 2, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(book.codes, before)


def test_straight_through_gradient_reaches_the_input():
    book = EMACodebook(k=4, dim=3).eval()
    book.initialize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))
    z = torch.randn(5, 3, requires_grad=True)
    out = book(z)
    out.quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


@given(top_k=st.integers(1, 6), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_sampling_stays_within_the_top_k_nearest(top_k, seed):
    gen = torch.Generator().manual_seed(seed)
    distances = torch.rand(50, 6, generator=gen)
    picked = sample_codes(distances, top_k, temperature=1.0, generator=gen)
    ranks = distances.argsort(dim=1).argsort(dim=1)
    assert bool((ranks[torch.arange(50), picked] < top_k).all())


def test_low_temperature_sampling_is_nearest():
    distances = torch.rand(200, 8, generator=torch.Generator().manual_seed(0))
    picked = sample_codes(distances, 5, temperature=1e-6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(picked, distances.argmin(dim=1))


def test_dead_codes_are_replaced_when_enabled():
    book = EMACodebook(k=4, dim=2, top_k=1, dead_code_threshold=0.5, decay=0.5)
    book.initialize(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 0.0], [0.0, 200.0]]))
    book.generator = torch.Generator().manual_seed(0)
    book.train()
    for _ in range(3):
        book(torch.randn(64, 2, generator=torch.Generator().manual_seed(2)))
    assert int(book.n_replaced) > 0
    assert float(book.codes.abs().max()) < 50  # far codes were moved onto the data


# ---------------------------------------------------------------- estimator
@pytest.mark.parametrize("decoder", ["mlp", "transformer", "transformer-codes"])
def test_fit_shapes_and_attributes(decoder):
    pairs = _pairs()
    vq = CrossLayerVQ(k=5, decoder=decoder, decoder_layers=1, decoder_heads=2, decoder_ff=16,
                      decoder_hidden=16, max_epochs=2, random_state=0).fit(pairs)
    assert vq.components_.shape == (5, 4)
    assert vq.transform(pairs).shape == (pairs.n_tokens, 5)
    assert vq.reconstruct(pairs).shape == pairs.high.shape
    ids = vq.predict(pairs)  # usage_ counts the nearest codes of the training tokens
    np.testing.assert_allclose(vq.usage_, np.bincount(ids, minlength=5) / ids.size)
    shares = vq.usage_[vq.usage_ > 0]
    assert vq.perplexity_ == pytest.approx(float(np.exp(-(shares * np.log(shares)).sum())))
    assert vq.n_active_codes_ == np.unique(ids).size
    assert vq.n_iter_ == 2 and len(vq.loss_curve_) == 2
    assert np.isfinite(vq.score(pairs))


def test_learning_reduces_the_loss_and_explains_variance():
    pairs = _pairs(n_docs=120)
    vq = CrossLayerVQ(k=16, top_k=1, decoder="mlp", decoder_hidden=64, max_epochs=40,
                      learning_rate=5e-3, random_state=0).fit(pairs)
    assert vq.loss_curve_[-1] < vq.loss_curve_[0]
    assert vq.score(pairs) > 0.3


def test_transformer_decoder_uses_context_of_the_sentence():
    # target = the sentence's mean low vector: only a sequence decoder can see it
    rng = np.random.default_rng(0)
    lengths = np.full(80, 6)
    low = rng.normal(size=(480, 4)).astype(np.float32)
    high = np.repeat(low.reshape(80, 6, 4).mean(axis=1), 6, axis=0)
    pairs = LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(lengths)]))
    common = dict(k=32, top_k=1, decoder_layers=2, decoder_heads=2, decoder_ff=64, max_epochs=40,
                  batch_size=8, learning_rate=3e-3, dropout=0.0, random_state=0)
    seq = CrossLayerVQ(decoder="transformer", **common).fit(pairs)
    tok = CrossLayerVQ(decoder="mlp", decoder_hidden=64, **common).fit(pairs)
    assert seq.score(pairs) > tok.score(pairs) + 0.2


def test_position_encodings_let_a_codes_only_decoder_see_where_a_token_is():
    # 8 distinct token vectors; the target flips the sign of the last three
    # tokens of each sentence.  Without positions, self-attention over codes
    # sees the same thing at every position; with them it can tell.
    rng = np.random.default_rng(0)
    vocab = rng.normal(size=(8, 8)).astype(np.float32) * 3
    tokens = rng.integers(0, 8, size=(120, 6))
    sign = np.where(np.arange(6) < 3, 1.0, -1.0).astype(np.float32)
    pairs = LayerPairs(low=vocab[tokens].reshape(-1, 8), high=(vocab[tokens] * sign[:, None]).reshape(-1, 8),
                       offsets=np.arange(0, 721, 6))
    common = dict(k=8, top_k=1, encoder="identity", decoder="transformer-codes", decoder_layers=1, decoder_heads=2,
                  decoder_ff=64, max_epochs=40, batch_size=8, learning_rate=3e-3, warmup_steps=0, dropout=0.0,
                  validation_fraction=0.0, random_state=0)
    with_positions = CrossLayerVQ(decoder_positions=1.0, **common).fit(pairs).score(pairs)
    without = CrossLayerVQ(decoder_positions=0.0, **common).fit(pairs).score(pairs)
    assert with_positions > 0.6 and without < 0.2, (with_positions, without)


@given(seed=st.integers(0, 50), n_docs=st.integers(8, 30))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_invariants(seed, n_docs):
    pairs = _pairs(n_docs=n_docs, seed=seed)
    vq = CrossLayerVQ(k=4, random_state=seed, **FAST).fit(pairs)
    onehot = vq.transform(pairs)
    assert onehot.shape == (pairs.n_tokens, 4)
    assert set(np.unique(onehot)) <= {0.0, 1.0}
    np.testing.assert_array_equal(onehot.sum(axis=1), 1.0)
    np.testing.assert_array_equal(vq.predict(pairs), onehot.argmax(axis=1))
    # inverse_transform of the one-hot rows gives each token's code vector
    np.testing.assert_allclose(vq.inverse_transform(onehot), vq.components_[vq.predict(pairs)], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    pairs = _pairs(dtype=dtype)
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(pairs)
    assert vq.transform(pairs).dtype == dtype
    assert vq.reconstruct(pairs).dtype == dtype


def test_identical_seeds_give_identical_results():
    pairs = _pairs()
    kwargs = dict(k=5, decoder="transformer", decoder_layers=1, decoder_heads=2, decoder_ff=16,
                  max_epochs=2, random_state=3)
    a, b = CrossLayerVQ(**kwargs).fit(pairs), CrossLayerVQ(**kwargs).fit(pairs)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.reconstruct(pairs), b.reconstruct(pairs))
    c = CrossLayerVQ(**{**kwargs, "random_state": 4}).fit(pairs)
    assert not np.array_equal(a.components_, c.components_)


def test_global_torch_rng_is_left_alone():
    state = torch.random.get_rng_state()
    CrossLayerVQ(k=4, random_state=0, **FAST).fit(_pairs())
    assert torch.equal(state, torch.random.get_rng_state())


def test_predictions_are_per_token_and_order_invariant():
    pairs = _pairs()
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(pairs)
    ids = vq.predict(pairs)
    perm = np.random.default_rng(0).permutation(pairs.n_docs)
    shuffled = pairs.take(perm)
    expected = np.concatenate([ids[pairs.offsets[i]:pairs.offsets[i + 1]] for i in perm])
    np.testing.assert_array_equal(vq.predict(shuffled), expected)


def test_sequence_reconstruction_does_not_depend_on_batch_neighbours():
    pairs = _pairs(n_docs=40)
    vq = CrossLayerVQ(k=4, top_k=2, decoder="transformer", decoder_layers=1, decoder_heads=2, decoder_ff=16,
                      max_epochs=1, batch_size=7, random_state=0).fit(pairs)
    full = vq.reconstruct(pairs)
    part = vq.reconstruct(pairs[5:9])
    np.testing.assert_allclose(part, full[pairs.offsets[5]:pairs.offsets[9]], rtol=1e-4, atol=1e-5)


def test_single_layer_vq_reads_one_layer():
    pairs = _pairs()
    vq = SingleLayerVQ(k=4, layer="high", random_state=0, **FAST).fit(pairs)
    assert vq.reconstruct(pairs).shape == pairs.high.shape
    assert vq.concept_space_ == "high"
    low = SingleLayerVQ(k=4, layer="low", random_state=0, **FAST).fit(pairs)
    assert low.concept_space_ == "low"


def test_single_and_cross_layer_vq_are_siblings():
    from clvqlearn.concepts.vq import _VQEstimator

    single, cross = SingleLayerVQ(), CrossLayerVQ()
    assert not isinstance(single, CrossLayerVQ) and not isinstance(cross, SingleLayerVQ)
    assert isinstance(single, _VQEstimator) and isinstance(cross, _VQEstimator)
    single_params, cross_params = single.get_params(), cross.get_params()
    shared = set(single_params) & set(cross_params)
    assert set(single_params) - shared == {"layer"}
    assert set(cross_params) - shared == {"n_low_features"}
    # same defaults, but the encoder: a layer regressed on itself needs no MLP branch
    assert (single_params["encoder"], cross_params["encoder"]) == ("linear", "mlp")
    same = shared - {"encoder"}
    assert {n: single_params[n] for n in same} == {n: cross_params[n] for n in same}
    assert set(SingleLayerVQ._parameter_constraints) == set(single_params)
    assert set(CrossLayerVQ._parameter_constraints) == set(cross_params)
    assert hasattr(CrossLayerVQ, "from_recipe") and not hasattr(SingleLayerVQ, "from_recipe")
    with pytest.raises(TypeError, match="n_low_features"):
        SingleLayerVQ(n_low_features=2)  # a single-layer model never splits an array


@pytest.mark.parametrize(("make", "width"), [
    (lambda: CrossLayerVQ(k=3, top_k=2, decoder="transformer", decoder_layers=1, decoder_heads=1, decoder_ff=8,
                          max_epochs=1, random_state=0), 5),
    (lambda: SingleLayerVQ(k=3, layer="low", random_state=0, **FAST), 3),
])
def test_the_output_width_comes_from_the_network_and_survives_save_load(make, width, tmp_path):
    rng = np.random.default_rng(0)
    low = rng.normal(size=(40, 3)).astype(np.float32)
    pairs = LayerPairs(low=low, high=rng.normal(size=(40, 5)).astype(np.float32), offsets=np.arange(0, 41, 4))
    vq = make().fit(pairs)
    assert vq.n_target_features_ == width == vq._network().out_features
    loaded = type(vq).load(vq.save(tmp_path / "vq"))
    assert loaded.n_target_features_ == width
    assert loaded.reconstruct(pairs).shape == (pairs.n_tokens, width)
    np.testing.assert_allclose(loaded.reconstruct(pairs), vq.reconstruct(pairs), rtol=1e-6)


def test_plain_arrays_are_split_in_halves():
    pairs = _pairs()
    X = np.asarray(pairs)
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(X)
    assert vq.components_.shape == (4, 4)
    assert vq.reconstruct(X).shape == (pairs.n_tokens, 4)


def test_partial_fit_streams_and_counts_epochs():
    pairs = _pairs(n_docs=40)
    vq = CrossLayerVQ(k=4, random_state=0, **FAST)
    vq.partial_fit(pairs[:20]).partial_fit(pairs[20:])
    assert vq.n_iter_ == 2
    assert vq.predict(pairs).shape == (pairs.n_tokens,)


def test_failed_partial_fit_leaves_the_state_unchanged():
    pairs = _pairs()
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(pairs)
    before = pickle.dumps(vq)
    bad = np.asarray(pairs)[:, :6]
    with pytest.raises(ValueError, match="features"):
        vq.partial_fit(bad)
    nan = np.asarray(pairs).copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vq.partial_fit(nan)
    assert pickle.dumps(vq) == before


# -------------------------------------------------------------- bad input
def test_bad_input_errors():
    pairs = _pairs(n_docs=3, length=2)
    with pytest.raises(ValueError, match="at least k token rows"):
        CrossLayerVQ(k=50, **FAST).fit(pairs)
    with pytest.raises(ValueError, match="top_k"):
        CrossLayerVQ(k=3, **{**FAST, "top_k": 5}).fit(_pairs())
    with pytest.raises(ValueError, match="temperature"):
        CrossLayerVQ(k=3, temperature=0, **FAST).fit(_pairs())
    with pytest.raises(NotFittedError):
        CrossLayerVQ(k=3).predict(np.asarray(pairs))
    with pytest.raises(ValueError, match="even number of columns"):
        CrossLayerVQ(k=3, **FAST).fit(np.ones((10, 5)))
    inf = np.asarray(_pairs()).copy()
    inf[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        CrossLayerVQ(k=3, **FAST).fit(inf)
    with pytest.raises(TypeError, match="LayerPairExtractor"):
        CrossLayerVQ(k=3, **FAST).fit(["a text"])
    with pytest.raises(ValueError, match="divisible"):
        CrossLayerVQ(k=3, top_k=2, decoder="transformer", decoder_heads=3, max_epochs=1).fit(_pairs())
    fitted = CrossLayerVQ(k=3, random_state=0, **FAST).fit(_pairs())
    with pytest.raises(ValueError, match="features"):
        fitted.transform(np.ones((4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match="3 columns"):
        fitted.inverse_transform(np.ones((2, 4)))


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        CrossLayerVQ(k=3, device="cuda", **FAST).fit(_pairs())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_matches_shapes_and_pickles_to_cpu():
    pairs = _pairs()
    vq = CrossLayerVQ(k=4, device="cuda", random_state=0, **FAST).fit(pairs)
    restored = pickle.loads(pickle.dumps(vq))
    restored.set_params(device="cpu")
    np.testing.assert_array_equal(restored.predict(pairs), vq.predict(pairs))


# ------------------------------------------------------------- persistence
def test_pickle_drops_the_torch_cache_and_round_trips():
    pairs = _pairs()
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(pairs)
    vq.predict(pairs)  # builds the cache
    blob = pickle.dumps(vq)
    assert b"_cache_network" not in blob
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.predict(pairs), vq.predict(pairs))
    np.testing.assert_allclose(restored.reconstruct(pairs), vq.reconstruct(pairs), rtol=1e-6)


def test_save_and_load_without_pickle(tmp_path):
    pairs = _pairs()
    vq = CrossLayerVQ(k=4, top_k=2, decoder="transformer", decoder_layers=1, decoder_heads=2, decoder_ff=16,
                      max_epochs=1, random_state=0).fit(pairs)
    vq.save(tmp_path / "vq")
    loaded = CrossLayerVQ.load(tmp_path / "vq")
    assert loaded.get_params() == vq.get_params()
    np.testing.assert_array_equal(loaded.components_, vq.components_)
    np.testing.assert_allclose(loaded.reconstruct(pairs), vq.reconstruct(pairs), rtol=1e-6)
    assert loaded.perplexity_ == vq.perplexity_
    loaded.partial_fit(pairs)  # a loaded model can keep learning
    with pytest.raises(ValueError, match="SingleLayerVQ.load|not a SingleLayerVQ"):
        SingleLayerVQ.load(tmp_path / "vq")
    with pytest.raises(FileNotFoundError):
        CrossLayerVQ.load(tmp_path / "missing")
    (tmp_path / "vq" / "config.json").write_text('{"format": "clvqlearn.estimator", "version": 99}')
    with pytest.raises(ValueError, match="newer|version"):
        CrossLayerVQ.load(tmp_path / "vq")


def test_a_format_1_save_loads_as_it_was_built(tmp_path):
    # format 1 had no decoder_skip / decoder_positions params and no n_target_features_
    import json

    pairs = _pairs()
    vq = CrossLayerVQ(k=4, top_k=2, decoder="transformer", decoder_skip=False, decoder_positions=0.0,
                      decoder_layers=1, decoder_heads=2, decoder_ff=16, max_epochs=1, random_state=0).fit(pairs)
    vq.save(tmp_path / "vq")
    config_file = tmp_path / "vq" / "config.json"
    config = json.loads(config_file.read_text())
    config["version"] = 1
    del config["params"]["decoder_skip"], config["params"]["decoder_positions"]
    del config["attributes"]["n_target_features_"]
    config_file.write_text(json.dumps(config))
    loaded = CrossLayerVQ.load(tmp_path / "vq")
    assert (loaded.decoder_skip, loaded.decoder_positions, loaded.n_target_features_) == (False, 0.0, 4)
    np.testing.assert_allclose(loaded.reconstruct(pairs), vq.reconstruct(pairs), rtol=1e-6)
    # a format-1 save without the output layer cannot say its width: a clear error, not StopIteration
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "vq" / "model.safetensors"))
    del tensors["dict.network_state_.decoder.out.bias"]
    save_file(tensors, str(tmp_path / "vq" / "model.safetensors"))
    config["attributes"]["network_state_"]["__dict_of_arrays__"].remove("decoder.out.bias")
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no decoder output layer"):
        CrossLayerVQ.load(tmp_path / "vq")


def test_clone_gives_an_unfitted_copy():
    vq = CrossLayerVQ(k=4, random_state=0, **FAST).fit(_pairs())
    fresh = clone(vq)
    assert not hasattr(fresh, "components_")
    assert fresh.get_params() == vq.get_params()


# ---------------------------------------------------------- real activations
@pytest.mark.slow
def test_end_to_end_on_real_minilm_activations(minilm_pairs):
    """On real MiniLM 4 -> 6 activations of AG News: held-out variance explained
    through the codes is close to the discrete k-means baseline (cluster
    layer 4, predict each cluster's mean layer-6 vector), the codebook does
    not collapse, and training lowers the loss."""
    from sklearn.cluster import KMeans

    from clvqlearn.metrics import fraction_of_variance_explained

    train, test = minilm_pairs[:160], minilm_pairs[160:]
    vq = CrossLayerVQ(k=50, top_k=1, decoder="mlp", decoder_hidden=512, max_epochs=15, batch_size=16,
                      learning_rate=2e-3, random_state=0).fit(train)
    km = KMeans(50, n_init=1, random_state=0).fit(train.low)
    means = np.stack([train.high[km.labels_ == c].mean(axis=0) for c in range(50)])
    kmeans_fve = fraction_of_variance_explained(test.high, means[km.predict(test.low)])
    score = vq.score(test)
    assert score > 0.05
    assert score > kmeans_fve - 0.05, (score, kmeans_fve)
    assert vq.n_active_codes_ > 25  # the codebook did not collapse
    assert vq.loss_curve_[-1] < vq.loss_curve_[0]
