"""The CLVQ-VAE network: encoder -> EMA codebook -> decoder (pure torch).

Works on flat token rows plus per-document lengths (no padding is stored);
sequence decoders get a padded view built on the fly.

Examples
--------
>>> import torch
>>> from clvqlearn.nn.clvq import CLVQNetwork
>>> net = CLVQNetwork(d_low=4, d_high=6, k=3, decoder="mlp", decoder_hidden=8)
>>> net.codebook.initialize(torch.randn(3, 4))
>>> out = net.eval()(torch.randn(5, 4), torch.tensor([2, 3]))
>>> out.prediction.shape, out.indices.shape
(torch.Size([5, 6]), torch.Size([5]))
>>> net.out_features
6
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .codebook import EMACodebook
from .decoders import TokenDecoder, make_decoder
from .encoders import make_encoder


class CLVQOutput(NamedTuple):
    """Forward output of :class:`CLVQNetwork`, one row per real token."""

    prediction: torch.Tensor  # (n_tokens, d_high)
    indices: torch.Tensor  # (n_tokens,)
    commitment: torch.Tensor  # scalar


def padding_layout(lengths: torch.Tensor, max_len: int | None = None, n_tokens: int | None = None):
    """Document/position of each flat row and the (B, T) real-token mask.

    ``max_len`` (the longest document) and ``n_tokens`` (the sum of
    ``lengths``), when the caller knows them on the host, spare two reads
    of ``lengths`` back from the device (host synchronisations).
    """
    n_docs = lengths.numel()
    max_len = int(lengths.max()) if max_len is None else int(max_len)
    rows = torch.repeat_interleave(torch.arange(n_docs, device=lengths.device), lengths, output_size=n_tokens)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(rows.numel(), device=lengths.device) - starts[rows]
    mask = torch.zeros(n_docs, max_len, dtype=torch.bool, device=lengths.device)
    mask[rows, cols] = True
    return rows, cols, mask


def to_padded(flat: torch.Tensor, rows, cols, mask) -> torch.Tensor:
    """Scatter (n_tokens, d) rows into a zero-padded (B, T, d) tensor."""
    out = flat.new_zeros(mask.shape[0], mask.shape[1], flat.shape[-1])
    out[rows, cols] = flat
    return out


class CLVQNetwork(nn.Module):
    """Encoder, EMA codebook and decoder of CLVQ-VAE.

    Parameters
    ----------
    d_low, d_high : int
        Widths of the source and target layers.
    k : int
        Codebook size.
    encoder : {"adaptive", "adaptive-fixed", "linear", "mlp", "identity"}
    encoder_init : {"identity", "random"}
        Start of the encoder's ``W`` (a regression start is applied
        afterwards, see :meth:`AdaptiveResidualEncoder.init_regression`).
    encoder_hidden : int, default=512
        Hidden width of the ``"mlp"`` encoder.
    decoder : {"transformer", "transformer-codes", "mlp"}
    Other parameters are passed to the codebook and decoder.
    """

    def __init__(self, d_low, d_high, k, *, encoder="adaptive", alpha=0.2, encoder_init="identity",
                 encoder_hidden=512, decoder="transformer",
                 decoder_layers=6, decoder_heads=8, decoder_ff=2048, decoder_hidden=1024, dropout=0.1,
                 decoder_norm_first=True, decoder_skip=False, decoder_positions=0.0,
                 top_k=5, temperature=1.0, ema_decay=0.99, ema_eps=1e-5, ema_update="sampled",
                 dead_code_threshold=None):
        super().__init__()
        self.encoder = make_encoder(encoder, d_low, alpha, init=encoder_init, hidden=encoder_hidden)
        self.codebook = EMACodebook(k, d_low, ema_decay, ema_eps, top_k, temperature, ema_update,
                                    dead_code_threshold)
        self.decoder = make_decoder(decoder, d_low, d_high, n_layers=decoder_layers, n_heads=decoder_heads,
                                    ff=decoder_ff, dropout=dropout, hidden=decoder_hidden,
                                    norm_first=decoder_norm_first, skip=decoder_skip,
                                    positions=decoder_positions)

    @property
    def out_features(self) -> int:
        """Width of the predicted (target) layer: the decoder's output width."""
        return int(self.decoder.out.out_features)

    @property
    def per_token(self) -> bool:
        """True when the decoder needs no sequence context."""
        return isinstance(self.decoder, TokenDecoder)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """Codebook-space vectors ``z`` of flat source rows, always in float32.

        The encoder and the codebook run outside any autocast region, so a
        model trained or run under bfloat16 autocast assigns exactly the
        codes that float32 inference assigns.
        """
        with torch.autocast(source.device.type, enabled=False):
            return self.encoder(source.float())

    def quantize(self, source: torch.Tensor):
        """``(z, QuantizerOutput)`` of flat source rows, in float32."""
        z = self.encode(source)
        with torch.autocast(source.device.type, enabled=False):
            return z, self.codebook(z)

    def decoder_features(self, source: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """The decoder's hidden rows before its output layer (nearest codes)."""
        z, (quantized, _, _) = self.quantize(source)
        return self._decode(z, quantized, lengths, features=True, max_len=max_len)

    def _decode(self, z, quantized, lengths, features=False, max_len=None):
        method = self.decoder.features if features else self.decoder
        if self.per_token:
            return method(quantized, None, None)
        rows, cols, mask = padding_layout(lengths, max_len, z.shape[0])
        padded = method(to_padded(quantized, rows, cols, mask), to_padded(z, rows, cols, mask), ~mask)
        return padded[rows, cols]

    def forward(self, source: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None) -> CLVQOutput:
        """Predict the target rows; ``max_len`` = ``lengths.max()`` when known on the host."""
        z, (quantized, indices, commitment) = self.quantize(source)
        prediction = self._decode(z, quantized, lengths, max_len=max_len)
        return CLVQOutput(prediction, indices, commitment)
