"""The append-only JSONL files of the LLM runs: write a record, read them back, resume.

The judge (:mod:`~clvqlearn.evaluation.judge`), the LLM annotator of a
study (:mod:`~clvqlearn.evaluation.study`) and the autointerp runs
(:mod:`~clvqlearn.evaluation.autointerp`) append one JSON object per answer
as soon as it comes, each with ``item_id``, ``judge``, ``fingerprint``,
``status`` and ``errors``.  A rerun reads the file back and skips what is
already there; the latest record of an item wins.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "run.jsonl"
>>> append_record(path, {"item_id": "a", "judge": "j", "fingerprint": "f1", "status": "ok", "errors": []})
>>> append_record(path, {"item_id": "b", "judge": "j", "fingerprint": "f2", "status": "missing",
...                      "errors": ["timeout"]})
>>> done_fingerprints(path, "j")  # "b" failed on the backend: asked again
{'a': 'f1'}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def read_lines(path: Path) -> Iterator:
    """The parsed JSON value of each line of ``path``; a line that is not JSON (cut by an interruption) is skipped."""
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def is_failed(record: dict) -> bool:
    """A missing answer caused by the backend (timeout, rate limit, server error): worth asking again."""
    return record.get("status") == "missing" and bool(record.get("errors"))


def latest_records(path: Path, judge: str) -> dict:
    """item_id -> the latest record of this judge in ``path`` (empty when the file does not exist).

    Items whose latest record is missing because of backend errors
    (:func:`is_failed`) are left out, so a rerun asks them again; items the
    judge answered unreadably stay (the same judge would answer the same).
    """
    done: dict = {}
    if not path.exists():
        return done
    for rec in read_lines(path):  # a line cut by an interruption is skipped: that item is asked again
        if isinstance(rec, dict) and rec.get("judge") == judge:
            item_id = str(rec.get("item_id"))
            if is_failed(rec):
                done.pop(item_id, None)
            else:
                done[item_id] = rec
    return done


def done_fingerprints(path: Path, judge: str) -> dict:
    """item_id -> fingerprint of the records this judge already has in ``path`` (see :func:`latest_records`)."""
    return {item_id: rec.get("fingerprint") for item_id, rec in latest_records(path, judge).items()}


def append_record(path: Path, record: dict) -> None:
    """Append ``record`` as one line, after ending a last line that an interruption left without its newline."""
    with path.open("a+b") as fh:
        fh.seek(0, 2)
        if fh.tell() > 0:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
