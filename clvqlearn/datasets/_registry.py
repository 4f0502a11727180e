"""`load_dataset(name, **kw)`: one entry point for every loader, by name."""

from __future__ import annotations

from ._base import TextDataset
from .ag_news import load_ag_news
from .bbc_news import load_bbc_news
from .eraser_movie import load_eraser_movie
from .jigsaw import load_jigsaw
from .movie_reviews import load_movie_reviews

LOADERS = {
    "ag_news": load_ag_news,
    "jigsaw": load_jigsaw,
    "eraser_movie": load_eraser_movie,
    "movie_reviews": load_movie_reviews,
    "bbc_news": load_bbc_news,
}


def load_dataset(name: str, *args, **kwargs) -> TextDataset:
    """Load a data set by name.

    Parameters
    ----------
    name : {"ag_news", "jigsaw", "eraser_movie", "movie_reviews", "bbc_news"}
        Case and ``-`` / ``_`` / space are ignored (``"AG-News"`` works).
    *args, **kwargs
        Passed to the loader (``load_<name>``), e.g. ``split="dev"``,
        ``data_home=``, ``path=``.

    Returns
    -------
    TextDataset

    Raises
    ------
    ValueError
        For an unknown name.

    Examples
    --------
    >>> from clvqlearn.datasets import load_dataset
    >>> ds = load_dataset("bbc_news")  # doctest: +SKIP
    >>> ds.name  # doctest: +SKIP
    'bbc_news'
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[key](*args, **kwargs)
