"""Write a folder or a file beside its target, then swap it into place.

Saved pairs (``LayerPairs.save``) and the command line's output folders
are written into a hidden sibling and moved into place only when complete,
so an interrupted write never leaves a folder that looks finished, and an
earlier folder is removed only after the new one has replaced it.
Single files (a store's shards and manifest, a fit's checkpoint) go through
:func:`write_file_atomic` the same way.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> target = Path(tempfile.mkdtemp()) / "out"
>>> stage = sibling_folder(target, ".writing-")
>>> _ = (stage / "result.txt").write_text("done")
>>> replace_folder(stage, target)
>>> (target / "result.txt").read_text(), stage.exists()
('done', False)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["replace_folder", "sibling_folder", "write_file_atomic"]


def sibling_folder(target: Path, tag: str) -> Path:
    """Create and return a new hidden folder ``.<name><tag><random>`` beside ``target``.

    Made with ``mkdir``, so it gets the permissions the umask gives any new
    folder (``tempfile.mkdtemp`` would make it private).
    """
    folder = target.parent / f".{target.name}{tag}{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def replace_folder(stage: Path, target: Path, old_tag: str = ".old-") -> None:
    """Move the finished ``stage`` to ``target``; an existing ``target`` is removed only after the move.

    If the move fails, the earlier ``target`` is put back and the error is
    raised; the caller removes ``stage``.
    """
    if not target.exists():
        stage.rename(target)
        return
    old = target.parent / f".{target.name}{old_tag}{secrets.token_hex(4)}"
    target.rename(old)
    try:
        stage.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_file_atomic(path: Path, data: bytes, *, sync_folder: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: a temporary sibling, flushed, fsynced, renamed into place.

    The temporary name is ``.<name>.tmp-<pid>-<hex>`` (a store's writers
    clean such leftovers up); it never outlives a failed write.
    ``sync_folder`` also fsyncs the folder, so that the rename itself
    reaches the disk (where the platform allows it).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "state.json"
    >>> write_file_atomic(path, b'{"step": 3}', sync_folder=True)
    >>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    (b'{"step": 3}', ['state.json'])
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_folder:
        with contextlib.suppress(OSError):
            descriptor = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
