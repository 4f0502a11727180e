"""The data an estimator reads: an in-memory record, or a lazy activation store.

:meth:`ConceptEstimator._validate_input <clvqlearn.concepts._base.ConceptEstimator>`
turns its input into one of two records, both defined here so that the
estimator base and the streamed training build on them without importing
each other:

:class:`_Data`
    Validated arrays in memory: source rows, target rows, document offsets.
:class:`StreamData`
    A validated lazy view of an activation store, read in bounded memory.

``fit(X)`` with ``X`` a lazy view of an activation store (or the store's
path) never loads the store: documents are read in *buffers* of about
:func:`stream_buffer_bytes` bytes.  A buffer holds several *blocks* --
contiguous runs of documents, so reads are sequential -- whose order is
permuted every epoch; inside a buffer the usual length-bucketed, shuffled
document batches of :func:`~clvqlearn.concepts._training.document_batches`
are drawn (:mod:`clvqlearn.concepts._stream`).

A lazy view is LayerPairs whose layers are not in-memory arrays (what
``LayerPairs.open(folder)`` returns for a sharded store), or any object
with ``offsets`` (global document boundaries), ``take(docs)`` (an
in-memory LayerPairs of those documents), ``layers`` and ``model_name``.

Memory: the largest resident set of a streamed fit is about two buffers
(one being assembled from its blocks, one read by the batches) plus the
validation sample, the initialisation sample and the model; it does not
grow with the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.utils import check_array

from .._torch_utils import release_free_memory
from ..data import LayerPairs
from ._training import sample_documents

#: The two layers of LayerPairs, in the order of ``layer_widths_``.
_LAYER_NAMES = ("low", "high")


@dataclass
class _Data:
    """Validated input: source rows, target rows and document offsets."""

    source: np.ndarray
    target: np.ndarray
    offsets: np.ndarray
    dtype: np.dtype

    @property
    def n_tokens(self) -> int:
        return int(self.source.shape[0])


#: Default shuffle-buffer size of a streamed fit, in MiB.
DEFAULT_BUFFER_MB = 256
#: Environment variable that overrides :data:`DEFAULT_BUFFER_MB`.
BUFFER_ENV = "CLVQLEARN_STREAM_BUFFER_MB"
#: Contiguous blocks of documents mixed in one buffer.
BLOCKS_PER_BUFFER = 8


def stream_buffer_bytes() -> int:
    """Bytes of activations one shuffle buffer of a streamed fit holds.

    :data:`DEFAULT_BUFFER_MB` (256) MiB unless the environment variable
    ``CLVQLEARN_STREAM_BUFFER_MB`` says otherwise.

    Returns
    -------
    int

    Examples
    --------
    >>> import os
    >>> os.environ["CLVQLEARN_STREAM_BUFFER_MB"] = "64"
    >>> stream_buffer_bytes() // 2**20
    64
    >>> del os.environ["CLVQLEARN_STREAM_BUFFER_MB"]
    """
    value = os.environ.get(BUFFER_ENV)
    if value is None or value == "":
        return DEFAULT_BUFFER_MB * 2**20
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = float("nan")
    if not megabytes > 0 or not np.isfinite(megabytes):
        raise ValueError(f"{BUFFER_ENV} must be a positive number of MiB; got {value!r}.")
    return max(1, int(megabytes * 2**20))


def is_lazy_pairs(X) -> bool:
    """True for a lazy activation-store view (see the module docstring).

    That is LayerPairs whose layers are not arrays in memory (the sharded
    store's view, ``LayerPairs.open``), or any other object with
    ``offsets``, ``take``, ``layers`` and ``model_name``.  LayerPairs of
    ndarrays (memory maps included) are not lazy.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> is_lazy_pairs(np.zeros((2, 2)))
    False
    >>> is_lazy_pairs(LayerPairs(low=np.zeros((2, 1)), high=np.zeros((2, 1)), offsets=[0, 2]))
    False
    """
    if isinstance(X, LayerPairs):
        return not (isinstance(X.low, np.ndarray) and isinstance(X.high, np.ndarray))
    return all(hasattr(X, name) for name in ("offsets", "take", "layers", "model_name"))


def open_store(path):
    """The lazy view of the activation store at ``path`` (``LayerPairs.open``).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    object
        What ``LayerPairs.open(path)`` returns.
    """
    if not Path(path).expanduser().exists():
        raise TypeError(
            f"X={str(path)!r} is a string or path, but no activation store exists there. Pass LayerPairs, "
            "an array, or the folder of a store written by LayerPairExtractor(store=...); raw texts need a "
            "LayerPairExtractor in front (Pipeline([('extract', LayerPairExtractor(...)), ('concepts', ...)]))."
        )
    return LayerPairs.open(Path(path).expanduser())


def all_documents(view) -> np.ndarray:
    """Every document index of a lazy view (0 .. n_docs - 1)."""
    return np.arange(np.asarray(view.offsets).size - 1, dtype=np.int64)


@dataclass
class StreamData:
    """A validated lazy view: which layers are source and target, and how to read them.

    The streaming counterpart of ``_Data``: ``take(docs)`` reads documents
    into an in-memory ``_Data`` (each read checked by ``check``);
    :meth:`sample`, :meth:`chunks` and :meth:`epoch_buffers` read in the
    patterns the estimators need.
    """

    pairs: object
    source_role: str
    target_role: str
    offsets: np.ndarray
    dtype: np.dtype
    widths: tuple
    check: Callable[[np.ndarray], None] | None = None
    buffer_bytes: int = field(default_factory=stream_buffer_bytes)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_docs(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def buffer_tokens(self) -> int:
        """Token rows per buffer (both layers are read, as float32 at least)."""
        row_bytes = max(4, np.dtype(self.dtype).itemsize) * int(sum(self.widths))
        return max(1, self.buffer_bytes // row_bytes)

    def _layer(self, pairs: LayerPairs, role: str) -> np.ndarray:
        array = check_array(getattr(pairs, role), dtype=[np.float64, np.float32], ensure_all_finite=True,
                            ensure_min_samples=0, input_name=f"X (store layer {role!r})")
        array = array.astype(self.dtype, copy=False)
        if self.check is not None:
            self.check(array)
        return array

    def take(self, docs) -> _Data:
        """Documents ``docs`` (in that order) as an in-memory ``_Data``."""
        release_free_memory()  # before each read: what the previous buffer or chunk left
        docs = np.asarray(docs, dtype=np.int64)
        pairs = self.pairs.take(docs)
        source = self._layer(pairs, self.source_role)
        target = source if self.target_role == self.source_role else self._layer(pairs, self.target_role)
        offsets = np.concatenate([[0], np.cumsum(self.lengths[docs])]).astype(np.int64)
        return _Data(source=source, target=target, offsets=offsets, dtype=np.dtype(self.dtype))

    def sample(self, max_tokens: int, rng) -> _Data:
        """Random whole documents, about ``min(max_tokens, buffer_tokens)`` tokens (in store order)."""
        return self.take(sample_documents(self.lengths, min(int(max_tokens), self.buffer_tokens), rng))

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous document ranges ``[start, stop)`` of about ``buffer_tokens / BLOCKS_PER_BUFFER`` tokens."""
        size = max(1, self.buffer_tokens // BLOCKS_PER_BUFFER)
        cuts = np.searchsorted(self.offsets, np.arange(size, self.n_tokens, size), side="left")
        bounds = np.unique(np.concatenate([[0], cuts, [self.n_docs]]))
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))

    def chunks(self, keep: np.ndarray | None = None, share: tuple[int, int] = (0, 1)):
        """Yield ``_Data`` of about one block each, in store order (statistics passes).

        ``keep`` (boolean, one per document) drops documents; ``share``
        ``(rank, world_size)`` keeps every ``world_size``-th chunk from
        ``rank`` on (the ranks of a distributed fit split a pass).
        """
        for index, docs in enumerate(self.chunk_documents(keep)):
            if index % share[1] == share[0]:
                yield self.take(docs)

    def chunk_documents(self, keep: np.ndarray | None = None):
        """The documents of each chunk of :meth:`chunks` (nothing is read)."""
        for start, stop in self.blocks():
            docs = np.arange(start, stop)
            if keep is not None:
                docs = docs[keep[start:stop]]
            if docs.size:
                yield docs

    def epoch_buffers(self, keep: np.ndarray, rng):
        """Yield one epoch of shuffle buffers: ``BLOCKS_PER_BUFFER`` random blocks each."""
        for docs in self.epoch_documents(keep, rng):
            yield self.take(docs)

    def epoch_documents(self, keep: np.ndarray, rng):
        """The documents of each buffer of :meth:`epoch_buffers`, drawn alike (nothing is read).

        A training epoch plans its batches from these before reading a
        buffer, so a rank reads only its share and a resumed fit skips
        the buffers it has done.
        """
        blocks = self.blocks()
        order = rng.permutation(len(blocks))
        for first in range(0, order.size, BLOCKS_PER_BUFFER):
            docs = [np.arange(*blocks[i]) for i in order[first:first + BLOCKS_PER_BUFFER]]
            docs = np.concatenate(docs)
            docs = docs[keep[docs]]
            if docs.size:
                yield docs



def streamed_fve(data: StreamData, reconstruct: Callable[[_Data], np.ndarray]) -> float:
    """Fraction of the target's variance explained, accumulated chunk by chunk.

    The same quantity as ``fraction_of_variance_explained`` on the whole
    store (per-feature means and squared deviations merged across chunks
    by Chan's formula), in bounded memory.
    """
    n, mean, m2, sse = 0, None, None, 0.0
    for chunk in data.chunks():
        target = np.asarray(chunk.target, dtype=np.float64)
        if target.shape[0] == 0:
            continue
        sse += float(((target - np.asarray(reconstruct(chunk), dtype=np.float64)) ** 2).sum())
        size, chunk_mean = target.shape[0], target.mean(axis=0)
        chunk_m2 = ((target - chunk_mean) ** 2).sum(axis=0)
        if mean is None:
            n, mean, m2 = size, chunk_mean, chunk_m2
            continue
        delta, total = chunk_mean - mean, n + size
        m2 = m2 + chunk_m2 + delta**2 * (n * size / total)
        mean, n = mean + delta * (size / total), total
    sst = 0.0 if m2 is None else float(m2.sum())
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst
