"""Decoders from (quantised) lower-layer tokens to the higher layer (pure torch).

Three forms (METHOD.md, "Decoder"):

``"transformer"``
    The reference: a Transformer decoder (default 6 layers, 8 heads,
    feed-forward 2048, dropout 0.1, ``d_model = d_low``, no causal mask)
    whose target input is the quantised sequence and whose cross-attention
    memory is the CONTINUOUS encoder output, then a linear map to
    ``d_high``.  Known flaw: the memory lets information bypass the
    bottleneck.
``"transformer-codes"``
    The same network with memory = the codes, so everything the decoder
    knows went through the bottleneck.
``"mlp"``
    A per-token two-layer MLP on the code alone (no sequence context).

Self-attention over codes alone cannot tell a neighbour from a distant
token, so ``positions`` (a scale; 0 = none, as in the reference) adds
fixed sinusoidal position encodings (Vaswani et al. 2017) to the
transformer decoders' quantised input (and, for ``"transformer-codes"``, to
the memory, which is that same sequence).

With ``skip=True`` the output layer reads the decoder's input next to its
hidden states (a linear skip read-out): the code for ``"mlp"`` and
``"transformer-codes"``, the code and the continuous encoder output for
``"transformer"``.  A least-squares start of that read-out
(:func:`fit_output_layer`) then begins at the best linear map of the input,
e.g. the per-code mean of the target for codes-only decoders.

Examples
--------
>>> import torch
>>> from clvqlearn.nn.decoders import make_decoder
>>> dec = make_decoder("mlp", 4, 6, hidden=8)
>>> dec(torch.zeros(3, 4), None, None).shape
torch.Size([3, 6])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .encoders import ridge_coefficients

DECODERS = ("transformer", "transformer-codes", "mlp")


class SequenceDecoder(nn.Module):
    """Transformer decoder over padded sequences ``(B, T, d_low)``."""

    def __init__(self, d_low, d_high, n_layers=6, n_heads=8, ff=2048, dropout=0.1, codes_only=False,
                 norm_first=False, skip=False, positions=0.0):
        super().__init__()
        if d_low % n_heads:
            raise ValueError(
                f"the transformer decoder needs d_low={d_low} divisible by decoder_heads={n_heads}; "
                "choose decoder_heads that divides the layer width, or decoder='mlp'."
            )
        layer = nn.TransformerDecoderLayer(
            d_model=d_low, nhead=n_heads, dim_feedforward=ff, dropout=dropout, batch_first=True,
            norm_first=norm_first,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=n_layers)
        self.codes_only, self.skip, self.positions = codes_only, skip, float(positions)
        skip_width = (d_low if codes_only else 2 * d_low) if skip else 0
        self.out = nn.Linear(d_low + skip_width, d_high)

    def features(self, quantized, continuous, padding_mask):
        """What the output layer reads, (B, T, d_out_in): the hidden states
        (then, with ``skip``, the decoder's input)."""
        target = quantized
        if self.positions:
            target = quantized + self.positions * sinusoidal_positions(*quantized.shape[1:], quantized)
        memory = target if self.codes_only else continuous
        hidden = self.decoder(
            target, memory, tgt_key_padding_mask=padding_mask, memory_key_padding_mask=padding_mask
        )
        if not self.skip:
            return hidden
        return torch.cat([hidden, quantized] if self.codes_only else [hidden, quantized, continuous], dim=-1)

    def forward(self, quantized, continuous, padding_mask):
        """``quantized``/``continuous``: (B, T, d_low); ``padding_mask``: True on padding."""
        return self.out(self.features(quantized, continuous, padding_mask))


def sinusoidal_positions(length: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Fixed sinusoidal position encodings, (length, width), on ``like``'s device and dtype.

    Column ``2i`` is ``sin(p / 10000^(2i/width))``, column ``2i+1`` its cosine
    (Vaswani et al. 2017), so a shift by a fixed offset is a linear map.

    Examples
    --------
    >>> import torch
    >>> pe = sinusoidal_positions(3, 4, torch.zeros(0))
    >>> pe.shape, pe[0].tolist()
    (torch.Size([3, 4]), [0.0, 1.0, 0.0, 1.0])
    """
    position = torch.arange(length, device=like.device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, device=like.device, dtype=torch.float32)
                          * (-math.log(10000.0) / width))
    angles = position * frequency
    table = torch.zeros(length, width, device=like.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)[:, : width // 2]
    return table.to(like.dtype)


class TokenDecoder(nn.Module):
    """Per-token MLP ``d_low -> hidden -> d_high`` (GELU); with ``skip`` the
    output layer also reads the code itself."""

    def __init__(self, d_low, d_high, hidden=1024, skip=False):
        super().__init__()
        self.skip = skip
        self.net = nn.Sequential(nn.Linear(d_low, hidden), nn.GELU(),
                                 nn.Linear(hidden + (d_low if skip else 0), d_high))

    @property
    def out(self) -> nn.Linear:
        """The output layer (what a least-squares warm start sets)."""
        return self.net[2]

    def features(self, quantized, continuous, padding_mask):
        """What the output layer reads: the hidden rows (then, with ``skip``, the code)."""
        hidden = self.net[1](self.net[0](quantized))
        return torch.cat([hidden, quantized], dim=-1) if self.skip else hidden

    def forward(self, quantized, continuous, padding_mask):
        return self.out(self.features(quantized, continuous, padding_mask))


@torch.no_grad()
def fit_output_layer(out: nn.Linear, features: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> None:
    """Set ``out`` to the ridge least-squares map from ``features`` to ``target``.

    Solved in float64 on centred data, so the layer starts at the best
    linear read-out of the decoder's initial features instead of at random.
    ``ridge`` is relative to the mean feature variance.

    Parameters
    ----------
    out : torch.nn.Linear
        Output layer with ``in_features == features.shape[1]``.
    features : Tensor of shape (n, d_in)
    target : Tensor of shape (n, d_out)
    ridge : float, default=1e-3

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 1)
    >>> x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    >>> fit_output_layer(lin, x, 3 * x[:, :1] - 1, ridge=0.0)
    >>> [round(v, 3) + 0.0 for v in lin.weight[0].tolist()], round(lin.bias.item(), 3)
    ([3.0, 0.0], -1.0)
    """
    weight, intercept = ridge_coefficients(features, target, ridge)
    out.weight.copy_(weight.T.to(out.weight))
    out.bias.copy_(intercept.to(out.bias))


def make_decoder(kind, d_low, d_high, *, n_layers=6, n_heads=8, ff=2048, dropout=0.1, hidden=1024,
                 norm_first=True, skip=False, positions=0.0):
    """Build a decoder by name (see the module docstring); ``positions`` is
    ignored by the per-token ``"mlp"``."""
    if kind in ("transformer", "transformer-codes"):
        return SequenceDecoder(d_low, d_high, n_layers, n_heads, ff, dropout,
                               codes_only=kind == "transformer-codes", norm_first=norm_first, skip=skip,
                               positions=positions)
    if kind == "mlp":
        return TokenDecoder(d_low, d_high, hidden, skip=skip)
    raise ValueError(f"decoder must be one of {DECODERS}; got {kind!r}")
