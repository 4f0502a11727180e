"""`LayerStack`: token activations of several layers of one model, by document.

What :class:`~clvqlearn.LayerPairExtractor` returns for more than two
layers, extracted in one forward pass.  Every layer shares one set of rows
(the same documents, offsets, tokens and positions), so any two of its
layers make a :class:`~clvqlearn.LayerPairs` without copying:
:meth:`LayerStack.pair` hands the stack's own arrays to the pair, and a
sweep over layer pairs needs no second extraction.

This module imports only :mod:`clvqlearn.data.pairs`.  The lazy view of a
store of several layers, :class:`~clvqlearn.ShardedLayerStack`, is a
subclass defined by :mod:`clvqlearn.data.store_reader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .pairs import LayerPairs, select_documents

__all__ = ["LayerStack"]


@dataclass(eq=False)  # compared and hashed by identity: fields of arrays have no one truth value
class LayerStack:
    """Token vectors of several layers of a corpus, grouped by document.

    Rows are tokens, concatenated document after document, the same rows in
    every layer; the tokens of document ``i`` are rows
    ``offsets[i]:offsets[i + 1]``.  As for :class:`~clvqlearn.LayerPairs`,
    ``len(stack)`` counts documents and ``stack[docs]`` selects them.
    Concept estimators read two layers: give them ``stack.pair(low, high)``.

    Parameters
    ----------
    arrays : sequence of ndarray of shape (n_tokens, d)
        One array per layer, in the order of ``layers`` (may be
        ``np.memmap``).
    layers : tuple of int
        The non-negative layer indices (0 = embeddings), strictly
        increasing, one per array.
    offsets : ndarray of shape (n_docs + 1,)
        Document boundaries, starting at 0 and ending at ``n_tokens``.
    token_ids, tokens, positions : ndarray of shape (n_tokens,), optional
        As in :class:`~clvqlearn.LayerPairs`.
    model_name : str
        What the extractor loaded.
    extra : dict
        Extraction settings and counts (``n_outliers``), passed on to every pair.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn.data import LayerStack
    >>> rng = np.random.default_rng(0)
    >>> stack = LayerStack([rng.normal(size=(5, 3)) for _ in range(3)], layers=(2, 4, 6),
    ...                    offsets=[0, 2, 5])
    >>> len(stack), stack.n_tokens, stack.layers
    (2, 5, (2, 4, 6))
    >>> pairs = stack.pair(2, 6)
    >>> pairs.layers, pairs.low is stack.layer(2), pairs.high is stack.layer(6)
    ((2, 6), True, True)
    >>> stack[1].pair(4, 6).n_tokens
    3
    """

    arrays: tuple
    layers: tuple
    offsets: np.ndarray
    token_ids: np.ndarray | None = None
    tokens: np.ndarray | None = None
    positions: np.ndarray | None = None
    model_name: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.arrays = tuple(self.arrays)
        self.layers = _check_layers(self.layers)
        if len(self.arrays) != len(self.layers):
            raise ValueError(f"LayerStack needs one array per layer; got {len(self.arrays)} arrays for layers "
                             f"{self.layers}.")
        shapes = [tuple(a.shape) for a in self.arrays]
        if any(len(s) != 2 for s in shapes) or len({s[0] for s in shapes}) != 1:
            raise ValueError(f"LayerStack expects 2-D arrays (n_tokens, d) with the same number of rows; got "
                             f"shapes {shapes}.")
        # the checks of LayerPairs (offsets, token columns, provenance) on the first array
        check = LayerPairs(low=self.arrays[0], high=self.arrays[0], offsets=self.offsets, token_ids=self.token_ids,
                           tokens=self.tokens, positions=self.positions, model_name=self.model_name)
        self.offsets, self.token_ids, self.tokens, self.positions = (check.offsets, check.token_ids, check.tokens,
                                                                     check.positions)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_docs={self.n_docs}, n_tokens={self.n_tokens}, layers={self.layers}, "
                f"widths={self.widths}, model_name={self.model_name!r})")

    # ------------------------------------------------------------------ sizes
    @property
    def n_docs(self) -> int:
        """Number of documents."""
        return int(self.offsets.size - 1)

    @property
    def n_tokens(self) -> int:
        """Number of token rows."""
        return int(self.arrays[0].shape[0])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, shape (n_docs,)."""
        return np.diff(self.offsets)

    @property
    def widths(self) -> tuple:
        """Width of every layer, in the order of ``layers``."""
        return tuple(int(a.shape[1]) for a in self.arrays)

    def __len__(self) -> int:
        return self.n_docs

    # ------------------------------------------------------------------ layers
    def layer(self, layer: int):
        """The array of one layer (the stack's own, not a copy).

        Parameters
        ----------
        layer : int
            One of ``layers``.

        Returns
        -------
        ndarray of shape (n_tokens, d)
        """
        return self.arrays[self._index(layer)]

    def pair(self, low: int, high: int) -> LayerPairs:
        """The :class:`~clvqlearn.LayerPairs` of two of the stack's layers, without copying.

        Parameters
        ----------
        low, high : int
            Two of ``layers``, ``low <= high`` (equal: one layer as both).

        Returns
        -------
        LayerPairs
            Its ``low`` and ``high`` are the stack's arrays; offsets, tokens
            and positions are shared too.

        Raises
        ------
        ValueError
            When a layer is not in the stack, or ``low > high``.
        """
        low_i, high_i = _pair_indices(self.layers, low, high)
        return LayerPairs(low=self.arrays[low_i], high=self.arrays[high_i], offsets=self.offsets,
                          token_ids=self.token_ids, tokens=self.tokens, positions=self.positions,
                          layers=(self.layers[low_i], self.layers[high_i]), model_name=self.model_name,
                          extra=dict(self.extra))

    def _index(self, layer) -> int:
        return _pair_indices(self.layers, layer, layer)[0]

    # ------------------------------------------------------------------ what a stack is not
    @property
    def low(self):
        """Not defined: a stack holds several layers (use :meth:`pair`)."""
        raise _not_a_pair(self.layers)

    @property
    def high(self):
        """Not defined: a stack holds several layers (use :meth:`pair`)."""
        raise _not_a_pair(self.layers)

    def __array__(self, dtype=None, copy=None):
        raise _not_a_pair(self.layers)

    # ------------------------------------------------------------------ documents
    def __getitem__(self, index) -> LayerStack:
        """Select documents (int, slice, integer array or boolean mask); ``stack[docs, ...]`` too."""
        if isinstance(index, tuple) and len(index) == 2 and index[1] is Ellipsis:
            index = index[0]
        return self.take(np.atleast_1d(np.arange(self.n_docs)[index]))

    def take(self, docs) -> LayerStack:
        """Return the documents ``docs`` (integer indices or a boolean mask), in that order, in memory."""
        rows, offsets = select_documents(self.offsets, docs)

        def pick(a):  # a[rows] first: a lazy column of a store reads only these rows
            return None if a is None else np.asarray(a[rows])

        return LayerStack(arrays=tuple(np.asarray(a[rows]) for a in self.arrays), layers=self.layers, offsets=offsets,
                          token_ids=pick(self.token_ids), tokens=pick(self.tokens), positions=pick(self.positions),
                          model_name=self.model_name, extra=dict(self.extra))


def _check_layers(layers) -> tuple:
    """Layer indices: non-negative integers, strictly increasing, at least one."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) < 1:
        raise ValueError(f"layers must be a sequence of layer indices; got {layers!r}.")
    values = []
    for v in layers:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"layers must be non-negative integers; got {tuple(layers)!r}.")
        values.append(int(v))
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"layers must be strictly increasing; got {tuple(values)}.")
    return tuple(values)


def _pair_indices(layers: tuple, low, high) -> tuple[int, int]:
    """Positions of ``low`` and ``high`` in ``layers`` (ValueError naming the layers held)."""
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in layers:
            raise ValueError(f"layer {value!r} is not among the layers held, {tuple(layers)}; choose a pair of "
                             "them.")
    if low > high:
        raise ValueError(f"a pair is (low, high) with low <= high; got ({low}, {high}).")
    return layers.index(int(low)), layers.index(int(high))


def _not_a_pair(layers: tuple) -> TypeError:
    low, high = layers[0], layers[-1]
    return TypeError(
        f"this holds {len(layers)} layers {tuple(layers)}, not a (low, high) pair: choose two of them with "
        f".pair(low, high), e.g. .pair({low}, {high}), and give the LayerPairs it returns to the estimator."
    )
