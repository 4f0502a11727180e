"""The concept estimators (scikit-learn layer)."""

from .vq import CrossLayerVQ, SingleLayerVQ

__all__ = ["CrossLayerVQ", "SingleLayerVQ"]
