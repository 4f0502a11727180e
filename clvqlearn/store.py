"""Compatibility alias: the sharded activation store lives in :mod:`clvqlearn.data`.

``from clvqlearn.store import open_store, write_store, StoreSpec, ...`` keeps
working.  The store is split by job: :mod:`clvqlearn.data.store_format`
(what a store folder holds), :mod:`clvqlearn.data.store_reader` (opening it
lazily), :mod:`clvqlearn.data.store_writer` (writing it rank by rank);
:func:`extract_to_store`, the driver that writes an extractor's output,
lives in :mod:`clvqlearn.extraction`.
"""

# MANIFEST, STORE_FORMAT, ... were module names of the old store.py: still importable from here
from .data.store_format import (  # noqa: F401
    MANIFEST,
    STORAGE_DTYPES,
    STORE_FORMAT,
    STORE_VERSION,
    StoreSpec,
    shard_name,
    texts_fingerprint,
)
from .data.store_reader import ShardedLayerPairs, TorchBatch, open_store
from .data.store_writer import RankInfo, distributed_rank, write_store
from .extraction import extract_to_store

__all__ = [
    "RankInfo",
    "ShardedLayerPairs",
    "StoreSpec",
    "TorchBatch",
    "distributed_rank",
    "extract_to_store",
    "open_store",
    "texts_fingerprint",
    "write_store",
]
