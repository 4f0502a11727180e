"""The concept methods of the command line, in one table.

Every command reads the methods from :data:`METHODS`: ``clvq fit --method``
takes a method's ``option``, ``clvq demo`` fits every method and reports
it under its ``name``, ``clvq table --methods`` takes names and the
comparison runner builds each method's estimator from its row, and the
judge run labels it with its ``paper_name``.  The choices the options
dataclasses write out as ``Literal`` types (jsonargparse reads them
statically) are checked against this table by a test.

Examples
--------
>>> [m.option for m in METHODS]
['crosslayer', 'two-stage', 'singlelayer', 'kmeans', 'sae']
>>> BY_NAME["CrossLayerVQ-two-stage"].estimator, BY_NAME["CrossLayerVQ-two-stage"].recipe
('CrossLayerVQ', 'two-stage')
>>> BY_OPTION["sae"].comparison_layer("high-layer") is None  # cross-layer l -> h in the high-layer table
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BY_NAME", "BY_OPTION", "METHODS", "NAMES", "OPTIONS", "PROTOCOLS", "TABLES", "Method"]

#: The removal protocols of ``clvq table``.
PROTOCOLS = ("probe", "splice")
#: "layer-matched": every method at the analysis layer l (the primary table); "high-layer": the
#: single-layer baselines at h and the cross-layer SAE l -> h (the variant).
TABLES = ("layer-matched", "high-layer")


@dataclass(frozen=True)
class Method:
    """One concept method as the command line knows it.

    Attributes
    ----------
    name : str
        Its name in tables, the demo's outputs and ``clvq table --methods``.
    option : str
        Its ``clvq fit --method`` name (and the demo's model folder).
    estimator : str
        The estimator class in :mod:`clvqlearn`.
    recipe : str or None
        The ``from_recipe`` name it is built with (None: the class's defaults).
    family : {"vq", "kmeans", "sae"}
        Which of the comparison's settings it takes (the VQ estimators
        share the decoder and epoch budget).
    layers : dict of str to str or None
        Its ``layer`` parameter in each comparison table (an absent table
        or None: cross-layer, l -> h).
    paper_name : str or None
        The judge's label (None: ``name``).
    """

    name: str
    option: str
    estimator: str
    family: str
    recipe: str | None = None
    layers: dict = field(default_factory=dict)
    paper_name: str | None = None

    def comparison_layer(self, table: str) -> str | None:
        """The ``layer`` of this method's estimator in comparison table ``table`` (None: l -> h)."""
        return self.layers.get(table)

    @property
    def label(self) -> str:
        """The judge's label."""
        return self.paper_name or self.name


_SINGLE = {"layer-matched": "low", "high-layer": "high"}

#: The methods, in the order of every table and plot.
METHODS = (
    Method("CrossLayerVQ", "crosslayer", "CrossLayerVQ", "vq", paper_name="CLVQ-VAE"),
    # the baseline CrossLayerVQ's joint training must beat (issue 22)
    Method("CrossLayerVQ-two-stage", "two-stage", "CrossLayerVQ", "vq", recipe="two-stage"),
    Method("SingleLayerVQ", "singlelayer", "SingleLayerVQ", "vq", layers=_SINGLE, paper_name="VQ-VAE (single layer)"),
    Method("KMeansConcepts", "kmeans", "KMeansConcepts", "kmeans", layers=_SINGLE, paper_name="k-means"),
    Method("SparseAutoencoder", "sae", "SparseAutoencoder", "sae", layers={"layer-matched": "low"},
           paper_name="SAE"),
)
BY_NAME = {m.name: m for m in METHODS}
BY_OPTION = {m.option: m for m in METHODS}
#: ``clvq table --methods`` choices (and the comparison's default).
NAMES = tuple(BY_NAME)
#: ``clvq fit --method`` choices.
OPTIONS = tuple(BY_OPTION)
