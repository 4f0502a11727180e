"""clvqlearn: cross-layer discrete concept discovery in language models.

Public names only; see the docs for the guide.
"""

from . import metrics
from .concepts import CrossLayerVQ, KMeansConcepts, SingleLayerVQ, SparseAutoencoder
from .data import LayerPairs, LayerStack, ShardedLayerPairs, ShardedLayerStack
from .evaluation import concept_ablation_report, concept_ablation_score
from .extraction import LayerPairExtractor
from .sharing import export_delphi_cache, export_saelens, load_concepts, read_model_card, write_model_card

__version__ = "0.1.0"

__all__ = [
    "CrossLayerVQ",
    "KMeansConcepts",
    "LayerPairExtractor",
    "LayerPairs",
    "LayerStack",
    "ShardedLayerPairs",
    "ShardedLayerStack",
    "SingleLayerVQ",
    "SparseAutoencoder",
    "concept_ablation_report",
    "concept_ablation_score",
    "export_delphi_cache",
    "export_saelens",
    "load_concepts",
    "metrics",
    "read_model_card",
    "write_model_card",
    "__version__",
]
