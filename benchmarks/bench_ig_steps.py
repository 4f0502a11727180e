"""How much the paper's top-1 salient word changes when IG uses fewer than 500 steps.

The paper's saliency (``preset="paper"`` of ``concept_ablation_report``):
captum ``LayerIntegratedGradients`` on the output of the analysis layer
(MiniLM: hidden state 4, the low layer of 4 -> 6), attributions summed over
the hidden dimension and L2-normalised, a word scores the max over its
subwords, words ranked by absolute value, 500 steps.  500 steps per
sentence are too dear for the comparison table on a 2-core CPU, so the
table runs fewer; this script measures what that costs on ONE cell:
MiniLM fine-tuned on ERASER-Movie exactly as ``clvq table`` does it
(``run_unit``: 600 Pang & Lee sentences, 2 epochs, ``max_length=64``,
cached, so the table reuses the classifier), ``--n`` sentences of the
table's ERASER-Movie evaluation set (seeded sample).

For every step count it records how many sentences keep the 500-step top-1
WORD (same word index), the mean absolute convergence delta (logit units)
and the seconds per sentence.

Usage::

    python benchmarks/bench_ig_steps.py --n 40 --steps 8 16 32 64 500

Writes ``benchmarks/results/ig_steps_minilm_eraser.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="evaluation sentences")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 500],
                        help="step counts; the largest is the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "ig_steps_minilm_eraser.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from clvqlearn.cli.comparison import MODELS, ComparisonConfig, load_splits
    from clvqlearn.evaluation import fine_tune_classifier, token_saliency

    config = ComparisonConfig()
    spec = MODELS["minilm"]
    clf_train, _, ev = load_splits("eraser_movie", config, n_eval=config.n_eval)
    t0 = time.perf_counter()
    clf = fine_tune_classifier(  # the very call of comparison.run_unit, so the table finds it in the cache
        clf_train.texts, clf_train.labels, model="minilm", label_names=ev.label_names, num_labels=ev.n_classes,
        validation_data=(ev.texts, ev.labels), epochs=config.epochs, learning_rate=spec["learning_rate"],
        batch_size=16, max_length=config.max_length, random_state=config.seed, device="cpu", verbose=False,
    )
    clf_seconds = time.perf_counter() - t0
    rng = np.random.RandomState(args.seed)
    chosen = np.sort(rng.choice(len(ev), size=min(args.n, len(ev)), replace=False))
    texts = [ev.texts[i] for i in chosen]
    low = spec["layers"][0]
    steps = sorted(set(args.steps))
    reference_steps = steps[-1]
    runs = {}
    for n_steps in steps[::-1]:  # the reference first
        t = time.perf_counter()
        sal = token_saliency(clf, texts, saliency="ig-layer", layer=low, units="word", normalize=True,
                             rank_by="absolute", n_steps=n_steps, max_length=config.max_length, device="cpu",
                             verbose=False)
        seconds = time.perf_counter() - t
        top = sal.top_positions[:, 0]
        runs[n_steps] = {
            "sal": sal,
            "word": np.array([sal.word_ids[i][p] for i, p in enumerate(top)]),
            "seconds": seconds,
        }
        print(f"{n_steps:4d} steps: {seconds:.1f} s", flush=True)
    ref = runs[reference_steps]

    def word_text(sal, i, p):
        ids = sal.word_ids[i]
        return "".join(t.removeprefix("##") for t, w in zip(sal.tokens[i], ids) if w == ids[p])

    rows = []
    for n_steps in steps:
        run, sal = runs[n_steps], runs[n_steps]["sal"]
        same = run["word"] == ref["word"]
        rows.append({
            "n_steps": n_steps,
            "top1_word_same_as_reference": int(same.sum()),
            "top1_word_changed": int((~same).sum()),
            "fraction_changed": float((~same).mean()),
            "mean_abs_convergence_delta": float(np.abs(sal.convergence_delta).mean()),
            "seconds": round(run["seconds"], 1),
            "seconds_per_sentence": round(run["seconds"] / len(texts), 3),
            "top1_words": [word_text(sal, i, p) for i, p in enumerate(sal.top_positions[:, 0])],
        })
    result = {
        "command": " ".join(["python benchmarks/bench_ig_steps.py", *(shlex.quote(a) for a in sys.argv[1:])])
        if argv is None else "bench_ig_steps.main(" + repr(argv) + ")",
        "what": "top-1 salient word of the paper's saliency (ig-layer at the analysis layer, word units, "
                "L2-normalised, absolute ranking) at reduced step counts vs the reference step count",
        "model": "minilm", "dataset": "eraser_movie", "layer": low, "reference_steps": reference_steps,
        "n_sentences": len(texts), "sentence_indices_in_eval_set": chosen.tolist(),
        "classifier": {"path": str(clf.path), "accuracy": clf.accuracy, "reused": clf.reused,
                       "seconds": round(clf_seconds, 1)},
        "settings": {"max_length": config.max_length, "seed": args.seed, "n_eval_pool": len(ev)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "note": "2-core machine shared with other jobs: seconds are wall clock under load"},
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(f"{row['n_steps']:4d} steps: top-1 word changed on {row['top1_word_changed']}/{len(texts)}, "
              f"|delta| {row['mean_abs_convergence_delta']:.2g}, {row['seconds_per_sentence']:.2f} s/sentence")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
