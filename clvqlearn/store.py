"""A sharded activation store on disk, and its lazy reader.

A store is a folder::

    manifest.json              what the store holds (see below)
    shard-00000.safetensors    whole documents 0 .. shard_size - 1
    shard-00000.json           that shard's sidecar: written last, it marks the shard finished
    shard-00001.safetensors    ...

``manifest.json`` records the format version, the model and its revision,
the layers, the storage dtype, the widths, the extractor settings, a SHA-256
fingerprint of the input texts, the number of documents and the shard size.
Once every shard is finished, the rank that writes shard 0 adds a ``shards``
summary (documents and tokens per shard); the sidecars stay authoritative.

A sidecar records the shard's number, its documents, its token count, the
size and SHA-256 of its safetensors bytes, and (under ``"store"``) the
manifest fields the shard was written with.  Opening a store checks, without
reading the shards, that every sidecar sits at its own place, that the
shards cover the documents contiguously, that no shard lies beyond
``n_shards`` and that the manifest agrees with what the shards recorded; a
disagreement of the manifest is reported as a manifest problem, a misplaced
shard as one.  The first read of a shard hashes its bytes against the
sidecar (:meth:`ShardedLayerPairs.verify` hashes them all).  Stores of format
version 1 (sidecars without checksum and ``"store"``) are still read: their
shards' safetensors headers provide the model name and layers, and their
bytes are not checked.

Every shard holds the documents ``k * shard_size`` up to
``(k + 1) * shard_size`` as safetensors tensors ``low``, ``high`` (float32,
float16 or bfloat16), ``offsets`` (document boundaries inside the shard),
``token_ids``, ``positions`` and the token strings (``token_bytes``, UTF-8,
cut by ``token_offsets``).

Why a sidecar per shard instead of one manifest listing the shards: with
``torchrun`` several processes finish shards at the same time, and one
shared file would need locking or a collective; a sidecar is written by the
one process that owns the shard.  Each rank holds a lock file
(``.writer-rank-00000.lock``, :mod:`filelock`) while it writes, so a second
process writing the same store as the same rank is refused at once.  Every file is written under a temporary
name (``.shard-00003.safetensors.tmp-...``), flushed to disk and renamed, and
the sidecar is renamed into place only after its shard: a shard without its
sidecar is unfinished, is never read as valid, and is redone on resume.

Shard ``k`` belongs to rank ``k % world_size`` (contiguous blocks of
documents, dealt round-robin).  A shard's content depends only on its
documents and the settings, never on the number of processes, so a store
written by N processes equals the one written by one, row for row, and an
interrupted run may resume with another number of processes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from filelock import FileLock, Timeout
from sklearn.utils import check_random_state

from .pairs import LayerPairs

__all__ = [
    "RankInfo",
    "ShardedLayerPairs",
    "StoreSpec",
    "TorchBatch",
    "distributed_rank",
    "extract_to_store",
    "open_store",
    "texts_fingerprint",
    "write_store",
]

STORE_FORMAT = "clvqlearn.LayerPairStore"
STORE_VERSION = 2  # 2: sidecars record the shard's SHA-256 and the store fields it was written with
MANIFEST = "manifest.json"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "U8": np.uint8}
_TENSORS = {  # name -> (allowed codes, number of dimensions)
    "low": (("F32", "F16", "BF16"), 2),
    "high": (("F32", "F16", "BF16"), 2),
    "offsets": (("I64",), 1),
    "token_ids": (("I64",), 1),
    "positions": (("I64",), 1),
    "token_bytes": (("U8",), 1),
    "token_offsets": (("I64",), 1),
}
_MAX_OPEN_SHARDS = 64  # memory maps kept open at once (each holds a file descriptor)
_POLL_S = 1.0  # how often a rank that is done looks for the other ranks' shards
_ABANDONED_S = 300.0  # a rank whose lock is free this long while its shards are missing has stopped
_LOCK_WAIT_S = 1.0  # a writer waits this long for its lock (a waiting rank probes it for an instant)
_HASH_CHUNK = 1 << 22  # bytes read at a time when hashing a shard


def shard_name(k: int) -> str:
    """File name of shard ``k`` (``shard-00003.safetensors``)."""
    return f"shard-{k:05d}.safetensors"


def _sidecar_name(k: int) -> str:
    return f"shard-{k:05d}.json"


def _lock_name(rank: int) -> str:
    return f".writer-rank-{rank:05d}.lock"


# ----------------------------------------------------------------------------- identity
def texts_fingerprint(texts) -> str:
    """SHA-256 of a sequence of texts, in order (length-prefixed UTF-8).

    Parameters
    ----------
    texts : sequence of str
        The documents.

    Returns
    -------
    str
        64 hex digits.

    Examples
    --------
    >>> from clvqlearn.store import texts_fingerprint
    >>> texts_fingerprint(["a", "bc"]) == texts_fingerprint(["ab", "c"])
    False
    """
    digest = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class RankInfo(NamedTuple):
    """This process's place among data-parallel workers."""

    rank: int
    world_size: int
    local_rank: int


def distributed_rank() -> RankInfo:
    """Rank, world size and local rank of this process.

    Read from :mod:`torch.distributed` when a process group is initialised,
    else from the ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` variables that
    ``torchrun`` and ``accelerate launch`` set, else ``(0, 1, 0)``.

    Returns
    -------
    RankInfo

    Examples
    --------
    >>> from clvqlearn.store import distributed_rank
    >>> info = distributed_rank()
    >>> 0 <= info.rank < info.world_size
    True
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = int(dist.get_rank()), int(dist.get_world_size())
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process among {world}.")
    return RankInfo(rank, world, local)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer.") from None


@dataclass
class StoreSpec:
    """What a store holds; two runs may share a store only if their specs agree.

    Parameters
    ----------
    model_name : str
        The model the activations come from.
    layers : tuple of (int, int)
        The (low, high) layer indices.
    widths : tuple of (int, int)
        Widths of the low and high vectors.
    n_docs : int
        Number of documents in the whole store.
    shard_size : int
        Documents per shard (the last shard may hold fewer).
    texts_sha256 : str
        :func:`texts_fingerprint` of the input texts.
    dtype : {"float32", "float16", "bfloat16"}, default="float32"
        Storage dtype of ``low`` and ``high``.
    model_revision : str, optional
        Commit hash or package version of the model.
    settings : dict
        Extractor settings that change the stored values (JSON-serialisable).

    Examples
    --------
    >>> from clvqlearn.store import StoreSpec
    >>> spec = StoreSpec("minilm", (4, 6), (384, 384), n_docs=10, shard_size=4, texts_sha256="0" * 64)
    >>> spec.n_shards
    3
    """

    model_name: str
    layers: tuple
    widths: tuple
    n_docs: int
    shard_size: int
    texts_sha256: str
    dtype: str = "float32"
    model_revision: str | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}; got {self.dtype!r}.")
        if int(self.n_docs) < 1 or int(self.shard_size) < 1:
            raise ValueError(f"n_docs and shard_size must be >= 1; got {self.n_docs} and {self.shard_size}.")
        self.layers = tuple(int(v) for v in self.layers)
        self.widths = tuple(int(v) for v in self.widths)
        self.n_docs, self.shard_size = int(self.n_docs), int(self.shard_size)

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return math.ceil(self.n_docs / self.shard_size)

    def doc_range(self, k: int) -> tuple[int, int]:
        """Documents ``[start, stop)`` of shard ``k``."""
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n_docs)

    def manifest(self) -> dict:
        """The JSON manifest (without the ``shards`` summary)."""
        out = {"format": STORE_FORMAT, "format_version": STORE_VERSION}
        out.update(asdict(self))
        out["layers"], out["widths"] = list(self.layers), list(self.widths)
        out["n_shards"] = self.n_shards
        return out


_IDENTITY = ("model_name", "model_revision", "layers", "widths", "dtype", "settings", "texts_sha256",
             "n_docs", "shard_size")


def _differences(stored: dict, wanted: dict) -> list[str]:
    """Human-readable list of the identity fields on which two manifests differ."""
    out = []
    for key in _IDENTITY:
        a, b = stored.get(key), wanted.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}: stored {a.get(name)!r}, now {b.get(name)!r}"
                    for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
        elif a != b:
            if key == "texts_sha256":
                out.append("the input texts (their fingerprint differs)")
            else:
                out.append(f"{key}: stored {a!r}, now {b!r}")
    return out


# ----------------------------------------------------------------------------- writing
def _write_error(exc: OSError, what: str, folder: Path) -> OSError:
    """An OSError that says what failed, keeps the errno, and says nothing half-written is left."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (the store folder is read-only or not writable)"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full)"
    err = type(exc)(
        exc.errno,
        f"could not write {what} in the activation store {folder}: {reason}. Nothing half-written is "
        "left: finished shards are kept, and running the same extraction again resumes after them",
    )
    err.__cause__ = exc
    return err


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary name, flush, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _make_folder(folder: Path) -> None:
    """Create the store folder, or check that it is a store or empty (nothing is written if not)."""
    if (folder / MANIFEST).is_file():
        return
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"the store path {folder} exists and is not a folder.")
    if folder.is_dir() and any(not p.name.startswith(".") and p.name != MANIFEST for p in folder.iterdir()):
        raise FileExistsError(
            f"{folder} is not empty and holds no {MANIFEST}, so it is not an activation store; "
            "refusing to write shards into it. Use a new or empty folder."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, MANIFEST, folder) from exc


@contextlib.contextmanager
def _writer_lock(folder: Path, rank: int):
    """Hold this rank's lock file while writing; refuse at once if another process holds it.

    The operating system releases the lock when its process ends, so a
    crashed writer leaves no stale lock.  A folder where no lock file can be
    created (a read-only file system) has no other writer either: it is
    written without a lock, and any write fails with its own clear error.
    """
    path = folder / _lock_name(rank)
    lock = FileLock(str(path), timeout=_LOCK_WAIT_S)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(
            f"another process is writing the activation store {folder} as rank {rank}; two writers would "
            "redo and delete each other's shards. Nothing was written. Wait until it has finished (then run "
            f"again to resume or open the store), or write to another folder. Its lock is {path}; the "
            "system releases it when that process ends."
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _write_error(exc, path.name, folder) from exc
        lock = None  # not writable: no other process can write it either
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _rank_running(folder: Path, rank: int) -> bool:
    """Whether a process holds ``rank``'s writer lock (True when that cannot be told)."""
    lock = FileLock(str(folder / _lock_name(rank)), timeout=0)
    try:
        lock.acquire()
    except OSError:  # Timeout (an OSError) when held; any other error: cannot tell, assume it runs
        return True
    lock.release()
    return False


def _prepare(folder: Path, spec: StoreSpec) -> None:
    """Write the manifest, or check that the store was written with the same spec (nothing is written if not)."""
    wanted = spec.manifest()
    manifest = folder / MANIFEST
    if manifest.is_file():
        stored = _read_manifest(folder)
        diffs = _differences(stored, wanted)
        if diffs:
            raise ValueError(
                f"the activation store {folder} was written with other settings, so it cannot be resumed "
                f"or appended to: {'; '.join(diffs)}. Nothing was written. Use another folder, or delete "
                "this one to start over."
            )
        _check_shard_files(folder, stored)
        sidecars = {k: _read_sidecar(folder, k) for k in range(stored["n_shards"])}
        _check_identity(folder, stored, {k: info["store"] for k, info in sidecars.items()
                                         if info is not None and isinstance(info.get("store"), dict)})
        return
    try:
        _write_file(manifest, json.dumps(wanted, indent=1).encode())
    except OSError as exc:
        raise _write_error(exc, MANIFEST, folder) from exc


def _shard_bytes(pairs: LayerPairs, spec: StoreSpec, k: int) -> bytes:
    """Serialise one shard with safetensors (bfloat16 through torch)."""
    import torch
    from safetensors.torch import save

    def activations(a):
        a = np.ascontiguousarray(a, dtype=np.float32 if spec.dtype == "bfloat16" else spec.dtype)
        t = torch.from_numpy(a)
        return t.to(torch.bfloat16) if spec.dtype == "bfloat16" else t

    def ints(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))

    n = pairs.n_tokens
    tokens = [str(t).encode("utf-8") for t in pairs.tokens] if pairs.tokens is not None else [b""] * n
    token_offsets = np.concatenate([[0], np.cumsum([len(b) for b in tokens], dtype=np.int64)])
    start, stop = spec.doc_range(k)
    tensors = {
        "low": activations(pairs.low),
        "high": activations(pairs.high),
        "offsets": ints(pairs.offsets),
        "token_ids": ints(pairs.token_ids if pairs.token_ids is not None else np.full(n, -1)),
        "positions": ints(pairs.positions if pairs.positions is not None else np.full(n, -1)),
        "token_bytes": torch.from_numpy(np.frombuffer(b"".join(tokens), dtype=np.uint8).copy()),
        "token_offsets": ints(token_offsets),
    }
    meta = {"format": STORE_FORMAT, "shard": k, "doc_start": start, "doc_stop": stop, "model_name": spec.model_name,
            "layers": list(spec.layers)}
    # one metadata key: safetensors writes several in random order, and equal shards should be equal files
    return save(tensors, metadata={"clvqlearn": json.dumps(meta, sort_keys=True)})


def _check_shard_pairs(pairs, spec: StoreSpec, k: int) -> None:
    """What ``make_shard`` returned must fit the spec."""
    start, stop = spec.doc_range(k)
    if not isinstance(pairs, LayerPairs):
        raise TypeError(f"make_shard must return LayerPairs; got {type(pairs).__name__} for shard {k}.")
    widths = (pairs.low.shape[1], pairs.high.shape[1])
    if pairs.n_docs != stop - start or widths != spec.widths or tuple(pairs.layers) != spec.layers:
        raise ValueError(
            f"make_shard returned {pairs.n_docs} documents of widths {widths} at layers {pairs.layers} for "
            f"shard {k}; the store expects {stop - start} documents of widths {spec.widths} at layers "
            f"{spec.layers}."
        )


def _write_shard(folder: Path, spec: StoreSpec, k: int, pairs: LayerPairs, texts_sha256: str) -> None:
    """Write shard ``k``, then its sidecar (the finished mark)."""
    _check_shard_pairs(pairs, spec, k)
    data = _shard_bytes(pairs, spec, k)
    start, stop = spec.doc_range(k)
    manifest = spec.manifest()
    sidecar = {
        "format_version": STORE_VERSION, "shard": k, "file": shard_name(k), "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "doc_start": start, "doc_stop": stop,
        "n_docs": stop - start, "n_tokens": pairs.n_tokens, "texts_sha256": texts_sha256,
        "n_outliers": int(pairs.extra.get("n_outliers", 0)),
        "store": {key: manifest[key] for key in _IDENTITY},
    }
    try:
        _write_file(folder / shard_name(k), data)
        _write_file(folder / _sidecar_name(k), json.dumps(sidecar).encode())
    except OSError as exc:
        _discard_shard(folder, k)  # the shard without its sidecar would only be redone
        raise _write_error(exc, shard_name(k), folder) from exc


def _discard_shard(folder: Path, k: int) -> None:
    """Remove shard ``k``, its sidecar (first) and any temporary files of an interrupted write."""
    paths = [folder / _sidecar_name(k), folder / shard_name(k)]
    paths += sorted(folder.glob(f".shard-{k:05d}.*.tmp-*"))
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _read_sidecar(folder: Path, k: int) -> dict | None:
    try:
        info = json.loads((folder / _sidecar_name(k)).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _shard_finished(folder: Path, spec: StoreSpec, k: int, texts_sha256: str | None = None) -> bool:
    """Whether shard ``k`` has a sidecar that matches it and the spec."""
    info = _read_sidecar(folder, k)
    if info is None:
        return False
    start, stop = spec.doc_range(k)
    try:
        size = (folder / shard_name(k)).stat().st_size
    except OSError:
        return False
    return (
        info.get("shard", k) == k and info.get("doc_start") == start and info.get("doc_stop") == stop
        and info.get("bytes") == size and (texts_sha256 is None or info.get("texts_sha256") == texts_sha256)
    )


def write_store(path, make_shard: Callable[[int, int], LayerPairs], spec: StoreSpec, *, texts=None,
                rank=None, world_size=None, wait: bool = True) -> "ShardedLayerPairs | None":
    """Write (or resume) a sharded store, the shards of this rank only.

    Parameters
    ----------
    path : str or path-like
        The store folder (created if missing; it must be empty or a store
        written with the same ``spec``).
    make_shard : callable
        ``make_shard(start, stop)`` returns the :class:`~clvqlearn.LayerPairs`
        of documents ``start .. stop - 1``.
    spec : StoreSpec
        What the store holds.
    texts : sequence of str, optional
        The input texts; when given, each shard records the fingerprint of
        its own texts and a resume redoes shards whose texts changed.
    rank, world_size : int, optional
        This process's share (shards ``rank, rank + world_size, ...``).
        Default: :func:`distributed_rank`.
    wait : bool, default=True
        After its own shards, wait until every shard of the store is
        finished (by polling the folder; no collective is used) and return
        the store.

    Returns
    -------
    ShardedLayerPairs or None
        The whole store, or None when ``wait=False``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.store import StoreSpec, write_store
    >>> def make_shard(start, stop):
    ...     n = 2 * (stop - start)
    ...     return LayerPairs(low=np.ones((n, 3)), high=np.zeros((n, 3)), offsets=np.arange(0, n + 1, 2),
    ...                       layers=(1, 2), model_name="toy")
    >>> spec = StoreSpec("toy", (1, 2), (3, 3), n_docs=5, shard_size=2, texts_sha256="0" * 64)
    >>> store = write_store(tempfile.mkdtemp(), make_shard, spec)
    >>> len(store), store.n_tokens, store.n_shards
    (5, 10, 3)
    """
    folder = Path(path).expanduser()
    if rank is None or world_size is None:
        info = distributed_rank()
        rank = info.rank if rank is None else rank
        world_size = info.world_size if world_size is None else world_size
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be in [0, world_size); got rank={rank!r}, world_size={world_size!r}.")
    _make_folder(folder)
    with _writer_lock(folder, rank):
        _prepare(folder, spec)
        for k in range(rank, spec.n_shards, world_size):
            start, stop = spec.doc_range(k)
            sha = texts_fingerprint(texts[start:stop]) if texts is not None else None
            if _shard_finished(folder, spec, k, sha):
                continue
            _discard_shard(folder, k)
            _write_shard(folder, spec, k, make_shard(start, stop), sha or "")
        if not wait:
            return None
        _wait_for_shards(folder, spec, rank, world_size)
        if rank == 0:
            _summarise(folder, spec)
    return open_store(folder)


def _wait_for_shards(folder: Path, spec: StoreSpec, rank: int, world_size: int) -> None:
    """Poll until every shard is finished (other ranks are still writing theirs).

    Never waits forever: a missing shard of this rank (finished, then
    deleted or rewritten by another process) is an error at once, and so is
    a missing shard of a rank whose writer lock has been free for
    ``_ABANDONED_S`` seconds (that rank stopped, or was never started).
    """
    pending, free_since = list(range(spec.n_shards)), {}
    while True:
        pending = [k for k in pending if not _shard_finished(folder, spec, k)]
        if not pending:
            return
        own = [k for k in pending if k % world_size == rank]
        if own:
            raise RuntimeError(
                f"the shard {shard_name(own[0])} of the activation store {folder} was finished by this process "
                "but is now missing or changed: another process deleted or rewrote it. Run the same extraction "
                "again (one writer at a time) to redo it."
            )
        now = time.monotonic()
        for r in sorted({k % world_size for k in pending}):
            if _rank_running(folder, r):
                free_since.pop(r, None)
            elif now - free_since.setdefault(r, now) >= _ABANDONED_S:
                missing = [shard_name(k) for k in pending if k % world_size == r]
                raise RuntimeError(
                    f"the activation store {folder} waits for the shards of rank {r} ({', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}), but no process has been writing as rank {r} for "
                    f"{_ABANDONED_S:g} s: it stopped or was never started. The finished shards are kept; run "
                    "the same extraction again (with any number of processes) to resume."
                )
        time.sleep(_POLL_S)


def _summarise(folder: Path, spec: StoreSpec) -> None:
    """Add the per-shard document and token counts to the manifest of a finished store."""
    shards = []
    for k in range(spec.n_shards):
        info = _read_sidecar(folder, k) or {}
        shards.append({key: info.get(key) for key in ("file", "doc_start", "doc_stop", "n_docs", "n_tokens")})
    manifest = dict(spec.manifest(), shards=shards, n_tokens=int(sum(s["n_tokens"] or 0 for s in shards)))
    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / MANIFEST).read_text()) == manifest:
            return  # already summarised: a finished store on a read-only disk opens without writing
    try:
        _write_file(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    except OSError as exc:
        raise _write_error(exc, MANIFEST, folder) from exc


# ----------------------------------------------------------------------------- extraction
_SETTINGS = ("max_length", "special_tokens", "outliers", "outlier_threshold", "compute_dtype", "batch_size")


def _plain(value):
    """A numpy scalar as the Python value JSON can hold; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _model_revision(extractor) -> str | None:
    """The model's commit hash (hub models) or its package's version (packaged models), if known."""
    commit = getattr(extractor.model_.config, "_commit_hash", None)
    if commit:
        return str(commit)
    from importlib import metadata

    from .models import PACKAGED_MODELS

    entry = PACKAGED_MODELS.get(str(os.fspath(extractor.model)).strip().lower())
    if entry is None:
        return None
    for dist in metadata.packages_distributions().get(entry.module, []):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{dist}=={metadata.version(dist)}"
    return None


def extract_to_store(extractor, texts: list) -> ShardedLayerPairs:
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
    ShardedLayerPairs
        The whole store, once every rank has finished its shards.
    """
    # numpy scalars (e.g. from a parameter grid) become plain Python values for the JSON manifest
    settings = {name: _plain(getattr(extractor, name)) for name in _SETTINGS}
    settings["outlier_threshold"] = float(settings["outlier_threshold"])
    settings["trust_remote_code"] = bool(extractor.trust_remote_code)
    spec = StoreSpec(
        model_name=os.fspath(extractor.model), layers=extractor.layers_,
        widths=(extractor.hidden_size_, extractor.hidden_size_), n_docs=len(texts),
        shard_size=int(extractor.shard_size), texts_sha256=texts_fingerprint(texts),
        dtype=extractor.storage_dtype, model_revision=_model_revision(extractor), settings=settings,
    )

    def make_shard(start, stop):
        return extractor._transform_in_memory(texts[start:stop], allow_empty=True)

    return write_store(extractor.store, make_shard, spec, texts=texts)


# ----------------------------------------------------------------------------- reading
def _read_manifest(folder: Path) -> dict:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if not folder.exists():
            raise FileNotFoundError(f"there is no activation store at {folder}: the folder does not exist.")
        raise FileNotFoundError(
            f"{folder} is not an activation store: its {MANIFEST} is missing. Write a store with "
            "LayerPairExtractor(..., store=folder); a LayerPairs.save folder is read with LayerPairs.load."
        )
    try:
        stored = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"the store manifest {manifest} is not readable JSON ({exc}).") from exc
    if not isinstance(stored, dict) or stored.get("format") != STORE_FORMAT:
        raise ValueError(f"{manifest} does not describe a {STORE_FORMAT!r} store.")
    version = stored.get("format_version", 0)
    if not isinstance(version, int) or version > STORE_VERSION:
        raise ValueError(
            f"the store {folder} has format version {version!r}; this clvqlearn reads up to "
            f"{STORE_VERSION}. Upgrade clvqlearn."
        )
    _check_manifest(manifest, stored)
    return stored


def _manifest_error(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the store manifest {path} is damaged or was edited: {why}. The shards are not at fault, do not "
        f"delete them: restore {path.name} (each shard's sidecar, shard-NNNNN.json, records under \"store\" "
        "what it should say), or extract again into a new folder."
    )


def _is_int(value, low: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _check_manifest(path: Path, stored: dict) -> None:
    """Every field the reader relies on must be there with the right type (ValueError naming it if not)."""
    def pair(low):
        return lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x, low) for x in v)

    rules = [
        ("model_name", lambda v: isinstance(v, str) and v != "", "a model name"),
        ("layers", pair(None), "a [low, high] pair of integers"),
        ("widths", pair(1), "a [low, high] pair of positive integers"),
        ("dtype", lambda v: v in STORAGE_DTYPES, f"one of {list(STORAGE_DTYPES)}"),
        ("n_docs", lambda v: _is_int(v, 1), "a positive integer"),
        ("shard_size", lambda v: _is_int(v, 1), "a positive integer"),
        ("texts_sha256", lambda v: isinstance(v, str), "a hex string"),
    ]
    for key, valid, expected in rules:
        if key not in stored:
            raise _manifest_error(path, f"the field {key!r} is missing")
        if not valid(stored[key]):
            raise _manifest_error(path, f"the field {key!r} is {stored[key]!r}, expected {expected}")
    if not isinstance(stored.get("settings", {}), dict):
        raise _manifest_error(path, f"the field 'settings' is {stored['settings']!r}, expected a JSON object")
    n_shards = math.ceil(stored["n_docs"] / stored["shard_size"])
    if stored.get("n_shards") != n_shards:
        raise _manifest_error(
            path, f"the field 'n_shards' is {stored.get('n_shards')!r}, but n_docs={stored['n_docs']} and "
                  f"shard_size={stored['shard_size']} make {n_shards} shards"
        )


def _check_shard_files(folder: Path, manifest: dict) -> None:
    """No shard file may lie beyond the manifest's ``n_shards``."""
    beyond = sorted(p.name for p in folder.glob("shard-*.*")
                    if p.suffix in (".safetensors", ".json") and p.stem[6:].isdigit()
                    and int(p.stem[6:]) >= manifest["n_shards"])
    if beyond:
        raise _manifest_error(
            folder / MANIFEST,
            f"it says n_shards={manifest['n_shards']} (n_docs={manifest['n_docs']}, shard_size="
            f"{manifest['shard_size']}), but the folder also holds {', '.join(beyond[:4])}"
            f"{' ...' if len(beyond) > 4 else ''}",
        )


def _disagreements(manifest: dict, recorded: dict) -> list[str]:
    """The store fields on which the manifest and a shard's record differ."""
    out = []
    for key in _IDENTITY:
        if key in recorded and manifest.get(key) != recorded[key]:
            if key == "texts_sha256":
                out.append("the input texts (texts_sha256) differ")
            else:
                out.append(f"{key}: the manifest says {manifest.get(key)!r}, the shards were written with "
                           f"{recorded[key]!r}")
    return out


def _check_identity(folder: Path, manifest: dict, recorded: dict) -> None:
    """The manifest must agree with what the finished shards recorded (``recorded``: shard -> fields).

    When every shard disagrees, the manifest is at fault; when only some
    do, those shards come from another store.
    """
    wrong = {k: d for k, d in ((k, _disagreements(manifest, rec)) for k, rec in sorted(recorded.items())) if d}
    if not wrong:
        return
    first = wrong[min(wrong)]
    if len(wrong) == len(recorded):
        raise _manifest_error(folder / MANIFEST, "it disagrees with what its shards recorded when they were "
                                                 f"written: {'; '.join(first)}")
    names = ", ".join(shard_name(k) for k in sorted(wrong)[:4]) + (" ..." if len(wrong) > 4 else "")
    raise ValueError(
        f"the activation store {folder} holds shards written for another store: {names} "
        f"({'; '.join(first).replace('the shards were', 'they were')}). Delete these shards and their .json "
        "sidecars, then run the same extraction again to redo them."
    )


def _misplaced(folder: Path, name: str, k: int, recorded) -> ValueError:
    return ValueError(
        f"{name} in the activation store {folder} records shard {recorded!r}, but it is at the place of shard {k}: "
        "shard files were renamed, swapped or copied over one another. Give each shard-NNNNN.safetensors and "
        "its shard-NNNNN.json the number they record; where a pair is a copy of another shard, delete that "
        "pair and run the same extraction again to redo it."
    )


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the shard {path.name} of the activation store {path.parent} is damaged: {why}. Delete it and "
        f"its sidecar {path.stem}.json, then run the same extraction again to redo this shard."
    )


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
class _Shard:
    """One finished shard: where it is, which documents and tokens it holds, its tensor layout."""

    path: Path
    doc_start: int
    n_docs: int
    n_tokens: int
    layout: dict  # name -> (numpy dtype, shape, byte offset from the start of the file)
    code: str  # storage code of low/high: F32, F16 or BF16
    sha256: str | None = None  # of the whole file, as its sidecar recorded it (None: format version 1)


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
    info = _read_sidecar(folder, k)
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


class _Unfinished(Exception):
    """Shard ``k`` has no valid sidecar: an interrupted write."""

    def __init__(self, k):
        super().__init__(k)
        self.k = k


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
    """One column of a store (``low``, ``high``, ``token_ids``, ``positions``, ``tokens``) across shards.

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
        if not decode and self._reader.shards and self._name in ("low", "high"):
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
            return self[head][(slice(None),) + rest] if rest else self[head]
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
    >>> from clvqlearn.store import StoreSpec, write_store
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
        >>> from clvqlearn.store import StoreSpec, write_store
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
        When a shard is unfinished (an interrupted extraction: run it again
        to resume), truncated or otherwise damaged (the message names it),
        misplaced (renamed, swapped or copied), or when the manifest is
        damaged or disagrees with what its shards recorded (a manifest
        problem; the message names the field).  These checks read only the
        sidecars and headers; a shard's bytes are checked against its
        SHA-256 when it is first read (or by :meth:`ShardedLayerPairs.verify`).

    Examples
    --------
    >>> from clvqlearn.store import open_store
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
