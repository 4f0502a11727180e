"""Files and folders of the command line: output folders, configs, text files.

The library below :mod:`clvqlearn.cli` never decides where files go; these
helpers do, for the ``clvq`` subcommands only.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .._folders import replace_folder, sibling_folder

CONFIG_FILE = "config.yaml"
TEXTS_FILE = "texts.jsonl"
#: a run's outputs are written into ``.<name>.clvq-partial-<random>`` next to the output folder
PARTIAL_TAG = ".clvq-partial-"


def check_inputs_outside(output, inputs: dict) -> Path:
    """Refuse an output folder that is an input, lies inside one, or holds one.

    Writing into an input folder would mix outputs with what is read (and a
    replaced output folder would take the inputs inside it along).

    Parameters
    ----------
    output : str or path-like
    inputs : dict
        Option name -> a path, a list of paths or None.  Only paths that
        exist are compared (a model can also be a packaged or hub name).

    Returns
    -------
    pathlib.Path
        ``output`` with ``~`` expanded.

    Raises
    ------
    ValueError
        Naming the option and both folders.

    Examples
    --------
    >>> check_inputs_outside("/tmp/out", {"--pairs": None}).name
    'out'
    """
    folder = Path(output).expanduser()
    target = folder.resolve()
    for option, values in inputs.items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value is None or not Path(value).expanduser().exists():
                continue
            source = Path(value).expanduser().resolve()
            if target == source or source in target.parents:
                raise ValueError(f"output folder {folder} is {'the' if target == source else 'inside the'} "
                                 f"input {option} {value}; choose an output folder outside the inputs.")
            if target in source.parents:
                raise ValueError(f"output folder {folder} holds the input {option} {value}; choose an output "
                                 "folder outside the inputs.")
    return folder


@contextmanager
def staged_output(path, *, overwrite: bool = False):
    """Write a run's outputs into a hidden sibling folder that becomes ``path`` only when the run ends well.

    Checked before any work: ``path`` must not already hold files unless
    ``overwrite``, and its parent must be writable.  If the run fails or is
    interrupted, the partial folder (and any parent folder created for it)
    is removed, so a folder named ``path`` is always a finished run, and an
    existing one is replaced only by a finished run.

    Parameters
    ----------
    path : str or path-like
    overwrite : bool, default=False
        Replace an existing non-empty folder (once the new run has finished).

    Yields
    ------
    pathlib.Path
        The folder to write in.

    Raises
    ------
    FileExistsError
        When ``path`` holds files and ``overwrite`` is False.
    OSError
        When the folder cannot be created or written to; the message names it.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with staged_output(Path(tmp) / "a" / "b") as stage:
    ...         _ = (stage / "result.txt").write_text("done")
    ...     (Path(tmp) / "a" / "b" / "result.txt").read_text()
    'done'
    """
    target = Path(path).expanduser()
    _check_replaceable(target, overwrite)
    created = _missing_parents(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = sibling_folder(target, PARTIAL_TAG)
    except OSError as exc:
        _remove_empty(created)
        raise OSError(f"output folder {target} is not writable ({exc.strerror or exc}); choose another "
                      "folder.") from None
    try:
        yield stage
        replace_folder(stage, target, old_tag=".clvq-old-")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        raise


def _check_replaceable(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"output folder {target} is not writable (a file of that name exists); choose "
                              "another folder.")
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(f"output folder {target} already holds files (an earlier run?); pass --overwrite "
                              "true to replace it once this run has finished, or choose another folder.")
    here = Path.cwd().resolve()
    if target.is_dir() and (target.resolve() == here or target.resolve() in here.parents):
        raise ValueError(f"output folder {target} holds the current directory; choose a folder inside it or "
                         "elsewhere.")
    if overwrite and target.is_dir() and any(target.iterdir()) and not (target / CONFIG_FILE).is_file():
        raise FileExistsError(f"output folder {target} holds files but no {CONFIG_FILE}, so it is not the output of "
                              "an earlier clvq run; --overwrite replaces only such a folder. Choose another folder.")


@contextmanager
def resumable_folder(path):
    """The output folder of a run that resumes in place (``clvq table``, ``clvq judge``).

    Created (and checked writable) before any work.  If the run fails
    before it wrote anything but ``config.yaml``, a folder it created is
    removed again; finished steps of a longer run stay for the next one.

    Parameters
    ----------
    path : str or path-like

    Yields
    ------
    pathlib.Path
    """
    target = Path(path).expanduser()
    created = _missing_parents(target) if target.exists() else [target, *_missing_parents(target)]
    folder = writable_folder(target)
    try:
        yield folder
    except BaseException:
        if created and {p.name for p in folder.iterdir()} <= {CONFIG_FILE}:
            shutil.rmtree(folder, ignore_errors=True)
            _remove_empty(created[1:])
        raise


def _missing_parents(target: Path) -> list:
    """The parent folders of ``target`` that do not exist yet, deepest first."""
    return [parent for parent in target.parents if not parent.exists()]


def _remove_empty(folders) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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

    values = {name: value for name, value in asdict(options).items() if name != "overwrite"}
    body = yaml.safe_dump(values, sort_keys=False)
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
