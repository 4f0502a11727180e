"""Where clvqlearn looks for data and keeps its caches.

Two settings, each an environment variable with a sensible default:

``CLVQLEARN_DATA``
    The data home: the folder that holds ``ag_news/``, ``jigsaw/``,
    ``eraser_movie/`` and ``movie_reviews/``.  Default ``~/clvqlearn_data``.
``CLVQLEARN_CACHE``
    Where derived artefacts are cached (dequantised GGUF weights as
    safetensors, fine-tuned classifiers).  Default
    ``$XDG_CACHE_HOME/clvqlearn`` or ``~/.cache/clvqlearn``.

Examples
--------
>>> from clvqlearn._config import get_data_home
>>> get_data_home("/tmp/my_data").name
'my_data'
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CLVQLEARN_DATA"
CACHE_ENV = "CLVQLEARN_CACHE"


def get_data_home(data_home: str | os.PathLike | None = None) -> Path:
    """Return the data home folder.

    Parameters
    ----------
    data_home : str or path-like, optional
        Explicit folder.  When None, ``$CLVQLEARN_DATA`` or
        ``~/clvqlearn_data``.

    Returns
    -------
    pathlib.Path
        The folder (not created, not checked).
    """
    if data_home is not None:
        return Path(data_home).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / "clvqlearn_data"


def get_cache_home(cache_home: str | os.PathLike | None = None) -> Path:
    """Return (and create) the cache folder.

    Parameters
    ----------
    cache_home : str or path-like, optional
        Explicit folder.  When None, ``$CLVQLEARN_CACHE``, else
        ``$XDG_CACHE_HOME/clvqlearn``, else ``~/.cache/clvqlearn``.

    Returns
    -------
    pathlib.Path
        The folder, created if needed.
    """
    if cache_home is not None:
        path = Path(cache_home).expanduser()
    elif os.environ.get(CACHE_ENV):
        path = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        path = base / "clvqlearn"
    path.mkdir(parents=True, exist_ok=True)
    return path
