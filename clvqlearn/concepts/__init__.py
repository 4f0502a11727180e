"""The concept estimators (scikit-learn layer)."""

from .kmeans import KMeansConcepts
from .sae import SparseAutoencoder
from .vq import CrossLayerVQ, SingleLayerVQ

__all__ = ["CrossLayerVQ", "KMeansConcepts", "SingleLayerVQ", "SparseAutoencoder"]
