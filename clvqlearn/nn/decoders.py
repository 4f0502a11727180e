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

Examples
--------
>>> import torch
>>> from clvqlearn.nn.decoders import make_decoder
>>> dec = make_decoder("mlp", 4, 6, hidden=8)
>>> dec(torch.zeros(3, 4), None, None).shape
torch.Size([3, 6])
"""

from __future__ import annotations

from torch import nn

DECODERS = ("transformer", "transformer-codes", "mlp")


class SequenceDecoder(nn.Module):
    """Transformer decoder over padded sequences ``(B, T, d_low)``."""

    def __init__(self, d_low, d_high, n_layers=6, n_heads=8, ff=2048, dropout=0.1, codes_only=False,
                 norm_first=False):
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
        self.out = nn.Linear(d_low, d_high)
        self.codes_only = codes_only

    def forward(self, quantized, continuous, padding_mask):
        """``quantized``/``continuous``: (B, T, d_low); ``padding_mask``: True on padding."""
        memory = quantized if self.codes_only else continuous
        hidden = self.decoder(
            quantized, memory, tgt_key_padding_mask=padding_mask, memory_key_padding_mask=padding_mask
        )
        return self.out(hidden)


class TokenDecoder(nn.Module):
    """Per-token MLP ``d_low -> hidden -> d_high`` (GELU)."""

    def __init__(self, d_low, d_high, hidden=1024):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_low, hidden), nn.GELU(), nn.Linear(hidden, d_high))

    def forward(self, quantized, continuous, padding_mask):
        return self.net(quantized)


def make_decoder(kind, d_low, d_high, *, n_layers=6, n_heads=8, ff=2048, dropout=0.1, hidden=1024,
                 norm_first=True):
    """Build a decoder by name (see the module docstring)."""
    if kind in ("transformer", "transformer-codes"):
        return SequenceDecoder(d_low, d_high, n_layers, n_heads, ff, dropout,
                               codes_only=kind == "transformer-codes", norm_first=norm_first)
    if kind == "mlp":
        return TokenDecoder(d_low, d_high, hidden)
    raise ValueError(f"decoder must be one of {DECODERS}; got {kind!r}")
