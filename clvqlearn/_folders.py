"""Write a folder beside its target, then swap it into place.

Saved pairs (``LayerPairs.save``) and the command line's output folders
are written into a hidden sibling and moved into place only when complete,
so an interrupted write never leaves a folder that looks finished, and an
earlier folder is removed only after the new one has replaced it.

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

import secrets
import shutil
from pathlib import Path

__all__ = ["replace_folder", "sibling_folder"]


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
