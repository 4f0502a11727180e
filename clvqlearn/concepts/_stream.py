"""Streamed training: the trainable estimators learn from an activation store.

The store is read as a :class:`~clvqlearn.concepts._data.StreamData` (see
:mod:`clvqlearn.concepts._data` for the buffers, blocks and the memory
they take).  :class:`StoreDocuments` is the training loop's
:class:`~clvqlearn.concepts._training.DocumentSource` over it: the
validation documents (split BY DOCUMENT) are a random sample capped at one
buffer's worth of tokens, held in memory for the whole fit, and the
training documents are read one shuffle buffer at a time.  Initialisation
(codebook k-means, read-out least squares, standardisation) uses a random
sample of whole documents (:func:`initial_sample`).
"""

from __future__ import annotations

import numpy as np

from ._data import StreamData
from ._distributed import SINGLE
from ._training import ArrayDocuments, DocumentSource, batch_share, plan_batches, shared_batch, validation_size


class StreamedPart:
    """The training documents of a store, read one shuffle buffer at a time.

    Each buffer's batches are planned from the documents' lengths before
    anything is read: a resumed epoch skips whole buffers unread, and a rank
    of a data-parallel fit reads only the documents of its shares (every
    document of the buffer for per-token batches, whose rows mix them).
    """

    def __init__(self, data: StreamData, keep: np.ndarray):
        self.data, self.keep = data, keep

    @property
    def n_docs(self) -> int:
        return int(self.keep.sum())

    def batches(self, config, rng, shuffle, device, *, skip=0, comm=SINGLE):
        if shuffle:
            buffers = self.data.epoch_documents(self.keep, rng)
        else:
            buffers = self.data.chunk_documents(self.keep)
        for docs in buffers:
            lengths = self.data.lengths[docs]
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            plan = plan_batches(offsets, np.arange(docs.size), config, rng, shuffle)
            if skip >= len(plan):
                skip -= len(plan)
                continue
            shares = [batch_share(index, config.batch_unit, lengths, comm) for index in plan[skip:]]
            skip = 0
            yield from self._read_shares(docs, shares, config.batch_unit, device, comm)

    def _read_shares(self, docs, shares, unit, device, comm):
        """Read the buffer's documents that ``shares`` use, then yield their batches."""
        if comm.active and unit == "documents":
            needed = np.unique(np.concatenate([share[0] for share in shares]))
        else:
            needed = np.arange(docs.size)
        buffer = self.data.take(docs[needed])
        held = ArrayDocuments(buffer.source, buffer.target, buffer.offsets, device=device)
        lengths = np.diff(held.offsets)
        for index, start, total in shares:
            local = np.searchsorted(needed, index) if unit == "documents" else index
            yield shared_batch(held.source_t, held.target_t, held.offsets, lengths, (local, start, total), unit,
                               device, comm)


class StoreDocuments(DocumentSource):
    """A :class:`~clvqlearn.concepts._training.DocumentSource` over an activation store.

    ``split`` holds out random whole documents, at most
    ``validation_fraction`` of the documents and at most one buffer of
    tokens (read into memory once); the rest are streamed.
    """

    def __init__(self, data: StreamData):
        self.data = data

    def split(self, validation_fraction, rng):
        data = self.data
        order = rng.permutation(data.n_docs)
        n_val = validation_size(data.n_docs, validation_fraction)
        keep = np.ones(data.n_docs, dtype=bool)
        if not n_val:
            empty = np.zeros((0, 1), np.float32)
            return StreamedPart(data, keep), ArrayDocuments(empty, empty, [0]).part([])
        candidates = order[:n_val]
        within = np.cumsum(data.lengths[candidates]) <= data.buffer_tokens
        val_docs = np.sort(candidates[within])
        if val_docs.size < 2:
            val_docs = np.sort(candidates[:2])
        keep[val_docs] = False
        held = data.take(val_docs)
        validation = ArrayDocuments(held.source, held.target, held.offsets)
        return StreamedPart(data, keep), validation.part(np.arange(val_docs.size))


def initial_sample(data, rng, max_tokens: int | None = None):
    """What an estimator initialises from: the data itself, or a document sample of a store.

    In-memory data are returned unchanged (``rng`` is not touched, so
    in-memory fits stay as they were); a :class:`StreamData` gives random
    whole documents, about ``max_tokens`` tokens (``INIT_MAX_SAMPLES`` by
    default), at most one buffer's worth.
    """
    if not isinstance(data, StreamData):
        return data
    if max_tokens is None:
        from ._init import INIT_MAX_SAMPLES

        max_tokens = INIT_MAX_SAMPLES
    return data.sample(max_tokens, rng)


def training_source(data) -> tuple:
    """``(source, target, offsets)`` arguments of ``train_module`` for in-memory or streamed data."""
    if isinstance(data, StreamData):
        return StoreDocuments(data), None, None
    return data.source, data.target, data.offsets
