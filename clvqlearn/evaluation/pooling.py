"""Pool concept-removal reports over seeds: one estimate whose interval covers sentences and seeds.

A concept-removal drop depends on the evaluation sentences and on the
random seed of the concept fit (and of the classifier, where it is
refitted).  :func:`pool_ablation_reports` takes one
:class:`~clvqlearn.evaluation.ablation.AblationReport` per seed, all on the
same evaluation sentences, and combines each drop (the concept's and the
three controls') with **Rubin's rules**, the standard way to pool estimates
of repeated random fits that share one data set (multiple imputation;
Rubin 1987, *Multiple Imputation for Nonresponse in Surveys*, with the
small-sample degrees of freedom of Barnard and Rubin 1999, *Biometrika*
86(4), as in R's ``mice``).  For ``m`` seeds with drops ``Q_i`` and
bootstrap standard errors ``se_i``:

* the estimate is the mean ``Q = mean(Q_i)``;
* within-seed variance ``W = mean(se_i^2)`` (sentence sampling; it is not
  divided by ``m``, because every seed uses the same sentences);
* between-seed variance ``B = var(Q_i)`` (``ddof=1``);
* total variance ``T = W + (1 + 1/m) B``;
* the interval ``Q +- t_{nu, (1+confidence)/2} sqrt(T)`` with
  ``gamma = (1 + 1/m) B / T``, ``nu_m = (m - 1) / gamma^2``,
  ``nu_obs = (n + 1) / (n + 3) * n * (1 - gamma)`` where ``n`` is the
  complete-data degrees of freedom (the fewest evaluated sentences minus
  1), and ``nu = 1 / (1 / nu_m + 1 / nu_obs)``.

Why not a t-interval over the seed means alone: it ignores the sampling of
the sentences, which all seeds share, so no number of seeds averages it
away.  Why not a bootstrap over (seed, sentence): with 3 to 5 seeds, the
outer resampling sees only a handful of distinct seed sets and
understates the between-seed variance by a factor ``(m - 1) / m``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from numbers import Real

import numpy as np
from scipy import stats

from .._sklearn_compat import Interval, validate_params
from .ablation import AblationReport, _json_default

__all__ = ["PooledAblationReport", "pool_ablation_reports", "rubin_pool"]

#: The drops pooled with their intervals (each has ``<name>_se`` in the report).
POOLED_DROPS = ("drop", "control_drop", "norm_matched_drop", "other_concept_drop")
#: The numbers averaged over seeds (no interval).
AVERAGED = (
    "accuracy_before", "accuracy_after", "control_accuracy", "norm_matched_accuracy", "other_concept_accuracy",
    "flip_rate", "control_flip_rate", "norm_matched_flip_rate", "other_concept_flip_rate",
    "removed_norm", "control_removed_norm", "norm_matched_removed_norm", "other_concept_removed_norm",
)
#: Settings that must agree between the pooled reports (what is compared, not the seed).
#: (The model may differ: a classifier refitted per seed is a new checkpoint.)
_SAME = ("protocol", "estimator", "layer", "saliency", "splice_positions", "pooling", "probe", "probe_accuracy")


@dataclass
class PooledAblationReport:
    """Concept-removal numbers pooled over seeds (:func:`pool_ablation_reports`).

    Attributes
    ----------
    protocol : str
        ``"probe"`` or ``"splice"``.
    n_seeds : int
        Number of reports pooled.
    confidence : float
        Level of the intervals.
    drops : dict
        Per drop of :data:`POOLED_DROPS` (``"drop"``, ``"control_drop"``,
        ``"norm_matched_drop"``, ``"other_concept_drop"``): ``mean``,
        ``ci`` (low, high), ``se`` (``sqrt(T)``), ``within_se``
        (``sqrt(W)``), ``seed_sd`` (``sqrt(B)``), ``df`` and ``per_seed``
        (the drop of every report, in order).
    means : dict
        Per number of :data:`AVERAGED` (accuracies, flip rates, removed
        norm shares): the mean over seeds.
    n_sentences : list of int
        Sentences evaluated by each report.
    seeds : list
        Each report's ``settings["random_state"]`` and the concept
        estimator's ``random_state`` (``(report seed, estimator seed)``).
    """

    protocol: str
    n_seeds: int
    confidence: float
    drops: dict
    means: dict
    n_sentences: list = field(default_factory=list)
    seeds: list = field(default_factory=list)

    def summary(self) -> dict:
        """A flat dict: ``protocol``, ``n_seeds`` and, per pooled drop ``q``, ``q``,
        ``q_ci_low``, ``q_ci_high``, ``q_se``, ``q_within_se``, ``q_seed_sd``,
        ``q_df``; then the seed means of :data:`AVERAGED` under their report names."""
        out = {"protocol": self.protocol, "n_seeds": self.n_seeds, "confidence": self.confidence}
        for name, pooled in self.drops.items():
            out[name] = pooled["mean"]
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = pooled["ci"]
            for key in ("se", "within_se", "seed_sd", "df"):
                out[f"{name}_{key}"] = pooled[key]
        out.update(self.means)
        out["n_sentences"] = int(min(self.n_sentences))
        return out

    def to_dict(self) -> dict:
        """Everything, JSON-serialisable."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def __str__(self) -> str:
        d = self.drops
        lo, hi = d["drop"]["ci"]
        return (
            f"{self.protocol} ablation pooled over {self.n_seeds} seeds: drop {d['drop']['mean']:.1%} "
            f"(CI {lo:.1%}..{hi:.1%}, seed sd {d['drop']['seed_sd']:.1%}); random control "
            f"{d['control_drop']['mean']:.1%}, norm-matched random {d['norm_matched_drop']['mean']:.1%}, "
            f"other concept {d['other_concept_drop']['mean']:.1%}"
        )


def rubin_pool(estimates, standard_errors, *, n_complete: int | None = None, confidence: float = 0.95) -> dict:
    """Rubin's rules: pool ``m`` estimates of repeated random fits on one data set.

    Parameters
    ----------
    estimates : array-like of shape (m,)
        One estimate per fit (seed), ``m >= 2``.
    standard_errors : array-like of shape (m,)
        Each estimate's standard error over the shared data (e.g. a
        bootstrap over sentences).
    n_complete : int, optional
        Complete-data degrees of freedom for the Barnard-Rubin correction
        (e.g. the number of sentences minus 1); None: Rubin's original
        ``nu_m``.
    confidence : float, default=0.95

    Returns
    -------
    dict
        ``mean``, ``ci`` (low, high), ``se``, ``within_se``, ``seed_sd``,
        ``df`` (``inf`` when the fits agree exactly and ``n_complete`` is
        None), ``per_seed``.

    Raises
    ------
    ValueError
        Fewer than 2 estimates, shapes that differ, or a standard error
        that is not a finite non-negative number.

    Examples
    --------
    >>> out = rubin_pool([0.30, 0.34, 0.32], [0.05, 0.05, 0.05], n_complete=199)
    >>> round(out["mean"], 3), round(out["se"], 4), round(out["seed_sd"], 3)
    (0.32, 0.0551, 0.02)
    >>> [round(x, 3) for x in out["ci"]], round(out["df"], 1)
    ([0.209, 0.431], 46.3)
    """
    q = np.asarray(estimates, dtype=np.float64)
    se = np.asarray(standard_errors, dtype=np.float64)
    if q.ndim != 1 or q.size < 2 or se.shape != q.shape:
        raise ValueError(
            f"rubin_pool needs at least 2 estimates and one standard error each; got {q.size} estimate(s) "
            f"and {se.size} standard error(s)."
        )
    if not (np.isfinite(q).all() and np.isfinite(se).all() and (se >= 0).all()):
        raise ValueError(
            f"estimates and standard errors must be finite (standard errors >= 0); got {q.tolist()} and "
            f"{se.tolist()}."
        )
    m = q.size
    within = float(np.mean(se**2))
    between = float(np.var(q, ddof=1))
    total = within + (1 + 1 / m) * between
    gamma = (1 + 1 / m) * between / total if total > 0 else 0.0
    df_m = (m - 1) / gamma**2 if gamma > 0 else np.inf
    if n_complete is not None and n_complete > 0:
        df_obs = (n_complete + 1) / (n_complete + 3) * n_complete * (1 - gamma)
        df = 1 / (1 / df_m + 1 / df_obs) if df_obs > 0 else df_m
    else:
        df = df_m
    half = float(stats.t.ppf((1 + confidence) / 2, df) * np.sqrt(total)) if total > 0 else 0.0
    mean = float(q.mean())
    return {"mean": mean, "ci": (mean - half, mean + half), "se": float(np.sqrt(total)),
            "within_se": float(np.sqrt(within)), "seed_sd": float(np.sqrt(between)), "df": float(df),
            "per_seed": q.tolist()}


@validate_params({"reports": [list, tuple], "confidence": [Interval(Real, 0, 1, closed="neither")]},
                 prefer_skip_nested_validation=True)
def pool_ablation_reports(reports, *, confidence: float = 0.95) -> PooledAblationReport:
    """Pool concept-removal reports of several seeds into one estimate per drop, with Rubin's rules.

    Each report is one seed of the concept fit (and of the classifier,
    where it is refitted), evaluated on the same sentences with the same
    protocol and options.  Every drop (the concept's and the three
    controls') is pooled by :func:`rubin_pool` from the reports' drops and
    their bootstrap standard errors, so the interval combines the sampling
    of the sentences and the spread across seeds (see the module
    docstring).  Accuracies, flip rates and removed norm shares are
    averaged.

    Parameters
    ----------
    reports : list of AblationReport
        At least 2 (3 or more recommended), each with ``n_bootstrap > 0``.
    confidence : float, default=0.95

    Returns
    -------
    PooledAblationReport

    Raises
    ------
    TypeError
        When an item is not an AblationReport.
    ValueError
        Fewer than 2 reports, reports that differ in what they measure
        (protocol, estimator class, layer, saliency or probe options), or a
        report without bootstrap standard errors.

    Examples
    --------
    >>> reports = [concept_ablation_report(fit(seed), texts, labels, random_state=seed)
    ...            for seed in range(3)]  # doctest: +SKIP
    >>> pooled = pool_ablation_reports(reports)  # doctest: +SKIP
    >>> pooled.summary()["drop_ci_low"], pooled.drops["drop"]["per_seed"]  # doctest: +SKIP
    """
    reports = list(reports)
    bad = [type(r).__name__ for r in reports if not isinstance(r, AblationReport)]
    if bad:
        raise TypeError(f"pool_ablation_reports takes AblationReport objects; got {sorted(set(bad))}.")
    if len(reports) < 2:
        raise ValueError(f"pool_ablation_reports needs at least 2 reports (one per seed); got {len(reports)}.")
    _check_same(reports)
    missing = [i for i, r in enumerate(reports) if not np.isfinite(r.drop_se)]
    if missing:
        raise ValueError(
            f"report(s) {missing} have no bootstrap standard error of the drop (drop_se is nan): compute them "
            "with n_bootstrap > 0 (and an accuracy before above 0)."
        )
    if len({int(r.n_sentences) for r in reports}) > 1:
        warnings.warn(
            "the pooled reports scored different numbers of sentences "
            f"({sorted({int(r.n_sentences) for r in reports})}); Rubin's rules assume the same sentences, so the "
            "interval also counts sentence sampling across seeds (it is conservative).", UserWarning, stacklevel=2)
    n_complete = min(r.n_sentences for r in reports) - 1
    drops = {}
    for name in POOLED_DROPS:
        values = [getattr(r, name) for r in reports]
        errors = [getattr(r, f"{name}_se") for r in reports]
        if np.isfinite(values).all() and np.isfinite(errors).all():
            drops[name] = rubin_pool(values, errors, n_complete=n_complete, confidence=confidence)
        else:  # e.g. a control whose bootstrap had no finite resample
            drops[name] = {"mean": float(np.mean(values)), "ci": (float("nan"), float("nan")),
                           "se": float("nan"), "within_se": float("nan"), "seed_sd": float(np.std(values, ddof=1)),
                           "df": float("nan"), "per_seed": [float(v) for v in values]}
    means = {name: float(np.mean([getattr(r, name) for r in reports])) for name in AVERAGED}
    seeds = [(r.settings.get("random_state"), (r.settings.get("estimator_params") or {}).get("random_state"))
             for r in reports]
    return PooledAblationReport(protocol=reports[0].protocol, n_seeds=len(reports), confidence=float(confidence),
                                drops=drops, means=means, n_sentences=[int(r.n_sentences) for r in reports],
                                seeds=seeds)


def _check_same(reports) -> None:
    """The reports must measure the same thing; only the seeds may differ."""
    first = reports[0]
    for i, r in enumerate(reports[1:], start=1):
        for key in _SAME:
            a = first.protocol if key == "protocol" else first.settings.get(key)
            b = r.protocol if key == "protocol" else r.settings.get(key)
            if a != b:
                raise ValueError(
                    f"reports 0 and {i} differ in {key} ({a!r} vs {b!r}); pool only reports of one protocol, "
                    "estimator, layer and set of options that differ in their seeds."
                )
