"""Scores of an auto-interpretability run: per concept, and each against its control (the trust check).

:func:`concept_scores` turns the scored examples of
:func:`~clvqlearn.evaluation.autointerp.score_concepts` into one row per
concept (delphi's metrics); :func:`trust_summary` sets every score against
its control with a bootstrap CI over concepts and gives the verdict
(see :mod:`clvqlearn.evaluation.autointerp`).

Examples
--------
>>> import pandas as pd
>>> table = pd.DataFrame({"n_tokens": [10, 30], "intruder": [0.25, 0.25], "intruder_control": [0.25, 0.25]})
>>> trust_summary(table).loc[("intruder", "accuracy"), "verdict"]
'uninformative'
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd

from .._bootstrap import percentile_ci
from .._sklearn_compat import Interval, validate_params
from .concept_examples import ConceptRecord, _seed

__all__ = ["METRICS", "SCORERS", "concept_scores", "trust_summary"]

#: The scorers, in the order of the tables.
SCORERS = ("detection", "fuzzing", "intruder", "embedding")
#: Per scorer: its metrics (the first is the headline score and names the per-concept column).
METRICS = {"detection": ("balanced_accuracy", "f1", "auc"), "fuzzing": ("balanced_accuracy", "f1", "auc"),
           "intruder": ("accuracy",), "embedding": ("auc",)}


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    if scores.size == 0 or not np.isfinite(scores).all() or np.unique(labels).size < 2:
        return np.nan  # no probabilities (a backend without them), or one class only
    return float(roc_auc_score(labels, scores))


def _metrics(frame: pd.DataFrame, scorer: str) -> dict:
    """The scorer's metrics on a set of rows (one concept, or all pooled)."""
    if scorer == "intruder":
        answered = frame["correct"].dropna()
        return {"accuracy": float(answered.mean()) if len(answered) else np.nan, "n": int(len(answered)),
                "chance": float(frame["chance"].mean()) if len(frame) else np.nan}
    labels = frame["label"].to_numpy(dtype=int)
    if scorer == "embedding":
        return {"auc": _auc(labels, frame["probability"].to_numpy(dtype=float)), "n": int(len(frame)), "chance": 0.5}
    answered = frame[frame["prediction"].notna()]
    y, p = answered["label"].to_numpy(dtype=int), answered["prediction"].to_numpy(dtype=float) >= 0.5
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    tp, tn, fp = int((p & (y == 1)).sum()), int((~p & (y == 0)).sum()), int((p & (y == 0)).sum())
    balanced = (tp / pos + tn / neg) / 2 if pos and neg else np.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"balanced_accuracy": balanced, "f1": f1 if pos else np.nan,
            "auc": _auc(labels, frame["probability"].to_numpy(dtype=float)), "n": int(len(answered)), "chance": 0.5}


def _column(scorer: str, metric: str, control: bool = False) -> str:
    name = scorer if metric == METRICS[scorer][0] else f"{scorer}_{metric}"
    return name + ("_control" if control else "")


@validate_params({"scored": [pd.DataFrame], "records": [list, tuple], "explanations": [dict, None]},
                 prefer_skip_nested_validation=True)
def concept_scores(scored, records, explanations=None) -> pd.DataFrame:
    """Per-concept scores and control scores from :func:`score_concepts`'s rows.

    Parameters
    ----------
    scored : DataFrame
        :func:`score_concepts` output.
    records : list of ConceptRecord
    explanations : dict, optional

    Returns
    -------
    pandas.DataFrame
        Indexed by ``concept``: ``n_tokens``, ``frequency``, ``explanation``,
        ``n_test``, ``n_negatives``, then per scorer run its headline score
        (``detection`` and ``fuzzing``: balanced accuracy; ``intruder``:
        accuracy; ``embedding``: ROC AUC), its other metrics
        (``detection_f1``, ``detection_auc``, ...), the number of answered
        examples (``detection_n``, ...) and every score's ``*_control``.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.evaluation.concept_examples import ConceptActivity, sample_concept_examples
    >>> words = "the cat sat on a mat while my dog ran".split() * 6
    >>> pairs = LayerPairs(low=np.zeros((60, 1)), high=np.zeros((60, 1)), offsets=np.arange(0, 61, 10),
    ...                    tokens=np.array(words, dtype=object))
    >>> animal = np.isin(words, ["cat", "dog"])  # concept 0 holds the animals, concept 1 the other words
    >>> activity = ConceptActivity.from_scores(np.c_[animal, ~animal].astype(float))
    >>> records = sample_concept_examples(activity, pairs, window=4, n_train=2, n_test=4, n_negatives=4,
    ...                                   min_tokens=2, random_state=0)
    >>> from clvqlearn.evaluation import score_concepts
    >>> class Fixed:  # stands in for an LLM: "yes" to every example, example 1 as the intruder
    ...     def complete(self, prompt, *, seed=None):
    ...         return '{"1": 1, "2": 1, "3": 1, "4": 1, "intruder": 1}'
    >>> explanations = {0: "animals", 1: "other words"}
    >>> scored = score_concepts(records, explanations, Fixed(), scorers=("detection",), batch_size=4)
    >>> table = concept_scores(scored, records, explanations)
    >>> table.loc[0, "explanation"], table["detection"].tolist(), table["detection_control"].tolist()
    ('animals', [0.5, 0.5], [0.5, 0.5])
    >>> table["n_tokens"].tolist(), table["detection_n"].tolist()  # tokens of each concept, examples answered
    ([12, 48], [8.0, 8.0])
    >>> round(float(table.loc[0, "detection_f1"]), 3)  # precision 0.5, recall 1
    0.667
    """
    explanations = explanations or {}
    table = pd.DataFrame([{"concept": r.concept, "n_tokens": r.n_tokens, "frequency": r.frequency,
                           "explanation": explanations.get(r.concept), "n_test": len(r.test),
                           "n_negatives": len(r.negatives)} for r in _records(records)]).set_index("concept")
    for scorer in [s for s in SCORERS if s in set(scored["scorer"])]:
        for control in (False, True):
            part = scored[(scored["scorer"] == scorer) & (scored["control"] == control)]
            for concept, rows in part.groupby("concept"):
                values = _metrics(rows, scorer)
                for metric in METRICS[scorer]:
                    table.loc[concept, _column(scorer, metric, control)] = values[metric]
                if not control:
                    table.loc[concept, f"{scorer}_n"] = values["n"]
    return table


@validate_params(
    {"per_concept": [pd.DataFrame], "scored": [pd.DataFrame, None],
     "n_boot": [Interval(Integral, 1, None, closed="left")], "ci": [Interval(Real, 0, 1, closed="neither")],
     "random_state": ["random_state", np.random.Generator]},
    prefer_skip_nested_validation=True,
)
def trust_summary(per_concept, scored=None, *, n_boot=2000, ci=0.95, random_state=0) -> pd.DataFrame:
    """Each score against its control, with a bootstrap CI over concepts and a verdict.

    Parameters
    ----------
    per_concept : DataFrame
        :func:`concept_scores` output.
    scored : DataFrame, optional
        :func:`score_concepts` output, for the ``pooled`` column.
    n_boot : int, default=2000
        Bootstrap resamples of the concepts.
    ci : float, default=0.95
    random_state : int, Generator or None

    Returns
    -------
    pandas.DataFrame
        Indexed by (``scorer``, ``metric``): ``chance``, ``n_concepts``
        (with a score), ``mean`` (over concepts), ``weighted_mean`` (weighted
        by the concepts' token counts, delphi's frequency weighting),
        ``ci_low``/``ci_high`` (of the mean), ``pooled`` (all scored examples
        of all concepts together, delphi's aggregate), ``control`` (mean of
        the control score), ``diff`` (mean paired score minus control, over
        concepts with both), ``diff_low``/``diff_high`` (its CI),
        ``n_paired`` and ``verdict``: ``"informative"`` when ``diff_low > 0``
        over at least two concepts, else ``"uninformative"``.

    Examples
    --------
    >>> import pandas as pd
    >>> table = pd.DataFrame({"n_tokens": [10, 30, 20], "embedding": [0.9, 0.8, 0.95],
    ...                       "embedding_control": [0.5, 0.4, 0.6]})
    >>> row = trust_summary(table).loc[("embedding", "auc")]
    >>> row["verdict"], round(float(row["diff"]), 3), round(float(row["weighted_mean"]), 3)
    ('informative', 0.383, 0.867)
    """
    seed = _seed(random_state)
    rows = []
    for scorer in SCORERS:
        for metric in METRICS[scorer]:
            col = _column(scorer, metric)
            if col not in per_concept:
                continue
            rng = np.random.default_rng([seed, SCORERS.index(scorer), METRICS[scorer].index(metric)])
            score = per_concept[col].to_numpy(dtype=float)
            ctrl_col = _column(scorer, metric, True)
            ctrl = per_concept[ctrl_col].to_numpy(dtype=float) if ctrl_col in per_concept else score * np.nan
            weights = per_concept["n_tokens"].to_numpy(dtype=float) if "n_tokens" in per_concept else score * 0 + 1
            has = np.isfinite(score)
            both = has & np.isfinite(ctrl)
            mean_lo, mean_hi = percentile_ci(score[has], n_boot=n_boot, ci=ci, rng=rng)
            diff = score[both] - ctrl[both]
            diff_lo, diff_hi = percentile_ci(diff, n_boot=n_boot, ci=ci, rng=rng)
            informative = both.sum() >= 2 and diff_lo > 0
            pooled = np.nan
            if scored is not None:
                part = scored[(scored["scorer"] == scorer) & ~scored["control"].astype(bool)]
                pooled = _metrics(part, scorer)[metric] if len(part) else np.nan
            chance = {"f1": np.nan}.get(metric, 0.5)
            if scorer == "intruder" and scored is not None:
                part = scored[(scored["scorer"] == "intruder") & ~scored["control"].astype(bool)]
                chance = float(part["chance"].mean()) if len(part) else np.nan
            rows.append({
                "scorer": scorer, "metric": metric, "chance": chance, "n_concepts": int(has.sum()),
                "mean": float(score[has].mean()) if has.any() else np.nan,
                "weighted_mean": float(np.average(score[has], weights=weights[has])) if has.any()
                and weights[has].sum() > 0 else np.nan,
                "ci_low": mean_lo, "ci_high": mean_hi, "pooled": pooled,
                "control": float(ctrl[both].mean()) if both.any() else np.nan,
                "diff": float(diff.mean()) if diff.size else np.nan, "diff_low": diff_lo, "diff_high": diff_hi,
                "n_paired": int(both.sum()), "verdict": "informative" if informative else "uninformative",
            })
    rows = [row for row in rows if row["n_concepts"]]  # e.g. no AUC from a backend without probabilities
    columns = ["scorer", "metric", "chance", "n_concepts", "mean", "weighted_mean", "ci_low", "ci_high", "pooled",
               "control", "diff", "diff_low", "diff_high", "n_paired", "verdict"]
    return pd.DataFrame(rows, columns=columns).set_index(["scorer", "metric"])


def _records(records) -> list:
    records = list(records)
    for r in records:
        if not isinstance(r, ConceptRecord):
            raise TypeError(f"records must be ConceptRecord objects (sample_concept_examples); got "
                            f"{type(r).__name__}.")
    return records
