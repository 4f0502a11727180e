"""The MLP of the paper's concept-removal probe (:class:`clvqlearn.evaluation.MLPProbe`)."""

from __future__ import annotations

from torch import nn

__all__ = ["ProbeMLP"]


class ProbeMLP(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear: the paper's probe network.

    Parameters
    ----------
    n_features : int, default=1
    n_classes : int, default=2
    hidden : int, default=64
    dropout : float, default=0.2

    Examples
    --------
    >>> import torch
    >>> ProbeMLP(n_features=5, n_classes=3)(torch.zeros(4, 5)).shape
    torch.Size([4, 3])
    """

    def __init__(self, n_features=1, n_classes=2, hidden=64, dropout=0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, X):
        return self.net(X)
