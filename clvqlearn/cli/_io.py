"""Files and folders of the command line: output folders, configs, text files.

The library below :mod:`clvqlearn.cli` never decides where files go; these
helpers do, for the ``clvq`` subcommands only.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

CONFIG_FILE = "config.yaml"
TEXTS_FILE = "texts.jsonl"


def writable_folder(path) -> Path:
    """Create ``path`` (a folder) if needed and check that files can be written in it.

    Run before any work, so that results are never computed only to be lost.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OSError
        When the folder cannot be created or written to; the message names it.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     writable_folder(Path(tmp) / "a" / "b").is_dir()
    True
    """
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".clvq-write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"output folder {folder} is not writable ({exc.strerror or exc}); choose another "
                      "folder.") from None
    return folder


def write_config(options, folder: Path, command: str) -> Path:
    """Write ``options`` (a dataclass) as ``config.yaml`` in ``folder``; ``--config`` reads it back.

    Parameters
    ----------
    options : dataclass instance
    folder : pathlib.Path
    command : str
        The subcommand, recorded as a comment.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import tempfile
    >>> from clvqlearn.cli.options import FitOptions
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     text = write_config(FitOptions(k=8), Path(tmp), "fit").read_text()
    >>> "k: 8" in text and text.startswith("# clvq fit")
    True
    """
    import yaml

    body = yaml.safe_dump(asdict(options), sort_keys=False)
    path = folder / CONFIG_FILE
    path.write_text(f"# clvq {command} --config {CONFIG_FILE} repeats this run\n{body}")
    return path


def read_config(folder: Path) -> dict:
    """The options a run recorded in ``folder/config.yaml`` (empty dict when there is none)."""
    import yaml

    path = Path(folder) / CONFIG_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def read_text_file(path) -> tuple[list, np.ndarray | None]:
    """Texts (and labels, when a ``label`` column exists) from ``.txt``, ``.jsonl`` or ``.csv``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    texts : list of str
    labels : ndarray or None

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing file, an unknown suffix, or a file without texts.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist.")
    readers = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}
    if path.suffix not in readers:
        raise ValueError(f"text file {path}: expected a .txt, .jsonl or .csv file.")
    rows = readers[path.suffix](path)
    texts = [str(row["text"]) for row in rows if str(row.get("text", "")).strip()]
    if not texts:
        raise ValueError(f"text file {path} holds no non-empty text.")
    has_labels = rows and all("label" in row for row in rows) and len(texts) == len(rows)
    return texts, np.asarray([row["label"] for row in rows]) if has_labels else None


def _read_txt(path: Path) -> list:
    return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines()]


def _read_jsonl(path: Path) -> list:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"text file {path}: not JSON lines ({exc}).") from None


def _read_csv(path: Path) -> list:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "text" not in rows[0]:
        raise ValueError(f"text file {path}: no 'text' column (columns: {list(rows[0])}).")
    return rows


def write_texts(texts, labels, path: Path) -> Path:
    """Write texts (and labels) as JSON lines, the format :func:`read_text_file` reads."""
    with path.open("w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            row = {"text": text} if labels is None else {"text": text, "label": np.asarray(labels)[i].item()}
            handle.write(json.dumps(row) + "\n")
    return path
