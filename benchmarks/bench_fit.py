"""Training speed of CrossLayerVQ against a straightforward baseline, in one run.

Data: real MiniLM-L6 activations (layer 4 -> 6, special tokens dropped) of
AG News texts, truncated at 128 tokens.

Measured, each for one epoch over the same documents, k = 400:

- ``baseline``: the reference architecture (6-layer transformer decoder)
  trained the straightforward way, written here: documents in corpus order,
  every batch padded to the fixed ``max_length``, float32, and top-k
  temperature sampling done row by row in a Python loop;
- ``ours``: ``CrossLayerVQ(decoder="transformer")`` (length-bucketed
  batches with no padding to a fixed size, vectorised sampling);
- ``ours-bf16``: the same with ``compute_dtype="bfloat16"`` (opt-in);
- ``ours-mlp``: ``CrossLayerVQ(decoder="mlp")``.

Reported: real (non-padding) training tokens per second, seconds per
epoch, the ratio to the baseline, and the share of step time spent in
sampling + EMA (the codebook forward).

Usage::

    python benchmarks/bench_fit.py --n-texts 600 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from clvqlearn import CrossLayerVQ
from clvqlearn._torch_utils import resolve_device
from clvqlearn.nn.clvq import CLVQNetwork
from clvqlearn.nn.codebook import EMACodebook, squared_distances

RESULTS = Path(__file__).parent / "results"


def load_activations(n_texts: int, max_length: int, device: str):
    from clvqlearn.datasets import load_ag_news
    from clvqlearn.extraction import LayerPairExtractor

    texts = load_ag_news().texts[:n_texts]
    return LayerPairExtractor("minilm", layers=(4, 6), max_length=max_length, device=device).fit_transform(texts)


class RowLoopCodebook(EMACodebook):
    """The baseline's quantiser: sampling row by row in Python."""

    def forward(self, z):
        flat = z.reshape(-1, self.dim)
        distances = squared_distances(flat.detach(), self.codes)
        picked = []
        for row in distances:  # the per-row loop the reference implementation uses
            d_top, idx_top = row.topk(self.top_k, largest=False)
            probs = torch.softmax(-d_top / self.temperature, dim=0)
            picked.append(idx_top[torch.multinomial(probs, 1, generator=self.generator)])
        indices = torch.cat(picked)
        quantized = self.codes[indices]
        commitment = (flat - quantized.detach()).pow(2).mean()
        self._ema_update(flat.detach(), indices)
        return flat + (quantized - flat).detach(), indices, commitment


def baseline_epoch(pairs, k, max_length, batch_size, device, seed=0):
    """One epoch of the straightforward trainer; returns (seconds, real tokens, codebook seconds)."""
    torch_device = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CLVQNetwork(pairs.low.shape[1], pairs.high.shape[1], k).to(torch_device)
    book = RowLoopCodebook(k, pairs.low.shape[1]).to(torch_device)
    book.initialize(torch.as_tensor(pairs.low[np.random.default_rng(seed).choice(pairs.n_tokens, k, replace=False)]).to(torch_device))
    book.generator = torch.Generator(device=torch_device).manual_seed(seed)
    net.codebook = book
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    low, high, offsets = np.asarray(pairs.low), np.asarray(pairs.high), pairs.offsets
    real, book_time = 0, [0.0]
    original = book.forward

    def timed(z):
        t = time.perf_counter()
        out = original(z)
        book_time[0] += time.perf_counter() - t
        return out

    book.forward = timed
    start = time.perf_counter()
    for b in range(0, pairs.n_docs, batch_size):
        docs = range(b, min(b + batch_size, pairs.n_docs))
        x = torch.zeros(len(docs), max_length, low.shape[1])
        y = torch.zeros(len(docs), max_length, high.shape[1])
        mask = torch.zeros(len(docs), max_length, dtype=torch.bool)
        for i, d in enumerate(docs):
            n = offsets[d + 1] - offsets[d]
            x[i, :n] = torch.from_numpy(low[offsets[d]:offsets[d + 1]])
            y[i, :n] = torch.from_numpy(high[offsets[d]:offsets[d + 1]])
            mask[i, :n] = True
        x, y, mask = x.to(torch_device), y.to(torch_device), mask.to(torch_device)
        z = net.encoder(x)
        q, _, commitment = book(z.reshape(-1, z.shape[-1]))  # pads are quantised too, as in the reference
        pred = net.decoder(q.reshape(z.shape), z, ~mask)
        loss = ((pred - y) ** 2).mean(-1)[mask].mean() + 0.1 * commitment
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 2.0)
        optimizer.step()
        real += int(mask.sum())
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, real, book_time[0]


def ours_epoch(pairs, k, batch_size, device, **params):
    """One epoch of CrossLayerVQ; returns (seconds, real tokens, codebook seconds)."""
    # the reference architecture and optimiser (the baseline's), whatever the estimator's defaults
    est = CrossLayerVQ.from_recipe("paper", k=k, max_epochs=1, batch_size=batch_size, validation_fraction=0.0,
                                   device=device, random_state=0, **params)
    book_time = [0.0]
    original = EMACodebook.forward

    def timed(self, z):
        t = time.perf_counter()
        out = original(self, z)
        if self.training:
            book_time[0] += time.perf_counter() - t
        return out

    EMACodebook.forward = timed
    try:
        est._validate_params()
        data = est._validate_input(pairs, reset=True, fitting=True)
        start = time.perf_counter()
        est._fit_data(data, partial=False)
        seconds = time.perf_counter() - start
    finally:
        EMACodebook.forward = original
    # the timed span includes initialisation and the usage pass; report them separately
    return seconds, pairs.n_tokens, book_time[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=600)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--k", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pairs = load_activations(args.n_texts, args.max_length, args.device)
    print(f"{pairs.n_docs} texts, {pairs.n_tokens} real tokens, device={args.device}, k={args.k}")
    rows = []
    runs = [
        ("ours", dict(decoder="transformer")),
        ("ours-bf16", dict(decoder="transformer", compute_dtype="bfloat16")),
        ("ours-mlp", dict(decoder="mlp")),
    ]
    if not args.skip_baseline:
        seconds, real, book = baseline_epoch(pairs, args.k, args.max_length, args.batch_size, args.device)
        rows.append(dict(run="baseline", seconds=seconds, tokens=real, codebook_seconds=book))
    for name, params in runs:
        seconds, real, book = ours_epoch(pairs, args.k, args.batch_size, args.device, **params)
        rows.append(dict(run=name, seconds=seconds, tokens=real, codebook_seconds=book))
    base = rows[0]["tokens"] / rows[0]["seconds"] if not args.skip_baseline else None
    print(f"{'run':<10} {'s/epoch':>8} {'real tok/s':>11} {'x baseline':>10} {'sampling+EMA share':>19}")
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["ratio"] = row["tokens_per_s"] / base if base else None
        row["codebook_share"] = row["codebook_seconds"] / row["seconds"]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "-"
        print(f"{row['run']:<10} {row['seconds']:8.1f} {row['tokens_per_s']:11.0f} {ratio:>10} "
              f"{row['codebook_share']:19.1%}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_fit_{args.device.replace(':', '')}.json"
    out.write_text(json.dumps(dict(args=vars(args), n_tokens=pairs.n_tokens, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
