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

from .pairs import LayerPairs, _register_store_opener
from .store_columns import _Reader, _Shard, _ShardedArray
from .store_format import (
    _CODES,
    _NUMPY,
    _TENSORS,
    MANIFEST,
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

__all__ = ["ShardedLayerPairs", "TorchBatch", "open_store"]


def open_store(path) -> ShardedLayerPairs:
    """Open a sharded activation store lazily (see :class:`ShardedLayerPairs`).

    Parameters
    ----------
    path : str or path-like
        The store folder.

    Returns
    -------
    ShardedLayerPairs

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
        problem; the message names the field).  These checks read only the
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
    return ShardedLayerPairs(folder, manifest, shards)


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
    expected = {"low": (n_tok, spec["widths"][0]), "high": (n_tok, spec["widths"][1]),
                "offsets": (stop - start + 1,), "token_ids": (n_tok,), "positions": (n_tok,)}
    for name, (codes, ndim) in _TENSORS.items():
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
    code = header["low"]["dtype"]
    if code != _CODES[spec["dtype"]] or header["high"]["dtype"] != code:
        raise _damaged(path, f"its activations are {code}, but the store holds {spec['dtype']}")
    sha = info.get("sha256")
    return _Shard(path, start, stop - start, n_tok, layout, code, sha if isinstance(sha, str) else None)


class TorchBatch(NamedTuple):
    """Documents of a store as torch tensors on one device."""

    low: object  # torch.Tensor (n_tokens, d_low)
    high: object  # torch.Tensor (n_tokens, d_high)
    offsets: object  # torch.Tensor (n_docs + 1,), int64
    docs: np.ndarray  # the store's document numbers, in batch order


class ShardedLayerPairs(LayerPairs):
    """A sharded activation store, read lazily through memory maps.

    Behaves like :class:`~clvqlearn.LayerPairs`: ``len`` is the number of
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

    def __init__(self, path, manifest: dict, shards: list):  # noqa: D107 - built by open_store
        self.path = Path(path)
        self.manifest = manifest
        self._reader = _Reader(shards)
        width_low, width_high = manifest["widths"]
        value_dtype = np.float16 if manifest["dtype"] == "float16" else np.float32
        self.low = _ShardedArray(self._reader, "low", int(width_low), value_dtype)
        self.high = _ShardedArray(self._reader, "high", int(width_high), value_dtype)
        self.token_ids = _ShardedArray(self._reader, "token_ids", None, np.int64)
        self.positions = _ShardedArray(self._reader, "positions", None, np.int64)
        self.tokens = _ShardedArray(self._reader, "tokens", None, object)
        offsets = [np.zeros(1, dtype=np.int64)]
        for i, (shard, row_start) in enumerate(zip(shards, self._reader.row_starts)):
            local = np.asarray(self._reader.tensor(i, "offsets"))
            if local[0] != 0 or local[-1] != shard.n_tokens or np.any(np.diff(local) < 0):
                raise _damaged(shard.path, "its document offsets do not cover its token rows")
            offsets.append(local[1:] + row_start)
        self.offsets = np.concatenate(offsets)
        self.shard_offsets = np.array([s.doc_start for s in shards] + [manifest["n_docs"]], dtype=np.int64)
        self.layers = tuple(int(v) for v in manifest["layers"])
        self.model_name = str(manifest["model_name"])
        self.extra = dict(manifest.get("settings") or {}, storage_dtype=manifest["dtype"], store=str(self.path),
                          model_revision=manifest.get("model_revision"))

    def __repr__(self) -> str:
        return (f"ShardedLayerPairs({str(self.path)!r}, n_docs={self.n_docs}, n_tokens={self.n_tokens}, "
                f"n_shards={self.n_shards}, layers={self.layers}, model_name={self.model_name!r})")

    def __reduce__(self):
        return (open_store, (str(self.path),))

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self._reader.shards)

    def __array__(self, dtype=None, copy=None):
        width, starts = self.low.shape[1], self._reader.row_starts
        shape = (self.n_tokens, width + self.high.shape[1])  # one row per token (``shape`` counts documents)
        out = np.empty(shape, dtype=self.low.dtype if dtype is None else dtype)
        for i in range(self.n_shards):  # shard by shard into one matrix: no temporary [low], [high] copies
            rows = slice(int(starts[i]), int(starts[i + 1]))
            out[rows, :width] = self.low._part(i, slice(None))
            out[rows, width:] = self.high._part(i, slice(None))
        return out

    def verify(self) -> ShardedLayerPairs:
        """Check the bytes of every shard against the SHA-256 its sidecar recorded.

        Reading a shard the first time does the same for that shard; this
        method checks the whole store at once (it reads every byte).

        Returns
        -------
        ShardedLayerPairs
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

    def to_memory(self) -> LayerPairs:
        """Read the whole store into an in-memory :class:`~clvqlearn.LayerPairs`."""
        return self.take(np.arange(self.n_docs))

    def to_frame(self, which: str = "both"):
        """A pandas DataFrame of the whole store (read into memory); see :meth:`LayerPairs.to_frame`."""
        return self.to_memory().to_frame(which)

    def iter_shards(self):
        """Yield every shard as an in-memory LayerPairs, in document order.

        ``extra["doc_start"]`` is the store's number of the shard's first
        document.
        """
        for i, shard in enumerate(self._reader.shards):
            part = self[int(self.shard_offsets[i]) : int(self.shard_offsets[i + 1])]
            part.extra.update(shard=i, doc_start=shard.doc_start)
            yield part

    def _batches(self, batch_docs, shuffle, random_state):
        if not isinstance(batch_docs, (int, np.integer)) or isinstance(batch_docs, bool) or batch_docs < 1:
            raise ValueError(f"batch_docs must be a positive integer; got {batch_docs!r}.")
        order = np.arange(self.n_docs)
        if shuffle:
            order = check_random_state(random_state).permutation(self.n_docs)
        for i in range(0, self.n_docs, int(batch_docs)):
            yield order[i : i + int(batch_docs)]

    def iter_documents(self, batch_docs: int = 256, *, shuffle: bool = False, random_state=None):
        """Yield in-memory LayerPairs of ``batch_docs`` documents each.

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
        LayerPairs
            ``extra["docs"]`` holds the store's document numbers.
        """
        for docs in self._batches(batch_docs, shuffle, random_state):
            part = self.take(docs)
            part.extra["docs"] = docs
            yield part

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
            rows = _ranges(starts, stops)
            offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(stops - starts)]).astype(np.int64))
            tensors = [_host_tensor(col.rows(rows, decode=False), torch) for col in (self.low, self.high)]
            moved = []
            for t in tensors + [offsets]:
                if pin:
                    t = t.pin_memory()
                moved.append(t.to(device, non_blocking=pin))
            yield TorchBatch(moved[0].to(dtype), moved[1].to(dtype), moved[2], docs)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(start, stop)`` for every pair, vectorised."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + within


def _host_tensor(array: np.ndarray, torch):
    """A CPU tensor over ``array``; uint16 holds bfloat16 bits and is viewed as bfloat16."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    return t.view(torch.bfloat16) if array.dtype == np.uint16 else t


_register_store_opener(open_store)
