"""Opening an activation store: the checks of its shards, and the lazy view.

:func:`open_store` (what :meth:`LayerPairs.open <clvqlearn.LayerPairs.open>`
calls) checks, without reading the shards, that every sidecar sits at its
own place, that the shards cover the documents contiguously, that no shard
lies beyond ``n_shards`` and that the manifest agrees with what the shards
recorded; a disagreement of the manifest is reported as a manifest problem,
a misplaced shard as one.  The first read of a shard hashes its bytes
against the sidecar (:meth:`ShardedLayerPairs.verify` hashes them all).
Stores of format version 1 (sidecars without checksum and ``"store"``) are
still read: their shards' safetensors headers provide the model name and
layers, and their bytes are not checked.

A store of two layers opens as :class:`ShardedLayerPairs`; a store of more
layers (format version 3) as :class:`ShardedLayerStack`, whose
:meth:`~ShardedLayerStack.pair` is the ``ShardedLayerPairs`` of any two of
its layers (the same shards, read and checked once).

:class:`ShardedLayerPairs` subclasses :class:`~clvqlearn.LayerPairs`, so
this module imports :mod:`clvqlearn.data.pairs`; ``pairs`` does not import
it back: importing this module registers :func:`open_store` as what
``LayerPairs.open`` calls (``clvqlearn.data`` imports it, so the
registration has happened whenever ``LayerPairs`` can be imported).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.utils import check_random_state

from .pairs import LayerPairs, _register_store_opener, rows_of_documents
from .stack import LayerStack, _pair_indices
from .store_columns import _Reader, _Shard, _ShardedArray
from .store_format import (
    _CODES,
    _NUMPY,
    _TENSORS,
    MANIFEST,
    _activation_names,
    _check_identity,
    _check_shard_files,
    _damaged,
    _manifest_error,
    _misplaced,
    _read_manifest,
    _read_shard_sidecar,
    _sidecar_name,
    shard_name,
)

__all__ = ["ShardedLayerPairs", "ShardedLayerStack", "TorchBatch", "open_store"]


def open_store(path, layers=None) -> ShardedLayerPairs | ShardedLayerStack:
    """Open a sharded activation store lazily (see :class:`ShardedLayerPairs`).

    Parameters
    ----------
    path : str or path-like
        The store folder.
    layers : tuple of (int, int), optional
        The (low, high) pair to view, two of the store's layers.  Default:
        the store's own pair for a store of two layers, every layer for a
        store of more.

    Returns
    -------
    ShardedLayerPairs or ShardedLayerStack
        A :class:`ShardedLayerPairs` for a pair; a :class:`ShardedLayerStack`
        for a store of more than two layers opened without ``layers``.

    Raises
    ------
    FileNotFoundError
        When the folder or its ``manifest.json`` is missing.
    ValueError
        When ``manifest.json`` is not valid JSON, describes something else
        or was written by a newer clvqlearn; when a shard is unfinished (an interrupted extraction: run it again
        to resume), truncated or otherwise damaged (the message names it),
        misplaced (renamed, swapped or copied), or when the manifest is
        damaged or disagrees with what its shards recorded (a manifest
        problem; the message names the field); when ``layers`` is not a
        pair of the store's layers.  These checks read only the
        sidecars and headers; a shard's bytes are checked against its
        SHA-256 when it is first read (or by :meth:`ShardedLayerPairs.verify`).

    Examples
    --------
    >>> from clvqlearn.data import open_store
    >>> open_store("/no/such/store")
    Traceback (most recent call last):
    ...
    FileNotFoundError: there is no activation store at /no/such/store: the folder does not exist.
    """
    folder = Path(path).expanduser()
    manifest = _read_manifest(folder)
    if layers is not None:
        _check_pair(folder, manifest, layers)
    _check_shard_files(folder, manifest)
    found, unfinished = {}, []
    for k in range(manifest["n_shards"]):
        try:
            found[k] = _find_shard(folder, k)
        except _Unfinished as exc:
            unfinished.append(exc.k)
    _check_identity(folder, manifest, {k: _recorded_identity(f) for k, f in found.items()})
    shards = []
    for k, shard in found.items():
        _check_documents(folder, k, shard, manifest)
        shards.append(_load_shard(folder, k, shard, manifest))
    if unfinished:
        listed = ", ".join(shard_name(k) for k in unfinished[:5]) + (" ..." if len(unfinished) > 5 else "")
        raise ValueError(
            f"the activation store {folder} is incomplete: {len(unfinished)} of {manifest['n_shards']} shards "
            f"are not finished ({listed}). An extraction was interrupted or is still running; run the same "
            "LayerPairExtractor(..., store=folder) again to resume it."
        )
    reader = _Reader(shards)
    if layers is None and len(manifest["layers"]) > 2:
        return ShardedLayerStack(folder, manifest, reader)
    return ShardedLayerPairs(folder, manifest, reader, layers=layers)


def _open_pairs(path, layers=None) -> ShardedLayerPairs:
    """What :meth:`LayerPairs.open` calls: a pair view, or an error that lists a multi-layer store's layers."""
    view = open_store(path, layers)
    if isinstance(view, ShardedLayerStack):
        low, high = view.layers[0], view.layers[-1]
        raise ValueError(
            f"the activation store {view.path} holds {len(view.layers)} layers {view.layers}, not one (low, high) "
            f"pair: choose two of them, LayerPairs.open(path, layers=({low}, {high})) or "
            f"open_store(path).pair({low}, {high})."
        )
    return view


def _check_pair(folder: Path, manifest: dict, layers) -> None:
    """``layers`` must be a (low, high) pair of the store's layers (ValueError naming them if not)."""
    stored = tuple(manifest["layers"])
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) != 2:
        raise ValueError(f"layers must be a (low, high) pair of the store's layers {stored}; got {layers!r}.")
    try:
        _pair_indices(stored, *layers)
    except ValueError as exc:
        raise ValueError(f"the activation store {folder} holds layers {stored}: {exc}") from None


class _Unfinished(Exception):
    """Shard ``k`` has no valid sidecar: an interrupted write."""

    def __init__(self, k):
        super().__init__(k)
        self.k = k


def _header_record(header: dict) -> dict:
    """What a shard's safetensors metadata recorded at write time (shard, documents, model, layers)."""
    try:
        record = json.loads(header.get("__metadata__", {}).get("clvqlearn", "{}"))
    except (AttributeError, TypeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_header(path: Path, size: int) -> tuple[dict, int]:
    """The safetensors header of ``path`` (8-byte length, JSON) and where the data starts."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _damaged(path, f"the file has {size} bytes, too few for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _damaged(path, f"the header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise _damaged(path, "its header is not valid JSON") from None
    return header, 8 + n


@dataclass
class _Found:
    """A finished shard as found on disk: its sidecar, its safetensors header, its size."""

    info: dict
    header: dict
    data_start: int
    size: int


def _find_shard(folder: Path, k: int) -> _Found:
    """Read shard ``k``'s sidecar and header; check that both are at their place and its size."""
    path = folder / shard_name(k)
    info = _read_shard_sidecar(folder, k)
    if info is None or not path.is_file():
        raise _Unfinished(k)
    if info.get("shard", k) != k:
        raise _misplaced(folder, _sidecar_name(k), k, info.get("shard"))
    size = path.stat().st_size
    header, data_start = _read_header(path, size)
    if _header_record(header).get("shard", k) != k:
        raise _misplaced(folder, path.name, k, _header_record(header).get("shard"))
    if size != info.get("bytes"):
        raise _damaged(path, f"it has {size} bytes on disk but {info.get('bytes')} were written "
                             "(truncated or changed after it was finished)")
    return _Found(info, header, data_start, size)


def _recorded_identity(found: _Found) -> dict:
    """The store fields a shard recorded: its sidecar's ``store``, else (version 1) its header's model and layers."""
    meta = _header_record(found.header)
    record = {key: meta[key] for key in ("model_name", "layers") if key in meta}
    if isinstance(found.info.get("store"), dict):
        record.update(found.info["store"])
    return record


def _check_documents(folder: Path, k: int, found: _Found, manifest: dict) -> None:
    """The sidecar's documents and tokens must be those the manifest gives shard ``k``."""
    start, stop = k * manifest["shard_size"], min((k + 1) * manifest["shard_size"], manifest["n_docs"])
    if (found.info.get("doc_start"), found.info.get("doc_stop")) != (start, stop):
        raise _manifest_error(
            folder / MANIFEST,
            f"{_sidecar_name(k)} records documents {found.info.get('doc_start')} to {found.info.get('doc_stop')} "
            f"(exclusive), but n_docs={manifest['n_docs']} and shard_size={manifest['shard_size']} give shard {k} "
            f"documents {start} to {stop}",
        )
    summary = manifest.get("shards")
    if summary is not None:
        entry = summary[k] if isinstance(summary, list) and len(summary) == manifest["n_shards"] else None
        n_tokens = entry.get("n_tokens") if isinstance(entry, dict) else None
        if n_tokens != found.info.get("n_tokens"):
            raise _manifest_error(folder / MANIFEST, f"its 'shards' summary gives shard {k} {n_tokens!r} tokens, "
                                                     f"its sidecar {found.info.get('n_tokens')!r}")


def _load_shard(folder: Path, k: int, found: _Found, spec: dict) -> _Shard:
    """Check the tensors of shard ``k`` against its sidecar and the manifest."""
    path, info, header, data_start, size = (folder / shard_name(k), found.info, found.header, found.data_start,
                                            found.size)
    start, stop = k * spec["shard_size"], min((k + 1) * spec["shard_size"], spec["n_docs"])
    n_tok, layout = int(info.get("n_tokens", -1)), {}
    activations = _activation_names(spec["layers"], spec.get("format_version", 0))
    expected = {name: (n_tok, width) for name, width in zip(activations, spec["widths"])}
    expected.update({"offsets": (stop - start + 1,), "token_ids": (n_tok,), "positions": (n_tok,)})
    tensors = dict.fromkeys(activations, (("F32", "F16", "BF16"), 2)) | _TENSORS
    for name, (codes, ndim) in tensors.items():
        entry = header.get(name)
        if not isinstance(entry, dict) or entry.get("dtype") not in codes or len(entry.get("shape", ())) != ndim:
            raise _damaged(path, f"the tensor {name!r} is missing or has the wrong type")
        shape, (a, b) = tuple(entry["shape"]), entry["data_offsets"]
        dtype = np.dtype(_NUMPY[entry["dtype"]])
        if name in expected and shape != expected[name]:
            raise _damaged(path, f"the tensor {name!r} has shape {shape}, expected {expected[name]}")
        if b - a != math.prod(shape) * dtype.itemsize or data_start + b > size:
            raise _damaged(path, f"the tensor {name!r} runs past the end of the file")
        layout[name] = (dtype, shape, data_start + a)
    code = header[activations[0]]["dtype"]
    if any(header[name]["dtype"] != _CODES[spec["dtype"]] for name in activations):
        codes = sorted({header[name]["dtype"] for name in activations})
        raise _damaged(path, f"its activations are {'/'.join(codes)}, but the store holds {spec['dtype']}")
    sha = info.get("sha256")
    return _Shard(path, start, stop - start, n_tok, layout, code, sha if isinstance(sha, str) else None)


class TorchBatch(NamedTuple):
    """Documents of a store as torch tensors on one device."""

    low: object  # torch.Tensor (n_tokens, d_low)
    high: object  # torch.Tensor (n_tokens, d_high)
    offsets: object  # torch.Tensor (n_docs + 1,), int64
    docs: np.ndarray  # the store's document numbers, in batch order


class _StoreView:
    """What the lazy views of a store share: its shards, their offsets and token columns, the readers of documents.

    Set up by :meth:`_open_view`; the subclasses add the activation columns.
    """

    path: Path
    manifest: dict
    shard_offsets: np.ndarray

    def _open_view(self, path, manifest: dict, reader: _Reader, offsets: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._reader = reader
        self.token_ids = _ShardedArray(reader, "token_ids", None, np.int64)
        self.positions = _ShardedArray(reader, "positions", None, np.int64)
        self.tokens = _ShardedArray(reader, "tokens", None, object)
        self.offsets = _store_offsets(reader) if offsets is None else offsets
        self.shard_offsets = np.array([s.doc_start for s in reader.shards] + [manifest["n_docs"]], dtype=np.int64)
        self.model_name = str(manifest["model_name"])
        self.extra = dict(manifest.get("settings") or {}, storage_dtype=manifest["dtype"], store=str(self.path),
                          model_revision=manifest.get("model_revision"))

    def _column(self, layer: int) -> _ShardedArray:
        """The lazy activation column of one of the store's layers."""
        stored = [int(v) for v in self.manifest["layers"]]
        names = _activation_names(stored, self.manifest.get("format_version", 0))
        where = stored.index(int(layer))
        dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32
        return _ShardedArray(self._reader, names[where], int(self.manifest["widths"][where]), dtype)

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self._reader.shards)

    def verify(self):
        """Check the bytes of every shard against the SHA-256 its sidecar recorded.

        Reading a shard the first time does the same for that shard; this
        method checks the whole store at once (it reads every byte, every
        layer of a store of several layers).

        Returns
        -------
        ShardedLayerPairs or ShardedLayerStack
            ``self``.

        Raises
        ------
        ValueError
            When a shard was changed on disk after it was written (the
            message names it).
        """
        for i in range(self.n_shards):
            self._reader.verify(i)
        return self

    def to_memory(self):
        """Read the whole store into memory (a :class:`~clvqlearn.LayerPairs` or a ``LayerStack``)."""
        return self.take(np.arange(self.n_docs))  # type: ignore[attr-defined]

    def iter_shards(self):
        """Yield every shard in memory (LayerPairs, or LayerStack for a stack), in document order.

        ``extra["doc_start"]`` is the store's number of the shard's first
        document.
        """
        for i, shard in enumerate(self._reader.shards):
            part = self[int(self.shard_offsets[i]) : int(self.shard_offsets[i + 1])]  # type: ignore[index]
            part.extra.update(shard=i, doc_start=shard.doc_start)
            yield part

    def _batches(self, batch_docs, shuffle, random_state):
        n_docs = int(self.offsets.size - 1)
        if not isinstance(batch_docs, (int, np.integer)) or isinstance(batch_docs, bool) or batch_docs < 1:
            raise ValueError(f"batch_docs must be a positive integer; got {batch_docs!r}.")
        order = np.arange(n_docs)
        if shuffle:
            order = check_random_state(random_state).permutation(n_docs)
        for i in range(0, n_docs, int(batch_docs)):
            yield order[i : i + int(batch_docs)]

    def iter_documents(self, batch_docs: int = 256, *, shuffle: bool = False, random_state=None):
        """Yield in-memory LayerPairs (or LayerStack) of ``batch_docs`` documents each.

        Parameters
        ----------
        batch_docs : int, default=256
            Documents per batch (the last batch may hold fewer).
        shuffle : bool, default=False
            Visit the documents in a random order (drawn from
            ``random_state``) instead of store order.
        random_state : int, RandomState instance or None
            Seed of the shuffle.

        Yields
        ------
        LayerPairs or LayerStack
            ``extra["docs"]`` holds the store's document numbers.
        """
        for docs in self._batches(batch_docs, shuffle, random_state):
            part = self.take(docs)  # type: ignore[attr-defined]
            part.extra["docs"] = docs
            yield part


def _store_offsets(reader: _Reader) -> np.ndarray:
    """The store's document offsets, from each shard's own (checked to cover its rows)."""
    offsets = [np.zeros(1, dtype=np.int64)]
    for i, (shard, row_start) in enumerate(zip(reader.shards, reader.row_starts)):
        local = np.asarray(reader.tensor(i, "offsets"))
        if local[0] != 0 or local[-1] != shard.n_tokens or np.any(np.diff(local) < 0):
            raise _damaged(shard.path, "its document offsets do not cover its token rows")
        offsets.append(local[1:] + row_start)
    return np.concatenate(offsets)


class ShardedLayerPairs(_StoreView, LayerPairs):
    """A sharded activation store, read lazily through memory maps.

    Two layers of the store (the store's own pair, or any two layers of a
    store of more, see :class:`ShardedLayerStack`).  Behaves like
    :class:`~clvqlearn.LayerPairs`: ``len`` is the number of
    documents, ``pairs[i:j]`` and ``pairs.take(docs)`` return in-memory
    LayerPairs, ``np.asarray(pairs)`` is the ``[low | high]`` matrix (read
    into memory), and ``low``, ``high``, ``token_ids``, ``positions`` and
    ``tokens`` are lazy columns that read only the rows asked for.  A store
    written in bfloat16 reads as float32.  Create one with
    :meth:`LayerPairs.open <clvqlearn.LayerPairs.open>` (or
    :func:`open_store`); estimators accept it like any LayerPairs (their
    ``fit`` reads it into memory).

    Attributes
    ----------
    path : pathlib.Path
        The store folder.
    manifest : dict
        The parsed ``manifest.json``.
    n_shards : int
        Number of shards.
    shard_offsets : ndarray of shape (n_shards + 1,)
        First document of every shard (and ``n_docs``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.data import StoreSpec, write_store
    >>> rng = np.random.default_rng(0)
    >>> def make_shard(start, stop):
    ...     n = 3 * (stop - start)
    ...     return LayerPairs(low=rng.normal(size=(n, 4)), high=rng.normal(size=(n, 2)),
    ...                       offsets=np.arange(0, n + 1, 3), layers=(0, 1), model_name="toy")
    >>> spec = StoreSpec("toy", (0, 1), (4, 2), n_docs=7, shard_size=3, texts_sha256="0" * 64)
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_store(folder, make_shard, spec)
    >>> pairs = LayerPairs.open(folder)
    >>> len(pairs), pairs.n_tokens, pairs.n_shards, np.asarray(pairs).shape
    (7, 21, 3, (21, 6))
    >>> pairs[2:5].n_tokens, [p.n_docs for p in pairs.iter_shards()]
    (9, [3, 3, 1])
    """

    def __init__(self, path, manifest: dict, shards, layers=None, offsets=None):  # noqa: D107 - built by open_store
        reader = shards if isinstance(shards, _Reader) else _Reader(list(shards))
        self._open_view(path, manifest, reader, offsets)
        low, high = manifest["layers"] if layers is None else layers
        self.low = self._column(low)
        self.high = self._column(high)
        self.layers = (int(low), int(high))

    def __repr__(self) -> str:
        return (f"ShardedLayerPairs({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, "
                f"n_shards={self.n_shards}, layers={self.layers}, model_name={self.model_name!r})")

    def __reduce__(self):
        return (open_store, (str(self.path), self.layers))

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __array__(self, dtype=None, copy=None):
        width, starts = self.low.shape[1], self._reader.row_starts
        shape = (self.n_tokens, width + self.high.shape[1])  # one row per token (``shape`` counts documents)
        out = np.empty(shape, dtype=self.low.dtype if dtype is None else dtype)
        for i in range(self.n_shards):  # shard by shard into one matrix: no temporary [low], [high] copies
            rows = slice(int(starts[i]), int(starts[i + 1]))
            out[rows, :width] = self.low._part(i, slice(None))
            out[rows, width:] = self.high._part(i, slice(None))
        return out

    def to_frame(self, which: str = "both"):
        """A pandas DataFrame of the whole store (read into memory); see :meth:`LayerPairs.to_frame`."""
        return self.to_memory().to_frame(which)

    def iter_torch(self, device="cpu", batch_docs: int = 256, *, shuffle: bool = False, random_state=None,
                   dtype=None, pin_memory: bool | None = None):
        """Yield batches of documents as torch tensors on ``device``.

        On a CUDA device the host tensors are put in page-locked (pinned)
        memory and copied with ``non_blocking=True``, so the copy of one
        batch overlaps the work queued on the previous one; a bfloat16 store
        is sent as bfloat16 (half the bytes) and converted on the device.

        Parameters
        ----------
        device : str or torch.device, default="cpu"
            Where the tensors go.
        batch_docs, shuffle, random_state
            As in :meth:`iter_documents`.
        dtype : torch.dtype, optional
            dtype of ``low`` and ``high`` on the device (default float32).
        pin_memory : bool, optional
            Pin the host copy; default: when ``device`` is CUDA.

        Yields
        ------
        TorchBatch
            ``low``, ``high``, ``offsets`` (tensors on ``device``) and
            ``docs`` (the store's document numbers).

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> from clvqlearn import LayerPairs
        >>> from clvqlearn.data import StoreSpec, write_store
        >>> def make_shard(start, stop):
        ...     n = stop - start
        ...     return LayerPairs(low=np.ones((n, 2)), high=np.ones((n, 2)), offsets=np.arange(n + 1),
        ...                       layers=(0, 1), model_name="toy")
        >>> spec = StoreSpec("toy", (0, 1), (2, 2), n_docs=5, shard_size=2, texts_sha256="0" * 64)
        >>> store = write_store(tempfile.mkdtemp(), make_shard, spec)
        >>> [tuple(b.low.shape) for b in store.iter_torch("cpu", batch_docs=3)]
        [(3, 2), (2, 2)]
        """
        import torch

        device = torch.device(device)
        dtype = torch.float32 if dtype is None else dtype
        pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
        for docs in self._batches(batch_docs, shuffle, random_state):
            starts, stops = self.offsets[docs], self.offsets[docs + 1]
            rows = rows_of_documents(self.offsets, docs)
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64))
            tensors = [_host_tensor(col.rows(rows, decode=False), torch) for col in (self.low, self.high)]
            moved = []
            for t in tensors + [offsets]:
                if pin:
                    t = t.pin_memory()
                moved.append(t.to(device, non_blocking=pin))
            yield TorchBatch(moved[0].to(dtype), moved[1].to(dtype), moved[2], docs)


class ShardedLayerStack(_StoreView, LayerStack):
    """A store of more than two layers, read lazily through memory maps.

    What :func:`open_store` returns for a store that
    ``LayerPairExtractor(layers=(l1, l2, l3, ...), store=folder)`` wrote in
    one pass.  :meth:`pair` is the :class:`ShardedLayerPairs` of any two of
    its layers, which estimators, ``GridSearchCV`` and dask sweeps take like
    a two-layer store; it shares this view's shards and checks.  Like
    :class:`~clvqlearn.LayerStack`, ``len`` counts documents,
    ``stack[i:j]`` and ``take(docs)`` return an in-memory ``LayerStack``,
    and :meth:`layer` is one layer's lazy column.

    Attributes
    ----------
    path : pathlib.Path
        The store folder.
    manifest : dict
        The parsed ``manifest.json``.
    layers : tuple of int
        The store's layers, increasing.
    n_shards : int
        Number of shards.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from clvqlearn.data import LayerStack, StoreSpec, open_store, write_store
    >>> def make_shard(start, stop):
    ...     n = 2 * (stop - start)
    ...     return LayerStack([np.full((n, 3), v, dtype=np.float32) for v in (1, 2, 3)], layers=(1, 2, 3),
    ...                       offsets=np.arange(0, n + 1, 2), model_name="toy")
    >>> spec = StoreSpec("toy", (1, 2, 3), (3, 3, 3), n_docs=5, shard_size=2, texts_sha256="0" * 64)
    >>> stack = write_store(tempfile.mkdtemp(), make_shard, spec)
    >>> stack.layers, len(stack), stack.manifest["format_version"]
    ((1, 2, 3), 5, 3)
    >>> pairs = stack.pair(1, 3)
    >>> pairs.layers, float(pairs.low[0, 0]), float(pairs.high[0, 0])
    ((1, 3), 1.0, 3.0)
    >>> open_store(stack.path, layers=(2, 3)).layers
    (2, 3)
    """

    def __init__(self, path, manifest: dict, shards):  # noqa: D107 - built by open_store
        reader = shards if isinstance(shards, _Reader) else _Reader(list(shards))
        self._open_view(path, manifest, reader)
        self.layers = tuple(int(v) for v in manifest["layers"])
        self.arrays = tuple(self._column(v) for v in self.layers)

    def __repr__(self) -> str:
        return (f"ShardedLayerStack({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, "
                f"n_shards={self.n_shards}, layers={self.layers}, model_name={self.model_name!r})")

    def __reduce__(self):
        return (open_store, (str(self.path),))

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def pair(self, low: int, high: int) -> ShardedLayerPairs:
        """The lazy :class:`ShardedLayerPairs` of two of the store's layers (no data is read).

        Parameters
        ----------
        low, high : int
            Two of ``layers``, ``low <= high``.

        Returns
        -------
        ShardedLayerPairs
            Pickles as the store's path and the pair.
        """
        try:
            _pair_indices(self.layers, low, high)
        except ValueError as exc:
            raise ValueError(f"the activation store {self.path} holds layers {self.layers}: {exc}") from None
        return ShardedLayerPairs(self.path, self.manifest, self._reader, layers=(low, high), offsets=self.offsets)


def _host_tensor(array: np.ndarray, torch):
    """A CPU tensor over ``array``; uint16 holds bfloat16 bits and is viewed as bfloat16."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.view(torch.bfloat16) if array.dtype == np.uint16 else t


_register_store_opener(_open_pairs)
