"""clvqlearn: cross-layer discrete concept discovery in language models.

Public names only; see the docs for the guide.
"""

from . import metrics
from .concepts import CrossLayerVQ, KMeansConcepts, SingleLayerVQ, SparseAutoencoder
from .data import LayerPairs, ShardedLayerPairs
from .evaluation import concept_ablation_report, concept_ablation_score
from .extraction import LayerPairExtractor

__version__ = "0.1.0"

__all__ = [
    "CrossLayerVQ",
    "KMeansConcepts",
    "LayerPairExtractor",
    "LayerPairs",
    "ShardedLayerPairs",
    "SingleLayerVQ",
    "SparseAutoencoder",
    "concept_ablation_report",
    "concept_ablation_score",
    "metrics",
    "__version__",
]
