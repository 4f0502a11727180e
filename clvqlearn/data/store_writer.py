"""Writing an activation store: shards, the rank split, locks and waiting.

Why a sidecar per shard instead of one manifest listing the shards: with
``torchrun`` several processes finish shards at the same time, and one
shared file would need locking or a collective; a sidecar is written by the
one process that owns the shard.  Each rank holds a lock file
(``.writer-rank-00000.lock``, :mod:`filelock`) while it writes, so a second
process writing the same store as the same rank is refused at once.  Every
file is written under a temporary name (``.shard-00003.safetensors.tmp-...``),
flushed to disk and renamed, and the sidecar is renamed into place only
after its shard: a shard without its sidecar is unfinished, is never read as
valid, and is redone on resume.

Shard ``k`` belongs to rank ``k % world_size`` (contiguous blocks of
documents, dealt round-robin).  A shard's content depends only on its
documents and the settings, never on the number of processes, so a store
written by N processes equals the one written by one, row for row, and an
interrupted run may resume with another number of processes.

The writer receives each shard's :class:`~clvqlearn.LayerPairs` (or, for a
store of more than two layers, its :class:`~clvqlearn.LayerStack`)
from a ``make_shard(start, stop)`` callback: it knows nothing of the model
or the extractor (``clvqlearn.extraction.extract_to_store`` is the driver
that writes an extractor's output).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from filelock import FileLock, Timeout

from .._folders import write_file_atomic
from .pairs import LayerPairs
from .stack import LayerStack
from .store_format import (
    _IDENTITY,
    MANIFEST,
    STORE_FORMAT,
    StoreSpec,
    _activation_names,
    _check_identity,
    _check_shard_files,
    _differences,
    _lock_name,
    _read_manifest,
    _read_shard_sidecar,
    _sidecar_name,
    shard_name,
    texts_fingerprint,
)
from .store_reader import ShardedLayerPairs, ShardedLayerStack, open_store

__all__ = ["RankInfo", "distributed_rank", "write_store"]

_POLL_S = 1.0  # how often a rank that is done looks for the other ranks' shards
_ABANDONED_S = 300.0  # a rank whose lock is free this long while its shards are missing has stopped
_LOCK_WAIT_S = 1.0  # a writer waits this long for its lock (a waiting rank probes it for an instant)


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
    >>> from clvqlearn.data import distributed_rank
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
    lock, held = FileLock(str(path), timeout=_LOCK_WAIT_S), True
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
        held = False  # not writable: no other process can write it either
    try:
        yield
    finally:
        if held:
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
        sidecars = {k: _read_shard_sidecar(folder, k) for k in range(stored["n_shards"])}
        _check_identity(folder, stored, {k: info["store"] for k, info in sidecars.items()
                                         if info is not None and isinstance(info.get("store"), dict)})
        return
    try:
        write_file_atomic(manifest, json.dumps(wanted, indent=1).encode())
    except OSError as exc:
        raise _write_error(exc, MANIFEST, folder) from exc


def _shard_bytes(pairs: LayerPairs | LayerStack, spec: StoreSpec, k: int) -> bytes:
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
    layers = pairs.arrays if isinstance(pairs, LayerStack) else (pairs.low, pairs.high)
    tensors = {name: activations(a) for name, a in zip(_activation_names(spec.layers, spec.format_version), layers)}
    tensors |= {
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
    kind = LayerPairs if len(spec.layers) == 2 else LayerStack
    if not isinstance(pairs, kind):
        raise TypeError(f"make_shard must return {kind.__name__} for a store of layers {spec.layers}; got "
                        f"{type(pairs).__name__} for shard {k}.")
    widths = pairs.widths if isinstance(pairs, LayerStack) else (pairs.low.shape[1], pairs.high.shape[1])
    if pairs.n_docs != stop - start or widths != spec.widths or tuple(pairs.layers) != spec.layers:
        raise ValueError(
            f"make_shard returned {pairs.n_docs} documents of widths {widths} at layers {pairs.layers} for "
            f"shard {k}; the store expects {stop - start} documents of widths {spec.widths} at layers "
            f"{spec.layers}."
        )


def _write_shard(folder: Path, spec: StoreSpec, k: int, pairs: LayerPairs | LayerStack, texts_sha256: str) -> None:
    """Write shard ``k``, then its sidecar (the finished mark)."""
    _check_shard_pairs(pairs, spec, k)
    data = _shard_bytes(pairs, spec, k)
    start, stop = spec.doc_range(k)
    manifest = spec.manifest()
    sidecar = {
        "format_version": spec.format_version, "shard": k, "file": shard_name(k), "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "doc_start": start, "doc_stop": stop,
        "n_docs": stop - start, "n_tokens": pairs.n_tokens, "texts_sha256": texts_sha256,
        "n_outliers": int(pairs.extra.get("n_outliers", 0)),
        "store": {key: manifest[key] for key in _IDENTITY},
    }
    try:
        write_file_atomic(folder / shard_name(k), data)
        write_file_atomic(folder / _sidecar_name(k), json.dumps(sidecar).encode())
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


def _shard_finished(folder: Path, spec: StoreSpec, k: int, texts_sha256: str | None = None) -> bool:
    """Whether shard ``k`` has a sidecar that matches it and the spec."""
    info = _read_shard_sidecar(folder, k)
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


def write_store(path, make_shard: Callable[[int, int], LayerPairs | LayerStack], spec: StoreSpec, *, texts=None,
                rank=None, world_size=None,
                wait: bool = True) -> "ShardedLayerPairs | ShardedLayerStack | None":
    """Write (or resume) a sharded store, the shards of this rank only.

    Parameters
    ----------
    path : str or path-like
        The store folder (created if missing; it must be empty or a store
        written with the same ``spec``).
    make_shard : callable
        ``make_shard(start, stop)`` returns the :class:`~clvqlearn.LayerPairs`
        of documents ``start .. stop - 1`` (for a ``spec`` of more than two
        layers, their :class:`~clvqlearn.LayerStack`).
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
    ShardedLayerPairs, ShardedLayerStack or None
        The whole store (a stack for more than two layers), or None when
        ``wait=False``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.data import StoreSpec, write_store
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
    pending = list(range(spec.n_shards))
    free_since: dict[int, float] = {}  # rank -> when its writer lock was first seen free
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
        info = _read_shard_sidecar(folder, k) or {}
        shards.append({key: info.get(key) for key in ("file", "doc_start", "doc_stop", "n_docs", "n_tokens")})
    manifest = dict(spec.manifest(), shards=shards, n_tokens=int(sum(s["n_tokens"] or 0 for s in shards)))
    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / MANIFEST).read_text()) == manifest:
            return  # already summarised: a finished store on a read-only disk opens without writing
    try:
        write_file_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    except OSError as exc:
        raise _write_error(exc, MANIFEST, folder) from exc


