"""`LayerPairs`: token activations of two layers of one model, by document.

This is the object :class:`~clvqlearn.LayerPairExtractor` returns and every
concept estimator accepts.  It lives in its own module (rather than in
``extraction.py`` as DESIGN.md first proposed) because the estimators and
the evaluation code need the container without pulling in transformers.

This module imports nothing else of the data wing.  :meth:`LayerPairs.open`
returns a lazy subclass that :mod:`clvqlearn.data.store_reader` defines; the
reader registers its ``open_store`` here when it is imported (which
``clvqlearn.data`` does), so the base class never imports its subclass.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .._folders import replace_folder, sibling_folder
from .._sidecar import read_sidecar

__all__ = ["LayerPairs"]

_FORMAT = "clvqlearn.LayerPairs"
_FORMAT_VERSION = 1
#: the files ``LayerPairs.save`` writes (``overwrite=True`` replaces only a folder holding nothing else)
_SAVED_FILES = frozenset({"low.npy", "high.npy", "offsets.npy", "token_ids.npy", "positions.npy", "meta.json"})
_STORE_OPENER: dict[str, Callable] = {}  # "open": the store reader's open_store, registered by the reader


def rows_of_documents(offsets: np.ndarray, docs) -> np.ndarray:
    """The token rows of documents ``docs`` (non-negative indices), document after document.

    A vectorised ``concatenate([arange(offsets[d], offsets[d + 1]) for d in docs])``.

    Parameters
    ----------
    offsets : ndarray of shape (n_docs + 1,)
        Document ``d`` holds rows ``offsets[d]:offsets[d + 1]``.
    docs : array-like of int
        Documents in the order wanted (repeats allowed).

    Returns
    -------
    ndarray of int64

    Examples
    --------
    >>> rows_of_documents(np.array([0, 2, 5, 6]), [2, 0, 0])
    array([5, 0, 1, 0, 1])
    """
    docs = np.asarray(docs)
    starts, stops = offsets[docs], offsets[docs + 1]
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(starts, lengths) + within).astype(np.int64, copy=False)


def select_documents(offsets: np.ndarray, docs) -> tuple[np.ndarray, np.ndarray]:
    """The token rows of documents ``docs`` and the offsets of those documents taken alone.

    Parameters
    ----------
    offsets : ndarray of shape (n_docs + 1,)
    docs : array-like of int or bool
        Document indices in the order wanted (negative ones count from the
        end), or a boolean mask over the documents.

    Returns
    -------
    rows : ndarray of int64
    new_offsets : ndarray of int64, shape (len(docs) + 1,)

    Raises
    ------
    IndexError
        When an index is out of range.

    Examples
    --------
    >>> select_documents(np.array([0, 2, 5, 6]), [-1, 0])
    (array([5, 0, 1]), array([0, 1, 3]))
    """
    n_docs = offsets.size - 1
    docs = np.asarray(docs)
    if docs.dtype == bool:
        docs = np.flatnonzero(docs)
    if docs.size and (docs.min() < -n_docs or docs.max() >= n_docs):
        raise IndexError(f"document index out of range for {n_docs} documents")
    docs = np.where(docs < 0, docs + n_docs, docs).astype(np.int64)
    lengths = offsets[docs + 1] - offsets[docs]
    return rows_of_documents(offsets, docs), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _register_store_opener(opener: Callable) -> None:
    """Make ``opener(path, layers)`` what :meth:`LayerPairs.open` calls (the store reader registers itself).

    Parameters
    ----------
    opener : callable
        Takes a store folder and a (low, high) pair or None, returns the
        lazy ``LayerPairs`` view of that pair.
    """
    _STORE_OPENER["open"] = opener


@dataclass(eq=False)  # compared and hashed by identity, as LayerStack: fields of arrays have no one truth value
class LayerPairs:
    """Lower- and higher-layer token vectors of a corpus, grouped by document.

    Rows are tokens, concatenated document after document; padding is never
    stored.  The tokens of document ``i`` are rows
    ``offsets[i]:offsets[i + 1]``.

    Samples are DOCUMENTS for scikit-learn: ``len(pairs)`` and
    ``pairs.shape[0]`` count documents, and ``pairs[docs]`` selects them, so
    ``GridSearchCV(est, grid, cv=5).fit(pairs)`` and ``cross_val_score``
    split documents, never the tokens of one document.  The token matrix
    ``np.asarray(pairs)`` is ``(n_tokens, d_low + d_high)``: ``[low | high]``.

    Parameters
    ----------
    low : ndarray of shape (n_tokens, d_low)
        Token vectors of the lower layer (may be a ``np.memmap``).
    high : ndarray of shape (n_tokens, d_high)
        Token vectors of the higher layer.
    offsets : ndarray of shape (n_docs + 1,)
        Document boundaries, starting at 0 and ending at ``n_tokens``.
    token_ids : ndarray of shape (n_tokens,), optional
        Vocabulary ids of the tokens.
    tokens : ndarray of str of shape (n_tokens,), optional
        Token strings, for reports.
    positions : ndarray of shape (n_tokens,), optional
        Position of each token in the model's input sequence (before special
        tokens were dropped), so saliency maps can be aligned.
    layers : tuple of (int, int)
        The non-negative layer indices (0 = embeddings) of ``low`` and
        ``high``.
    model_name : str
        What the extractor loaded.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(5, 3)), high=rng.normal(size=(5, 3)),
    ...                    offsets=np.array([0, 2, 5]))
    >>> len(pairs), pairs.shape, pairs.n_tokens, np.asarray(pairs).shape
    (2, (2, 6), 5, (5, 6))
    >>> pairs[1].n_tokens
    3
    """

    low: np.ndarray
    high: np.ndarray
    offsets: np.ndarray
    token_ids: np.ndarray | None = None
    tokens: np.ndarray | None = None
    positions: np.ndarray | None = None
    layers: tuple[int, int] = (0, 0)
    model_name: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if self.low.ndim != 2 or self.high.ndim != 2:
            raise ValueError(
                f"LayerPairs expects 2-D low and high arrays (n_tokens, d); got shapes "
                f"{self.low.shape} and {self.high.shape}."
            )
        if self.low.shape[0] != self.high.shape[0]:
            raise ValueError(
                f"low and high must have the same number of token rows; got "
                f"{self.low.shape[0]} and {self.high.shape[0]}."
            )
        off = self.offsets
        if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != self.low.shape[0] or np.any(np.diff(off) < 0):
            raise ValueError(
                "offsets must be a non-decreasing 1-D array starting at 0 and ending at "
                f"n_tokens={self.low.shape[0]}; got {off[:5]}...{off[-3:]}"
            )
        n = self.low.shape[0]
        for name in ("token_ids", "tokens", "positions"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value)
                if value.shape != (n,):
                    raise ValueError(f"{name} must have shape ({n},); got {value.shape}.")
                setattr(self, name, value)
        self._check_provenance()

    def _check_provenance(self) -> None:
        """``layers`` must be two integers and ``model_name`` a string (estimators compare them)."""
        layers = self.layers
        if isinstance(layers, (str, bytes)) or len(layers) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in layers
        ):
            raise ValueError(f"layers must be a (low, high) pair of ints; got {layers!r}.")
        if not isinstance(self.model_name, str):
            raise TypeError(f"model_name must be a string; got {type(self.model_name).__name__}.")
        low, high = layers
        self.layers = (int(low), int(high))

    # ------------------------------------------------------------------ sizes
    @property
    def n_docs(self) -> int:
        """Number of documents."""
        return int(self.offsets.size - 1)

    @property
    def n_tokens(self) -> int:
        """Number of token rows."""
        return int(self.low.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, shape (n_docs,)."""
        return np.diff(self.offsets)

    @property
    def doc_index(self) -> np.ndarray:
        """Document number of every token row, shape (n_tokens,)."""
        return np.repeat(np.arange(self.n_docs), self.lengths)

    def __len__(self) -> int:
        return self.n_docs

    def __array__(self, dtype=None, copy=None):
        out = np.hstack([np.asarray(self.low), np.asarray(self.high)])
        return out if dtype is None else out.astype(dtype, copy=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_docs, d_low + d_high): scikit-learn's (n_samples, n_features), samples being documents.

        scikit-learn counts samples through ``shape[0]`` (``KFold``,
        ``GridSearchCV``, ``cross_val_score``) and then selects them with
        ``pairs[indices]``, which takes documents; both must count the same
        thing.  ``np.asarray(pairs).shape`` is ``(n_tokens, d_low + d_high)``.
        """
        return (self.n_docs, self.low.shape[1] + self.high.shape[1])

    # --------------------------------------------------------------- slicing
    def __getitem__(self, index) -> "LayerPairs":
        """Select documents (int, slice, integer array or boolean mask).

        ``pairs[indices, ...]`` (how scikit-learn indexes array-likes) is the same.
        """
        if isinstance(index, tuple) and len(index) == 2 and index[1] is Ellipsis:
            index = index[0]
        docs = np.arange(self.n_docs)[index]
        docs = np.atleast_1d(docs)
        return self.take(docs)

    def take(self, docs) -> "LayerPairs":
        """Return the documents ``docs`` (integer indices), in that order."""
        rows, offsets = select_documents(self.offsets, docs)

        def pick(a):  # a[rows] first: a lazy column of a store reads only these rows
            return None if a is None else np.asarray(a[rows])

        return LayerPairs(
            low=np.asarray(self.low[rows]),
            high=np.asarray(self.high[rows]),
            offsets=offsets,
            token_ids=pick(self.token_ids),
            tokens=pick(self.tokens),
            positions=pick(self.positions),
            layers=self.layers,
            model_name=self.model_name,
            extra=dict(self.extra),
        )

    # ----------------------------------------------------------------- views
    def to_frame(self, which: str = "both"):
        """A pandas DataFrame indexed by (doc, position, token).

        Parameters
        ----------
        which : {"both", "low", "high"}
            Which layer's columns to include.  Columns are named
            ``low_0..`` and ``high_0..``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        if which not in ("both", "low", "high"):
            raise ValueError(f"which must be 'both', 'low' or 'high'; got {which!r}")
        parts, names = [], []
        if which in ("both", "low"):
            parts.append(np.asarray(self.low))
            names += [f"low_{i}" for i in range(self.low.shape[1])]
        if which in ("both", "high"):
            parts.append(np.asarray(self.high))
            names += [f"high_{i}" for i in range(self.high.shape[1])]
        positions = self.positions if self.positions is not None else (
            np.arange(self.n_tokens) - np.repeat(self.offsets[:-1], self.lengths)
        )
        tokens = self.tokens if self.tokens is not None else np.full(self.n_tokens, "")
        index = pd.MultiIndex.from_arrays(
            [self.doc_index, positions, tokens], names=["doc", "position", "token"]
        )
        return pd.DataFrame(np.hstack(parts), index=index, columns=names)

    # ----------------------------------------------------------- persistence
    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write to a folder of ``.npy`` files plus ``meta.json`` (no pickle).

        The files are written into a new folder beside ``path`` and moved into
        place at the end, so an interrupted save leaves no half-written
        folder, and an overwritten save leaves no file of the earlier one
        (such as its ``token_ids.npy``).  A ``LayerPairs.load`` that still
        memory-maps the earlier files keeps reading them.

        Parameters
        ----------
        path : str or path-like
            Folder to create.
        overwrite : bool, default=False
            Replace an earlier ``LayerPairs.save`` folder; without it a
            folder that holds files is refused (``FileExistsError``) and left
            as it is.  A folder holding anything else is refused even with
            ``overwrite=True``.

        Returns
        -------
        pathlib.Path
            The folder.

        Examples
        --------
        >>> import tempfile
        >>> pairs = LayerPairs(low=np.zeros((2, 3)), high=np.ones((2, 3)), offsets=[0, 2])
        >>> folder = pairs.save(tempfile.mkdtemp() + "/pairs")
        >>> pairs.save(folder)
        Traceback (most recent call last):
        ...
        FileExistsError: ... already holds files; pass overwrite=True to replace them.
        >>> LayerPairs.load(pairs.save(folder, overwrite=True)).n_tokens
        2
        """
        path = Path(path)
        _check_save_target(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = sibling_folder(path, ".saving-")
        try:
            self._write_files(staging)
            replace_folder(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    def _write_files(self, path: Path) -> None:
        np.save(path / "low.npy", np.asarray(self.low), allow_pickle=False)
        np.save(path / "high.npy", np.asarray(self.high), allow_pickle=False)
        np.save(path / "offsets.npy", self.offsets, allow_pickle=False)
        for name in ("token_ids", "positions"):
            value = getattr(self, name)
            if value is not None:
                np.save(path / f"{name}.npy", np.asarray(value), allow_pickle=False)
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "layers": list(self.layers),
            "model_name": self.model_name,
            "tokens": None if self.tokens is None else [str(t) for t in self.tokens],
            "extra": {k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool, list))},
        }
        (path / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path, mmap_mode: Literal["r", "c"] | None = "r") -> "LayerPairs":
        """Read a folder written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            The folder.
        mmap_mode : {"r", "c", None}, default="r"
            Memory-map the activation arrays instead of reading them into RAM.

        Returns
        -------
        LayerPairs

        Raises
        ------
        FileNotFoundError
            When the folder holds no ``meta.json``.
        ValueError
            When ``meta.json`` is not valid JSON, describes something else,
            was written by a newer clvqlearn, or lacks a key (the message
            names the file).
        """
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(
                f"{path} is not a saved LayerPairs folder: {meta_file.name} is missing. "
                "Create one with LayerPairs.save(path)."
            )
        meta = read_sidecar(meta_file, format_tag=_FORMAT, max_version=_FORMAT_VERSION,
                            required={"layers": list, "model_name": str, "tokens": (list, type(None)),
                                      "extra": dict})

        def opt(name):
            file = path / f"{name}.npy"
            return np.load(file, allow_pickle=False) if file.is_file() else None

        tokens = meta.get("tokens")
        return cls(
            low=np.load(path / "low.npy", mmap_mode=mmap_mode, allow_pickle=False),
            high=np.load(path / "high.npy", mmap_mode=mmap_mode, allow_pickle=False),
            offsets=np.load(path / "offsets.npy", allow_pickle=False),
            token_ids=opt("token_ids"),
            tokens=None if tokens is None else np.asarray(tokens, dtype=object),
            positions=opt("positions"),
            layers=tuple(meta["layers"]),
            model_name=meta["model_name"],
            extra=meta["extra"],
        )

    @classmethod
    def open(cls, path, layers=None) -> "LayerPairs":
        """Open a sharded activation store lazily (memory-mapped).

        A store is what ``LayerPairExtractor(..., store=path)`` writes (see
        :mod:`clvqlearn.data.store_format`).  The result behaves like LayerPairs:
        ``len`` is the number of documents, slicing and :meth:`take` return
        in-memory LayerPairs, ``np.asarray`` reads the ``[low | high]``
        matrix; it adds ``iter_shards()``, ``iter_documents()`` and
        ``iter_torch()``.  A folder written by :meth:`save` is read with
        :meth:`load` instead.

        Parameters
        ----------
        path : str or path-like
            The store folder (holding ``manifest.json``).
        layers : tuple of (int, int), optional
            The (low, high) pair to read, two of the store's layers.
            Needed for a store of more than two layers (extracted with
            ``layers=(l1, l2, l3, ...)``), which raises a ``ValueError``
            listing its layers without it; default: a two-layer store's
            own pair.

        Returns
        -------
        clvqlearn.data.ShardedLayerPairs

        Examples
        --------
        >>> from clvqlearn import LayerPairs
        >>> LayerPairs.open("/no/such/store")
        Traceback (most recent call last):
        ...
        FileNotFoundError: there is no activation store at /no/such/store: the folder does not exist.
        """
        if "open" not in _STORE_OPENER:  # cannot happen: importing this module imports clvqlearn.data first
            raise RuntimeError("no activation-store reader is registered; import clvqlearn.data.")
        return _STORE_OPENER["open"](path, layers)

    @classmethod
    def concatenate(cls, parts) -> "LayerPairs":
        """Join several LayerPairs (same layers and widths) document-wise."""
        parts = list(parts)
        if not parts:
            raise ValueError("concatenate needs at least one LayerPairs")
        lengths = np.concatenate([p.lengths for p in parts])

        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(
            low=np.concatenate([np.asarray(p.low) for p in parts]),
            high=np.concatenate([np.asarray(p.high) for p in parts]),
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
            token_ids=cat("token_ids"),
            tokens=cat("tokens"),
            positions=cat("positions"),
            layers=parts[0].layers,
            model_name=parts[0].model_name,
        )


def _check_save_target(path: Path, overwrite: bool) -> None:
    """``path`` must be absent, an empty folder, or (with ``overwrite``) an earlier ``LayerPairs.save`` folder.

    ``overwrite`` never replaces a folder that holds anything else, so a
    wrong path cannot delete a user's files.
    """
    if path.name in ("", ".", ".."):
        raise ValueError(f"{path} does not name a folder of its own; give LayerPairs.save a new folder.")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; LayerPairs.save writes a folder.")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{path} already holds files; pass overwrite=True to replace them.")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in _SAVED_FILES)
    if foreign or not (path / "meta.json").is_file():
        raise FileExistsError(
            f"{path} is not a LayerPairs.save folder (it holds {foreign[:5] or 'no meta.json'}); overwrite=True "
            "replaces only an earlier save. Choose another folder."
        )
