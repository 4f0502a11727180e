"""The demo's PNG figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(estimators: dict, path: Path) -> Path:
    """Training (and validation) loss per epoch of every estimator that has a curve.

    Parameters
    ----------
    estimators : dict of str to fitted estimator
    path : pathlib.Path

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(estimators), figsize=(3.4 * len(estimators), 3), squeeze=False)
    for ax, (name, est) in zip(axes[0], estimators.items()):
        train = np.asarray(est.loss_curve_, dtype=float)
        ax.plot(np.arange(1, train.size + 1), train, marker=".", label="train")
        val = np.asarray(getattr(est, "validation_curve_", []) or [], dtype=float)
        if val.size:
            ax.plot(np.arange(1, val.size + 1), val, marker=".", label="validation")
        ax.set(title=name, xlabel="epoch" if train.size > 1 else "", ylabel="loss")
        ax.legend(fontsize=7)
    return _save(fig, path, plt)


def codebook_usage(usage: dict, path: Path) -> Path:
    """Share of tokens per concept, sorted, one line per method (log scale).

    Parameters
    ----------
    usage : dict of str to ndarray of shape (k,)
        Held-out share of tokens assigned to each concept.
    path : pathlib.Path

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, share in usage.items():
        ranked = np.sort(np.asarray(share, dtype=float))[::-1]
        ax.plot(np.arange(1, ranked.size + 1), np.maximum(ranked, 1e-5), marker=".", label=name)
    ax.set(xlabel="concept rank", ylabel="share of held-out tokens", yscale="log",
           title="codebook usage (flat = every concept used)")
    ax.legend(fontsize=8)
    return _save(fig, path, plt)


def comparison(frame, path: Path) -> Path:
    """Held-out FVE of every method and reference, and the concept-removal drops.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``method``, ``fve``, and optionally ``removal_drop`` and
        ``control_drop``.
    path : pathlib.Path

    Returns
    -------
    pathlib.Path
    """
    plt = _pyplot()
    removal = "removal_drop" in frame and frame["removal_drop"].notna().any()
    fig, axes = plt.subplots(1, 2 if removal else 1, figsize=(11 if removal else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    colors = ["tab:gray" if m.startswith(("k-means", "ridge")) else "tab:blue" for m in frame["method"]]
    ax.barh(frame["method"], frame["fve"], color=colors)
    ax.set(xlabel="held-out fraction of variance of layer h explained", title="reconstruction (grey: references)")
    ax.invert_yaxis()
    if removal:
        rows = frame[frame["removal_drop"].notna()]
        y = np.arange(len(rows))
        axes[0][1].barh(y - 0.2, rows["removal_drop"], height=0.4, label="salient concept removed")
        axes[0][1].barh(y + 0.2, rows["control_drop"], height=0.4, color="tab:gray", label="random directions")
        axes[0][1].set(yticks=y, yticklabels=rows["method"], xlabel="relative accuracy drop",
                       title="concept removal (probe)")
        axes[0][1].invert_yaxis()
        axes[0][1].legend(fontsize=7)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
