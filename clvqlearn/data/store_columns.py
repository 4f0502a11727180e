"""The columns of a store's finished shards, read lazily through memory maps.

:class:`_Reader` keeps a small LRU of memory-mapped shards and hashes each
shard's bytes against its sidecar on first read; :class:`_ShardedArray` is
one column (an activation tensor such as ``low`` or ``layer_4``,
``token_ids``, ``positions``, ``tokens``) across all shards, indexed like a NumPy array.  The view that holds them,
:class:`~clvqlearn.data.store_reader.ShardedLayerPairs`, and the checks that
find the shards live in :mod:`clvqlearn.data.store_reader`.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .store_format import _damaged, _is_activation

_MAX_OPEN_SHARDS = 64  # memory maps kept open at once (each holds a file descriptor)
_HASH_CHUNK = 1 << 22  # bytes read at a time when hashing a shard


@dataclass
class _Shard:
    """One finished shard: where it is, which documents and tokens it holds, its tensor layout."""

    path: Path
    doc_start: int
    n_docs: int
    n_tokens: int
    layout: dict  # name -> (numpy dtype, shape, byte offset from the start of the file)
    code: str  # storage code of the activations: F32, F16 or BF16
    sha256: str | None = None  # of the whole file, as its sidecar recorded it (None: format version 1)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _gone(path: Path, exc: OSError) -> OSError:
    err = type(exc)(exc.errno, f"could not read the shard {path.name} of the activation store {path.parent}: "
                               f"{exc.strerror or exc}. It was deleted or moved after the store was opened; "
                               "open the store again.")
    err.__cause__ = exc
    return err


class _Reader:
    """Memory maps of the shards of one store, opened on demand (a small LRU of open maps)."""

    def __init__(self, shards: list):
        self.shards = shards
        self.row_starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in shards])]).astype(np.int64)
        self._open: OrderedDict = OrderedDict()
        self._verified: set = set()

    def __getstate__(self):
        return {"shards": self.shards, "row_starts": self.row_starts}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open = OrderedDict()
        self._verified = set()

    def verify(self, i: int) -> None:
        """Hash shard ``i`` against its sidecar's SHA-256, once (format-version-1 shards have none)."""
        shard = self.shards[i]
        if i in self._verified or shard.sha256 is None:
            return
        try:
            actual = _file_sha256(shard.path)
        except OSError as exc:
            raise _gone(shard.path, exc) from exc
        if actual != shard.sha256:
            raise _damaged(shard.path, "its bytes differ from the SHA-256 its sidecar recorded when it was "
                                       "written (it was changed on disk after it was finished)")
        self._verified.add(i)

    def tensor(self, i: int, name: str) -> np.ndarray:
        """One tensor of shard ``i``, read without opening (or verifying) the whole shard."""
        if i in self._open:
            return self._open[i][name]
        dtype, shape, offset = self.shards[i].layout[name]
        path = self.shards[i].path
        try:
            return np.fromfile(path, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        except OSError as exc:
            raise _gone(path, exc) from exc

    def arrays(self, i: int) -> dict:
        """Read-only arrays (views into one memory map) of shard ``i``, its bytes verified the first time."""
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        shard = self.shards[i]
        self.verify(i)
        try:
            raw = np.memmap(shard.path, dtype=np.uint8, mode="r")
        except OSError as exc:
            raise _gone(shard.path, exc) from exc
        out = {}
        for name, (dtype, shape, offset) in shard.layout.items():
            count = math.prod(shape)
            out[name] = raw[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)
        self._open[i] = out
        if len(self._open) > _MAX_OPEN_SHARDS:
            self._open.popitem(last=False)
        return out


def _as_slice(index: np.ndarray):
    """A slice for a run of consecutive integers (one block copy instead of a gather), else ``index``."""
    if index.size and index[-1] - index[0] == index.size - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) to float32: the bf16 bits are the float32's upper half."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def _token_strings(arrays: dict, rows: np.ndarray) -> np.ndarray:
    """Token strings of ``rows`` of one shard (UTF-8 bytes cut by byte offsets)."""
    out = np.empty(rows.size, dtype=object)
    if not rows.size:
        return out
    offsets = arrays["token_offsets"]
    first, last = int(offsets[rows.min()]), int(offsets[rows.max() + 1])
    blob = bytes(arrays["token_bytes"][first:last])
    starts, stops = (offsets[rows] - first).tolist(), (offsets[rows + 1] - first).tolist()
    text = blob.decode("utf-8")
    if len(text) == len(blob):  # ASCII: byte offsets are character offsets, cut the decoded text
        out[:] = [text[a:b] for a, b in zip(starts, stops)]
    else:
        out[:] = [blob[a:b].decode("utf-8") for a, b in zip(starts, stops)]
    return out


class _ShardedArray:
    """One column of a store (an activation tensor, ``token_ids``, ``positions``, ``tokens``) across shards.

    Supports what :class:`~clvqlearn.LayerPairs` code does with its arrays:
    ``shape``, ``dtype``, ``len``, row indexing by int, slice, integer or
    boolean array (and a second, column index), iteration and
    ``np.asarray``.  Rows are read from the memory maps on demand; bfloat16
    is returned as float32.
    """

    def __init__(self, reader: _Reader, name: str, width: int | None, dtype):
        self._reader, self._name, self._width, self.dtype = reader, name, width, np.dtype(dtype)

    @property
    def shape(self) -> tuple:
        n = int(self._reader.row_starts[-1])
        return (n,) if self._width is None else (n, self._width)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<{self._name} of an activation store: shape {self.shape}, dtype {self.dtype}>"

    def _part(self, i: int, rows, decode: bool = True) -> np.ndarray:
        """Rows ``rows`` (slice or int array) of shard ``i``, bfloat16 decoded to float32 if ``decode``."""
        arrays = self._reader.arrays(i)
        if self._name == "tokens":
            return _token_strings(arrays, np.atleast_1d(np.arange(len(arrays["token_ids"]))[rows]))
        out = arrays[self._name][rows]
        return _bf16_to_float32(out) if decode and out.dtype == np.uint16 else out

    def rows(self, rows: np.ndarray, decode: bool = True) -> np.ndarray:
        """Gather rows (non-negative int array), reading each shard once, in the order asked.

        With ``decode=False`` a bfloat16 column comes back as its uint16 bits.
        """
        rows = np.asarray(rows, dtype=np.int64)
        dtype = self.dtype
        if not decode and self._reader.shards and _is_activation(self._name):
            dtype = self._reader.shards[0].layout[self._name][0]
        out = np.empty((rows.size,) + self.shape[1:], dtype=dtype)
        starts = self._reader.row_starts
        which = np.searchsorted(starts, rows, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(starts)))
        for i in range(len(starts) - 1):
            pick = order[bounds[i] : bounds[i + 1]]
            if pick.size:
                local = rows[pick] - starts[i]
                out[_as_slice(pick)] = self._part(i, _as_slice(local), decode)
        return out

    def _normalise(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(*key.indices(n))
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(f"boolean index of shape {rows.shape} for {n} rows")
            return np.flatnonzero(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"only integers, slices and boolean or integer arrays index rows; got {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(rows < 0, rows + n, rows)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = (key[0] if key else slice(None)), key[1:]
            if not rest:
                return self[head]
            if isinstance(head, (int, np.integer)):  # one row: its own index drops the row dimension
                return self[head][rest]
            return self[head][(slice(None),) + rest]
        if isinstance(key, (int, np.integer)):
            return self.rows(self._normalise([key]))[0]
        rows = self._normalise(key)
        return self.rows(rows.ravel()).reshape(rows.shape + self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        out = self.rows(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self):
        for i, start in enumerate(self._reader.row_starts[:-1]):
            stop = self._reader.row_starts[i + 1]
            yield from self._part(i, slice(0, int(stop - start)))
