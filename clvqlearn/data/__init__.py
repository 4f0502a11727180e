"""The data wing: `LayerPairs` and the sharded activation store.

Modules, each importing only those listed before it (and nothing of
clvqlearn above ``_sidecar``):

``pairs``
    :class:`LayerPairs`, the in-memory container, saved as ``.npy`` files
    plus ``meta.json``.
``stack``
    :class:`LayerStack`: several layers extracted in one pass, any two of
    them a ``LayerPairs`` without copying (``stack.pair(low, high)``).
``words``
    :func:`token_words`: the token rows joined into words (WordPiece,
    byte-level BPE, SentencePiece), read from the token strings.
``token_filter``
    :func:`frequency_filter` and :func:`frequency_mask`: the paper
    reference's frequency filter (word types seen fewer than 5 times out,
    at most 20 occurrences of each kept).
``store_format``
    What a store folder holds: :class:`StoreSpec`, file names, format
    versions, the reading and checking of the manifest and the shard
    sidecars, :func:`texts_fingerprint`.
``store_columns``
    A store's columns read lazily through memory maps, each shard's bytes
    hashed on first read.
``store_reader``
    :func:`open_store`, :class:`ShardedLayerPairs` (a ``LayerPairs``
    subclass) and :class:`ShardedLayerStack` (a store of several layers);
    registers what ``LayerPairs.open`` calls.
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
from .stack import LayerStack
from .store_format import StoreSpec, texts_fingerprint
from .store_reader import ShardedLayerPairs, ShardedLayerStack, TorchBatch, open_store
from .store_writer import RankInfo, distributed_rank, write_store
from .token_filter import frequency_filter, frequency_mask
from .words import token_words

__all__ = [
    "LayerPairs",
    "LayerStack",
    "RankInfo",
    "ShardedLayerPairs",
    "ShardedLayerStack",
    "StoreSpec",
    "TorchBatch",
    "distributed_rank",
    "frequency_filter",
    "frequency_mask",
    "open_store",
    "texts_fingerprint",
    "token_words",
    "write_store",
]
