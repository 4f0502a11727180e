"""Can training the codes beat "regress, then k-means"?  (issue 22, item 2)

The two-stage baseline is ``CrossLayerVQ.from_recipe("two-stage")``: the
default's regression encoder, k-means codes on its output kept frozen, the
decoder trained on them.  From that fitted state this script trains for a
few more epochs in four ways, all with the same per-token MLP decoder, and
scores held-out FVE of layer h with hard nearest-code assignments:

``control``
    the decoder alone (codes fixed): the same extra training budget, no
    change of the partition;
``grad``
    codes as parameters, nearest-code assignment, the decoder's gradient
    flowing into the codes, plus ``beta * ||sg(z) - q||^2`` (a VQ-VAE
    codebook loss instead of EMA);
``soft``
    soft-to-hard assignments (Agustsson et al. 2017): the decoder reads
    ``softmax(-d / tau) @ codes``, so the loss has a gradient with respect
    to the assignment itself; ``tau`` is annealed from the median nearest
    distance to a thousandth of it, so training ends with hard codes.

Why these cannot do much for a per-token decoder: with ``m(x) = E[h | x]``,
``E||h - f(c(x))||^2 = E||h - m(x)||^2 + E||m(x) - f(c(x))||^2`` for any
code assignment ``c`` of ``x``; the first term does not depend on the codes
and the second is the k-means objective on ``m(x)``.  The regression
encoder estimates ``m``, so k-means on its output is the best per-token
partition up to the encoder's error.  Only a decoder that reads context, or
a better estimate of ``m``, leaves room for joint training.

One torch thread.  Run ``bench_learns.py --dataset <name>`` first (it
caches the activations).  Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_joint_training.py --dataset ag_news --k 100

Writes ``benchmarks/results/joint_training/<dataset>_k<k>.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "joint_training"
#: (variant, settings) run from the same two-stage start
VARIANTS = [("control", {}), ("grad", {"beta": 0.25}), ("grad", {"beta": 1.0}), ("soft", {"beta": 0.25}),
            ("soft", {"beta": 1.0})]


def continue_training(network, z_train, h_train, variant: str, *, epochs=6, lr=1e-3, beta=0.25, seed=0,
                      batch_size=512):
    """Train a copy of ``network``'s codes and decoder further; return ``(codes, decoder)``."""
    import torch

    from clvqlearn._torch_utils import seeded

    generator = torch.Generator().manual_seed(seed)
    codes = torch.nn.Parameter(network.codebook.codes.detach().clone())
    decoder = copy.deepcopy(network.decoder).train()
    optimizer = torch.optim.Adam(list(decoder.parameters()) + ([codes] if variant != "control" else []), lr=lr)
    n = z_train.shape[0]
    total = epochs * -(-n // batch_size)
    tau0 = float(torch.cdist(z_train, codes.detach()).pow(2).min(1).values.median())
    step = 0
    with seeded(seed, torch.device("cpu")):  # dropout draws from the global RNG
        for _ in range(epochs):
            for rows in torch.randperm(n, generator=generator).split(batch_size):
                z, h = z_train[rows], h_train[rows]
                distances = torch.cdist(z, codes).pow(2)
                if variant == "soft":
                    tau = tau0 * 1e-3 ** (step / max(total - 1, 1))
                    weights = torch.softmax(-(distances - distances.min(1, keepdim=True).values) / tau, 1)
                    q = weights @ codes
                else:
                    nearest = distances.argmin(1)
                    q = codes[nearest] if variant == "grad" else codes.detach()[nearest]
                loss = torch.nn.functional.mse_loss(decoder(q, None, None), h)
                if variant != "control":
                    loss = loss + beta * (z - q).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
    return codes.detach(), decoder.eval()


def held_out(codes, decoder, z_test, h_test) -> tuple[float, int]:
    """Held-out FVE with nearest-code assignments, and the number of codes used."""
    import torch

    from clvqlearn.metrics import fraction_of_variance_explained

    with torch.no_grad():
        nearest = torch.cdist(z_test, codes).argmin(1)
        prediction = decoder(codes[nearest], None, None).numpy()
    return float(fraction_of_variance_explained(h_test, prediction)), int(nearest.unique().numel())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ag_news")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=800, help="training documents (of the cached 2000)")
    parser.add_argument("--n-test", type=int, default=300, help="held-out documents (of the cached 500)")
    args = parser.parse_args()
    import torch

    from clvqlearn import CrossLayerVQ
    from clvqlearn.data import LayerPairs

    torch.set_num_threads(1)
    cache = Path(os.environ.get("CLVQLEARN_CACHE", Path.home() / ".cache" / "clvqlearn")) / "bench_learns"
    train = LayerPairs.load(cache / f"{args.dataset}_train_2000")[: args.n_train]
    test = LayerPairs.load(cache / f"{args.dataset}_test_500")[: args.n_test]
    start = time.perf_counter()
    base = CrossLayerVQ.from_recipe("two-stage", k=args.k, decoder="mlp", random_state=0).fit(train)
    rows = [dict(variant="two-stage as fitted", fve=float(base.score(test)), seconds=time.perf_counter() - start)]
    network = base._network(torch.device("cpu"))
    with torch.no_grad():
        z_train, z_test = (network.encode(torch.as_tensor(np.asarray(p.low), dtype=torch.float32))
                           for p in (train, test))
    h_train = torch.as_tensor(np.asarray(train.high), dtype=torch.float32)
    for variant, settings in VARIANTS:
        start = time.perf_counter()
        codes, decoder = continue_training(network, z_train, h_train, variant, **settings)
        fve, used = held_out(codes, decoder, z_test, np.asarray(test.high))
        rows.append(dict(variant=variant, **settings, fve=fve, codes_used=used, seconds=time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
    setting = (f"MiniLM layers 4 -> 6, {args.dataset}: {len(train)} training documents ({train.n_tokens} tokens), "
               f"{len(test)} held-out documents ({test.n_tokens} tokens), k = {args.k}, MLP decoder, "
               "6 more epochs from the two-stage fit, Adam 1e-3, one torch thread")
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_joint_training.py " + shlex.join(sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{args.dataset}_k{args.k}"
    stem.with_suffix(".json").write_text(json.dumps(dict(setting=setting, command=command, rows=rows), indent=1))
    import pandas as pd

    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f")
    stem.with_suffix(".md").write_text(f"{setting}\n\nCommand: `{command}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
