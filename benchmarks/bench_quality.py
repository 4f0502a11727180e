"""Held-out quality of CrossLayerVQ across its main settings, on real activations.

For a packaged model and AG News, fits CrossLayerVQ for every combination
of ``k``, ``top_k`` and decoder (reference transformer vs codes-only
transformer) on the first ``--n-train`` texts and reports, on texts
6,000 onwards (held out):

- FVE: the fraction of the higher layer's variance explained;
- active codes / k and the usage perplexity on the training tokens.

The k-means reference of METHOD.md (cluster the low layer, predict each
cluster's mean high-layer vector) is computed in the same run.

Usage::

    python benchmarks/bench_quality.py --model minilm --layers 4 6
    python benchmarks/bench_quality.py --model smollm2 --layers 20 30 --n-train 300
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from clvqlearn import CrossLayerVQ
from clvqlearn.metrics import fraction_of_variance_explained

RESULTS = Path(__file__).parent / "results"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--layers", type=int, nargs=2, default=(4, 6))
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--top-ks", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--decoders", nargs="+", default=["transformer", "transformer-codes"])
    parser.add_argument("--decoder-layers", type=int, default=2)
    parser.add_argument("--decoder-ff", type=int, default=512)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from clvqlearn.datasets import load_ag_news
    from clvqlearn.extraction import LayerPairExtractor

    texts = load_ag_news().texts
    extractor = LayerPairExtractor(args.model, layers=tuple(args.layers), max_length=args.max_length,
                                   device=args.device).fit(texts[:2])
    train = extractor.transform(texts[: args.n_train])
    test = extractor.transform(texts[6000: 6000 + args.n_test])
    print(f"{args.model} {train.layers}: {train.n_tokens} train / {test.n_tokens} held-out tokens")

    rows = []
    for k in args.ks:
        km = KMeans(k, n_init=1, random_state=0).fit(train.low)
        means = np.stack([train.high[km.labels_ == c].mean(axis=0) if np.any(km.labels_ == c)
                          else train.high.mean(axis=0) for c in range(k)])
        rows.append(dict(method="k-means(low) -> mean high", k=k, top_k=None, decoder=None,
                         fve=fraction_of_variance_explained(test.high, means[km.predict(test.low)]),
                         active=None, perplexity=None, epochs=None, seconds=None))
    for k, top_k, decoder in itertools.product(args.ks, args.top_ks, args.decoders):
        start = time.perf_counter()
        vq = CrossLayerVQ(k=k, top_k=top_k, decoder=decoder, decoder_layers=args.decoder_layers,
                          decoder_ff=args.decoder_ff, max_epochs=args.max_epochs, batch_size=32,
                          learning_rate=args.learning_rate, device=args.device, random_state=0).fit(train)
        rows.append(dict(method="CrossLayerVQ", k=k, top_k=top_k, decoder=decoder, fve=vq.score(test),
                         active=vq.n_active_codes_ / k, perplexity=vq.perplexity_, epochs=vq.n_iter_,
                         seconds=time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"quality_{args.model}_{args.layers[0]}_{args.layers[1]}"
    table.to_csv(stem.with_suffix(".csv"), index=False)
    settings = (f"{args.model} layers {tuple(args.layers)}, AG News: {args.n_train} train texts "
                f"({train.n_tokens} tokens), {args.n_test} held-out texts ({test.n_tokens} tokens), "
                f"max_length {args.max_length}; decoder {args.decoder_layers} layers, ff {args.decoder_ff}, "
                f"{args.max_epochs} epochs, lr {args.learning_rate}, batch 32 sentences")
    stem.with_suffix(".md").write_text(settings + "\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    print(settings)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
