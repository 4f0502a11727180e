"""Pool `clvq table` runs that differ only in ``--seed`` (issue 22, item 3).

Each run's ``comparison.csv`` gives, per (model, data set, method,
protocol), the drop of every removal (the concept and its three controls)
with its bootstrap standard error over sentences.  ``--seed`` changes the
concept fits, the task classifier's fine-tuning AND the texts drawn for
the classifier, the concept fit and the evaluation, so the spread across
seeds already holds sentence sampling.  The pooled figure and its interval
follow Rubin's rules (:func:`clvqlearn.evaluation.pooling.rubin_pool`): the
within-run bootstrap variance plus the spread across seeds, with
Barnard-Rubin degrees of freedom.  With the evaluation texts redrawn per
seed this counts sentence sampling twice, so the interval is conservative
(wider than the seeds alone would give).

Usage::

    python benchmarks/pool_comparison_seeds.py --out benchmarks/results/comparison_controls_minilm_ag_news_pooled \\
        benchmarks/results/comparison_controls_minilm_ag_news \\
        benchmarks/results/comparison_controls_minilm_ag_news_seed1 \\
        benchmarks/results/comparison_controls_minilm_ag_news_seed2

Writes ``pooled.csv`` and ``pooled.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

from clvqlearn.evaluation.pooling import rubin_pool

KEYS = ["model", "dataset", "table", "method", "protocol"]
REMOVALS = ["drop", "control_drop", "norm_matched_drop", "other_concept_drop"]


def pooled_rows(frames: list[pd.DataFrame], n_sentences: int) -> list[dict]:
    """One row per (model, data set, table, method, protocol): each removal pooled over the runs."""
    rows = []
    for key, group in pd.concat(frames, keys=range(len(frames)), names=["run"]).groupby(KEYS, sort=False):
        if len(group) != len(frames):
            raise ValueError(f"{key} is missing from some runs: every run must hold the same rows.")
        row = dict(zip(KEYS, key), n_seeds=len(group))
        for name in REMOVALS:
            pooled = rubin_pool(group[name], group[f"{name}_se"], n_complete=n_sentences - 1)
            row.update({name: pooled["mean"], f"{name}_ci_low": pooled["ci"][0], f"{name}_ci_high": pooled["ci"][1],
                        f"{name}_seed_sd": pooled["seed_sd"]})
        row["removed_norm"] = float(group["removed_norm"].mean())
        rows.append(row)
    return rows


def to_markdown(frame: pd.DataFrame) -> str:
    lines = ["| method | protocol | drop (95% CI) | seed sd | random ctrl | norm-matched ctrl (95% CI) | other concept | "
             "norm removed |", "|---|---|---|---:|---:|---|---:|---:|"]
    for r in frame.itertuples():
        lines.append(
            f"| {r.method} | {r.protocol} | {r.drop:.1%} ({r.drop_ci_low:.1%} to {r.drop_ci_high:.1%}) | "
            f"{r.drop_seed_sd:.1%} | {r.control_drop:.1%} | {r.norm_matched_drop:.1%} "
            f"({r.norm_matched_drop_ci_low:.1%} to {r.norm_matched_drop_ci_high:.1%}) | {r.other_concept_drop:.1%} | "
            f"{r.removed_norm:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="output folders of `clvq table` runs (one per seed)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    frames = [pd.read_csv(Path(run) / "comparison.csv") for run in args.runs]
    n_sentences = int(frames[0]["n_sentences"].min())
    frame = pd.DataFrame(pooled_rows(frames, n_sentences))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "pooled.csv", index=False)
    command = "python benchmarks/pool_comparison_seeds.py " + shlex.join(sys.argv[1:])
    text = (f"# {len(args.runs)} seeds pooled\n\nCommand: `{command}`\n\n"
            "Rubin's rules over the seeds (sentence bootstrap variance + seed-to-seed spread), "
            f"at least {n_sentences} sentences per run. Each seed redraws the concept fit, the classifier and the "
            "texts (classifier, fit and evaluation), so the interval counts sentence sampling twice: it is "
            "conservative.\n")
    for (model, dataset, table), part in frame.groupby(["model", "dataset", "table"], sort=False):
        text += f"\n## {model} / {dataset} / {table}\n\n" + to_markdown(part)
    (out / "pooled.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
