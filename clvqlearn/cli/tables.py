"""The outputs of ``clvq table``: the Markdown tables, their legend and the bar charts.

:func:`clvqlearn.cli.comparison.run_comparison` writes ``comparison.md``
with :func:`to_markdown` and :func:`legend`, and ``comparison.png`` /
``comparison_high_layer.png`` with :func:`plot`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .methods import NAMES, PROTOCOLS

__all__ = ["PLOT_FILES", "TABLE_TITLES", "legend", "plot", "to_markdown"]


def to_markdown(frame) -> str:
    """The compact table: drop, random control and flip rate per protocol.

    Examples
    --------
    >>> import pandas as pd
    >>> row = dict(model="minilm", dataset="ag_news", method="KMeansConcepts", protocol="probe",
    ...            accuracy_before=0.9, accuracy_after=0.45, drop=0.5, control_drop=0.01,
    ...            flip_rate=0.4, classifier_accuracy=0.9)
    >>> print(to_markdown(pd.DataFrame([row])).splitlines()[0][:40])
    | model | data set | method | classifier
    """
    protocols = [p for p in PROTOCOLS if p in set(frame["protocol"])]
    with_layer = "layer" in frame.columns
    header = ["model", "data set", "method"] + (["layer"] if with_layer else []) + ["classifier acc."]
    for p in protocols:
        header += [f"{p}: acc. before -> after", f"{p}: drop (95% CI)", f"{p}: random ctrl drop",
                   f"{p}: norm-matched ctrl drop", f"{p}: other-concept drop", f"{p}: flip rate",
                   f"{p}: norm removed (concept / random / norm-matched)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["model", "dataset", "method"]
    for (model, dataset, method), group in frame.groupby(keys, sort=False):
        cells = [model, dataset, method] + ([str(int(group["layer"].iloc[0]))] if with_layer else [])
        cells.append(f"{group['classifier_accuracy'].iloc[0]:.3f}")
        for p in protocols:
            sub = group[group["protocol"] == p]
            if sub.empty:
                cells += [""] * 7
                continue
            r = sub.iloc[0]
            drop = f"{r['drop']:.1%}"
            if _finite(r, "drop_ci_low"):
                drop += f" ({r['drop_ci_low']:.0%} to {r['drop_ci_high']:.0%})"
            removed = " / ".join(f"{r[name]:.2f}" for name in ("removed_norm", "control_removed_norm",
                                                              "norm_matched_removed_norm") if _finite(r, name))
            cells += [f"{r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}", drop,
                      f"{r['control_drop']:.1%}",
                      *(f"{r[name]:.1%}" if _finite(r, name) else "" for name in ("norm_matched_drop",
                                                                                  "other_concept_drop")),
                      f"{r['flip_rate']:.1%}", removed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finite(row, name: str) -> bool:
    """``row[name]`` exists and is a finite number (result files of older runs lack the newer controls)."""
    return name in row and np.isfinite(row[name])


def plot(frame, path) -> Path:
    """Bar chart of the drops: one panel per (model, data set), bars per method and protocol.

    The random-direction controls' drops are drawn as black markers on each
    bar (x: same rank; open triangle: same share of the norm removed).

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows as written to ``comparison.csv``.
    path : str or path-like
        The PNG to write.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.read_csv("benchmarks/results/comparison/comparison.csv")  # doctest: +SKIP
    >>> plot(frame, "chart.png")  # doctest: +SKIP
    PosixPath('chart.png')
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(frame["model"]))
    datasets = list(dict.fromkeys(frame["dataset"]))
    methods = [m for m in NAMES if m in set(frame["method"])]
    protocols = [p for p in PROTOCOLS if p in set(frame["protocol"])]
    fig, axes = plt.subplots(len(models), len(datasets),
                             figsize=(max(4.2 * len(datasets), 8.5), 3.6 * len(models) + 1.2),
                             squeeze=False, sharey=True)
    width = 0.8 / max(len(protocols), 1)
    colours = {"probe": "#4C72B0", "splice": "#DD8452"}
    x = np.arange(len(methods))
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            sub = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
            for p_i, protocol in enumerate(protocols):
                rows = sub[sub["protocol"] == protocol].set_index("method").reindex(methods)
                offset = (p_i - (len(protocols) - 1) / 2) * width
                drop = 100 * rows["drop"].to_numpy(dtype=float)
                yerr = None
                if {"drop_ci_low", "drop_ci_high"} <= set(rows.columns):
                    low, high = 100 * rows["drop_ci_low"].to_numpy(float), 100 * rows["drop_ci_high"].to_numpy(float)
                    yerr = np.nan_to_num(np.vstack([drop - low, high - drop]).clip(min=0))
                ax.bar(x + offset, drop, width, color=colours.get(protocol), yerr=yerr, capsize=2,
                       error_kw={"elinewidth": 0.8, "ecolor": "0.3"}, label=f"{protocol}: concept removed (95% CI)")
                ax.plot(x + offset, 100 * rows["control_drop"].to_numpy(dtype=float), "kx", markersize=7,
                        label="random directions of the same rank" if p_i == 0 else None)
                if "norm_matched_drop" in rows.columns:
                    ax.plot(x + offset, 100 * rows["norm_matched_drop"].to_numpy(dtype=float), "k^", markersize=5,
                            fillstyle="none", label="random direction, same share of the norm" if p_i == 0 else None)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([m.replace("Concepts", "").replace("Autoencoder", "AE") for m in methods],
                               rotation=20, fontsize=8)
            ax.set_title(f"{model} / {dataset}", fontsize=10)
            if j == 0:
                ax.set_ylabel("relative accuracy drop (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen: dict = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    fig.legend(handles=list(seen.values()), labels=list(seen.keys()), loc="lower center", ncol=min(len(seen), 3),
               fontsize=9)
    fig.suptitle("Concept removal: relative accuracy drop when the salient token's concept\n"
                 "is projected out (bars) vs. random directions of the same rank (x)", fontsize=11)
    bottom = 0.5 / (3.6 * len(models) + 1.2)
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path



TABLE_TITLES = {
    "layer-matched": "## Primary: layer-matched (every method reads and edits the analysis layer l)\n\n"
                     "KMeansConcepts, SingleLayerVQ and the SAE at layer l (single-layer), CrossLayerVQ l -> h, "
                     "as the paper's reference runs its single-layer baseline (BERT 8 -> 8).\n",
    "high-layer": "## Variant: baselines at the high layer h\n\n"
                  "KMeansConcepts and SingleLayerVQ at layer h, the SAE cross-layer l -> h (its concepts in l), "
                  "CrossLayerVQ l -> h (the same fit as in the primary table).\n",
}
PLOT_FILES = {"layer-matched": "comparison.png", "high-layer": "comparison_high_layer.png"}


def legend(config) -> str:
    """What the columns of the tables mean, for these settings."""
    from ..evaluation.ablation import PRESETS

    preset = PRESETS[config.preset]
    n_splits = preset["n_splits"] if config.n_splits is None else config.n_splits
    saliency = ("Integrated Gradients on the OUTPUT of the analysis layer l, top word (max over its subwords, "
                "ranked by |attribution|)" if preset["saliency"] == "ig-layer" else
                "Integrated Gradients on the token embeddings, top token")
    accuracy = "mean of the per-fold accuracies" if preset["probe_accuracy"] == "fold-mean" else "pooled out-of-fold"
    return (
        f"Preset `{config.preset}`. Salient token: {saliency}, {config.ig_steps} steps for the encoder and "
        f"{config.ig_steps_decoder} for the decoder (the paper: 500), on the task classifier (fine-tuned MiniLM; "
        f"SmolLM2 {'frozen with a linear head' if config.decoder_classifier == 'head' else 'fine-tuned'}). "
        "Drop = relative accuracy drop `(before - after) / before` when the concept of that token is projected "
        "out, with its bootstrap 95% CI (pooled predictions); random ctrl = the same with random Gaussian "
        "directions of the same rank; flip rate = share of sentences whose prediction changed; norm removed = "
        "mean share of the edited vector's norm that the projection removed (concept / random); layer = the "
        "layer edited. Probe: the paper's protocol (sentence vector at the concept's layer, "
        f"{config.probe} probe trained on clean vectors, stratified {n_splits}-fold CV, accuracy = {accuracy}; "
        "comparison.csv has both the fold-mean and the pooled numbers). Splice: edit the hidden state inside "
        f"the forward pass at {'every position' if config.splice_positions == 'all' else 'the salient token'} "
        "and read the model's own head."
        + _token_filter_note(config) + "\n"
    )


def _token_filter_note(config) -> str:
    """The sentence of the legend that states the concept-fit token filter ("" when off).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> _token_filter_note(SimpleNamespace(token_filter=None))
    ''
    >>> note = _token_filter_note(SimpleNamespace(token_filter="reference",
    ...                                            token_filter_settings={"min_count": 5, "max_count": 20}))
    >>> "at least 5 times" in note and "at most 20 occurrences" in note
    True
    """
    name = getattr(config, "token_filter", None)
    if name is None:
        return ""
    settings = config.token_filter_settings
    cap = "every occurrence" if settings["max_count"] is None else f"at most {settings['max_count']} occurrences"
    return (f" Token filter `{name}`: the concepts are fitted only on the words seen at least "
            f"{settings['min_count']} times in the fit texts, {cap} of each drawn at random (the paper reference's "
            "frequency filter, ConceptX's); the evaluation sentences are not filtered.")
