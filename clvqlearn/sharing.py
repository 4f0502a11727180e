"""Sharing fitted concepts: load a saved folder by path, export to delphi and SAELens.

- :func:`load_concepts` loads any saved concept estimator from its folder
  (the class is read from the folder's ``config.json``); every saved folder
  also holds a model card, ``README.md`` (:func:`write_model_card`,
  :func:`read_model_card`).
- :func:`export_delphi_cache` writes the concepts' activations on a corpus
  as the latent cache of EleutherAI's ``delphi`` (automatic explanation and
  scoring of latents): one safetensors file per range of latents, with the
  ``locations`` (document, position, latent) and ``activations`` of every
  non-zero entry and the corpus' ``tokens``, plus the cache's
  ``config.json``, laid out as ``delphi.latents.LatentCache.save_splits``
  and ``save_config`` write them.
- :func:`export_saelens` writes a :class:`~clvqlearn.SparseAutoencoder` as
  a SAELens SAE folder (``sae_weights.safetensors`` with ``W_enc``,
  ``b_enc``, ``W_dec``, ``b_dec``, and ``cfg.json``), loadable with
  ``sae_lens.SAE.load_from_disk``; a cross-layer SAE is a SAELens
  ``Transcoder``.

docs/sharing.md describes the formats, the choices made and how each export
was checked against the reading code of its tool.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from ._folders import replace_folder, sibling_folder
from ._sidecar import read_sidecar
from .concepts import CrossLayerVQ, KMeansConcepts, SingleLayerVQ, SparseAutoencoder
from .concepts._base import ConceptEstimator
from .concepts._card import base_model_id, read_model_card
from .concepts._persistence import FORMAT_NAME, FORMAT_VERSION, write_model_card
from .data import LayerPairs

__all__ = ["export_delphi_cache", "export_saelens", "load_concepts", "read_model_card", "write_model_card"]

_CLASSES = {cls.__name__: cls for cls in (CrossLayerVQ, SingleLayerVQ, KMeansConcepts, SparseAutoencoder)}
#: delphi's cache keeps the entries whose absolute value exceeds this (``InMemoryCache.get_nonzeros``).
DELPHI_THRESHOLD = 1e-5
#: The files of a SAELens SAE folder (``sae_lens.constants``).
SAELENS_WEIGHTS_FILE, SAELENS_CONFIG_FILE = "sae_weights.safetensors", "cfg.json"
#: Rows of the (tokens x k) activation matrix computed at once, times k (bounds the memory of an export).
_CHUNK_ENTRIES = 1 << 23
_FOLDER_NAME = re.compile(r"[\w.+-]+\Z")


# ---------------------------------------------------------------------------- loading
def load_concepts(path):
    """Load a saved concept estimator of any class from its folder.

    Parameters
    ----------
    path : str or path-like
        A folder written by ``save`` (``CrossLayerVQ``, ``SingleLayerVQ``,
        ``KMeansConcepts`` or ``SparseAutoencoder``).

    Returns
    -------
    estimator
        The fitted estimator, checked as ``<Class>.load`` checks it.

    Raises
    ------
    FileNotFoundError
        When the folder holds no ``config.json``.
    ValueError
        When ``config.json`` describes no concept estimator this clvqlearn
        knows.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from clvqlearn import KMeansConcepts, load_concepts
    >>> X = np.random.default_rng(0).normal(size=(40, 3))
    >>> folder = KMeansConcepts(k=2, random_state=0).fit(X).save(tempfile.mkdtemp() + "/km")
    >>> type(load_concepts(folder)).__name__
    'KMeansConcepts'
    """
    folder = Path(path)
    config_file = folder / "config.json"
    config = read_sidecar(config_file, format_tag=FORMAT_NAME, max_version=FORMAT_VERSION, required={"class": str},
                          missing_hint=f"{folder} is not a folder written by a concept estimator's save().")
    cls = _CLASSES.get(config["class"])
    if cls is None:
        raise ValueError(f"{config_file} holds a {config['class']!r}, not one of {sorted(_CLASSES)}.")
    return cls.load(folder)


# ---------------------------------------------------------------------------- delphi
def export_delphi_cache(estimator, pairs, path, *, hookpoint=None, n_splits=None, top_k=None, example_ctx_len=32,
                        pad_token_id=None, model_name=None, dataset="", overwrite=False) -> Path:
    """Write the concepts' activations on a corpus as a delphi latent cache.

    delphi (EleutherAI's automatic interpretability pipeline) explains and
    scores latents from a cache of their activations.  This writes the
    folder ``path / hookpoint`` exactly as ``LatentCache.save_splits`` and
    ``save_config`` do, so ``delphi.latents.LatentDataset(path, ...,
    modules=[hookpoint])`` reads it:

    - ``{start}_{end}.safetensors`` for each of ``n_splits`` ranges of
      latent ids (the boundaries of ``torch.linspace(0, k, n_splits + 1)``,
      as delphi draws them), holding ``locations`` (n, 3): document,
      position in the document, latent id minus ``start`` (uint16, or
      uint32 when a value reaches 2**16, as delphi writes them),
      ``activations`` (n,) float32, and ``tokens`` (n_docs, seq_len)
      int64: each document's token ids from position 0, padded with
      ``pad_token_id`` to ``seq_len``, the longest document rounded up to a
      multiple of ``example_ctx_len``;
    - ``config.json``: delphi's ``CacheConfig`` fields and ``model_name``
      (the tokenizer delphi loads), plus a ``clvqlearn`` block.

    Which entries are written (delphi caches sparse, non-zero codes): for a
    :class:`~clvqlearn.SparseAutoencoder`, every latent above delphi's
    threshold (1e-5) with its value; for the VQ models and k-means, the
    token's assigned concept (``predict``) with its graded activation
    (``decision_function``: the softmax weight of that code), so each token
    has exactly one entry.  With ``top_k``, each token's ``top_k`` largest
    ``decision_function`` entries above the threshold instead.

    Parameters
    ----------
    estimator : fitted concept estimator
    pairs : LayerPairs
        The corpus, with ``token_ids`` (as the extractor gives them), from
        the model and layers the estimator was fitted on.
    path : str or path-like
        The cache folder (delphi's ``latents`` folder); the export goes to
        ``path / hookpoint``, created with its parents.
    hookpoint : str, optional
        The module name delphi files the latents under; default
        ``"layers.{i}"`` for a source layer that is the output of block
        ``i`` (sparsify's naming; ``"embeddings"`` for layer 0,
        ``"concepts"`` when neither the estimator nor the pairs record
        layers).
    n_splits : int, optional
        Files the latents are split over (1 <= n_splits <= k); default
        delphi's 5, or k when there are fewer latents.
    top_k : int, optional
        Entries per token: see above.
    example_ctx_len : int, default=32
        delphi's ``ConstructorConfig.example_ctx_len``: it cuts the token
        rows into windows of this length, so rows are padded to a multiple.
    pad_token_id : int, optional
        Token id of the padding; default the tokenizer's pad token (or its
        end-of-sequence token), loaded for ``pairs.model_name``.
    model_name : str, optional
        What delphi loads the tokenizer from; default the Hugging Face id
        of the pairs' model (or its name when it has none).
    dataset : str, default=""
        Written as ``dataset_repo`` in ``config.json`` (a description of
        the corpus; delphi reads the tokens from the cache files).
    overwrite : bool, default=False
        Replace an existing ``path / hookpoint`` folder.

    Returns
    -------
    pathlib.Path
        The folder ``path / hookpoint``.

    Raises
    ------
    TypeError
        When ``pairs`` is not LayerPairs.
    ValueError
        For pairs without token ids, a setting out of range, or pairs of
        another model or layer pair than the fitted ones.
    FileExistsError
        When ``path / hookpoint`` holds files and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from safetensors.numpy import load_file
    >>> from clvqlearn import KMeansConcepts, LayerPairs, export_delphi_cache
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(30, 4)), high=rng.normal(size=(30, 4)),
    ...                    offsets=[0, 10, 30], token_ids=rng.integers(5, 99, 30), layers=(1, 2),
    ...                    model_name="org/lm")
    >>> km = KMeansConcepts(k=4, random_state=0).fit(pairs)
    >>> folder = export_delphi_cache(km, pairs, tempfile.mkdtemp(), n_splits=2, pad_token_id=0)
    >>> folder.name, sorted(p.name for p in folder.iterdir())
    ('layers.1', ['0_1.safetensors', '2_3.safetensors', 'config.json'])
    >>> split = load_file(str(folder / "0_1.safetensors"))
    >>> split["tokens"].shape, split["locations"].shape[1]
    ((2, 32), 3)
    """
    if not isinstance(estimator, ConceptEstimator):
        raise TypeError("export_delphi_cache exports a fitted concept estimator (CrossLayerVQ, SingleLayerVQ, "
                        f"KMeansConcepts, SparseAutoencoder); got {type(estimator).__name__}.")
    estimator._check_fitted()
    _check_pairs(pairs)
    k = int(estimator.k)
    n_splits = min(5, k) if n_splits is None else _check_int("n_splits", n_splits, 1, k)
    top_k = None if top_k is None else _check_int("top_k", top_k, 1, k)
    example_ctx_len = _check_int("example_ctx_len", example_ctx_len, 1, None)
    hookpoint = _check_folder_name(hookpoint or _delphi_hookpoint(estimator, pairs))
    if pad_token_id is None:
        pad_token_id = _pad_token_id(pairs)
    pad_token_id = _check_int("pad_token_id", pad_token_id, 0, None)
    locations, activations = _sparse_codes(estimator, pairs, top_k)
    tokens = _token_rows(pairs, example_ctx_len, pad_token_id)
    config = _delphi_config(estimator, pairs, tokens, n_splits=n_splits, top_k=top_k, pad_token_id=pad_token_id,
                            model_name=model_name, dataset=dataset)
    target = Path(path) / hookpoint

    def write(stage: Path) -> None:
        _write_delphi_splits(stage, locations, activations, tokens, k, n_splits)
        (stage / "config.json").write_text(json.dumps(config, indent=4))

    return _write_folder(target, write, overwrite, "export_delphi_cache")


def _check_pairs(pairs) -> None:
    if not isinstance(pairs, LayerPairs):
        raise TypeError("pairs must be LayerPairs (the extractor's output, with token ids); got "
                        f"{type(pairs).__name__}.")
    if pairs.token_ids is None:
        raise ValueError("pairs hold no token_ids: delphi's cache stores the corpus' tokens. Extract the pairs with "
                         "LayerPairExtractor, which records them.")


def _check_int(name: str, value, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}; got {value!r}.")
    return int(value)


def _check_folder_name(name) -> str:
    if not isinstance(name, str) or not _FOLDER_NAME.match(name) or name in (".", ".."):
        raise ValueError(f"hookpoint must be a folder name (letters, digits, '.', '_', '+', '-'); got {name!r}.")
    return name


def _source_layer_index(estimator, layers) -> int | None:
    """The model layer the estimator reads (its source), from the (low, high) pair, or None."""
    if not layers:
        return None
    role = estimator._source_layer()
    return int(layers[0] if role == "low" else layers[1])


def _delphi_hookpoint(estimator, pairs: LayerPairs) -> str:
    """sparsify's name of the source layer; ``"concepts"`` when no layers are recorded."""
    layers = getattr(estimator, "pairs_layers_", None) or (pairs.layers if pairs.model_name else None)
    layer = _source_layer_index(estimator, layers)
    if layer is None:
        return "concepts"
    return "embeddings" if layer == 0 else f"layers.{layer - 1}"


def _pad_token_id(pairs: LayerPairs) -> int:
    if not pairs.model_name:
        raise ValueError("pad_token_id is needed: the pairs name no model whose tokenizer would give it "
                         "(pass pad_token_id=...).")
    from .models import load_tokenizer

    tokenizer = load_tokenizer(pairs.model_name)
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError(f"the tokenizer of {pairs.model_name!r} has no pad or end-of-sequence token; "
                     "pass pad_token_id=...")


def _document_blocks(offsets: np.ndarray, max_tokens: int):
    """Consecutive document ranges of about ``max_tokens`` tokens each (at least one document)."""
    n_docs, start = offsets.size - 1, 0
    while start < n_docs:
        stop = int(np.searchsorted(offsets, offsets[start] + max_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), n_docs)
        yield start, stop
        start = stop


def _sparse_codes(estimator, pairs: LayerPairs, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``locations`` (n, 3: document, position, latent) and ``activations`` (n,) of the entries written."""
    offsets = np.asarray(pairs.offsets, dtype=np.int64)
    sparse = isinstance(estimator, SparseAutoencoder)
    locations, activations = [], []
    for first, stop in _document_blocks(offsets, max(1, _CHUNK_ENTRIES // int(estimator.k))):
        block = pairs.take(np.arange(first, stop))
        graded = estimator.decision_function(block)
        if top_k is not None:
            keep = np.zeros(graded.shape, dtype=bool)
            order = np.argsort(-graded, axis=1, kind="stable")[:, :top_k]
            np.put_along_axis(keep, order, True, axis=1)
            keep &= np.abs(graded) > DELPHI_THRESHOLD
        elif sparse:
            keep = np.abs(graded) > DELPHI_THRESHOLD
        else:
            keep = np.zeros(graded.shape, dtype=bool)
            keep[np.arange(graded.shape[0]), estimator.predict(block)] = True
        rows, latents = np.nonzero(keep)  # row-major: token order, then latent ids, as delphi's torch.nonzero
        doc = np.searchsorted(block.offsets, rows, side="right") - 1
        locations.append(np.stack([doc + first, rows - block.offsets[doc], latents], axis=1))
        activations.append(graded[rows, latents].astype(np.float32))
    return np.concatenate(locations).astype(np.int64), np.concatenate(activations)


def _token_rows(pairs: LayerPairs, multiple: int, pad_token_id: int) -> np.ndarray:
    """(n_docs, seq_len) token ids, each document from position 0, padded to a multiple of ``multiple``."""
    offsets = np.asarray(pairs.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    seq_len = max(1, -(-int(lengths.max(initial=0)) // multiple)) * multiple
    tokens = np.full((lengths.size, seq_len), pad_token_id, dtype=np.int64)
    ids = np.asarray(pairs.token_ids, dtype=np.int64)
    doc = np.repeat(np.arange(lengths.size), lengths)
    tokens[doc, np.arange(ids.size) - offsets[doc]] = ids
    return tokens


def _split_bounds(k: int, n_splits: int) -> list[tuple[int, int]]:
    """delphi's ``LatentCache._generate_split_indices``: inclusive (start, end) latent ranges."""
    import torch

    boundaries = torch.linspace(0, k, steps=n_splits + 1).long().tolist()
    return [(start, stop - 1) for start, stop in zip(boundaries[:-1], boundaries[1:])]


def _write_delphi_splits(folder: Path, locations, activations, tokens, k: int, n_splits: int) -> None:
    from safetensors.numpy import save_file

    for start, end in _split_bounds(k, n_splits):
        mask = (locations[:, 2] >= start) & (locations[:, 2] <= end)
        split = locations[mask].copy()
        split[:, 2] -= start
        small = split.size == 0 or int(split.max()) < 2**16
        save_file({"locations": split.astype(np.uint16 if small else np.uint32),
                   "activations": np.ascontiguousarray(activations[mask]),
                   "tokens": tokens}, str(folder / f"{start}_{end}.safetensors"))


def _delphi_config(estimator, pairs, tokens, *, n_splits, top_k, pad_token_id, model_name, dataset) -> dict:
    """delphi's ``CacheConfig.to_dict()`` plus ``model_name`` (``LatentCache.save_config``), and our record."""
    model = getattr(estimator, "pairs_model_name_", None) or pairs.model_name or None
    name = model_name if model_name is not None else (base_model_id(model) or model or "")
    if not isinstance(name, str) or not isinstance(dataset, str):
        raise TypeError("model_name and dataset must be strings.")
    return {
        "dataset_repo": dataset,
        "dataset_split": "",
        "dataset_name": "",
        "dataset_column": "text",
        "batch_size": int(tokens.shape[0]),
        "cache_ctx_len": int(tokens.shape[1]),
        "n_tokens": int(pairs.n_tokens),
        "n_splits": n_splits,
        "model_name": name,
        "clvqlearn": {
            "estimator": type(estimator).__name__,
            "k": int(estimator.k),
            "model": model,
            "layers": [int(v) for v in pairs.layers] if pairs.model_name else None,
            "reads": "low -> high" if estimator._is_cross_layer() else estimator._source_layer(),
            "entries": (f"top {top_k} of decision_function" if top_k is not None else
                        "active latents" if isinstance(estimator, SparseAutoencoder) else
                        "the assigned concept (predict), valued by decision_function"),
            "pad_token_id": pad_token_id,
            "positions": "token index inside the document (special tokens the extractor dropped are not counted)",
        },
    }


def _write_folder(target: Path, write, overwrite: bool, what: str) -> Path:
    """Write a folder through a hidden sibling, then move it into place (refusing a non-empty one)."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder; {what} writes a folder. Choose another path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} already exists and is not empty; pass overwrite=True to replace it, or "
                              "choose another path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = sibling_folder(target, ".writing-")
    try:
        write(stage)
        replace_folder(stage, target)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------- SAELens
def export_saelens(sae, path, *, model_name=None, hook_name=None, hook_name_out=None, context_size=None,
                   prepend_bos=True, dataset_path="", overwrite=False) -> Path:
    """Write a fitted SparseAutoencoder as a SAELens SAE folder.

    The folder holds SAELens' two files, read by
    ``sae_lens.SAE.load_from_disk(path)``:

    - ``sae_weights.safetensors``: ``W_enc`` (d_in, d_sae) = the transposed
      ``encoder_weights_``, ``b_enc`` = ``encoder_bias_``, ``W_dec``
      (d_sae, d_out) = ``components_``, ``b_dec`` = ``decoder_bias_``, all
      float32;
    - ``cfg.json``: ``architecture`` (``"standard"`` for a ReLU SAE on one
      layer, ``"topk"`` with ``k`` = ``top_k`` for a TopK one,
      ``"transcoder"`` with ``d_out`` for the cross-layer SAE, which reads
      one layer and writes another), ``d_in``, ``d_sae``, ``dtype``,
      ``device``, ``apply_b_dec_to_input: false`` (clvqlearn's encoder does
      not subtract the decoder bias first), ``normalize_activations:
      "none"``, and ``metadata`` (``model_name``, ``hook_name``,
      ``hook_name_out`` for a transcoder, ``context_size``,
      ``prepend_bos``, ``dataset_path``); the keys SAELens 5 read at the
      top level are written too.

    SAELens' encode and decode then compute what ``transform`` and
    ``reconstruct`` do: ``act(x @ W_enc + b_enc)`` and
    ``latents @ W_dec + b_dec``, ``act`` being ReLU, or TopK then ReLU.

    Parameters
    ----------
    sae : SparseAutoencoder
        Fitted.  A cross-layer TopK SAE is refused: SAELens' transcoders
        are ReLU or JumpReLU only.
    path : str or path-like
        The SAE folder to write.
    model_name : str, optional
        The model as SAELens (TransformerLens) names it; default the
        Hugging Face id of the model the SAE was fitted on.
    hook_name : str, optional
        The TransformerLens hook of the layer the SAE reads; default, for
        layer ``i`` of clvqlearn's convention (the output of block
        ``i - 1``), ``"blocks.{i-1}.hook_resid_post"``
        (``"blocks.0.hook_resid_pre"`` for layer 0).  The last layer of a
        decoder is normed by Hugging Face; name its hook
        (``"ln_final.hook_normalized"``) yourself.
    hook_name_out : str, optional
        For the cross-layer SAE (a transcoder): the hook it writes, by the
        same rule from the higher layer.
    context_size : int, optional
        The token context the SAE was fitted on (the extractor's
        ``max_length``), recorded in the config.
    prepend_bos : bool, default=True
        Recorded: whether the model's inputs started with a BOS/[CLS] token.
    dataset_path : str, default=""
        Recorded: the training corpus.
    overwrite : bool, default=False
        Replace an existing non-empty folder.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    TypeError
        When ``sae`` is not a SparseAutoencoder.
    ValueError
        For a cross-layer TopK SAE, or when the model or layers are not
        recorded (fitted on a plain array) and not given.
    FileExistsError
        When ``path`` holds files and ``overwrite`` is False.

    Examples
    --------
    >>> import json, tempfile
    >>> import numpy as np
    >>> from safetensors.numpy import load_file
    >>> from clvqlearn import LayerPairs, SparseAutoencoder, export_saelens
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(64, 4)), high=rng.normal(size=(64, 6)),
    ...                    offsets=np.arange(0, 65, 8), layers=(4, 6), model_name="minilm")
    >>> sae = SparseAutoencoder(k=8, max_epochs=2, device="cpu", random_state=0).fit(pairs)
    >>> folder = export_saelens(sae, tempfile.mkdtemp() + "/sae")
    >>> cfg = json.loads((folder / "cfg.json").read_text())
    >>> cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["d_out"], cfg["metadata"]["hook_name_out"]
    ('transcoder', 4, 8, 6, 'blocks.5.hook_resid_post')
    >>> {name: w.shape for name, w in sorted(load_file(str(folder / "sae_weights.safetensors")).items())}
    {'W_dec': (8, 6), 'W_enc': (4, 8), 'b_dec': (6,), 'b_enc': (8,)}
    """
    if not isinstance(sae, SparseAutoencoder):
        raise TypeError(f"export_saelens exports a SparseAutoencoder; got {type(sae).__name__} (delphi's cache, "
                        "export_delphi_cache, takes any concept estimator).")
    sae._check_fitted()
    cross = sae._is_cross_layer()
    if cross and sae.activation == "topk":
        raise ValueError(
            "a cross-layer TopK SparseAutoencoder (layer=None, activation='topk') has no SAELens counterpart: "
            "SAELens' transcoders ('transcoder', 'skip_transcoder', 'jumprelu_transcoder') are ReLU or JumpReLU. "
            "Export a ReLU cross-layer SAE, or a TopK SAE on one layer (layer='low' or 'high')."
        )
    tensors = _saelens_weights(sae)
    config = _saelens_config(sae, cross, model_name=model_name, hook_name=hook_name, hook_name_out=hook_name_out,
                             context_size=context_size, prepend_bos=prepend_bos, dataset_path=dataset_path)

    def write(stage: Path) -> None:
        from safetensors.numpy import save_file

        save_file(tensors, str(stage / SAELENS_WEIGHTS_FILE))
        (stage / SAELENS_CONFIG_FILE).write_text(json.dumps(config, indent=1))

    return _write_folder(Path(path), write, overwrite, "export_saelens")


def _saelens_weights(sae) -> dict:
    def f32(array):
        return np.ascontiguousarray(np.asarray(array, dtype=np.float32))

    return {"W_enc": f32(sae.encoder_weights_.T), "b_enc": f32(sae.encoder_bias_),
            "W_dec": f32(sae.components_), "b_dec": f32(sae.decoder_bias_)}


def _transformer_lens_hook(layer: int) -> tuple[str, int]:
    """The TransformerLens residual hook of clvqlearn's layer ``layer``, and its block index."""
    if layer == 0:
        return "blocks.0.hook_resid_pre", 0
    return f"blocks.{layer - 1}.hook_resid_post", layer - 1


def _saelens_config(sae, cross: bool, *, model_name, hook_name, hook_name_out, context_size, prepend_bos,
                    dataset_path) -> dict:
    layers = getattr(sae, "pairs_layers_", None)
    model = getattr(sae, "pairs_model_name_", None)
    model_name = model_name if model_name is not None else (base_model_id(model) or model)
    if not model_name:
        raise ValueError("model_name is needed: the SAE was fitted on a plain array and records no model "
                         "(pass model_name=..., as TransformerLens or Hugging Face names it).")
    source = _source_layer_index(sae, layers)
    if (hook_name is None and source is None) or (cross and hook_name_out is None and not layers):
        raise ValueError("hook_name is needed" + (" (and hook_name_out, the layer it writes)" if cross else "")
                         + ": the SAE was fitted on a plain array and records no layers.")
    hook_layer = _transformer_lens_hook(source)[1] if source is not None else None
    hook_name = hook_name if hook_name is not None else _transformer_lens_hook(source)[0]
    if context_size is not None:
        context_size = _check_int("context_size", context_size, 1, None)
    d_sae, d_in = sae.encoder_weights_.shape
    metadata = {"model_name": model_name, "hook_name": hook_name, "hook_head_index": None,
                "prepend_bos": bool(prepend_bos), "context_size": context_size, "dataset_path": str(dataset_path),
                "sae_lens_version": "6.0.0", "sae_lens_training_version": None}
    architecture = "topk" if sae.activation == "topk" else "standard"
    config = {"architecture": architecture, "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
              "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
              "reshape_activations": "none"}
    if architecture == "topk":
        config.update(k=int(sae.top_k), rescale_acts_by_decoder_norm=False)
    if cross:
        out = hook_name_out if hook_name_out is not None else _transformer_lens_hook(int(layers[1]))[0]
        config.update(architecture="transcoder", d_out=int(sae.components_.shape[1]))
        metadata.update(hook_name_out=out, hook_head_index_out=None)
    config["metadata"] = metadata
    # the layout before SAELens 6 (flat keys): SAELens 5 reads it, and 6 converts it when ``metadata`` has no
    # ``sae_lens_version``; with one, as here, 6 reads ``metadata`` and the fields above and ignores these
    legacy = {"activation_fn": sae.activation, "activation_fn_kwargs": {"k": int(sae.top_k)} if architecture == "topk"
              else {}, "finetuning_scaling_factor": False, "hook_layer": hook_layer,
              "dataset_trust_remote_code": False, "neuronpedia_id": None}
    legacy.update({key: metadata[key] for key in ("model_name", "hook_name", "hook_head_index", "prepend_bos",
                                                   "context_size", "dataset_path", "sae_lens_training_version",
                                                   "hook_name_out") if key in metadata})
    config.update(legacy)
    config["clvqlearn"] = {"estimator": "SparseAutoencoder", "model": model, "layers": _plain_layers(layers),
                           "reads": "low -> high" if cross else sae._source_layer()}
    return config


def _plain_layers(layers):
    return None if layers is None else [int(v) for v in layers]
