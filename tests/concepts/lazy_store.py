"""A test-only lazy activation store: memory-mapped ``.npy`` files.

It implements the protocol the estimators stream from (``offsets``,
``take(docs)`` returning in-memory LayerPairs, ``layers``, ``model_name``,
``len`` = documents, ``shape``, document indexing) and pickles as its path,
so a sweep on a cluster ships no activations.  It records how many token
rows each read returned, so tests can check that reads stay bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clvqlearn import LayerPairs


def write_store(path, pairs: LayerPairs) -> Path:
    """Write ``pairs`` as a folder of .npy files the :class:`NpyStore` opens."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "low.npy", np.asarray(pairs.low))
    np.save(path / "high.npy", np.asarray(pairs.high))
    np.save(path / "offsets.npy", np.asarray(pairs.offsets))
    (path / "meta.json").write_text(json.dumps({"layers": list(pairs.layers), "model_name": pairs.model_name}))
    return path


class NpyStore:
    """Lazy, memory-mapped view of a folder written by :func:`write_store`."""

    def __init__(self, path):
        self.path = Path(path)
        self.low = np.load(self.path / "low.npy", mmap_mode="r")
        self.high = np.load(self.path / "high.npy", mmap_mode="r")
        self.offsets = np.load(self.path / "offsets.npy")
        meta = json.loads((self.path / "meta.json").read_text())
        self.layers, self.model_name = tuple(meta["layers"]), meta["model_name"]
        self.reads: list[int] = []

    def __reduce__(self):
        return (NpyStore, (str(self.path),))

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self):
        return (len(self), self.low.shape[1] + self.high.shape[1])

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.take(np.arange(len(self))), dtype=dtype)

    def __getitem__(self, index) -> LayerPairs:
        return self.take(np.atleast_1d(np.arange(len(self))[index]))

    def take(self, docs) -> LayerPairs:
        docs = np.asarray(docs, dtype=np.int64)
        starts, stops = self.offsets[docs], self.offsets[docs + 1]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if docs.size else np.zeros(0, int)
        self.reads.append(int(rows.size))
        return LayerPairs(low=np.asarray(self.low[rows]), high=np.asarray(self.high[rows]),
                          offsets=np.concatenate([[0], np.cumsum(stops - starts)]), layers=self.layers,
                          model_name=self.model_name)
