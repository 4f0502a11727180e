"""Sparse autoencoder from a source layer to a target layer (pure torch).

``latents = act(W_enc x + b_enc)``, ``prediction = latents @ W_dec + b_dec``.
``act`` is ReLU (the CLVQ-VAE paper's baseline) or TopK (Gao et al.
2024): keep the ``top_k`` largest pre-activations, ReLU them, zero the
rest.  Weights are untied: ``W_enc`` is (k, d_in) and lives in the source
space, ``W_dec`` is (k, d_out) and lives in the target space.

Also here: the training objective, dead-latent bookkeeping, the AuxK
auxiliary loss (Gao et al. 2024) and dead-latent resampling (Bricken et
al. 2023).

Examples
--------
>>> import torch
>>> from clvqlearn.nn.sae import SparseAutoencoderNet
>>> net = SparseAutoencoderNet(4, 3, k=6, activation="topk", top_k=2)
>>> out = net(torch.randn(5, 4))
>>> out.latents.shape, out.prediction.shape
(torch.Size([5, 6]), torch.Size([5, 3]))
>>> bool((out.latents >= 0).all()), int((out.latents > 0).sum(1).max()) <= 2
(True, True)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

#: Weight of the AuxK loss (Gao et al. 2024 use 1/32).
AUXK_COEFFICIENT = 1.0 / 32.0
#: Resampled encoder rows get this fraction of the mean norm of live rows.
RESAMPLE_ENCODER_SCALE = 0.2


class SAEOutput(NamedTuple):
    """What :meth:`SparseAutoencoderNet.forward` returns."""

    latents: torch.Tensor
    pre_activations: torch.Tensor
    prediction: torch.Tensor


class SparseAutoencoderNet(nn.Module):
    """Untied sparse autoencoder ``d_in -> k latents -> d_out``.

    Parameters
    ----------
    d_in : int
        Source width (encoder input).
    d_out : int
        Target width (decoder output).
    k : int
        Number of latents (concepts).
    activation : {"relu", "topk"}, default="relu"
    top_k : int or None, default=None
        Active latents per token for ``activation="topk"``.
    encoder_bias : float, default=0.1
        Initial encoder bias (the paper's baseline uses 0.1).

    Notes
    -----
    ``tokens_since_fired`` (a buffer of shape (k,)) counts the training
    tokens since each latent was last active; :func:`update_fired` keeps it.
    """

    def __init__(self, d_in: int, d_out: int, k: int, activation: str = "relu", top_k: int | None = None,
                 encoder_bias: float = 0.1):
        super().__init__()
        if activation not in ("relu", "topk"):
            raise ValueError(f"activation must be 'relu' or 'topk'; got {activation!r}")
        if activation == "topk" and (top_k is None or not 1 <= top_k <= k):
            raise ValueError(f"activation='topk' needs 1 <= top_k <= k={k}; got top_k={top_k!r}")
        self.activation = activation
        self.top_k = top_k
        self.encoder_weight = nn.Parameter(torch.empty(k, d_in))
        self.encoder_bias = nn.Parameter(torch.full((k,), float(encoder_bias)))
        self.decoder_weight = nn.Parameter(torch.empty(k, d_out))
        self.decoder_bias = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("tokens_since_fired", torch.zeros(k, dtype=torch.float64))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights (drawn from ``generator`` when given)."""
        with torch.no_grad():
            nn.init.xavier_uniform_(self.encoder_weight, generator=generator)
            nn.init.xavier_uniform_(self.decoder_weight, generator=generator)

    @property
    def k(self) -> int:
        return int(self.encoder_weight.shape[0])

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc x + b_enc``, shape (n, k)."""
        return nn.functional.linear(x, self.encoder_weight, self.encoder_bias)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Non-negative latents from pre-activations."""
        if self.activation == "relu":
            return torch.relu(pre)
        values, indices = pre.topk(self.top_k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents @ W_dec + b_dec``, shape (n, d_out)."""
        return latents @ self.decoder_weight + self.decoder_bias

    def forward(self, x: torch.Tensor) -> SAEOutput:
        pre = self.pre_activations(x)
        latents = self.activate(pre)
        return SAEOutput(latents=latents, pre_activations=pre, prediction=self.decode(latents))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit L2 norm (in place)."""
        norms = self.decoder_weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.decoder_weight.div_(norms)

    @torch.no_grad()
    def update_fired(self, latents: torch.Tensor, total_rows: int | None = None, data_parallel: bool = False) -> None:
        """Advance ``tokens_since_fired`` by one batch of training latents.

        In a data-parallel step ``latents`` are this process's share of a
        global batch of ``total_rows`` tokens; with ``data_parallel`` a
        latent fired when it fired in any process's share (summed over the
        default ``torch.distributed`` group), so every process keeps the
        same clock.
        """
        fired = (latents > 0).any(dim=0)
        if data_parallel:
            counts = fired.to(self.tokens_since_fired.dtype)
            torch.distributed.all_reduce(counts)
            fired = counts > 0
        self.tokens_since_fired += latents.shape[0] if total_rows is None else total_rows
        self.tokens_since_fired.masked_fill_(fired, 0)  # a mask, not boolean indexing: no host sync

    def dead_mask(self, after_tokens: float) -> torch.Tensor:
        """Latents that have not fired for ``after_tokens`` training tokens."""
        return self.tokens_since_fired >= after_tokens


def sae_loss(out: SAEOutput, target: torch.Tensor, l1: float) -> torch.Tensor:
    """Reconstruction plus L1 sparsity, per token, averaged over tokens.

    ``mean_tokens( sum_features (prediction - target)^2 + l1 * sum_latents |latent| )``
    (the SAELens convention: squared error summed over features).
    """
    mse = (out.prediction.float() - target).pow(2).sum(dim=-1).mean()
    if l1 == 0:
        return mse
    return mse + l1 * out.latents.float().abs().sum(dim=-1).mean()


def auxk_loss(net: SparseAutoencoderNet, out: SAEOutput, target: torch.Tensor, dead: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """AuxK loss (Gao et al. 2024): dead latents reconstruct the residual.

    The ``aux_k`` largest pre-activations among dead latents (ReLU'd) are
    decoded without bias and fitted to the residual ``target - prediction``
    (detached), with squared error summed over features, averaged over
    tokens and weighted by :data:`AUXK_COEFFICIENT`.  Zero when no latent is
    dead.
    """
    # No host read of the dead count (a sync per step on a GPU): live latents
    # get -inf, which ReLU turns into 0, so picking ``aux_k`` of all latents
    # decodes the same dead ones; the loss is zeroed when none is dead.
    residual = (target - out.prediction.float()).detach()
    pre = out.pre_activations.float().masked_fill(~dead, float("-inf"))
    values, indices = pre.topk(min(aux_k, pre.shape[-1]), dim=-1)
    aux_latents = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    aux_prediction = aux_latents @ net.decoder_weight.float()
    loss = AUXK_COEFFICIENT * (aux_prediction - residual).pow(2).sum(dim=-1).mean()
    return torch.where(dead.any(), loss, loss.new_zeros(()))


@torch.no_grad()
def resample_dead_(net: SparseAutoencoderNet, source: torch.Tensor, target: torch.Tensor, dead: torch.Tensor,
                   generator: torch.Generator | None = None) -> int:
    """Re-initialise dead latents on badly reconstructed tokens (in place).

    Following Bricken et al. (2023): tokens are drawn with probability
    proportional to their squared reconstruction error; each dead latent's
    decoder row becomes that token's normalised residual (target space), its
    encoder row the token's normalised source vector scaled to
    :data:`RESAMPLE_ENCODER_SCALE` of the mean live encoder-row norm, its
    encoder bias 0.  ``tokens_since_fired`` of those latents is reset.

    Returns
    -------
    int
        Number of latents re-initialised.
    """
    dead_idx = torch.nonzero(dead).flatten()
    if dead_idx.numel() == 0 or source.shape[0] == 0:
        return 0
    out = net(source)
    residual = target - out.prediction.float()
    weights = residual.pow(2).sum(dim=-1).double()
    if not float(weights.sum()) > 0:  # also refuses NaN weights (a diverging step)
        return 0
    rows = torch.multinomial(weights.cpu(), dead_idx.numel(), replacement=True, generator=generator)
    rows = rows.to(source.device)
    live = ~dead
    scale = net.encoder_weight[live].norm(dim=1).mean() if bool(live.any()) else torch.tensor(1.0)
    enc = source[rows].float()
    enc = enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12) * scale * RESAMPLE_ENCODER_SCALE
    dec = residual[rows]
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    net.encoder_weight[dead_idx] = enc.to(net.encoder_weight.dtype)
    net.decoder_weight[dead_idx] = dec.to(net.decoder_weight.dtype)
    net.encoder_bias[dead_idx] = 0
    net.tokens_since_fired[dead_idx] = 0
    return int(dead_idx.numel())
