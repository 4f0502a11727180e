"""clvqlearn: cross-layer discrete concept discovery in language models.

Public names only; see the docs for the guide.
"""

from .concepts.vq import CrossLayerVQ, SingleLayerVQ
from .pairs import LayerPairs

__version__ = "0.1.0"

__all__ = ["CrossLayerVQ", "LayerPairs", "SingleLayerVQ", "__version__"]
