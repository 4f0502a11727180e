"""Encoders that map lower-layer token vectors into the codebook space (pure torch).

Examples
--------
>>> import torch
>>> from clvqlearn.nn.encoders import AdaptiveResidualEncoder
>>> enc = AdaptiveResidualEncoder(4)
>>> round(enc.mix.item(), 3)  # m = 0.5 * sigmoid(0.2)
0.275
>>> enc(torch.zeros(2, 4)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn


def square_linear(dim: int, init: str) -> nn.Linear:
    """A ``dim -> dim`` linear layer started at the identity or at PyTorch's random init."""
    if init not in ("identity", "random"):
        raise ValueError(f"encoder init must be 'identity' or 'random'; got {init!r}")
    linear = nn.Linear(dim, dim)
    if init == "identity":
        with torch.no_grad():
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
    return linear


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

    def __init__(self, dim: int, alpha: float = 0.2, learn_alpha: bool = True, init: str = "identity"):
        super().__init__()
        self.linear = square_linear(dim, init)
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

    @torch.no_grad()
    def init_regression(self, source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> None:
        """Start ``W x + b`` at the ridge regression of the target layer on the source layer.

        When both layers have the same width (always, for two layers of one
        model), ``W x + b`` starts as the ridge prediction of the token's
        higher-layer vector, so ``LayerNorm(W x + b)`` is the normalised
        prediction and the codes start grouped by what the tokens become
        in the higher layer.  For other widths, ``W`` is the reduced-rank
        regression ``x -> (x - mean) B V`` (``V``: the top right singular
        vectors of the fitted values, zero-padded).

        Parameters
        ----------
        source : Tensor of shape (n, dim)
        target : Tensor of shape (n, d_target)
        ridge : float, default=1e-3
            Relative to the mean source variance.
        """
        coef, intercept = ridge_coefficients(source, target, ridge)
        width = self.linear.out_features
        if coef.shape[1] != width:
            mean = source.double().mean(0).cpu()
            coef = reduced_rank(source, coef, width)
            intercept = -(mean @ coef)
        self.linear.weight.copy_(coef.T.to(self.linear.weight))
        self.linear.bias.copy_(intercept.to(self.linear.bias))


class LinearEncoder(nn.Module):
    """``z = W x + b``: a learnable linear map into the code space (no residual, no LayerNorm).

    With :meth:`init_regression` it starts as the ridge prediction of the
    higher layer, so the codebook lives in the space of what each token
    becomes in the higher layer, read from the lower layer alone.

    Parameters
    ----------
    dim : int
        Input and output width.
    init : {"identity", "random"}, default="identity"

    Examples
    --------
    >>> import torch
    >>> enc = LinearEncoder(3)
    >>> x = torch.randn(2, 3)
    >>> bool(torch.equal(enc(x), x))
    True
    """

    def __init__(self, dim: int, init: str = "identity"):
        super().__init__()
        self.linear = square_linear(dim, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @torch.no_grad()
    def init_regression(self, source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> None:
        """Start at the ridge prediction of the target layer, rescaled to the source's norm.

        The map is :meth:`AdaptiveResidualEncoder.init_regression`'s, times
        one scalar so that ``z`` has the source vectors' mean norm: squared
        distances, and with them ``temperature``, keep the scale they have
        for the paper's near-identity encoder.  (Unscaled, MiniLM's layer-6
        predictions are 3x shorter than layer 4 and a temperature of 1
        sampled a code other than the nearest for 27 % of tokens, against
        2.4 % rescaled and 0.8 % for the paper's encoder;
        ``benchmarks/results/learns/why_ag_news.md``.)
        """
        AdaptiveResidualEncoder.init_regression(self, source, target, ridge)
        rescale_output(self, [self.linear], source)


class MLPEncoder(nn.Module):
    """``z = W x + b + V GELU(U x + c) + e``: the linear encoder plus a one-hidden-layer MLP.

    A per-token NONLINEAR map into the code space.  :meth:`init_regression`
    starts it as the :class:`LinearEncoder` (the ridge prediction of the
    higher layer, rescaled to the source's norm) with the MLP branch at
    zero; the estimator then fits the whole map to the higher layer by
    gradient descent (``CrossLayerVQ(encoder="mlp")``), so the codes group
    tokens by a better prediction of what they become in the higher layer.

    Parameters
    ----------
    dim : int
        Input and output width.
    hidden : int, default=512
        Width of the MLP branch.
    init : {"identity", "random"}, default="identity"
        Start of the linear branch.

    Examples
    --------
    >>> import torch
    >>> enc = MLPEncoder(3, hidden=8)
    >>> x = torch.randn(2, 3)
    >>> bool(torch.equal(enc(x), x))  # the MLP branch starts at zero
    True
    """

    def __init__(self, dim: int, hidden: int = 512, init: str = "identity"):
        super().__init__()
        self.linear = square_linear(dim, init)
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.out(nn.functional.gelu(self.hidden(x)))

    @torch.no_grad()
    def init_regression(self, source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> None:
        """The :class:`LinearEncoder` start: ridge prediction, rescaled; the MLP branch at zero."""
        self.out.weight.zero_()
        self.out.bias.zero_()
        LinearEncoder.init_regression(self, source, target, ridge)  # type: ignore[arg-type]

    @torch.no_grad()
    def rescale(self, source: torch.Tensor) -> None:
        """Rescale the output to the source vectors' mean norm (after the map was fitted)."""
        rescale_output(self, [self.linear, self.out], source)


@torch.no_grad()
def rescale_output(encoder: nn.Module, layers: list, source: torch.Tensor) -> None:
    """Multiply the affine ``layers`` that sum to ``encoder``'s output so that
    its outputs have the source vectors' mean norm (one scalar)."""
    x = source.to(layers[0].weight)
    scale = x.norm(dim=1).mean() / encoder(x).norm(dim=1).mean().clamp_min(1e-12)
    for layer in layers:
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)


def ridge_coefficients(source: torch.Tensor, target: torch.Tensor, ridge: float):
    """``(B, c)`` of the ridge map ``target ~ source @ B + c``, in float64.

    ``ridge`` is relative to the mean variance of the source columns.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    >>> coef, intercept = ridge_coefficients(x, 2 * x + 1, 0.0)
    >>> [round(v, 3) + 0.0 for v in coef.diagonal().tolist()], [round(v, 3) for v in intercept.tolist()]
    ([2.0, 2.0], [1.0, 1.0])
    """
    x, y = source.double().cpu(), target.double().cpu()
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    scale = float(torch.diagonal(gram).mean()) or 1.0
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    coef = torch.linalg.solve(gram + (ridge * scale + 1e-12) * eye, xc.T @ (y - my))
    return coef, my - mx @ coef


def reduced_rank(source: torch.Tensor, coef: torch.Tensor, width: int) -> torch.Tensor:
    """``B V``: the ridge map projected on the top ``width`` directions of its fitted values."""
    x = source.double().cpu()
    fitted = (x - x.mean(0)) @ coef
    _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
    rank = min(width, vh.shape[0])
    weight = torch.zeros(coef.shape[0], width, dtype=torch.float64)
    weight[:, :rank] = coef @ vh[:rank].T
    return weight


ENCODERS = ("adaptive", "adaptive-fixed", "linear", "mlp", "identity")


def make_encoder(kind: str, dim: int, alpha: float = 0.2, init: str = "identity", hidden: int = 512) -> nn.Module:
    """Build ``"adaptive"``, ``"adaptive-fixed"`` (alpha not learned), ``"linear"``, ``"mlp"``
    (``hidden`` wide) or ``"identity"``.

    ``init`` ("identity" or "random") sets the adaptive encoder's ``W``; a
    regression start is applied afterwards with
    :meth:`AdaptiveResidualEncoder.init_regression`.
    """
    if kind == "adaptive":
        return AdaptiveResidualEncoder(dim, alpha, learn_alpha=True, init=init)
    if kind == "adaptive-fixed":
        return AdaptiveResidualEncoder(dim, alpha, learn_alpha=False, init=init)
    if kind == "linear":
        return LinearEncoder(dim, init=init)
    if kind == "mlp":
        return MLPEncoder(dim, hidden, init=init)
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"encoder must be one of {ENCODERS}; got {kind!r}")
