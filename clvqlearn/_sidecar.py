"""One reader for the JSON files that describe saved folders.

Saved ``LayerPairs`` (``meta.json``), activation stores (``manifest.json``),
task-classifier checkpoints (``clvqlearn_classifier.json``) and saved
estimators (``config.json``) each start with a format tag and a version.
:func:`read_sidecar` reads any of them with the same strictness: the file
must exist, be UTF-8 JSON holding an object, carry the expected format tag
and a version this clvqlearn can read, and hold the required keys with
their JSON types.  Every error is a ``FileNotFoundError`` or ``ValueError``
that names the file.

Examples
--------
>>> import json, tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "meta.json"
>>> _ = path.write_text(json.dumps({"format": "demo", "version": 2, "layers": [1, 2]}))
>>> read_sidecar(path, format_tag="demo", max_version=2, required={"layers": list})["layers"]
[1, 2]
>>> read_sidecar(path, format_tag="demo", max_version=1)
Traceback (most recent call last):
...
ValueError: ... was written with format version 2; this clvqlearn reads up to version 1. Upgrade clvqlearn.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_sidecar"]


def read_sidecar(path, *, format_tag: str, max_version: int, version_key: str = "version",
                 required: dict | None = None, missing_hint: str = "") -> dict:
    """Read and check a folder's JSON description.

    Parameters
    ----------
    path : str or path-like
        The JSON file.
    format_tag : str
        The value its ``"format"`` key must hold.
    max_version : int
        The newest format version this clvqlearn reads.  A missing version
        counts as 0 (the first files had none).
    version_key : str, default="version"
        Where the version is kept (the store says ``"format_version"``).
    required : dict of str to type or tuple of types, optional
        Keys that must be present, with their JSON types (``bool`` is not
        accepted for ``int``).
    missing_hint : str, default=""
        Appended to the ``FileNotFoundError`` for a missing file (what
        writes such a folder).

    Returns
    -------
    dict
        The parsed JSON object.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        For malformed JSON, another format, a newer version, a missing key
        or a value of the wrong JSON type.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found{': ' + missing_hint if missing_hint else '.'}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(content).__name__}.")
    if content.get("format") != format_tag:
        raise ValueError(f"{path} holds format {content.get('format')!r}, not {format_tag!r}.")
    _check_version(path, content.get(version_key, 0), max_version)
    _check_required(path, content, required or {})
    return content


def _check_version(path: Path, version, max_version: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{path}: the format version must be a non-negative integer, got {version!r}.")
    if version > max_version:
        raise ValueError(
            f"{path} was written with format version {version}; this clvqlearn reads up to version "
            f"{max_version}. Upgrade clvqlearn."
        )


def _check_required(path: Path, content: dict, required: dict) -> None:
    missing = [key for key in required if key not in content]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; expected {sorted(required)}.")
    for key, kind in required.items():
        value = content[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"{path}: {key!r} must be a JSON {names}, got {type(value).__name__} ({value!r:.60}).")
