"""CrossLayerVQ training: float32 assignment under bf16, streaming state, divergence, warm starts."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from clvqlearn import CrossLayerVQ, LayerPairs
from clvqlearn._torch_utils import seeded
from clvqlearn.nn.clvq import CLVQNetwork

FAST = dict(top_k=2, decoder="mlp", decoder_hidden=16, max_epochs=3, batch_size=8)


def _pairs(n_docs=40, length=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=n_docs)
    n = int(lengths.sum())
    low = rng.normal(size=(n, d)).astype(np.float32)
    high = (np.tanh(low @ rng.normal(size=(d, d))) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(lengths)]))


# ------------------------------------------------------------ bf16 assignment
@pytest.mark.slow
def test_bf16_autocast_assigns_the_float32_codes_on_real_activations(minilm_pairs):
    with seeded(0, torch.device("cpu")):
        network = CLVQNetwork(384, 384, 400, decoder="mlp", decoder_hidden=32).eval()
    low = torch.as_tensor(minilm_pairs.low)
    picks = torch.randperm(low.shape[0], generator=torch.Generator().manual_seed(0))[:400]
    network.codebook.initialize(network.encode(low[picks]))
    with torch.no_grad():
        fp32 = network.quantize(low)[1].indices
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = network.quantize(low)[1].indices
    agreement = float((fp32 == bf16).float().mean())
    assert agreement >= 0.999, f"bf16 and float32 nearest codes agree on {agreement:.4f} of tokens"


def test_codes_inside_reconstruct_equal_predict_after_bf16_training():
    pairs = _pairs(n_docs=60)
    vq = CrossLayerVQ(k=12, compute_dtype="bfloat16", random_state=0, **FAST).fit(pairs)
    network = vq._network()
    source = torch.as_tensor(pairs.low)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inside = network(source, torch.as_tensor(np.diff(pairs.offsets))).indices.numpy()
    np.testing.assert_array_equal(inside, vq.predict(pairs))


# ------------------------------------------------------------ streaming state
def test_partial_fit_keeps_adam_and_the_plateau_schedule_across_calls():
    pairs = _pairs()
    vq = CrossLayerVQ(k=6, random_state=0, **FAST)
    vq.partial_fit(pairs[:20])
    first = vq._train_state
    assert first.scheduler["last_epoch"] == 1
    vq.partial_fit(pairs[20:])
    state = vq._train_state
    assert state.scheduler["last_epoch"] == 2  # one plateau step per call, not a new scheduler
    adam_steps = {float(s["step"]) for s in state.optimizer["state"].values()}
    assert adam_steps == {float(vq.n_steps_)}  # Adam's moments carried over every step
    assert state.n_steps == vq.n_steps_


def test_failed_partial_fit_keeps_the_optimizer_state():
    pairs = _pairs()
    vq = CrossLayerVQ(k=6, random_state=0, **FAST).partial_fit(pairs[:20])
    before = vq._train_state
    steps = {float(s["step"]) for s in before.optimizer["state"].values()}
    bad = LayerPairs(low=pairs.low[:, :3], high=pairs.high[:, :3], offsets=pairs.offsets)
    with pytest.raises(ValueError):
        vq.partial_fit(bad)
    assert vq._train_state is not None
    assert {float(s["step"]) for s in vq._train_state.optimizer["state"].values()} == steps
    assert vq._train_state.scheduler == before.scheduler


# ------------------------------------------------------------ divergence
def test_diverging_training_restores_the_best_state_and_warns():
    pairs = _pairs(n_docs=80)
    stable = CrossLayerVQ(k=8, random_state=0, **{**FAST, "max_epochs": 1, "learning_rate": 1e-9}).fit(pairs)
    with pytest.warns(ConvergenceWarning, match="diverged.*learning_rate"):
        vq = CrossLayerVQ(k=8, random_state=0, **{**FAST, "max_epochs": 30, "learning_rate": 1e4}).fit(pairs)
    assert vq.diverged_
    assert np.isfinite(vq.score(pairs))
    # the restored state is no worse than the (barely trained) starting point
    assert vq.score(pairs) >= stable.score(pairs) - 0.05


def test_stable_training_does_not_warn():
    pairs = _pairs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        vq = CrossLayerVQ(k=6, random_state=0, **FAST).fit(pairs)
    assert not vq.diverged_


def test_warmup_ramps_the_learning_rate():
    from clvqlearn.concepts._training import _set_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    _set_warmup(optimizer, [1.0], step=0, warmup_steps=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    _set_warmup(optimizer, [1.0], step=3, warmup_steps=4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


# ------------------------------------------------------------ warm starts
def test_least_squares_read_out_starts_at_the_per_code_mean():
    """With k codes and a wide mlp, the read-out starts at the per-code means of the target."""
    from clvqlearn.evaluation.diagnostics import cluster_means
    from clvqlearn.metrics import fraction_of_variance_explained

    pairs = _pairs(n_docs=60)
    kwargs = dict(k=6, top_k=1, decoder="mlp", decoder_hidden=64, max_epochs=1, learning_rate=1e-9,
                  ema_decay=1.0, encoder_init="identity", random_state=0)
    warm = CrossLayerVQ(decoder_init="least-squares", **kwargs).fit(pairs)
    cold = CrossLayerVQ(decoder_init="random", **kwargs).fit(pairs)
    ids = warm.predict(pairs)
    best = fraction_of_variance_explained(pairs.high, cluster_means(ids, pairs.high, 6)[ids])
    assert warm.score(pairs) == pytest.approx(best, abs=0.01)
    assert cold.score(pairs) < best - 0.1


def _linear_pairs(n_docs=80, length=8, d=8, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=n_docs)
    n = int(lengths.sum())
    low = rng.normal(size=(n, d)).astype(np.float32)
    high = (low @ rng.normal(size=(d, d)) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(lengths)]))


@pytest.mark.parametrize("skip, reaches_ridge", [(True, True), (False, False)])
def test_skip_read_out_starts_the_bypass_decoder_at_the_ridge_map(skip, reaches_ridge):
    """With the skip, the bypass transformer's least-squares start reads the encoder output
    (the ridge map of a linear target); without it, the pre-LN blocks hide its scale."""
    from sklearn.linear_model import Ridge

    from clvqlearn.metrics import fraction_of_variance_explained

    pairs = _linear_pairs()
    ridge = fraction_of_variance_explained(pairs.high, Ridge(1e-3).fit(pairs.low, pairs.high).predict(pairs.low))
    vq = CrossLayerVQ(k=4, top_k=1, decoder="transformer", decoder_layers=1, decoder_heads=2, decoder_ff=16,
                      decoder_skip=skip, max_epochs=1, learning_rate=1e-9, warmup_steps=0, dropout=0.0,
                      random_state=0).fit(pairs)
    assert ridge > 0.95
    assert (vq.score(pairs) > 0.95 * ridge) is reaches_ridge


@pytest.mark.parametrize("decoder, expected", [("transformer", True), ("transformer-codes", False), ("mlp", False)])
def test_auto_skip_is_for_the_bypass_decoder_only(decoder, expected):
    vq = CrossLayerVQ(decoder=decoder)
    assert vq.decoder_skip == "auto"
    assert vq._decoder_skip() is expected
    assert CrossLayerVQ(decoder=decoder, decoder_skip=not expected)._decoder_skip() is (not expected)
    assert CrossLayerVQ.from_recipe("paper").decoder_skip is False


def test_skip_widens_the_read_out_by_the_decoder_input():
    from clvqlearn.nn.decoders import make_decoder

    widths = {kind: make_decoder(kind, 8, 3, n_layers=1, n_heads=2, ff=16, hidden=5, skip=True).out.in_features
              for kind in ("transformer", "transformer-codes", "mlp")}
    assert widths == {"transformer": 8 + 16, "transformer-codes": 8 + 8, "mlp": 5 + 8}
    q = torch.randn(2, 3, 8)
    dec = make_decoder("transformer", 8, 3, n_layers=1, n_heads=2, ff=16, skip=True).eval()
    mask = torch.zeros(2, 3, dtype=torch.bool)
    # the read-out sees the continuous input: changing it changes the output even with the same codes
    assert not torch.allclose(dec(q, q, mask), dec(q, q + 1.0, mask))


def test_regression_encoder_starts_at_the_ridge_prediction():
    from clvqlearn.nn.encoders import AdaptiveResidualEncoder

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(500, 3)))
    y = 2 * x @ torch.as_tensor(rng.normal(size=(3, 3))) + 1
    encoder = AdaptiveResidualEncoder(3).double()
    encoder.init_regression(x, y, ridge=0.0)
    torch.testing.assert_close(encoder.linear(x), y, atol=1e-6, rtol=1e-6)


def test_regression_encoder_handles_other_target_widths():
    from clvqlearn.nn.encoders import AdaptiveResidualEncoder

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(300, 4)), dtype=torch.float32)
    y = x[:, :2] * 3
    encoder = AdaptiveResidualEncoder(4)
    encoder.init_regression(x, y)
    out = encoder.linear(x).detach()
    assert out.shape == (300, 4)
    # the image is the 2-D subspace the target depends on
    assert torch.linalg.matrix_rank(out - out.mean(0), rtol=1e-4) == 2


def test_mlp_encoder_starts_as_the_rescaled_linear_encoder():
    from clvqlearn.nn.encoders import LinearEncoder, MLPEncoder

    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(400, 3)), dtype=torch.float32)
    y = torch.tanh(x @ torch.as_tensor(rng.normal(size=(3, 3)), dtype=torch.float32))
    linear, mlp = LinearEncoder(3), MLPEncoder(3, hidden=8)
    linear.init_regression(x, y)
    mlp.init_regression(x, y)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), linear(x))
        assert float(mlp(x).norm(dim=1).mean()) == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-4)
        mlp.out.bias.fill_(1.0)  # a fitted MLP branch: rescale brings the norm back
        mlp.rescale(x)
        assert float(mlp(x).norm(dim=1).mean()) == pytest.approx(float(x.norm(dim=1).mean()), rel=1e-4)


def _absolute_value_pairs(n_docs, seed):
    """high = |low|: no linear map of low predicts it (the best one is a constant)."""
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n_docs * 5, 2)).astype(np.float32)
    high = (np.abs(low) + 0.02 * rng.normal(size=low.shape)).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=np.arange(0, n_docs * 5 + 1, 5))


def test_mlp_encoder_groups_tokens_by_a_target_that_a_linear_encoder_cannot_predict():
    train, test = _absolute_value_pairs(400, 0), _absolute_value_pairs(100, 1)
    fast = dict(k=8, top_k=1, decoder="mlp", decoder_hidden=16, max_epochs=2, batch_size=32, encoder_hidden=32,
                random_state=0)
    mlp = CrossLayerVQ(**fast).fit(train)
    linear = CrossLayerVQ(encoder="linear", **fast).fit(train)
    assert mlp.get_params()["encoder"] == "mlp"  # the default
    # a linear map's bins along one direction catch part of |low| (0.31-0.42 over seeds 0-2); the MLP 0.79
    assert mlp.score(test) > 0.7, mlp.score(test)
    assert linear.score(test) < 0.5, linear.score(test)


def test_encoder_fit_takes_enough_steps_on_small_samples_and_bounded_epochs_on_large_ones():
    from clvqlearn.concepts.vq import _encoder_fit_config

    for n_tokens in (50, 400, 5_000, 100_000, 10_000_000):
        config = _encoder_fit_config(n_tokens)
        steps = config.max_epochs * math.ceil(n_tokens * 0.9 / config.batch_size)
        assert 4 <= config.max_epochs <= 100 and 32 <= config.batch_size <= 1024
        assert steps >= 300 or config.max_epochs == 100, (n_tokens, config)


# ------------------------------------------------------------ recipes and options
def test_paper_recipe_is_the_reference_configuration():
    vq = CrossLayerVQ.from_recipe("paper", k=50, random_state=1)
    params = vq.get_params()
    assert (params["decoder"], params["decoder_layers"], params["decoder_ff"], params["decoder_norm_first"]) == (
        "transformer", 6, 2048, False)
    assert (params["encoder"], params["encoder_init"], params["encoder_learning_rate"], params["init"]) == (
        "adaptive", "identity", None, "spherical")
    assert (params["batch_size"], params["learning_rate"], params["max_epochs"], params["k"]) == (128, 5e-3, 100, 50)
    assert CrossLayerVQ.from_recipe("paper-decoder-lm").learning_rate == 1e-3


def test_recipe_errors_name_what_was_expected():
    with pytest.raises(ValueError, match="recipe must be one of"):
        CrossLayerVQ.from_recipe("fast")
    with pytest.raises(TypeError, match="no parameter"):
        CrossLayerVQ.from_recipe("paper", n_codes=3)


def test_adaptive_fixed_encoder_can_hold_the_reference_mix_of_one_half():
    pairs = _pairs()
    vq = CrossLayerVQ(k=6, encoder="adaptive-fixed", alpha=float("inf"), random_state=0, **FAST).fit(pairs)
    assert vq.encoder_mix_ == pytest.approx(0.5)


def test_frozen_encoder_keeps_its_start_and_only_it_leaves_the_optimizer():
    from clvqlearn._torch_utils import parameter_groups

    pairs = _pairs(n_docs=60)
    kwargs = dict(k=6, random_state=0, **{**FAST, "learning_rate": 1e-2, "warmup_steps": 0})
    frozen = CrossLayerVQ(encoder_learning_rate=0.0, **kwargs).fit(pairs)
    start = CrossLayerVQ(encoder_learning_rate=0.0, **{**kwargs, "learning_rate": 1e-9}).fit(pairs)
    key = "encoder.linear.weight"
    np.testing.assert_array_equal(frozen.network_state_[key], start.network_state_[key])
    network = frozen._network()
    encoder_params = {id(p) for p in network.encoder.parameters()}
    for scales, expected in (({"encoder.": 0.0}, set()), ({"encoder.": 0.5}, encoder_params), ({}, encoder_params)):
        groups = parameter_groups(network, 1e-4, scales, learning_rate=1e-2)
        grouped = {id(p) for g in groups for p in g["params"]}
        assert grouped & encoder_params == expected
    halved = parameter_groups(network, 1e-4, {"encoder.": 0.5}, learning_rate=1e-2)
    assert {g["lr"] for g in halved if {id(p) for p in g["params"]} <= encoder_params} == {5e-3}


def test_linear_encoder_concept_direction_is_the_mean_source_vector():
    pairs = _pairs(n_docs=60)
    vq = CrossLayerVQ(k=5, random_state=0, **FAST).fit(pairs)
    ids = vq.predict(pairs)
    c = int(np.bincount(ids).argmax())
    mean = pairs.low[ids == c].mean(axis=0)
    np.testing.assert_allclose(vq.concept_directions(c)[0], mean / np.linalg.norm(mean), atol=1e-5)
    paper = CrossLayerVQ(k=5, encoder="adaptive", random_state=0, **FAST).fit(pairs)
    code = paper.components_[c]
    np.testing.assert_allclose(paper.concept_directions(c)[0], code / np.linalg.norm(code), atol=1e-6)


def test_a_batch_of_huge_tokens_is_not_taken_for_divergence():
    """LM activations hold a few large-norm tokens; one batch of them must not stop training."""
    rng = np.random.default_rng(0)
    low = rng.normal(size=(400, 4)).astype(np.float32)
    high = np.tanh(low @ rng.normal(size=(4, 4))).astype(np.float32)
    high[::37] *= 8
    pairs = LayerPairs(low=low, high=high, offsets=np.arange(401))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        vq = CrossLayerVQ(k=6, random_state=0, **FAST).fit(pairs)
    assert not vq.diverged_ and vq.n_iter_ == FAST["max_epochs"]


def test_divergence_drops_the_optimizer_state_of_the_diverged_steps():
    pairs = _pairs(n_docs=80)
    with pytest.warns(ConvergenceWarning):
        vq = CrossLayerVQ(k=8, random_state=0, **{**FAST, "max_epochs": 30, "learning_rate": 1e4}).partial_fit(pairs)
    assert vq._train_state.optimizer is None and vq._train_state.n_steps == 0


def test_a_partial_fit_update_is_kept_even_when_the_start_scored_better():
    """Without a held-out part, the start's eval-mode loss does not compete with the
    epoch's train-mode loss (sampling, dropout): the update of partial_fit stands."""
    pairs = _linear_pairs(n_docs=40)
    vq = CrossLayerVQ(k=4, top_k=4, temperature=10.0, decoder="mlp", decoder_hidden=16, dropout=0.5,
                      max_epochs=2, random_state=0).fit(pairs)
    before = {k: v.copy() for k, v in vq.network_state_.items()}
    vq.partial_fit(pairs)
    changed = [k for k in before if not np.array_equal(before[k], vq.network_state_[k])]
    assert "decoder.net.0.weight" in changed


def test_a_read_only_array_becomes_a_tensor_view_without_a_warning():
    from clvqlearn.concepts._training import as_float_tensor

    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = as_float_tensor(array)
    assert tensor.data_ptr() == array.ctypes.data  # a view, not a copy
    np.testing.assert_array_equal(tensor.numpy(), array)


# ------------------------------------------------------------ free memory
def test_free_memory_is_released_after_every_epoch_and_fit(monkeypatch):
    import clvqlearn.concepts._base as base_module
    import clvqlearn.concepts._training as training_module

    calls = []
    monkeypatch.setattr(training_module, "release_free_memory", lambda: calls.append("epoch"))
    monkeypatch.setattr(base_module, "release_free_memory", lambda: calls.append("fit"))
    # the linear encoder has no fit of its own, so only the main training's epochs count
    vq = CrossLayerVQ(k=6, random_state=0, encoder="linear", **{**FAST, "early_stopping_patience": 100}).fit(_pairs())
    # one per epoch of the main training, then one when fit returns
    assert calls == ["epoch"] * vq.n_iter_ + ["fit"]


@pytest.mark.parametrize("without", ["another platform", "no C library", "a C library without malloc_trim"])
def test_release_free_memory_does_nothing_without_glibc(monkeypatch, without):
    import ctypes
    import sys

    from clvqlearn import _torch_utils

    if sys.platform.startswith("linux") and _glibc():  # CI and the development machines
        assert _torch_utils._malloc_trim() is not None
    _torch_utils._malloc_trim.cache_clear()
    if without == "another platform":
        monkeypatch.setattr(sys, "platform", "darwin")
    elif without == "no C library":
        monkeypatch.setattr(ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
    else:
        monkeypatch.setattr(ctypes, "CDLL", lambda name: object())
        monkeypatch.setattr(sys, "platform", "linux")
    try:
        assert _torch_utils._malloc_trim() is None
        assert _torch_utils.release_free_memory() is False
    finally:
        _torch_utils._malloc_trim.cache_clear()


def _glibc() -> bool:
    import os

    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        return False
