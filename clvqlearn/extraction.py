"""`LayerPairExtractor`: texts in, token vectors of two (or more) layers out.

The extractor is a scikit-learn transformer.  ``fit`` checks the parameters
and the model's depth; ``transform`` runs the language model over the
documents and returns a :class:`~clvqlearn.LayerPairs` with one row
per (non-padding, optionally non-special, non-outlier) token; given more
than two layers, it returns a :class:`~clvqlearn.data.LayerStack` of them
all from the same forward pass, any two of which are a ``LayerPairs``.
Documents go in and token rows come out: that deviates from scikit-learn's
"same number of rows" contract on purpose.  Pipelines and cross-validation still work
because ``len(pairs)`` is the number of documents and CV splits documents.

How it is fast:

* texts are tokenised once, sorted by length and cut into length-bucketed
  batches padded to their longest member (the output is put back in the
  original document order); on the CPU a batch also holds at most 512
  padded tokens, which ran faster than 32 documents of any length;
* the forward runs under ``torch.inference_mode`` and STOPS after the
  higher layer: forward hooks capture the requested block outputs and the
  hook on block ``h`` raises a private exception, so blocks above ``h``
  never run (hooks are removed in ``finally``);
* activations are written straight into preallocated arrays (float16 if
  asked) or, above a size threshold, into ``np.memmap`` files;
* on the CPU in float32, the Linear layers of the blocks that run use
  oneDNN with pre-packed weights (:mod:`clvqlearn._onednn`): the same
  values up to rounding, about twice the rate of PyTorch's own kernel;
* bfloat16 autocast is available as an opt-in (``compute_dtype``);
* a model larger than one device loads through Accelerate
  (``device_map``, ``torch_dtype``): the inputs go to the device of its
  embeddings, every captured layer comes back to the CPU.

With ``store=folder`` the output goes to a sharded activation store instead:
:func:`extract_to_store` builds the store's :class:`~clvqlearn.data.StoreSpec`
from the extractor's settings and hands :func:`~clvqlearn.data.write_store`
one callback that extracts a shard's documents; the store itself knows
neither the model nor the extractor.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import uuid
import warnings
from dataclasses import dataclass
from importlib import metadata
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import dtype as _TorchDtype

from ._batching import length_batches, pad_right
from ._sklearn_compat import Interval, StrOptions
from ._torch_utils import resolve_device
from ._validation import check_texts as _check_texts
from .data import (
    LayerPairs,
    LayerStack,
    ShardedLayerPairs,
    ShardedLayerStack,
    StoreSpec,
    texts_fingerprint,
    write_store,
)
from .models import (
    PACKAGED_MODELS,
    capture_layers,
    get_embedding_module,
    load_model,
    load_tokenizer,
    num_layers,
    packed_blocks,
    resolve_layers,
    resolve_model,
)

__all__ = ["LayerPairExtractor", "extract_to_store"]

_FLOAT16_MAX = float(np.finfo(np.float16).max)
#: ``max_batch_tokens="auto"`` on the CPU (within 10 % of the fastest of 256-2048 for both packaged models
#: on two corpora: ``benchmarks/results/cpu_kernels/``)
_CPU_BATCH_TOKENS = 512
_TORCH_DTYPES = ("float32", "float16", "bfloat16")
_DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# from_pretrained arguments the extractor sets itself (model_kwargs may not)
_OWN_KWARGS = frozenset({"dtype", "torch_dtype", "device_map", "trust_remote_code", "local_files_only",
                         "output_loading_info"})


@dataclass
class _Encoded:
    """Tokenised documents (no padding)."""

    ids: list  # list of lists of int
    keep: list  # list of bool arrays: rows to keep (special-token rule applied)
    lengths: np.ndarray  # tokens per document (model input length)


@dataclass
class _Batch:
    """One batch's kept rows, document after document (batch order)."""

    docs: np.ndarray  # document indices, shape (B,)
    counts: np.ndarray  # rows kept per document, shape (B,)
    states: list  # one float32 array (R, d) per requested layer
    token_ids: np.ndarray  # (R,)
    positions: np.ndarray  # (R,)
    n_dropped: int  # outlier rows removed


class LayerPairExtractor(TransformerMixin, BaseEstimator):
    """Token hidden states of a lower and a higher layer (or of several layers) of a language model.

    Parameters
    ----------
    model : str, default="minilm"
        A packaged short name (``"minilm"``, ``"smollm2"``), a local
        directory saved with ``save_pretrained``, a ``.gguf`` file, or a
        Hugging Face id already in the local cache.  Always a string: the
        model is loaded lazily and never pickled.
    layers : tuple of int, default=(4, 6)
        ``(low, high)`` layer indices: 0 is the embeddings output, ``i`` the
        output of block ``i``, ``n_layers`` the model's last hidden state
        (for decoders with a final norm, after that norm, as Hugging Face's
        ``output_hidden_states`` reports it).  Negative indices count from
        the end (-1 is the last layer).  ``low <= high``.  Three or more
        strictly increasing indices, e.g. ``(2, 4, 6)``, are extracted in
        one forward pass into a :class:`~clvqlearn.data.LayerStack` (a store
        of all of them with ``store``); ``stack.pair(l, h)`` is the
        ``LayerPairs`` of any two, without copying.
    max_length : int, default=300
        Truncate documents to this many tokens (special tokens included),
        as in the paper.
    batch_size : int, default=32
        Documents per forward pass (at most).
    max_batch_tokens : int, "auto" or None, default="auto"
        Also cap a forward pass at this many padded tokens (documents times
        the longest one).  ``"auto"`` is 512 on the CPU, where small
        batches ran faster than 32 documents of any length
        (``benchmarks/bench_cpu_kernels.py``), and no cap on accelerators;
        None never caps.
    special_tokens : {"drop", "keep"}, default="drop"
        Drop the tokenizer's special tokens ([CLS], [SEP], BOS, ...) from the
        output rows, or keep them.
    outliers : {"drop", "keep"}, default="drop"
        Drop "massive activation" rows: tokens whose norm at the low or the
        high layer (at any of the layers, for more than two) exceeds
        ``outlier_threshold`` times the median token norm of that layer in
        the batch.  SmolLM2's first token (an attention
        sink) has a norm 30-150x the median from layer 12 to 28 (ordinary
        tokens stay below 2x), and would dominate any MSE-based concept
        model.  The number dropped is stored in ``pairs.extra["n_outliers"]``.
        MiniLM has no such rows (all tokens below 3x the median).
    outlier_threshold : float, default=10.0
        Multiple of the batch's median token norm above which a row is an
        outlier (see ``outliers``).
    storage_dtype : {"float32", "float16", "bfloat16"}, default="float32"
        dtype of the returned arrays (float16 halves memory; values beyond
        float16's range raise an error).  ``"bfloat16"`` (float32's range,
        half the bytes) needs ``store``: NumPy has no bfloat16, so the store
        keeps it on disk and reads it back as float32.
    compute_dtype : {"float32", "bfloat16"}, default="float32"
        ``"bfloat16"`` runs the forward under ``torch.autocast`` (opt-in:
        faster on hardware with bfloat16 units, such as AVX512-BF16 CPUs
        and Ampere GPUs, and less exact; the benchmark reports its error).
    onednn : bool, default=True
        On the CPU with float32 weights and compute, run the Linear layers
        of the blocks that run through oneDNN with weights packed once
        (:mod:`clvqlearn._onednn`), for the duration of each forward pass:
        the same float32 values up to rounding (per-row relative
        differences below 1e-4 in ``benchmarks/bench_extraction.py``), faster,
        and the packed weights' memory once more.  False uses PyTorch's
        default kernels.  Ignored elsewhere.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.  Results always
        come back to the CPU.  Leave it at ``"auto"`` when ``device_map`` is
        set.
    device_map : str or dict, optional
        Place the model with Hugging Face Accelerate instead of moving it to
        ``device``, for models larger than one device: ``"auto"``,
        ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, a device
        (``"cpu"``, ``"cuda:1"``) or a dict from module names to devices
        (``"disk"`` offloads to ``model_kwargs["offload_folder"]``).  Needs
        the ``accelerate`` package.  The inputs go to the device of the
        embeddings; every captured layer comes back to the CPU.
    torch_dtype : {"float32", "float16", "bfloat16"} or torch.dtype, optional
        dtype of the model's weights (default float32): ``"bfloat16"``
        halves the memory a model needs.  The returned vectors are float32
        (or ``storage_dtype``) whatever the weights are.
    model_kwargs : dict, optional
        More keyword arguments for ``from_pretrained``, e.g. ``max_memory``
        and ``offload_folder`` for ``device_map``.  The extractor sets
        ``dtype``, ``device_map``, ``trust_remote_code`` and
        ``local_files_only`` itself.
    memmap_dir : str or path-like, optional
        When set, outputs larger than ``memmap_threshold_mb`` are written to
        ``np.memmap`` files in a new sub-folder of this folder instead of RAM,
        so corpora larger than memory can be extracted.  The files belong to
        the returned LayerPairs; use ``pairs.save(path)`` to keep a copy.
    memmap_threshold_mb : float, default=1024
        Size (MiB of low + high activations) from which ``memmap_dir`` is
        used; 0 always uses it.
    store : str or path-like, optional
        Write the activations to a sharded store in this folder (see
        :mod:`clvqlearn.data.store_format`), shard by shard, and return it opened lazily
        (:meth:`LayerPairs.open <clvqlearn.LayerPairs.open>`).  A store
        left by an interrupted run with the same settings and texts is
        resumed (finished shards are skipped); one written with another
        model, layers, settings or texts is refused.  Under ``torchrun`` or
        ``accelerate launch`` each process writes the shards
        ``rank, rank + world_size, ...`` of the same store.
    shard_size : int, default=1000
        Documents per shard of ``store``.
    verbose : bool or int, default=False
        Show a tqdm progress bar.
    trust_remote_code : bool, default=False
        Allow code shipped with a checkpoint to run (off unless asked).

    Attributes
    ----------
    layers_ : tuple of int
        The non-negative layer indices.
    n_layers_ : int
        Number of transformer blocks of the model.
    hidden_size_ : int
        Width of the hidden states.
    is_decoder_ : bool
        Whether the model is a causal decoder.
    model_ : transformers.PreTrainedModel
        The bare model (lazy property, loaded on first use, not pickled).
    tokenizer_ : transformers.PreTrainedTokenizerBase
        Its tokenizer (lazy property, not pickled).

    See Also
    --------
    clvqlearn.LayerPairs : the output container.
    clvqlearn.models.resolve_layers : the layer index convention.

    Notes
    -----
    ``transform`` equals a bare Hugging Face forward with
    ``output_hidden_states=True`` on the same inputs (right padding), minus
    the padding rows, for any layer pair.

    Examples
    --------
    >>> from clvqlearn.extraction import LayerPairExtractor
    >>> ext = LayerPairExtractor("minilm", layers=(4, 6), max_length=32)
    >>> pairs = ext.fit_transform(["The cat sat.", "Stocks fell sharply on Monday."])
    >>> len(pairs), pairs.low.shape[1], pairs.layers
    (2, 384, (4, 6))
    >>> list(pairs.tokens[:3])
    ['the', 'cat', 'sat']

    Three layers in one pass, then any pair of them:

    >>> stack = LayerPairExtractor("minilm", layers=(2, 4, 6), max_length=32).fit_transform(
    ...     ["The cat sat.", "Stocks fell sharply on Monday."])
    >>> stack.layers, stack.pair(4, 6).layers, stack.pair(2, 6).high is stack.pair(4, 6).high
    ((2, 4, 6), (4, 6), True)
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "layers": ["array-like"],
        "max_length": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_batch_tokens": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), None],
        "special_tokens": [StrOptions({"drop", "keep"})],
        "outliers": [StrOptions({"drop", "keep"})],
        "outlier_threshold": [Interval(Real, 1, None, closed="neither")],
        "storage_dtype": [StrOptions({"float32", "float16", "bfloat16"})],
        "compute_dtype": [StrOptions({"float32", "bfloat16"})],
        "onednn": ["boolean"],
        "device": [str],
        "device_map": [None, str, dict],
        "torch_dtype": [None, StrOptions(set(_TORCH_DTYPES)), _TorchDtype],
        "model_kwargs": [None, dict],
        "memmap_dir": [None, str, os.PathLike],
        "memmap_threshold_mb": [Interval(Real, 0, None, closed="left")],
        "store": [None, str, os.PathLike],
        "shard_size": [Interval(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
        "trust_remote_code": ["boolean"],
    }

    def __init__(
        self,
        model="minilm",
        layers=(4, 6),
        *,
        max_length=300,
        batch_size=32,
        max_batch_tokens="auto",
        special_tokens="drop",
        outliers="drop",
        outlier_threshold=10.0,
        storage_dtype="float32",
        compute_dtype="float32",
        onednn=True,
        device="auto",
        device_map=None,
        torch_dtype=None,
        model_kwargs=None,
        memmap_dir=None,
        memmap_threshold_mb=1024,
        store=None,
        shard_size=1000,
        verbose=False,
        trust_remote_code=False,
    ):
        self.model = model
        self.layers = layers
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.special_tokens = special_tokens
        self.outliers = outliers
        self.outlier_threshold = outlier_threshold
        self.storage_dtype = storage_dtype
        self.compute_dtype = compute_dtype
        self.onednn = onednn
        self.device = device
        self.device_map = device_map
        self.torch_dtype = torch_dtype
        self.model_kwargs = model_kwargs
        self.memmap_dir = memmap_dir
        self.memmap_threshold_mb = memmap_threshold_mb
        self.store = store
        self.shard_size = shard_size
        self.verbose = verbose
        self.trust_remote_code = trust_remote_code

    # ------------------------------------------------------------------ sklearn glue
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []
        return tags

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        for key in [k for k in state if k.startswith("_cache_")]:
            del state[key]
        return state

    def __setstate__(self, state):
        # pickles made before device_map, torch_dtype and model_kwargs existed: their defaults
        state = {"device_map": None, "torch_dtype": None, "model_kwargs": None, **state}
        device = state.get("device")
        if isinstance(device, str) and device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                warnings.warn(
                    f"This LayerPairExtractor was saved with device={device!r} but CUDA is not "
                    "available here; it will run on the CPU (device='cpu').",
                    UserWarning,
                    stacklevel=2,
                )
                state = dict(state, device="cpu")
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)

    # ------------------------------------------------------------------ lazy model
    def _load_key(self):
        return (os.fspath(self.model), str(self.device), bool(self.trust_remote_code), repr(self.device_map),
                _dtype_name(self.torch_dtype), repr(sorted((self.model_kwargs or {}).items(), key=str)))

    @property
    def model_(self):
        """The bare HF model on the extractor's device, or placed by ``device_map`` (loaded on first use)."""
        key = self._load_key()
        if getattr(self, "_cache_model", None) is None or getattr(self, "_cache_model_key", None) != key:
            self._cache_model = load_model(
                os.fspath(self.model),
                device=resolve_device(self.device) if self.device_map is None else None,
                device_map=self.device_map,
                torch_dtype=_dtype_name(self.torch_dtype),
                model_kwargs=self.model_kwargs,
                trust_remote_code=self.trust_remote_code,
            )
            self._cache_model_key = key
        return self._cache_model

    @property
    def tokenizer_(self):
        """The model's tokenizer (loaded on first use)."""
        key = self._load_key()
        if getattr(self, "_cache_tokenizer", None) is None or getattr(self, "_cache_tokenizer_key", None) != key:
            self._cache_tokenizer = load_tokenizer(os.fspath(self.model), trust_remote_code=self.trust_remote_code)
            self._cache_tokenizer_key = key
        return self._cache_tokenizer

    # ------------------------------------------------------------------ fit / transform
    def fit(self, texts, y=None):
        """Check the parameters, load the model and check the layers.

        Parameters
        ----------
        texts : list of str
            Documents (only validated; nothing is learned from them).
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._check_settings()
        _check_texts(texts)
        layers = self.layers
        spec = resolve_model(os.fspath(self.model), trust_remote_code=self.trust_remote_code)
        self._check_max_length()  # needs the tokenizer only, not the model
        model = self.model_
        n = num_layers(model)
        resolved = resolve_layers(layers, n)
        if len(resolved) == 2 and resolved[0] > resolved[1]:
            raise ValueError(
                f"layers must be (low, high) with low <= high; got {tuple(layers)} = {resolved} "
                f"for a model with {n} layers."
            )
        if len(resolved) > 2 and any(b <= a for a, b in zip(resolved, resolved[1:])):
            raise ValueError(
                f"more than two layers must be strictly increasing; got {tuple(layers)} = {resolved} for a "
                f"model with {n} layers."
            )
        max_pos = getattr(model.config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and self.max_length > max_pos:
            raise ValueError(
                f"max_length={self.max_length} exceeds the model's maximum sequence length "
                f"({max_pos} positions); use max_length <= {max_pos}."
            )
        self.layers_ = resolved
        self.n_layers_ = n
        self.hidden_size_ = int(model.config.get_text_config().hidden_size)
        self.is_decoder_ = bool(spec.is_decoder)
        self._fitted_key = self._settings_key()
        return self

    # ------------------------------------------------------------------ early checks
    def _check_settings(self) -> None:
        """Checks that need neither the model nor the texts (run first by fit and transform)."""
        if not isinstance(self.model, (str, os.PathLike)):
            raise TypeError(
                "LayerPairExtractor(model=...) must be a string (a packaged short name such as "
                "'minilm' or 'smollm2', a local directory or a Hugging Face id), not "
                f"{type(self.model).__name__}: the extractor loads the model itself so that clone() "
                "and pickling stay cheap."
            )
        self._validate_params()
        layers = self.layers
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) < 2:
            raise ValueError(f"layers must be a (low, high) pair of ints, or three or more layer indices to "
                             f"extract in one pass; got {layers!r}.")
        if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in layers):
            raise TypeError(f"layers must be integers (layer indices); got {tuple(layers)!r}.")
        resolve_device(self.device)  # fail early on an unavailable device
        self._check_placement()
        if self.storage_dtype == "bfloat16" and self.store is None:
            raise ValueError(
                "storage_dtype='bfloat16' needs store=folder: NumPy arrays cannot hold bfloat16, a sharded "
                "store can (it reads back as float32). Use storage_dtype='float16' in memory."
            )

    def _check_placement(self) -> None:
        """``device_map``, ``torch_dtype`` and ``model_kwargs`` (before any loading)."""
        if self.device_map is not None:
            if self.device != "auto":
                raise ValueError(
                    f"device={self.device!r} and device_map={self.device_map!r} were both given: device_map "
                    "places the model itself. Pass one of them (leave device at 'auto' with device_map)."
                )
            if isinstance(self.device_map, str) and self.device_map not in _DEVICE_MAPS:
                try:
                    resolve_device(self.device_map)
                except ValueError as exc:
                    raise ValueError(
                        f"device_map must be one of {list(_DEVICE_MAPS)}, a device ('cpu', 'cuda:0') or a dict "
                        f"from module names to devices; got {self.device_map!r} ({exc})"
                    ) from None
            if importlib.util.find_spec("accelerate") is None:
                raise ImportError("device_map needs Hugging Face Accelerate: pip install accelerate (or "
                                  "pip install 'clvqlearn[models]').")
        own = sorted(_OWN_KWARGS.intersection(self.model_kwargs or {}))
        if own:
            raise ValueError(
                f"model_kwargs may not set {own}: the extractor passes them itself; use the extractor's "
                "torch_dtype, device_map and trust_remote_code parameters."
            )

    def _check_max_length(self) -> None:
        """``max_length`` must leave room for at least one text token after the special tokens."""
        n_special = int(self.tokenizer_.num_special_tokens_to_add(pair=False))
        minimum = n_special + 1
        if self.max_length < minimum:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for text: the tokenizer of "
                f"{os.fspath(self.model)!r} adds {n_special} special token(s) to every document, so "
                f"max_length must be at least {minimum}."
            )

    def _settings_key(self) -> tuple:
        return (os.fspath(self.model), tuple(int(v) for v in self.layers), bool(self.trust_remote_code))

    def _check_unchanged_since_fit(self) -> None:
        """Refuse a transform after set_params changed what fit resolved (model, layers)."""
        fitted = getattr(self, "_fitted_key", None)
        if fitted is not None and fitted != self._settings_key():
            raise ValueError(
                f"model, layers or trust_remote_code changed since fit (fitted with model={fitted[0]!r}, "
                f"layers={fitted[1]}; now model={os.fspath(self.model)!r}, layers={tuple(self.layers)}). "
                "Call fit again."
            )

    def transform(self, texts) -> LayerPairs | LayerStack:
        """Hidden states of ``layers`` for every kept token of ``texts``.

        Parameters
        ----------
        texts : list of str
            Documents.

        Returns
        -------
        LayerPairs or LayerStack
            Rows in document order, tokens in position order; padding never
            appears, special tokens and outliers as the parameters say.
            A :class:`~clvqlearn.data.LayerStack` for more than two layers.
            With ``store``, the store opened lazily
            (:class:`~clvqlearn.ShardedLayerPairs`, or
            :class:`~clvqlearn.data.ShardedLayerStack` for more layers).
        """
        check_is_fitted(self, "layers_")
        self._check_settings()
        self._check_unchanged_since_fit()
        texts = _check_texts(texts)
        self._check_max_length()
        if self.store is not None:
            return extract_to_store(self, texts)
        return self._transform_in_memory(texts)

    def _transform_in_memory(self, texts: list, *, allow_empty: bool = False) -> LayerPairs | LayerStack:
        """The extraction itself (checked texts in, LayerPairs or LayerStack out); a store calls it per shard."""
        layers = self.layers_
        unique = tuple(sorted(set(layers)))  # layers=(l, l) runs the hook once and stores it twice
        enc = self._encode(texts, self.special_tokens)
        upper = np.array([int(k.sum()) for k in enc.keep], dtype=np.int64)
        if not upper.sum() and not allow_empty:
            raise ValueError(
                f"no token rows to return: none of the {len(texts)} document(s) has a token left after "
                f"truncation to max_length={self.max_length} and special_tokens={self.special_tokens!r}. "
                "Raise max_length, or use special_tokens='keep'."
            )
        upper_off = np.concatenate([[0], np.cumsum(upper)])
        n_upper = int(upper_off[-1])
        dtype = np.dtype("float32" if self.storage_dtype == "bfloat16" else self.storage_dtype)
        names = ["low", "high"] if len(layers) == 2 else [f"layer_{v}" for v in layers]
        arrays, folder = self._allocate(n_upper, self.hidden_size_, dtype, names)
        token_ids = np.empty(n_upper, dtype=np.int64)
        positions = np.empty(n_upper, dtype=np.int64)
        counts = np.zeros(len(texts), dtype=np.int64)
        n_dropped = 0
        for batch in self._iter_batches(enc, unique, outliers=self.outliers):
            states = [batch.states[unique.index(v)] for v in layers]
            self._check_range(states)
            row = 0
            for doc, c in zip(batch.docs, batch.counts):
                start = upper_off[doc]
                for array, state in zip(arrays, states):
                    array[start : start + c] = state[row : row + c]
                token_ids[start : start + c] = batch.token_ids[row : row + c]
                positions[start : start + c] = batch.positions[row : row + c]
                counts[doc] = c
                row += c
            n_dropped += batch.n_dropped
        if np.any(counts != upper):
            *arrays, token_ids, positions = _compact([*arrays, token_ids, positions], upper_off, counts)
        else:
            arrays = [a[:n_upper] for a in arrays]
        for array in arrays:
            if isinstance(array, np.memmap):
                array.flush()
        tokens = np.asarray(self.tokenizer_.convert_ids_to_tokens(token_ids.tolist()), dtype=object)
        extra = {
            "n_outliers": int(n_dropped),
            "outliers": self.outliers,
            "outlier_threshold": float(self.outlier_threshold),
            "special_tokens": self.special_tokens,
            "max_length": int(self.max_length),
            "storage_dtype": self.storage_dtype,
            "compute_dtype": self.compute_dtype,
        }
        if folder is not None:
            extra["memmap_dir"] = str(folder)
        rows = dict(offsets=np.concatenate([[0], np.cumsum(counts)]), token_ids=token_ids, tokens=tokens,
                    positions=positions, model_name=os.fspath(self.model), extra=extra)
        if len(layers) == 2:
            return LayerPairs(low=arrays[0], high=arrays[1], layers=layers, **rows)
        return LayerStack(arrays=arrays, layers=layers, **rows)

    # ------------------------------------------------------------------ helpers for evaluation
    def hidden_states(self, texts, layers=None, *, special_tokens=None, outliers=None) -> list:
        """Per-document hidden states of any layers, with the same machinery.

        Parameters
        ----------
        texts : list of str
            Documents.
        layers : int or sequence of int, optional
            Layer indices (same convention as ``layers``; negative allowed).
            Default: the fitted layers.
        special_tokens : {"drop", "keep"}, optional
            Override the extractor's setting (e.g. "keep" to read [CLS]).
        outliers : {"drop", "keep"}, optional
            Override the extractor's setting.

        Returns
        -------
        list of ndarray
            One float32 array per document, shape ``(n_layers, n_rows, d)``,
            rows in position order.

        Examples
        --------
        >>> ext = LayerPairExtractor("minilm", layers=(4, 6), max_length=32).fit(["x"])
        >>> states = ext.hidden_states(["A short text."], layers=[0, -1], special_tokens="keep")
        >>> states[0].shape  # 2 layers, [CLS] a short text . [SEP]
        (2, 6, 384)
        """
        check_is_fitted(self, "layers_")
        texts = _check_texts(texts)
        wanted = self.layers_ if layers is None else resolve_layers(layers, self.n_layers_)
        special_tokens = self.special_tokens if special_tokens is None else special_tokens
        outliers = self.outliers if outliers is None else outliers
        if special_tokens not in ("drop", "keep"):
            raise ValueError(f"special_tokens must be 'drop' or 'keep'; got {special_tokens!r}")
        if outliers not in ("drop", "keep"):
            raise ValueError(f"outliers must be 'drop' or 'keep'; got {outliers!r}")
        unique = tuple(sorted(set(wanted)))
        where = [unique.index(v) for v in wanted]
        enc = self._encode(texts, special_tokens)
        out = [None] * len(texts)
        for batch in self._iter_batches(enc, unique, outliers=outliers):
            row = 0
            for doc, c in zip(batch.docs, batch.counts):
                out[doc] = np.stack([batch.states[w][row : row + c] for w in where])
                row += c
        return out

    def sentence_vectors(self, texts, layer=None, *, pooling="mean") -> np.ndarray:
        """One vector per document at one layer.

        Parameters
        ----------
        texts : list of str
            Documents.
        layer : int, optional
            Layer index (default: the highest fitted layer).
        pooling : {"mean", "first", "last"}, default="mean"
            ``"mean"`` averages the rows ``transform`` would return (special
            tokens and outliers as configured); ``"first"`` is the first input
            token with special tokens kept ([CLS] for BERT); ``"last"`` the last
            input token (the usual sentence vector of a decoder).

        Returns
        -------
        ndarray of shape (n_docs, hidden_size)
            float32.  A document with no kept rows under ``"mean"`` gets NaN.

        Examples
        --------
        >>> ext = LayerPairExtractor("minilm", max_length=32).fit(["x"])
        >>> ext.sentence_vectors(["One.", "Two words."], pooling="first").shape
        (2, 384)
        """
        if pooling not in ("mean", "first", "last"):
            raise ValueError(f"pooling must be 'mean', 'first' or 'last'; got {pooling!r}")
        check_is_fitted(self, "layers_")
        layer = self.layers_[-1] if layer is None else layer
        if pooling == "mean":
            states = self.hidden_states(texts, [layer])
        else:
            states = self.hidden_states(texts, [layer], special_tokens="keep", outliers="keep")
        out = np.full((len(states), self.hidden_size_), np.nan, dtype=np.float32)
        for i, s in enumerate(states):
            if s.shape[1]:
                out[i] = s[0].mean(axis=0) if pooling == "mean" else s[0][0 if pooling == "first" else -1]
        return out

    # ------------------------------------------------------------------ internals
    def _encode(self, texts: list, special_tokens: str) -> _Encoded:
        tok = self.tokenizer_
        enc = tok(
            texts,
            truncation=True,
            max_length=int(self.max_length),
            add_special_tokens=True,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids = enc["input_ids"]
        masks = enc["special_tokens_mask"]
        longest = max((len(i) for i in ids), default=0)
        if longest > int(self.max_length):
            raise ValueError(
                f"the tokenizer ignored max_length={self.max_length} (a document has {longest} tokens); "
                "raise max_length above the number of special tokens it adds."
            )
        if special_tokens == "drop":
            keep = [np.asarray(m, dtype=bool) == False for m in masks]  # noqa: E712
        else:
            keep = [np.ones(len(i), dtype=bool) for i in ids]
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        return _Encoded(ids=ids, keep=keep, lengths=lengths)

    def _pad_id(self) -> int:
        tok = self.tokenizer_
        for value in (tok.pad_token_id, tok.eos_token_id, getattr(self.model_.config, "pad_token_id", None)):
            if isinstance(value, int):
                return value
        return 0

    def _allocate(self, n_rows: int, d: int, dtype: np.dtype, names: list):
        """One ``(n_rows, d)`` array per layer, in RAM or (``memmap_dir``, large) as ``<name>.npy`` memmaps."""
        nbytes = len(names) * n_rows * d * dtype.itemsize
        use_memmap = self.memmap_dir is not None and nbytes >= float(self.memmap_threshold_mb) * 2**20
        use_memmap = use_memmap and self.store is None  # a store's shards stay in memory until written
        if not use_memmap:
            return [np.empty((n_rows, d), dtype=dtype) for _ in names], None
        folder = Path(self.memmap_dir).expanduser() / f"clvq-pairs-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True, exist_ok=False)
        arrays = [
            np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=(max(n_rows, 0), d))
            for name in names
        ]
        return arrays, folder

    def _check_range(self, states) -> None:
        if self.storage_dtype != "float16":
            return
        for s in states:
            if s.size and float(np.abs(s).max()) > _FLOAT16_MAX:
                raise ValueError(
                    "Hidden-state values exceed the float16 range (65504), so storage_dtype='float16' "
                    "would store inf. Use storage_dtype='float32' or outliers='drop'."
                )

    def _iter_batches(self, enc: _Encoded, layers: tuple, *, outliers: str):
        """Run the model batch by batch in length order; yield kept rows."""
        import torch

        model = self.model_
        device = _input_device(model)
        pad_id = self._pad_id()
        batches = length_batches(enc.lengths, self.batch_size, descending=True,
                                 max_tokens=self._batch_tokens(device))
        progress = None
        if self.verbose:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(enc.ids), desc=f"{self.model} layers {layers}", unit="doc")
        try:
            for docs in batches:
                lens = enc.lengths[docs]
                width = int(lens.max())
                if width == 0:  # only documents that tokenised to nothing
                    states = [np.zeros((0, self.hidden_size_), np.float32) for _ in layers]
                    yield _Batch(docs, np.zeros(len(docs), np.int64), states, np.zeros(0, np.int64),
                                 np.zeros(0, np.int64), 0)
                    continue
                input_ids, attention = pad_right([enc.ids[doc] for doc in docs], pad_id)
                keep, _ = pad_right([enc.keep[doc] for doc in docs], False, dtype=bool)
                captured = self._forward(
                    model,
                    torch.from_numpy(input_ids).to(device),
                    torch.from_numpy(attention).to(device),
                    layers,
                )
                keep_t = torch.from_numpy(keep).to(device)
                # under a device_map the layers may sit on other devices: gather each on the input's device
                rows = [captured[layer].to(device)[keep_t].float() for layer in layers]
                n_dropped = 0
                if outliers == "drop" and rows[0].shape[0] > 0:
                    bad = torch.zeros(rows[0].shape[0], dtype=torch.bool, device=device)
                    for r in rows:
                        norms = torch.linalg.vector_norm(r, dim=1)
                        bad |= norms > float(self.outlier_threshold) * norms.median()
                    n_dropped = int(bad.sum())
                    if n_dropped:
                        full_keep = keep.copy()
                        flat_idx = np.flatnonzero(keep.ravel())
                        full_keep.ravel()[flat_idx[bad.cpu().numpy()]] = False
                        keep = full_keep
                        rows = [r[~bad] for r in rows]
                states = [r.cpu().numpy() for r in rows]
                pos_grid = np.broadcast_to(np.arange(width), keep.shape)
                yield _Batch(
                    docs=docs,
                    counts=keep.sum(axis=1).astype(np.int64),
                    states=states,
                    token_ids=input_ids[keep],
                    positions=pos_grid[keep].astype(np.int64),
                    n_dropped=n_dropped,
                )
                if progress is not None:
                    progress.update(len(docs))
        finally:
            if progress is not None:
                progress.close()

    def _batch_tokens(self, device) -> int | None:
        """``max_batch_tokens`` resolved for ``device`` ("auto": 512 on the CPU, no cap elsewhere)."""
        if self.max_batch_tokens == "auto":
            return _CPU_BATCH_TOKENS if device.type == "cpu" else None
        return None if self.max_batch_tokens is None else int(self.max_batch_tokens)

    def _forward(self, model, input_ids, attention_mask, layers) -> dict:
        """One forward pass that stops after the highest requested layer.

        Returns ``{layer: tensor (B, L, d)}``.  Layer 0 is captured as the
        input of the first block, layer ``i`` as the output of block ``i``,
        and layer ``n_layers`` is the model's ``last_hidden_state`` (after
        the final norm where the model has one), matching Hugging Face's
        ``output_hidden_states``.
        """
        import torch

        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if _accepts(model, "use_cache"):
            kwargs["use_cache"] = False
        autocast = (
            torch.autocast(device_type=input_ids.device.type, dtype=torch.bfloat16)
            if self.compute_dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        packed = (packed_blocks(model, max(layers)) if self.onednn and self.compute_dtype == "float32"
                  else contextlib.nullcontext())
        with (capture_layers(model, layers, stop_after=max(layers)) as captured, torch.inference_mode(), autocast,
              packed):
            model(**kwargs)
        return captured


def _input_device(model):
    """Where a forward's inputs go: the device of the embeddings (the first device under a ``device_map``).

    A weight offloaded by Accelerate sits on the ``meta`` device; its
    inputs are then sent to the CPU, and Accelerate moves them on.
    """
    import torch

    weight = getattr(get_embedding_module(model), "weight", None)
    if weight is None:  # pragma: no cover - every HF embedding has a weight
        return next(model.parameters()).device
    hook = getattr(get_embedding_module(model), "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:  # Accelerate's hook: the device the module computes on
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def _dtype_name(value) -> str | None:
    """``torch_dtype`` as a name ("bfloat16"), or None."""
    if value is None or isinstance(value, str):
        return value
    return str(value).removeprefix("torch.")


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _compact(arrays, upper_off: np.ndarray, counts: np.ndarray):
    """Move each document's first ``counts[i]`` rows to the front, in place.

    Rows of document ``i`` were written into the slot
    ``upper_off[i]:upper_off[i + 1]``; dropped outliers leave gaps at the end
    of slots.  The destination of every row is at or before its source, so
    copying forward chunk by chunk is safe (also for memmaps).
    """
    slot = np.diff(upper_off)
    within = np.arange(int(upper_off[-1])) - np.repeat(upper_off[:-1], slot)  # row index inside its slot
    src = np.flatnonzero(within < np.repeat(counts, slot))
    n = int(counts.sum())
    chunk = 1 << 16
    out = []
    for a in arrays:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            a[start:stop] = a[src[start:stop]]
        if isinstance(a, np.memmap) or not a.flags.owndata:
            out.append(a[:n])
        else:
            try:
                a.resize((n,) + a.shape[1:], refcheck=False)
                out.append(a)
            except (ValueError, SystemError):  # pragma: no cover
                out.append(a[:n].copy())
    return out


# ----------------------------------------------------------------------------- into a store
_STORE_SETTINGS = ("max_length", "special_tokens", "outliers", "outlier_threshold", "compute_dtype", "batch_size")


def extract_to_store(extractor: LayerPairExtractor, texts: list) -> ShardedLayerPairs | ShardedLayerStack:
    """Run a fitted extractor over ``texts`` into ``extractor.store``, this rank's shards only.

    Called by ``LayerPairExtractor.transform`` when ``store`` is set (the
    texts are already checked).  ``batch_size`` is part of the settings:
    the batch composition decides the padding and the outlier median, so a
    resume with another batch size would mix values.

    Parameters
    ----------
    extractor : LayerPairExtractor
        Fitted, with ``store`` set.
    texts : list of str
        All documents of the store (every rank passes the same list).

    Returns
    -------
    ShardedLayerPairs or ShardedLayerStack
        The whole store, once every rank has finished its shards (a stack
        when the extractor has more than two layers: one store, one pass).
    """
    spec = _store_spec(extractor, texts)

    def make_shard(start, stop):
        return extractor._transform_in_memory(texts[start:stop], allow_empty=True)

    store = write_store(extractor.store, make_shard, spec, texts=texts)
    assert store is not None  # write_store waits by default, then opens the whole store
    return store


def _store_spec(extractor: LayerPairExtractor, texts: list) -> StoreSpec:
    """What the store of ``extractor`` over ``texts`` holds: model, revision, layers, widths, settings."""
    # numpy scalars (e.g. from a parameter grid) become plain Python values for the JSON manifest
    settings = {name: _plain(getattr(extractor, name)) for name in _STORE_SETTINGS}
    settings["outlier_threshold"] = float(settings["outlier_threshold"])
    settings["trust_remote_code"] = bool(extractor.trust_remote_code)
    weights = _dtype_name(extractor.torch_dtype)
    if weights not in (None, "float32"):  # recorded only when it changes the values: older stores still resume
        settings["torch_dtype"] = weights
    batch_tokens = extractor._batch_tokens(_input_device(extractor.model_))
    if batch_tokens is not None:  # the batches decide the padding and the outlier median, as batch_size does
        settings["max_batch_tokens"] = batch_tokens
    return StoreSpec(
        model_name=os.fspath(extractor.model), layers=extractor.layers_,
        widths=(extractor.hidden_size_,) * len(extractor.layers_), n_docs=len(texts),
        shard_size=int(extractor.shard_size), texts_sha256=texts_fingerprint(texts),
        dtype=extractor.storage_dtype, model_revision=_model_revision(extractor), settings=settings,
    )


def _plain(value):
    """A numpy scalar as the Python value JSON can hold; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _model_revision(extractor: LayerPairExtractor) -> str | None:
    """The model's commit hash (hub models) or its package's version (packaged models), if known."""
    commit = getattr(extractor.model_.config, "_commit_hash", None)
    if commit:
        return str(commit)
    entry = PACKAGED_MODELS.get(str(os.fspath(extractor.model)).strip().lower())
    if entry is None:
        return None
    for dist in metadata.packages_distributions().get(entry.module, []):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist}=={metadata.version(dist)}"
    return None
