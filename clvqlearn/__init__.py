"""clvqlearn: cross-layer discrete concept discovery in language models.

Public names only; see the docs for the guide.
"""

from .pairs import LayerPairs

__version__ = "0.1.0"

__all__ = ["LayerPairs", "__version__"]
