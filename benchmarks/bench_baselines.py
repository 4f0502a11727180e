"""Speed of the two baselines: KMeansConcepts and SparseAutoencoder, in one run.

Data: real MiniLM-L6 activations (layer 4 -> 6, special tokens dropped) of
the first ``--n-texts`` AG News test texts, truncated at ``--max-length``
tokens.  The first 90% of the documents train, the rest are held out.
Extracted activations are cached in the clvqlearn cache home.

Measured:

- ``kmeans``: ``KMeansConcepts(algorithm="kmeans")`` against calling
  scikit-learn's ``KMeans`` directly on the same layer-6 array with the same
  parameters (k, n_init, max_iter, random_state), interleaved, ``--repeats``
  times each.  Reported: best and median seconds, the ratio ours / sklearn
  (the target is <= 1.1: no overhead of ours), whether the labels agree, and
  the same for ``predict``.
- ``sae``: ``SparseAutoencoder`` (ReLU, the paper's baseline, and TopK)
  training throughput in training tokens per second (tokens of the training
  documents x epochs / fit wall time, validation passes included),
  inference tokens per second (``transform``), and held-out FVE.

Usage::

    python benchmarks/bench_baselines.py [--n-texts 1000] [--k 400] [--device cpu] [--threads 1]
    python benchmarks/bench_baselines.py --skip-kmeans   # keeps the last k-means figures

Prints the figures and writes ``benchmarks/results/bench_baselines.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def load_pairs(n_texts: int, max_length: int, device: str):
    """MiniLM (4 -> 6) activations of the first ``n_texts`` AG News texts (cached)."""
    from clvqlearn._config import get_cache_home
    from clvqlearn.pairs import LayerPairs

    cache = get_cache_home() / "bench" / f"ag_news_minilm_4_6_n{n_texts}_len{max_length}"
    if (cache / "meta.json").is_file():
        return LayerPairs.load(cache, mmap_mode=None), 0.0
    from clvqlearn.datasets import load_ag_news
    from clvqlearn.extraction import LayerPairExtractor

    texts = list(load_ag_news("test").texts[:n_texts])
    start = time.perf_counter()
    pairs = LayerPairExtractor("minilm", layers=(4, 6), max_length=max_length, device=device).fit_transform(texts)
    seconds = time.perf_counter() - start
    pairs.save(cache)
    return pairs, seconds


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_kmeans(train, test, k: int, repeats: int, max_iter: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from clvqlearn.concepts.kmeans import KMeansConcepts

    X = np.ascontiguousarray(train.high)
    params = dict(n_init=1, max_iter=max_iter, random_state=seed)
    ours_fit, ref_fit, ours_pred, ref_pred = [], [], [], []
    same_labels = same_predict = True
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        t, ref = _timed(lambda: KMeans(n_clusters=k, **params).fit(X))
        ref_fit.append(t)
        t, ours = _timed(lambda: KMeansConcepts(k=k, algorithm="kmeans", **params).fit(train))
        ours_fit.append(t)
        same_labels &= bool(np.array_equal(ours.labels_, ref.labels_))
        t, ref_ids = _timed(lambda: ref.predict(test.high))
        ref_pred.append(t)
        t, our_ids = _timed(lambda: ours.predict(test))
        ours_pred.append(t)
        same_predict &= bool(np.array_equal(our_ids, ref_ids))
    return {
        "n_train_tokens": int(X.shape[0]),
        "n_test_tokens": int(test.n_tokens),
        "dim": int(X.shape[1]),
        "k": k,
        "params": params,
        "n_iter": int(ours.n_iter_),
        "fit_seconds": {"ours": ours_fit, "sklearn": ref_fit},
        "fit_ratio_best": min(ours_fit) / min(ref_fit),
        "fit_ratio_median": float(np.median(ours_fit) / np.median(ref_fit)),
        "predict_seconds": {"ours": ours_pred, "sklearn": ref_pred},
        "predict_ratio_best": min(ours_pred) / min(ref_pred),
        "same_labels": same_labels,
        "same_predict": same_predict,
        "held_out_fve": float(ours.score(test)),
    }


def bench_sae(train, test, k: int, epochs: int, device: str, seed: int, **params) -> dict:
    from clvqlearn.concepts.sae import SparseAutoencoder

    sae = SparseAutoencoder(k=k, max_epochs=epochs, early_stopping_patience=epochs + 1, device=device,
                            random_state=seed, **params)
    fit_seconds, _ = _timed(lambda: sae.fit(train))
    train_tokens = train.n_tokens * (1 - sae.validation_fraction)  # documents split 90 / 10
    infer_seconds, codes = _timed(lambda: sae.transform(test))
    return {
        "params": {"k": k, "max_epochs": epochs, **params},
        "device": str(sae._resolve_device()),
        "epochs_run": int(sae.n_iter_),
        "fit_seconds": fit_seconds,
        "train_tokens_per_second": train_tokens * sae.n_iter_ / fit_seconds,
        "transform_tokens_per_second": test.n_tokens / infer_seconds,
        "held_out_fve": float(sae.score(test)),
        "train_fve": float(sae.score(train)),
        "l0": float((codes > 0).sum(1).mean()),
        "dead_latents": int(sae.n_dead_latents_),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-texts", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--k", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="k-means fits of each kind")
    parser.add_argument("--kmeans-max-iter", type=int, default=300)
    parser.add_argument("--sae-epochs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 helps on an oversubscribed CPU")
    parser.add_argument("--skip-kmeans", action="store_true")
    parser.add_argument("--skip-sae", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_baselines.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    previous = json.loads(args.output.read_text()) if args.output.is_file() else {}
    pairs, extract_seconds = load_pairs(args.n_texts, args.max_length, args.device)
    n_train = int(round(0.9 * pairs.n_docs))
    train, test = pairs[:n_train], pairs[n_train:]
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "data": {"texts": args.n_texts, "max_length": args.max_length, "n_tokens": pairs.n_tokens,
                 "train_docs": n_train, "test_docs": pairs.n_docs - n_train,
                 "extract_seconds": extract_seconds or "cached"},
    }
    print(f"data: {pairs.n_tokens} tokens from {args.n_texts} AG News texts "
          f"({train.n_tokens} train / {test.n_tokens} held out)")

    # a skipped section keeps its figures from the previous run (same data only)
    for section in ("kmeans", "sae"):
        if getattr(args, f"skip_{section}") and previous.get("data", {}).get("n_tokens") == pairs.n_tokens:
            if section in previous:
                report[section] = previous[section]

    if not args.skip_kmeans:
        km = bench_kmeans(train, test, args.k, args.repeats, args.kmeans_max_iter, args.seed)
        report["kmeans"] = km
        verdict = "OK" if km["fit_ratio_best"] <= 1.1 else "OVER 1.1x"
        print(f"k-means k={args.k}: ours {min(km['fit_seconds']['ours']):.2f}s, sklearn "
              f"{min(km['fit_seconds']['sklearn']):.2f}s (best of {args.repeats}); ratio best "
              f"{km['fit_ratio_best']:.3f}, median {km['fit_ratio_median']:.3f} [{verdict}]; "
              f"same labels {km['same_labels']}; predict ratio {km['predict_ratio_best']:.3f}; "
              f"held-out FVE {km['held_out_fve']:.3f}")

    if not args.skip_sae:
        report["sae"] = {}
        for name, params in [("relu", {}), ("topk", {"activation": "topk", "top_k": 32, "l1": 0.0})]:
            res = bench_sae(train, test, args.k, args.sae_epochs, args.device, args.seed, **params)
            report["sae"][name] = res
            print(f"SAE {name} k={args.k} on {res['device']}: {res['train_tokens_per_second']:,.0f} training "
                  f"tokens/s ({res['epochs_run']} epochs, {res['fit_seconds']:.1f}s), transform "
                  f"{res['transform_tokens_per_second']:,.0f} tokens/s, held-out FVE "
                  f"{res['held_out_fve']:.3f}, L0 {res['l0']:.1f}, dead {res['dead_latents']}")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
