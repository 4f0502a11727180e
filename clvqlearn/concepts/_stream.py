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
from ._training import ArrayDocuments, DocumentSource, validation_size


class StreamedPart:
    """The training documents of a store, read one shuffle buffer at a time."""

    def __init__(self, data: StreamData, keep: np.ndarray):
        self.data, self.keep = data, keep

    @property
    def n_docs(self) -> int:
        return int(self.keep.sum())

    def batches(self, config, rng, shuffle, device):
        if shuffle:
            buffers = self.data.epoch_buffers(self.keep, rng)
        else:
            buffers = self.data.chunks(self.keep)
        for buffer in buffers:
            part = ArrayDocuments(buffer.source, buffer.target, buffer.offsets, device=device)
            yield from part.part(np.arange(buffer.offsets.size - 1)).batches(config, rng, shuffle, device)


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
