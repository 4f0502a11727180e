"""File plumbing shared by the loaders: locating files, clear errors, reading.

Rules every loader follows through these helpers:

* A missing file raises :class:`FileNotFoundError` naming the expected path,
  the public source of the data and where to put it (data home or ``path=``).
* A malformed file raises :class:`ValueError` naming the file and the problem.
* Empty (whitespace-only) texts are dropped with one :class:`EmptyTextWarning`
  giving their count; a file with no non-empty text at all is an error.
* The network is only used through :func:`hf_load_dataset`, and only when the
  caller asked for it (``download_if_missing=True``), the Hugging Face
  ``datasets`` package is installed and no ``*_OFFLINE`` variable is set.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np

from .._config import DATA_ENV, get_data_home


class EmptyTextWarning(UserWarning):
    """Some rows of a data file had an empty text and were dropped."""


def data_file(data_home, *parts: str) -> Path:
    """``<data home>/<parts...>``; the data home comes from ``_config``."""
    return get_data_home(data_home).joinpath(*parts)


def missing_file_error(expected: Path, *, what: str, get: str, from_path: bool,
                       data_home=None, extra: str = "") -> FileNotFoundError:
    """Build the FileNotFoundError every loader raises for a missing file.

    Parameters
    ----------
    expected : Path
        The file (or folder) that was looked for.
    what : str
        The data set and split, e.g. ``"AG News test split"``.
    get : str
        Where to get it: the public source and its format.
    from_path : bool
        True when ``expected`` came from the user's ``path=``.
    data_home : str or path-like, optional
        The ``data_home=`` argument the loader received.
    extra : str
        A further sentence (e.g. how to download instead).
    """
    lines = [f"{what}: expected {expected}, which does not exist.", f"Get it from {get}."]
    if from_path:
        lines.append("Check the path= you passed (a file, or a folder that holds it).")
    else:
        home = get_data_home(data_home)
        lines.append(
            f"Put it at {expected} (the data home is {home}: pass data_home=, or set "
            f"the {DATA_ENV} environment variable; default ~/clvqlearn_data), "
            "or pass path= pointing at your own copy."
        )
    if extra:
        lines.append(extra)
    return FileNotFoundError(" ".join(lines))


def resolve(path, default: Path, filename: str, *, what: str, get: str, data_home=None,
            extra: str = "") -> Path:
    """The file to read: ``path`` (a file, or a folder holding ``filename``),
    else ``default``; raise :func:`missing_file_error` when it is not there."""
    if path is not None:
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / filename
        from_path = True
    else:
        file = default
        from_path = False
    if not file.is_file():
        raise missing_file_error(file, what=what, get=get, from_path=from_path,
                                 data_home=data_home, extra=extra)
    return file


def read_text(file: Path) -> str:
    """Read a UTF-8 file (a byte-order mark is dropped); ValueError if not UTF-8."""
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc})") from None


def read_json(file: Path):
    """Parse a JSON file; ValueError naming the file when it is not JSON."""
    try:
        return json.loads(read_text(file))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from None


def read_jsonl(file: Path) -> list[dict]:
    """Parse a JSON-lines file (blank lines skipped)."""
    rows = []
    for lineno, line in enumerate(read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}, line {lineno}: not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{file}, line {lineno}: expected a JSON object, got "
                             f"{type(row).__name__}")
        rows.append(row)
    return rows


def read_csv(file: Path, *, n_columns: int | None = None):
    """Read a CSV file as strings, no header inference, strictly.

    Quoted fields may hold commas, doubled quotes and line breaks; blank lines
    are skipped; a byte-order mark is dropped.  Every record must have as many
    fields as the first.  Any malformed record (a file cut inside a quoted
    field, text after a closing quote, a NUL byte, a wrong field count) is a
    ValueError naming the file and the line where the record starts.

    Returns
    -------
    pandas.DataFrame
        Columns 0..n-1 of ``str``; the header, if any, is row 0.  The index
        is the line each record starts on (1-based), for error messages.
    """
    import pandas as pd

    rows, lines = _read_csv_records(file)
    if not rows:
        raise ValueError(f"{file}: the file is empty")
    width = len(rows[0])
    for i, (row, line) in enumerate(zip(rows, lines), start=1):
        if len(row) != width:
            raise ValueError(
                f"{file}, line {line}: row {i} has {len(row)} fields, but the first row has {width}"
            )
    if n_columns is not None and width != n_columns:
        raise ValueError(
            f"{file}: expected {n_columns} columns, found {width} "
            f"(first row: {rows[0][:6]})"
        )
    return pd.DataFrame(rows, dtype=object, index=pd.Index(lines, name="line"))


def _read_csv_records(file: Path) -> tuple[list, list]:
    """Non-blank records of a CSV file and the line each starts on (``strict`` parsing)."""
    rows, lines = [], []
    start = 1
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            try:
                for row in reader:
                    if row:
                        rows.append(row)
                        lines.append(start)
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise ValueError(
                    f"{file}, line {start}: malformed CSV record ({exc}); the file may be cut short "
                    "inside a quoted field, or a quote is not closed."
                ) from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text ({exc})") from None
    return rows, lines


def parse_labels(raw, mapping: dict, file: Path, *, what: str = "label",
                 row_offset: int = 1, lines=None) -> np.ndarray:
    """Map raw label values to class indices; ValueError names the bad value.

    Parameters
    ----------
    raw : sequence
        Raw values (strings or ints) as read from the file.
    mapping : dict
        Raw value (compared after ``str(v).strip()``) to class index.
    file : Path
        For the error message.
    row_offset : int
        Added to the 0-based position to report a row number.
    lines : sequence of int, optional
        The file line of each value (e.g. the index of :func:`read_csv`'s
        frame), named in the error too.
    """
    keys = {str(k): v for k, v in mapping.items()}
    out = np.empty(len(raw), dtype=np.int64)
    for i, value in enumerate(raw):
        key = str(value).strip()
        if key not in keys:
            where = f"{file}, line {lines[i]}" if lines is not None else f"{file}"
            raise ValueError(
                f"{where}: row {i + row_offset} has {what} {value!r}; expected one of "
                f"{sorted(keys)}"
            )
        out[i] = keys[key]
    return out


def drop_empty(texts: list[str], *columns, source) -> tuple[list[str], list]:
    """Drop whitespace-only texts (and the matching entries of ``columns``).

    Warns once with :class:`EmptyTextWarning` and the count; raises ValueError
    when nothing is left.
    """
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        raise ValueError(f"{source}: no non-empty text in {len(texts)} rows")
    dropped = len(texts) - len(keep)
    if not dropped:
        return texts, list(columns)
    warnings.warn(
        f"{source}: dropped {dropped} of {len(texts)} rows whose text is empty",
        EmptyTextWarning, stacklevel=3,
    )
    out = []
    for col in columns:
        if col is None:
            out.append(None)
        elif isinstance(col, np.ndarray):
            out.append(col[keep])
        else:
            out.append([col[i] for i in keep])
    return [texts[i] for i in keep], out


_TRUE = {"1", "true", "yes", "on"}


def offline_reason() -> str | None:
    """Why the Hugging Face hub must not be contacted, or None if it may be."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"the environment variable {var} is set"
    if importlib.util.find_spec("datasets") is None:
        return "the Hugging Face `datasets` package is not installed (pip install datasets)"
    return None


def hf_load_dataset(hf_id: str, split: str, *, what: str, expected: Path):
    """Load a split with Hugging Face ``datasets`` (this may use the network).

    Raises FileNotFoundError (with ``expected`` in the message) when offline
    mode is set or ``datasets`` is missing, so a missing file never turns into
    a hang or a silent empty result.
    """
    reason = offline_reason()
    if reason is not None:
        raise FileNotFoundError(
            f"{what}: {expected} does not exist and the Hugging Face fallback "
            f"({hf_id!r}) cannot be used because {reason}. Put the file there or "
            "pass path= pointing at your copy."
        )
    import datasets  # optional dependency, imported only on request

    return datasets.load_dataset(hf_id, split=split)


def fallback_hint(hf_id: str) -> str:
    """The sentence that tells a user about ``download_if_missing=True``."""
    return (f"Or pass download_if_missing=True to fetch {hf_id!r} with the Hugging Face "
            "`datasets` package (needs network access).")
