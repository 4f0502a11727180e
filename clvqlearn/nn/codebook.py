"""EMA vector-quantisation codebook with top-k temperature sampling (pure torch).

Follows the CLVQ-VAE reference (METHOD.md):

- squared Euclidean distances from each vector to all K codes;
- training: draw one of the ``top_k`` nearest codes with
  ``p = softmax(-d / temperature)``; inference: the nearest code;
- straight-through gradients ``q_st = z + (q - z).detach()``;
- EMA update from the SAMPLED assignment (``update="nearest"`` as an
  option) with Laplace smoothing; codes, sums and counts initialised
  together (``N = 1``, ``M = e``);
- optional dead-code replacement (off by default, as in the paper);
- data-parallel training (``data_parallel=True`` inside an initialised
  ``torch.distributed`` group): each process quantises its share of the
  global batch (``shard``), draws its rows' sampling noise from the global
  batch's draw, and the EMA counts and sums are summed over the processes
  before the update (as vector-quantize-pytorch's ``sync_codebook``), so
  every process holds the codebook one process would have.

Examples
--------
>>> import torch
>>> from clvqlearn.nn.codebook import EMACodebook
>>> book = EMACodebook(k=4, dim=2)
>>> book.initialize(torch.eye(4, 2))
>>> out = book.eval()(torch.tensor([[0.9, 0.1]]))
>>> int(out.indices[0])
0
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class QuantizerOutput(NamedTuple):
    """What :class:`EMACodebook` returns."""

    quantized: torch.Tensor  # straight-through codes, same shape as the input
    indices: torch.Tensor  # (n,) code ids
    commitment: torch.Tensor  # scalar ||z - sg(e)||^2 (mean)


def squared_distances(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``||z_i - e_j||^2`` for all pairs, in float32, clamped at 0.

    Parameters
    ----------
    z : Tensor of shape (n, d)
    codes : Tensor of shape (k, d)

    Returns
    -------
    Tensor of shape (n, k)
    """
    z = z.float()
    codes = codes.float()
    d = (z * z).sum(1, keepdim=True) - 2.0 * z @ codes.T + (codes * codes).sum(1)[None, :]
    return d.clamp_min_(0.0)


def sample_codes(distances: torch.Tensor, top_k: int, temperature: float, generator=None,
                 rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Vectorised top-k temperature sampling of one code per row.

    Parameters
    ----------
    distances : Tensor of shape (n, k)
    top_k : int
        How many nearest codes are candidates (1 = nearest, deterministic).
    temperature : float
        Softmax temperature over the negative distances of the candidates.
    generator : torch.Generator, optional
    rows : (start, total), optional
        ``distances`` are rows ``start .. start + n`` of a batch of
        ``total`` rows: the noise of the whole batch is drawn and these
        rows' part used, so a share draws what the whole batch would.

    Returns
    -------
    LongTensor of shape (n,)

    Examples
    --------
    >>> import torch
    >>> d = torch.tensor([[0.0, 5.0, 9.0]])
    >>> int(sample_codes(d, 1, 1.0)[0])
    0
    """
    if top_k <= 1:
        return distances.argmin(dim=1)
    d_top, idx_top = distances.topk(top_k, dim=1, largest=False)
    # Distances relative to the nearest candidate (softmax is shift-free), so
    # extreme but finite distances or temperatures never give inf - inf or
    # 0 / 0: the nearest code keeps logit 0, ties keep equal logits.
    largest = torch.finfo(d_top.dtype).max
    d_top = torch.nan_to_num(d_top, nan=largest, posinf=largest)
    gap = d_top - d_top[:, :1]
    logits = torch.where(gap > 0, -gap / temperature, torch.zeros_like(gap))
    probs = torch.softmax(logits, dim=1)
    # torch.multinomial's one-sample path, written out (the same draws and
    # result) without its validity check, which reads a flag back from the
    # device every step; softmax of finite logits is always valid.
    if rows is None:
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
    else:
        noise = sampling_noise(rows[1], probs.shape[1], probs, generator)[rows[0]:rows[0] + probs.shape[0]]
    choice = (probs / noise).argmax(dim=1, keepdim=True)
    return idx_top.gather(1, choice).squeeze(1)


def sampling_noise(n_rows: int, top_k: int, like: torch.Tensor, generator=None) -> torch.Tensor:
    """The exponential noise :func:`sample_codes` draws for ``n_rows`` rows (dtype and device of ``like``)."""
    return torch.empty((n_rows, top_k), dtype=like.dtype, device=like.device).exponential_(1, generator=generator)


class EMACodebook(nn.Module):
    """K code vectors updated by exponential moving averages.

    Parameters
    ----------
    k : int
        Number of codes.
    dim : int
        Code width.
    decay : float, default=0.99
        EMA decay ``g``.
    eps : float, default=1e-5
        Laplace smoothing constant.
    top_k : int, default=5
        Candidates for sampling during training.
    temperature : float, default=1.0
        Sampling temperature.
    update : {"sampled", "nearest"}, default="sampled"
        Which assignment drives the EMA update.
    dead_code_threshold : float or None, default=None
        Replace codes whose EMA count falls below this by random batch
        vectors (None = never, as in the paper).

    Attributes
    ----------
    generator : torch.Generator or None
        Drawn from for sampling and dead-code replacement.
    data_parallel : bool
        Sum the EMA statistics and gather replacement vectors over the
        default ``torch.distributed`` group (every process must run each
        training step: a process whose share is empty calls
        :meth:`idle_step`).
    shard : (start, total) or None
        Set before each data-parallel training forward: this process's rows
        start at ``start`` of a global batch of ``total`` rows.
    """

    def __init__(self, k, dim, decay=0.99, eps=1e-5, top_k=5, temperature=1.0, update="sampled",
                 dead_code_threshold=None):
        super().__init__()
        self.k, self.dim = int(k), int(dim)
        self.decay, self.eps = float(decay), float(eps)
        self.top_k, self.temperature = int(min(top_k, k)), float(temperature)
        self.update = update
        self.dead_code_threshold = dead_code_threshold
        self.generator: torch.Generator | None = None
        self.data_parallel = False
        self.shard: tuple[int, int] | None = None
        self.register_buffer("codes", torch.zeros(self.k, self.dim))
        self.register_buffer("cluster_size", torch.ones(self.k))
        self.register_buffer("code_sum", torch.zeros(self.k, self.dim))
        self.register_buffer("usage", torch.zeros(self.k))  # hard counts since the last reset
        self.register_buffer("n_replaced", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def initialize(self, codes: torch.Tensor) -> None:
        """Set the codes, and with them ``M = e`` and ``N = 1`` (together)."""
        if codes.shape != (self.k, self.dim):
            raise ValueError(f"initial codes must have shape {(self.k, self.dim)}; got {tuple(codes.shape)}")
        self.codes.copy_(codes)
        self.code_sum.copy_(codes)
        self.cluster_size.fill_(1.0)
        self.usage.zero_()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise rows of ``z`` (n, dim); updates the codebook in training mode."""
        flat = z.reshape(-1, self.dim)
        distances = squared_distances(flat.detach(), self.codes)
        if self.training:
            indices = sample_codes(distances, self.top_k, self.temperature, self.generator, self._rows())
        else:
            indices = distances.argmin(dim=1)
        quantized = self.codes[indices].to(flat.dtype)
        commitment = (flat.float() - quantized.detach().float()).pow(2).mean()
        if self.training:
            update_indices = indices if self.update == "sampled" else distances.argmin(dim=1)
            self._ema_update(flat.detach().float(), update_indices)
        straight_through = flat + (quantized - flat).detach()
        return QuantizerOutput(straight_through.reshape(z.shape), indices, commitment)

    def _rows(self) -> tuple[int, int] | None:
        """``(start, total)`` of this share in the global batch (None: the batch is whole)."""
        if not self.data_parallel or self.shard is None:
            return None
        return int(self.shard[0]), int(self.shard[1])

    @torch.no_grad()
    def idle_step(self, total_rows: int) -> None:
        """A data-parallel training step in which this process holds no row of the global batch.

        Draws the batch's sampling noise and takes part in the sums of the
        EMA update and of a dead-code replacement, as :meth:`forward` does.
        """
        if not self.training:
            return
        self.shard = (0, int(total_rows))
        empty = torch.zeros(0, self.dim, device=self.codes.device)
        if self.top_k > 1:
            sampling_noise(int(total_rows), self.top_k, empty, self.generator)
        self._ema_update(empty, torch.zeros(0, dtype=torch.long, device=self.codes.device))

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        # index_add_, not bincount: bincount sizes its output from a read of
        # indices.max() (a host synchronisation on a GPU); counts are exact
        counts = torch.zeros(self.k, dtype=flat.dtype, device=flat.device).index_add_(
            0, indices, torch.ones_like(indices, dtype=flat.dtype))
        sums = torch.zeros_like(self.code_sum).index_add_(0, indices, flat)
        if self.data_parallel:  # every process updates with the global batch's statistics
            packed = torch.cat([counts[:, None], sums], dim=1)
            torch.distributed.all_reduce(packed)
            counts, sums = packed[:, 0], packed[:, 1:]
        self.usage.add_(counts)
        weight = 1.0 - self.decay
        self.cluster_size.lerp_(counts, weight)
        self.code_sum.lerp_(sums, weight)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.k * self.eps) * total
        self.codes.copy_(self.code_sum / smoothed[:, None])
        if self.dead_code_threshold is not None:
            self._replace_dead(flat)

    @torch.no_grad()
    def _replace_dead(self, flat: torch.Tensor) -> None:
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        rows = self._rows()
        total = flat.shape[0] if rows is None else rows[1]
        if n_dead == 0 or total == 0:
            return
        picks = torch.randint(0, total, (n_dead,), device=flat.device, generator=self.generator)
        new = flat[picks] if rows is None else self._gather_rows(flat, picks, rows[0])
        self.codes[dead] = new
        self.code_sum[dead] = new
        self.cluster_size[dead] = 1.0
        self.n_replaced.add_(n_dead)

    def _gather_rows(self, flat: torch.Tensor, picks: torch.Tensor, start: int) -> torch.Tensor:
        """Rows ``picks`` of the global batch, wherever they are held (a sum over the processes)."""
        held = (picks >= start) & (picks < start + flat.shape[0])
        new = torch.zeros(picks.shape[0], self.dim, dtype=self.codes.dtype, device=self.codes.device)
        if flat.shape[0]:
            local = (picks - start).clamp(0, flat.shape[0] - 1)
            new = torch.where(held[:, None], flat[local].to(new.dtype), new)
        torch.distributed.all_reduce(new)
        return new
