"""Compatibility alias: :class:`LayerPairs` lives in :mod:`clvqlearn.data.pairs`.

``from clvqlearn.pairs import LayerPairs`` keeps working; new code imports
``from clvqlearn import LayerPairs`` (or ``from clvqlearn.data import LayerPairs``).
"""

from .data.pairs import LayerPairs

__all__ = ["LayerPairs"]
