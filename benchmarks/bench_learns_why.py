"""Why did CrossLayerVQ's training not move its concepts away from k-means on layer l?  (issue 10)

Three measurements on MiniLM layers 4 -> 6 (AG News, the cached training
documents of ``bench_learns.py``; held-out documents for FVE), k = 100:

1. **Sampling temperature vs distance scale.** The share of training tokens
   for which top-5 sampling at temperature T picks a code other than the
   nearest, and the median gap between the two nearest squared distances,
   for the paper's encoder and for a regression-started linear encoder with
   and without rescaling to the source norm.
2. **Starting points.** Held-out FVE and AMI against k-means on layer l of
   the network as initialised (no training step), for the encoder and
   codebook starts.
3. **What training does from a good start.** Four epochs of the shared
   training loop from the same start, freezing parts of the model: the
   decoder alone; decoder + EMA codebook; decoder + encoder; everything; and
   everything without the commitment term.  Reported per epoch: training
   loss, held-out FVE, and how far the encoder's weights moved.

One torch thread (``OMP_NUM_THREADS=1``).  Run ``bench_learns.py`` first (it
caches the activations).  Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_learns_why.py --dataset ag_news

Writes ``benchmarks/results/learns/why_<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "learns"
STARTS = {
    "paper: adaptive encoder, W = I, spherical": dict(encoder="adaptive", encoder_init="identity", init="spherical"),
    "linear encoder, ridge start unscaled, k-means++": dict(encoder="linear", encoder_init="regression",
                                                           init="k-means++", _unscaled=True),
    "linear encoder, ridge start, spherical": dict(encoder="linear", encoder_init="regression", init="spherical"),
    "linear encoder, ridge start, k-means++ (default)": dict(encoder="linear", encoder_init="regression",
                                                            init="k-means++"),
}
PROBES = ("decoder only", "decoder + EMA codebook", "decoder + encoder", "everything",
          "everything, no commitment")


def load(dataset: str, n_docs: int):
    from clvqlearn.pairs import LayerPairs

    cache = Path(os.environ.get("CLVQLEARN_CACHE", Path.home() / ".cache" / "clvqlearn")) / "bench_learns"
    train, test = LayerPairs.load(cache / f"{dataset}_train_2000"), LayerPairs.load(cache / f"{dataset}_test_500")
    return train[:n_docs], test


def start_network(train, start: dict, seed: int = 0):
    """The estimator's own initial network for one start (no training step)."""
    from clvqlearn import CrossLayerVQ

    start = dict(start)
    unscaled = start.pop("_unscaled", False)
    vq = CrossLayerVQ(k=100, decoder="mlp", random_state=seed, **start)
    vq._validate_params()
    data = vq._validate_input(train, reset=True, fitting=True)
    if unscaled:
        from clvqlearn.nn.encoders import AdaptiveResidualEncoder, LinearEncoder

        original = LinearEncoder.init_regression
        LinearEncoder.init_regression = AdaptiveResidualEncoder.init_regression
        try:
            network = vq._initial_network(data, np.random.RandomState(seed), torch.device("cpu"))
        finally:
            LinearEncoder.init_regression = original
    else:
        network = vq._initial_network(data, np.random.RandomState(seed), torch.device("cpu"))
    return vq, data, network


def held_out(network, test, kmeans_ids):
    from clvqlearn.evaluation.diagnostics import concept_agreement
    from clvqlearn.metrics import fraction_of_variance_explained

    network.eval()
    with torch.no_grad():
        out = network(torch.as_tensor(test.low), torch.as_tensor(np.diff(test.offsets)))
    return (fraction_of_variance_explained(test.high, out.prediction.numpy()),
            concept_agreement(out.indices.numpy(), kmeans_ids))


def sampling_rows(train, kmeans_ids, test) -> list[dict]:
    from clvqlearn.nn.codebook import sample_codes, squared_distances

    rows = []
    for name, start in STARTS.items():
        if "spherical" in name and "paper" not in name:
            continue
        _, data, network = start_network(train, start)
        with torch.no_grad():
            z = network.encode(torch.as_tensor(data.source))
            dist = squared_distances(z, network.codebook.codes)
        nearest, gaps = dist.argmin(1), dist.topk(2, largest=False).values
        for temperature in (1.0, 0.1):
            sampled = sample_codes(dist, 5, temperature, torch.Generator().manual_seed(0))
            rows.append(dict(start=name, temperature=temperature,
                             non_nearest_share=float((sampled != nearest).float().mean()),
                             median_gap=float((gaps[:, 1] - gaps[:, 0]).median()),
                             mean_norm_z=float(z.norm(dim=1).mean())))
    return rows


def start_rows(train, test, kmeans_ids) -> list[dict]:
    rows = []
    for name, start in STARTS.items():
        _, _, network = start_network(train, start)
        fve, ami = held_out(network, test, kmeans_ids)
        rows.append(dict(start=name, fve=fve, ami_vs_kmeans_low=ami))
    return rows


def probe_rows(train, test, kmeans_ids, epochs: int) -> list[dict]:
    from clvqlearn.concepts._training import TrainConfig, train_module

    rows = []
    for probe in PROBES:
        vq, data, network = start_network(train, STARTS["linear encoder, ridge start, k-means++ (default)"])
        w0 = network.encoder.linear.weight.detach().clone()
        if "encoder" not in probe and not probe.startswith("everything"):
            for param in network.encoder.parameters():
                param.requires_grad_(False)
        if "codebook" not in probe and not probe.startswith("everything"):
            network.codebook.decay = 1.0  # no EMA movement
        beta = 0.0 if "no commitment" in probe else 0.1

        def loss_fn(net, batch, beta=beta):
            out = net(batch.source, batch.lengths)
            return torch.nn.functional.mse_loss(out.prediction.float(), batch.target) + beta * out.commitment

        fve, ami = held_out(network, test, kmeans_ids)
        rows.append(dict(probe=probe, epoch=0, train_loss=None, fve=fve, ami_vs_kmeans_low=ami, encoder_moved=0.0))
        rng = np.random.RandomState(0)
        config = TrainConfig(max_epochs=1, batch_size=32, learning_rate=1e-3, warmup_steps=0,
                             validation_fraction=0.0, weight_decay=0.0)
        state = None
        for epoch in range(1, epochs + 1):
            result, state = train_module(network, loss_fn, data.source, data.target, data.offsets, config=config,
                                         rng=rng, device=torch.device("cpu"), state=state)
            fve, ami = held_out(network, test, kmeans_ids)
            moved = float((network.encoder.linear.weight.detach() - w0).norm() / w0.norm())
            rows.append(dict(probe=probe, epoch=epoch, train_loss=result.loss_curve[0], fve=fve,
                             ami_vs_kmeans_low=ami, encoder_moved=moved))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ag_news")
    parser.add_argument("--n-docs", type=int, default=800, help="training documents for the probes")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    from clvqlearn import KMeansConcepts

    train, test = load(args.dataset, args.n_docs)
    kmeans_ids = KMeansConcepts(100, layer="low", random_state=0).fit(train).predict(test)
    out = dict(command="OMP_NUM_THREADS=1 python benchmarks/bench_learns_why.py " + " ".join(sys.argv[1:]),
               setting=f"MiniLM 4 -> 6, {args.dataset}: {len(train)} training documents ({train.n_tokens} tokens), "
                       f"{len(test)} held-out documents, k = 100, mlp decoder, Adam 1e-3, 32 documents per batch",
               sampling=sampling_rows(train, kmeans_ids, test), starts=start_rows(train, test, kmeans_ids))
    out["probes"] = probe_rows(train, test, kmeans_ids, args.epochs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"why_{args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    import pandas as pd

    parts = [f"{out['setting']}\n\nCommand: `{out['command']}`\n"]
    for key in ("sampling", "starts", "probes"):
        parts.append(f"## {key}\n\n" + pd.DataFrame(out[key]).to_markdown(index=False, floatfmt=".4f") + "\n")
    stem.with_suffix(".md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
