"""The data wing: `LayerPairs` and the sharded activation store.

Modules, each importing only those listed before it (and nothing of
clvqlearn above ``_sidecar``):

``pairs``
    :class:`LayerPairs`, the in-memory container, saved as ``.npy`` files
    plus ``meta.json``.
``store_format``
    What a store folder holds: :class:`StoreSpec`, file names, format
    versions, the reading and checking of the manifest and the shard
    sidecars, :func:`texts_fingerprint`.
``store_columns``
    A store's columns read lazily through memory maps, each shard's bytes
    hashed on first read.
``store_reader``
    :func:`open_store` and :class:`ShardedLayerPairs` (a ``LayerPairs``
    subclass); registers ``open_store`` as what ``LayerPairs.open`` calls.
``store_writer``
    :func:`write_store`: shards from a ``make_shard(start, stop)`` callback,
    the rank split (:func:`distributed_rank`), writer locks, waiting for
    the other ranks.

The store knows neither the model nor the extractor: the driver that writes
an extractor's output into a store is
:func:`clvqlearn.extraction.extract_to_store`.  ``clvqlearn.pairs`` and
``clvqlearn.store`` are compatibility aliases of this package.
"""

from .pairs import LayerPairs
from .store_format import StoreSpec, texts_fingerprint
from .store_reader import ShardedLayerPairs, TorchBatch, open_store
from .store_writer import RankInfo, distributed_rank, write_store

__all__ = [
    "LayerPairs",
    "RankInfo",
    "ShardedLayerPairs",
    "StoreSpec",
    "TorchBatch",
    "distributed_rank",
    "open_store",
    "texts_fingerprint",
    "write_store",
]
