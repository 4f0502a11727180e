"""Encoders that map lower-layer token vectors into the codebook space (pure torch).

Examples
--------
>>> import torch
>>> from clvqlearn.nn.encoders import AdaptiveResidualEncoder
>>> enc = AdaptiveResidualEncoder(4)
>>> round(float(enc.mix), 3)  # m = 0.5 * sigmoid(0.2)
0.275
>>> enc(torch.zeros(2, 4)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveResidualEncoder(nn.Module):
    """``z = (1 - m) x + m LayerNorm(W x + b)`` with ``m = 0.5 sigmoid(alpha)``.

    ``W`` starts as the identity and ``b`` at zero, so the encoder starts
    close to the identity map (METHOD.md).

    Parameters
    ----------
    dim : int
        Input and output width.
    alpha : float, default=0.2
        Initial value of ``alpha``.
    learn_alpha : bool, default=True
        When False, ``alpha`` is a fixed buffer.
    """

    def __init__(self, dim: int, alpha: float = 0.2, learn_alpha: bool = True):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()
        self.norm = nn.LayerNorm(dim)
        alpha_t = torch.tensor(float(alpha))
        if learn_alpha:
            self.alpha = nn.Parameter(alpha_t)
        else:
            self.register_buffer("alpha", alpha_t)

    @property
    def mix(self) -> torch.Tensor:
        """The current mixing weight ``m``."""
        return 0.5 * torch.sigmoid(self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mix
        return (1 - m) * x + m * self.norm(self.linear(x))


def make_encoder(kind: str, dim: int, alpha: float = 0.2) -> nn.Module:
    """Build ``"adaptive"``, ``"adaptive-fixed"`` (alpha not learned) or ``"identity"``."""
    if kind == "adaptive":
        return AdaptiveResidualEncoder(dim, alpha, learn_alpha=True)
    if kind == "adaptive-fixed":
        return AdaptiveResidualEncoder(dim, alpha, learn_alpha=False)
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"encoder must be 'adaptive', 'adaptive-fixed' or 'identity'; got {kind!r}")
