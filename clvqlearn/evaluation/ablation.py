"""Evaluation axis 1: remove a sentence's salient concept and measure the accuracy drop.

For every evaluation sentence (METHOD.md, "Evaluation axis 1"):

1. find its most salient token: Integrated Gradients on the task
   classifier (:func:`clvqlearn.evaluation.saliency.token_saliency`), or the
   human rationale;
2. look up the concept the fitted concept estimator assigns to that token
   (through the ``positions`` of the extractor's :class:`LayerPairs`);
3. remove the concept's direction(s) (``concept_directions``, in the layer
   named by ``concept_space_``) by orthogonal projection, either

   * ``protocol="probe"`` (the paper's): from the sentence representation
     at that layer ([CLS] for encoders, the mean of the token vectors for
     decoders); a probe trained on clean representations is tested on the
     ablated ones, with stratified cross-validation; or
   * ``protocol="splice"``: from the hidden state INSIDE the model's forward
     pass, at the salient token (or at every position), after which the
     model's own classification head predicts;

4. compare with the accuracy before, and with three controls: random
   Gaussian directions of the same rank (the paper's), a random direction
   per edited vector that removes the same share of its norm as the
   concept did (norm-matched), and the directions of another concept.

:func:`concept_ablation_report` returns everything;
:func:`concept_ablation_score` is the scikit-learn scorer (the relative
accuracy drop, greater is better) and :func:`make_ablation_scorer` fixes its
options, so ``GridSearchCV(pipe, {"concepts__k": [...]},
scoring=concept_ablation_score)`` works.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._bootstrap import resample_indices
from .._sklearn_compat import Hidden, Interval, StrOptions, validate_parameter_constraints, validate_params
from .._validation import check_texts
from ..concepts._base import ConceptEstimator
from ..data import LayerPairs
from ..extraction import LayerPairExtractor
from .directions import salient_rows, sentence_directions
from .protocols import VARIANTS, probe_protocol, splice_protocol
from .saliency import Saliency, cached_token_saliency
from .tasks import ClassifierResult, resolve_classifier

__all__ = [
    "AblationReport",
    "concept_ablation_report",
    "concept_ablation_score",
    "make_ablation_scorer",
]

PROTOCOLS = ("probe", "splice")
SALIENCY_METHODS = ("ig-layer", "ig-embeddings", "rationale")
PROBE_ACCURACIES = ("fold-mean", "pooled")
#: The option values of each preset.  An option passed explicitly (not None) wins over its preset.
#: "paper": the reference implementation's protocol (METHOD.md, evaluation axis 1).
#: "fast": clvqlearn's cheaper defaults (embedding-layer IG with 50 steps, 5 pooled folds).
PRESETS = {
    "paper": {"saliency": "ig-layer", "n_steps": 500, "saliency_layer": "low", "saliency_units": "word",
              "saliency_rank_by": "absolute", "n_splits": 20, "probe_accuracy": "fold-mean"},
    "fast": {"saliency": "ig-embeddings", "n_steps": 50, "saliency_layer": "low", "saliency_units": "token",
             "saliency_rank_by": "value", "n_splits": 5, "probe_accuracy": "pooled"},
}
_REPORT_CONSTRAINTS = {
    "protocol": [StrOptions(set(PROTOCOLS))],
    "preset": [StrOptions(set(PRESETS))],
    "saliency": [StrOptions(set(SALIENCY_METHODS)), Hidden(StrOptions({"integrated_gradients"})), None],
    "saliency_layer": [StrOptions({"low", "high"}), Interval(Integral, 0, None, closed="left"), None],
    "saliency_units": [StrOptions({"token", "word"}), None],
    "saliency_rank_by": [StrOptions({"value", "absolute"}), None],
    "n_steps": [Interval(Integral, 1, None, closed="left"), None],
    "probe_params": [dict, None],
    "n_splits": [Interval(Integral, 2, None, closed="left"), None],
    "probe_accuracy": [StrOptions(set(PROBE_ACCURACIES)), None],
    "pooling": [StrOptions({"auto", "cls", "mean"})],
    "target": [StrOptions({"label", "prediction"})],
    "splice_positions": [StrOptions({"salient", "all"})],
    "n_bootstrap": [Interval(Integral, 0, None, closed="left")],
    "confidence": [Interval(Real, 0, 1, closed="neither")],
    "missing": [StrOptions({"skip", "error"})],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
    "memory": [StrOptions({"auto"}), str, os.PathLike, joblib.Memory, None],
    "verbose": ["boolean"],
}


# ------------------------------------------------------------------------- the report
@dataclass
class AblationReport:
    """Everything behind one concept-removal score.

    Accuracies are over the evaluated sentences (those whose salient token
    was found among the extracted tokens; see ``n_skipped``).  Under the
    probe protocol the headline accuracies are either the mean of the
    per-fold accuracies (``probe_accuracy="fold-mean"``, what the reference
    reports) or the accuracy of the pooled out-of-fold predictions
    (``"pooled"``); ``probe_accuracies`` holds both.

    Attributes
    ----------
    protocol : str
        ``"probe"`` or ``"splice"``.
    accuracy_before : float
        Accuracy on clean representations (probe) or of the unedited model
        (splice).
    accuracy_after : float
        Accuracy after removing each sentence's salient concept.
    control_accuracy : float
        Accuracy after removing random Gaussian directions of the same rank
        (the rank-matched control, the paper's).
    norm_matched_accuracy : float
        Accuracy after the norm-matched control: each edited vector loses,
        by projection onto one random direction, exactly the share of its
        norm that removing the concept took out of it
        (:func:`~clvqlearn.evaluation.projection.norm_matched_removal`).
    other_concept_accuracy : float
        Accuracy after removing the directions of another concept, drawn at
        random among the concepts of the evaluation tokens (a control for
        "any concept direction would do").
    drop, control_drop, norm_matched_drop, other_concept_drop : float
        Relative drops ``(before - after) / before``.  ``drop`` is the score.
    drop_ci, control_drop_ci, norm_matched_drop_ci, other_concept_drop_ci : tuple of float
        Bootstrap confidence intervals of the drops (sentences resampled
        with replacement, the same resamples for all four, predictions held
        fixed; on the pooled predictions under the probe protocol).
    drop_se, control_drop_se, norm_matched_drop_se, other_concept_drop_se : float
        Bootstrap standard errors of the drops (what
        :func:`~clvqlearn.evaluation.pooling.pool_ablation_reports` combines
        across seeds).
    flip_rate, control_flip_rate, norm_matched_flip_rate, other_concept_flip_rate : float
        Share of sentences whose predicted class changed.
    chance_accuracy : float
        Share of the most frequent class: accuracy far below it means the
        removal flips predictions rather than erasing information.
    removed_norm, control_removed_norm, norm_matched_removed_norm, other_concept_removed_norm : float
        Mean fraction of the edited vector's norm that each edit removed
        (``||x - x'|| / ||x||``, measured on the edited vectors): a concept
        aligned with the bulk of the representation removes much more than
        a random direction of the same rank; the norm-matched control
        removes the same as the concept (up to float rounding).
    per_class : list of dict
        Per class: ``label``, ``n``, ``accuracy_before``, ``accuracy_after``,
        ``control_accuracy``, ``norm_matched_accuracy``,
        ``other_concept_accuracy``, ``flip_rate``.
    n_sentences, n_skipped : int
        Sentences evaluated and skipped (no salient token among the
        extracted tokens, e.g. an empty rationale).
    n_distinct_concepts : int
        Number of different concepts removed.
    layer : int
        Layer whose representations were edited (the concept's space).
    concept_space : str
        ``"low"`` or ``"high"``.
    probe_accuracies : dict
        Probe protocol only (else empty): ``headline`` (which of the two
        the accuracies above are), ``n_splits``, and per kind
        (``"pooled"``, ``"fold_mean"``, ``"fold_std"``) the accuracies
        ``before``, ``after``, ``control``, ``other`` and (pooled, fold
        mean) the relative ``drop``, plus ``norm_matched``.  The intervals
        and ``per_class`` are computed on the pooled predictions.
    settings : dict
        The protocol and every option used.
    sentences : list of dict
        Per evaluated sentence: ``index`` (into the given texts), ``label``,
        ``token``, ``position``, ``saliency_rank``, ``concept``,
        ``n_directions``, the predictions ``before``, ``after``, ``control``,
        ``norm_matched``, ``other``, and the shares of the norm removed,
        ``removed_norm``, ``control_removed_norm``,
        ``norm_matched_removed_norm``, ``other_concept_removed_norm`` (under
        ``splice_positions="all"`` the mean over the sentence's tokens).

    Examples
    --------
    >>> report = concept_ablation_report(pipe, texts, labels)  # doctest: +SKIP
    >>> report.accuracy_before, report.accuracy_after, report.drop  # doctest: +SKIP
    """

    protocol: str
    accuracy_before: float
    accuracy_after: float
    control_accuracy: float
    norm_matched_accuracy: float
    other_concept_accuracy: float
    drop: float
    control_drop: float
    norm_matched_drop: float
    other_concept_drop: float
    drop_ci: tuple
    drop_se: float
    control_drop_ci: tuple
    control_drop_se: float
    norm_matched_drop_ci: tuple
    norm_matched_drop_se: float
    other_concept_drop_ci: tuple
    other_concept_drop_se: float
    flip_rate: float
    control_flip_rate: float
    norm_matched_flip_rate: float
    other_concept_flip_rate: float
    chance_accuracy: float
    removed_norm: float
    control_removed_norm: float
    norm_matched_removed_norm: float
    other_concept_removed_norm: float
    per_class: list
    n_sentences: int
    n_skipped: int
    n_distinct_concepts: int
    layer: int
    concept_space: str
    probe_accuracies: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    sentences: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """The headline numbers as a flat dict (no per-sentence data).

        Every interval ``<name>_ci`` becomes ``<name>_ci_low`` and
        ``<name>_ci_high`` (e.g. ``drop_ci_low``, ``norm_matched_drop_ci_high``).
        Under the probe protocol it also holds both accuracy kinds, e.g.
        ``pooled_accuracy_after``, ``fold_mean_accuracy_norm_matched``,
        ``pooled_drop``, ``fold_mean_drop``, and ``probe_accuracy`` (which
        kind the headline uses) and ``n_splits``.
        """
        skip = ("sentences", "per_class", "settings", "probe_accuracies")
        out = {}
        for key, value in asdict(self).items():
            if key.endswith("_ci"):
                out[f"{key}_low"], out[f"{key}_high"] = value
            elif key not in skip:
                out[key] = value
        if self.probe_accuracies:
            out["probe_accuracy"] = self.probe_accuracies["headline"]
            out["n_splits"] = self.probe_accuracies["n_splits"]
            for kind in ("pooled", "fold_mean"):
                for name, value in self.probe_accuracies[kind].items():
                    out[f"{kind}_drop" if name == "drop" else f"{kind}_accuracy_{name}"] = value
        return out

    def to_dict(self) -> dict:
        """Everything, JSON-serialisable."""
        return json.loads(json.dumps(asdict(self), default=_json_default))

    def to_frame(self):
        """Per-sentence pandas DataFrame (see ``sentences``)."""
        import pandas as pd

        return pd.DataFrame(self.sentences)

    def __str__(self) -> str:
        lo, hi = self.drop_ci
        how = ""
        if self.probe_accuracies:
            how = f", {self.probe_accuracies['headline']} over {self.probe_accuracies['n_splits']} folds"
        return (
            f"{self.protocol} ablation on {self.n_sentences} sentences (layer {self.layer}{how}, "
            f"{self.n_distinct_concepts} concepts): accuracy {self.accuracy_before:.3f} -> "
            f"{self.accuracy_after:.3f} (drop {self.drop:.1%}, CI {lo:.1%}..{hi:.1%}); "
            f"random control {self.control_accuracy:.3f}, norm-matched random "
            f"{self.norm_matched_accuracy:.3f}, other concept {self.other_concept_accuracy:.3f}; "
            f"norm removed {self.removed_norm:.2f} (controls {self.control_removed_norm:.2f}, "
            f"{self.norm_matched_removed_norm:.2f}, {self.other_concept_removed_norm:.2f}); "
            f"flip rate {self.flip_rate:.1%} (control {self.control_flip_rate:.1%})"
        )


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


# ------------------------------------------------------------------------ validation
def _split_pipeline(estimator) -> tuple[LayerPairExtractor, ConceptEstimator]:
    """The fitted extractor and concept step of a [extract, concepts] pipeline."""
    if not isinstance(estimator, Pipeline):
        raise TypeError(
            "concept ablation needs a fitted Pipeline([('extract', LayerPairExtractor(...)), "
            f"('concepts', <concept estimator>)]); got {type(estimator).__name__}."
        )
    steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
    if len(steps) != 2 or not isinstance(steps[0], LayerPairExtractor):
        raise ValueError(
            "concept ablation needs a Pipeline of exactly two steps, a LayerPairExtractor and then a "
            "concept estimator (CrossLayerVQ, SingleLayerVQ, KMeansConcepts or SparseAutoencoder); got "
            f"steps {[type(s).__name__ for s in steps]}."
        )
    extractor, concepts = steps
    if not isinstance(concepts, ConceptEstimator):
        raise TypeError(
            "the pipeline's last step must be a clvqlearn concept estimator with concept_directions "
            f"and concept_space_; got {type(concepts).__name__}."
        )
    check_is_fitted(extractor, "layers_",
                    msg="The pipeline's LayerPairExtractor is not fitted; call pipe.fit(texts) first.")
    check_is_fitted(concepts,
                    msg=f"The pipeline's {type(concepts).__name__} is not fitted; call pipe.fit(texts) first.")
    return extractor, concepts


def _check_labels(labels, n: int) -> np.ndarray:
    if labels is None:
        raise ValueError("concept ablation needs the labels y of the texts (got None).")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one label per text ({n}); got shape {y.shape}.")
    if np.unique(y).size < 2:
        raise ValueError(f"labels hold a single class ({np.unique(y).tolist()}); the accuracy needs at least 2.")
    return y


def _check_classes(y: np.ndarray, classifier: ClassifierResult) -> np.ndarray:
    """Class index (head output) of every label; error if a label is not a class."""
    classes = np.asarray(classifier.classes)
    try:
        known = np.isin(y, classes)
    except TypeError:  # incomparable types
        known = np.zeros(y.shape, dtype=bool)
    if not known.all():
        bad = sorted({str(v) for v in y[~known]})[:10]
        raise ValueError(
            f"labels {bad} are not classes of the classifier, which predicts {classes.tolist()} "
            f"({classifier.label_names}); pass labels in the classifier's own encoding."
        )
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    return np.array([lookup[v] for v in y.tolist()], dtype=np.int64)


def _rationales_for(rationales, texts: list) -> list:
    if rationales is None:
        raise ValueError("saliency='rationale' needs rationales=: per text, its evidence string(s).")
    if isinstance(rationales, Mapping):
        missing = [i for i, t in enumerate(texts) if t not in rationales]
        if missing:
            raise ValueError(
                f"rationales (a mapping text -> rationale) has no entry for {len(missing)} text(s), "
                f"e.g. index {missing[0]}: {texts[missing[0]][:60]!r}."
            )
        return [rationales[t] for t in texts]
    rationales = list(rationales)
    if len(rationales) != len(texts):
        raise ValueError(
            f"Got {len(texts)} texts but {len(rationales)} rationales. Under cross-validation pass a "
            "mapping {text: rationale} instead of a list, so each fold finds its texts' rationales."
        )
    return rationales


# -------------------------------------------------------------------------- saliency
def _saliency(classifier, extractor, texts, rationales, options: dict, *, memory, device, verbose) -> Saliency:
    """The salient tokens of ``texts``, through the saliency cache (a grid search computes them once)."""
    method = options["saliency"]
    kwargs = {"saliency": method, "top_n": 3, "units": options["saliency_units"],
              "rank_by": "value" if method == "rationale" else options["saliency_rank_by"],
              "normalize": options["preset"] == "paper" and method != "rationale",
              "rationales": rationales, "max_length": int(extractor.max_length)}
    if method != "rationale":
        kwargs["n_steps"] = options["n_steps"]
    if method == "ig-layer":
        kwargs["layer"] = options["saliency_layer_index"]
    source = classifier if classifier is not None else os.fspath(extractor.model)
    return cached_token_saliency(source, texts, memory=memory, device=device, verbose=verbose, **kwargs)


def _resolve_options(preset: str, explicit: dict) -> dict:
    """The preset's options, overridden by those given explicitly (not None)."""
    options = {**PRESETS[preset], **{k: v for k, v in explicit.items() if v is not None}, "preset": preset}
    if options["saliency"] == "integrated_gradients":  # older name
        options["saliency"] = "ig-embeddings"
    return options


def _check_folds(y: np.ndarray, n_splits: int) -> None:
    """Stratified folds need every class to have at least ``n_splits`` sentences."""
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        raise ValueError(
            f"n_splits={n_splits} stratified folds need at least {n_splits} sentences per class, but class "
            f"{classes[counts.argmin()]!r} has {counts.min()}; pass n_splits <= {counts.min()} (the paper "
            "preset uses 20) or more sentences."
        )


# --------------------------------------------------------------------------- helpers
def _relative_drop(before: float, after: float) -> float:
    return float((before - after) / before) if before > 0 else float("nan")


def _bootstrap_drops(correct: dict, n_bootstrap: int, confidence: float, rng) -> dict:
    """Per edit of :data:`VARIANTS`: the bootstrap interval and standard error of its relative drop.

    One set of resamples of the sentences serves every edit (paired), and
    it is drawn as before the controls were added, so ``drop``'s interval
    is unchanged for a given random state.
    """
    n = correct["before"].size
    if n_bootstrap == 0 or n == 0:
        return {name: ((float("nan"), float("nan")), float("nan")) for name in VARIANTS}
    drops = {name: np.empty(n_bootstrap) for name in VARIANTS}
    for start in range(0, n_bootstrap, 256):
        idx = resample_indices(n, min(256, n_bootstrap - start), rng)
        b = correct["before"][idx].mean(axis=1)
        for name in VARIANTS:
            a = correct[name][idx].mean(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                drops[name][start : start + idx.shape[0]] = np.where(b > 0, (b - a) / b, np.nan)
    alpha = (1 - confidence) / 2
    out = {}
    for name, values in drops.items():
        values = values[np.isfinite(values)]
        if values.size == 0:
            out[name] = ((float("nan"), float("nan")), float("nan"))
            continue
        se = float(values.std(ddof=1)) if values.size > 1 else float("nan")
        out[name] = ((float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))), se)
    return out


def _estimator_settings(concepts, extractor) -> dict:
    params = concepts.get_params(deep=False)
    keep = {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {
        "estimator": type(concepts).__name__,
        "estimator_params": keep,
        "model": os.fspath(extractor.model),
        "layers": list(extractor.layers_),
        "max_length": int(extractor.max_length),
        "special_tokens": extractor.special_tokens,
    }


# ------------------------------------------------------------------------ main entry
@validate_params(_REPORT_CONSTRAINTS, prefer_skip_nested_validation=False)
def concept_ablation_report(
    pipeline,
    texts,
    labels,
    *,
    protocol: str = "probe",
    preset: str = "fast",
    saliency: str | None = None,
    saliency_layer=None,
    saliency_units: str | None = None,
    saliency_rank_by: str | None = None,
    classifier=None,
    rationales=None,
    n_steps: int | None = None,
    probe="mlp",
    probe_params: dict | None = None,
    n_splits: int | None = None,
    probe_accuracy: str | None = None,
    pooling: str = "auto",
    target: str = "label",
    splice_positions: str = "salient",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    missing: str = "skip",
    batch_size: int = 32,
    pairs=None,
    random_state=0,
    device="auto",
    memory="auto",
    verbose: bool = False,
) -> AblationReport:
    """Remove each sentence's salient concept and report the accuracy change.

    Every option is checked (names and values) before any model is loaded.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Fitted ``[("extract", LayerPairExtractor), ("concepts", estimator)]``
        with one of the four concept estimators.  The extractor should read
        the task classifier itself (``LayerPairExtractor(model=str(path))``,
        the paper's setting: concepts of the fine-tuned model).
    texts : sequence of str
        Evaluation sentences.
    labels : array-like of shape (n_texts,)
        Their labels; with a classifier they must be among its ``classes``.
    protocol : {"probe", "splice"}, default="probe"
        ``"probe"``: the paper's protocol (edit the sentence representation,
        probe trained on clean ones, stratified CV).  ``"splice"``: edit the
        hidden state inside the classifier's forward pass, read its head.
    preset : {"fast", "paper"}, default="fast"
        Default values of the options below that are left at None:

        ========================  ======================  ==================
        option                    ``"paper"``             ``"fast"``
        ========================  ======================  ==================
        ``saliency``              ``"ig-layer"``          ``"ig-embeddings"``
        ``saliency_layer``        ``"low"``               ``"low"``
        ``saliency_units``        ``"word"``              ``"token"``
        ``saliency_rank_by``      ``"absolute"``          ``"value"``
        ``n_steps``               500                     50
        ``n_splits``              20                      5
        ``probe_accuracy``        ``"fold-mean"``         ``"pooled"``
        ========================  ======================  ==================

        ``"paper"`` is the reference implementation's protocol (its IG
        attributions are also L2-normalised per sentence, which changes no
        ranking); ``"fast"`` is cheaper on a CPU.
    saliency : {"ig-layer", "ig-embeddings", "rationale"}, optional
        How the salient token is found: Integrated Gradients on the
        classifier towards its predicted class, over the output of the
        analysis layer (``"ig-layer"``, the paper's) or over the token
        embeddings (``"ig-embeddings"``; ``"integrated_gradients"`` is its
        older name); or the first token of the human rationale.
    saliency_layer : {"low", "high"} or int, optional
        The analysis layer of ``"ig-layer"``: the extractor's low layer
        (default; the layer CrossLayerVQ's concepts are removed from, and
        the one every method of the layer-matched comparison edits), its
        high layer, or a hidden-state index.  At the LAST layer of an
        encoder only [CLS] reaches the head, so IG there gives every other
        token zero.
    saliency_units : {"token", "word"}, optional
        ``"word"``: a word's saliency is the max over its subword tokens, and
        the concept is looked up at the subword carrying that max.
    saliency_rank_by : {"value", "absolute"}, optional
        Rank by signed attribution or by its magnitude (the paper).
    classifier : ClassifierResult or str, optional
        The fine-tuned task classifier (or its checkpoint folder).  Default:
        the extractor's model when it is such a checkpoint.  Needed for IG
        and for the splice protocol.
    rationales : sequence or mapping, optional
        For ``saliency="rationale"``: per text its evidence (string, list
        of strings or span dicts), or a mapping ``{text: evidence}`` (use a
        mapping under cross-validation).
    n_steps : int, optional
        IG steps (the paper: 500).
    probe : {"mlp", "logistic"} or classifier, default="mlp"
        The probe (see :func:`clvqlearn.evaluation.probe.make_probe`).
    probe_params : dict, optional
        Extra parameters of the probe.
    n_splits : int, optional
        Stratified folds of the probe protocol (the paper: 20); at most the
        number of sentences of the smallest class.
    probe_accuracy : {"fold-mean", "pooled"}, optional
        Probe protocol: the headline accuracies are the mean of the per-fold
        accuracies (the reference's number) or the accuracy of all
        out-of-fold predictions pooled.  Both are in ``probe_accuracies``.
    pooling : {"auto", "cls", "mean"}, default="auto"
        Sentence representation of the probe protocol: the first token
        ([CLS]) for encoders, the mean of the (kept) tokens for decoders.
    target : {"label", "prediction"}, default="label"
        Probe protocol: train and score the probe against the gold labels or
        against the classifier's predictions.
    splice_positions : {"salient", "all"}, default="salient"
        Splice protocol: edit the salient token only, or every position.
    n_bootstrap : int, default=1000
        Bootstrap resamples for ``drop_ci`` (0 = none).
    confidence : float, default=0.95
    missing : {"skip", "error"}, default="skip"
        What to do with a sentence none of whose 3 most salient tokens is
        among the extracted tokens (e.g. no rationale within ``max_length``).
    batch_size : int, default=32
        Splice forward passes.
    pairs : LayerPairs, optional
        ``pipeline[0].transform(texts)`` when already computed (saves a
        forward pass when several estimators share one extractor).
    random_state : int, RandomState instance or None, default=0
        Seeds the controls, the folds, the probes and the bootstrap.
    device : str, default="auto"
    memory : "auto", str, path-like, joblib.Memory or None, default="auto"
        Where the saliency maps are cached
        (:func:`~clvqlearn.evaluation.saliency.saliency_memory`): ``"auto"``
        is ``$CLVQLEARN_CACHE/saliency``; a folder or ``joblib.Memory`` is
        shared by joblib workers, so a grid search computes Integrated
        Gradients once per classifier, texts and settings; None: no cache.
    verbose : bool, default=False

    Returns
    -------
    AblationReport

    Raises
    ------
    TypeError, ValueError
        For a pipeline without an extractor or a fitted concept step, labels
        that are not the classifier's classes, more folds than sentences in
        the smallest class, texts with no token left after truncation, or
        unknown option names and values (scikit-learn's
        ``InvalidParameterError``, a ``ValueError``, which names the option
        and what it accepts).

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline
    >>> from clvqlearn.extraction import LayerPairExtractor
    >>> from clvqlearn.concepts.kmeans import KMeansConcepts
    >>> clf = fine_tune_classifier(train_texts, train_labels, model="minilm")  # doctest: +SKIP
    >>> pipe = Pipeline([("extract", LayerPairExtractor(str(clf.path), layers=(4, 6))),
    ...                  ("concepts", KMeansConcepts(k=50, layer="low"))]).fit(fit_texts)  # doctest: +SKIP
    >>> report = concept_ablation_report(pipe, eval_texts, eval_labels, preset="paper")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    probe ablation on 200 sentences (layer 4, fold-mean over 20 folds, 37 concepts): accuracy 0.815 -> ...

    A bad option fails at once, before any model is loaded:

    >>> concept_ablation_report(None, ["a"], [0], preset="papr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: The 'preset' parameter of ...
    """
    options = _resolve_options(preset, dict(
        saliency=saliency, saliency_layer=saliency_layer, saliency_units=saliency_units,
        saliency_rank_by=saliency_rank_by, n_steps=n_steps, n_splits=n_splits, probe_accuracy=probe_accuracy))
    extractor, concepts = _split_pipeline(pipeline)
    texts = check_texts(texts)
    y = _check_labels(labels, len(texts))
    if protocol == "probe":
        _check_folds(y, options["n_splits"])
    clf = resolve_classifier(classifier, fallback=extractor.model,
                             required_for=_classifier_need(protocol, options["saliency"], target))
    y_index = _check_classes(y, clf) if clf is not None else None
    rationale_list = _rationales_for(rationales, texts) if options["saliency"] == "rationale" else None
    rng = check_random_state(random_state)
    options["saliency_layer_index"] = _saliency_layer(options["saliency_layer"], extractor)
    pairs = _check_pairs(pairs, extractor, texts, int(extractor.max_length))
    sal = _saliency(clf, extractor, texts, rationale_list, options, memory=memory, device=device, verbose=verbose)
    found = _salient_concepts(sal, pairs, concepts, extractor, texts, missing, rng)
    if protocol == "probe":
        goal = y[found["kept"].idx]
        if target == "prediction":
            goal = _predictions(clf, sal, found["kept"], int(extractor.max_length))
        result = probe_protocol(extractor, pairs, found["states"], found["layer"], found["kept"], goal,
                                pooling=pooling, probe=probe, probe_params=probe_params,
                                n_splits=options["n_splits"], rng=rng)
        result.extra["target"] = target
    else:
        result = splice_protocol(extractor, clf, pairs, found["states"], found["layer"], found["kept"],
                                 y_index[found["kept"].idx], device=device, splice_positions=splice_positions,
                                 max_length=int(extractor.max_length), batch_size=batch_size)
    settings = {"protocol": protocol, "preset": preset, **_option_settings(options, protocol),
                "classifier": None if clf is None else str(clf.path), "layer": found["layer"],
                "concept_space": concepts.concept_space_,
                "random_state": random_state if isinstance(random_state, (int, type(None))) else repr(random_state),
                "n_bootstrap": int(n_bootstrap), "confidence": float(confidence), **result.extra,
                **_estimator_settings(concepts, extractor)}
    label_out = result.truth if protocol == "probe" else y[found["kept"].idx]
    return _report(result, found, options, settings, label_out=label_out, n_texts=len(texts), clf=clf,
                   y_index=y_index, pairs=pairs, n_bootstrap=int(n_bootstrap), confidence=float(confidence), rng=rng)


def _salient_concepts(sal: Saliency, pairs, concepts, extractor, texts, missing: str, rng) -> dict:
    """Each sentence's salient row, its concept and the directions to remove, in the concepts' layer."""
    rows, positions, ranks = salient_rows(sal, pairs)
    keep = rows >= 0
    if not keep.any():
        raise ValueError(
            "no sentence has a salient token among the extracted tokens (check that the classifier and "
            "the extractor share a tokenizer, and that rationales fall within max_length)."
        )
    if missing == "error" and not keep.all():
        bad = np.flatnonzero(~keep)
        raise ValueError(f"{bad.size} text(s) have no salient token among the extracted tokens: {bad[:10].tolist()}.")
    token_concepts = concepts.predict(pairs)
    idx = np.flatnonzero(keep)
    chosen = token_concepts[rows[idx]]
    space = concepts.concept_space_
    states = pairs.low if space == "low" else pairs.high
    kept = sentence_directions(concepts, token_concepts, chosen, idx, texts, rows, positions, states.shape[1],
                               space, rng)
    return {"rows": rows, "positions": positions, "ranks": ranks, "chosen": chosen, "kept": kept,
            "states": states, "layer": int(extractor.layers_[0 if space == "low" else 1])}


def _predictions(clf, sal: Saliency, kept, max_length: int) -> np.ndarray:
    """The classifier's predicted classes of the kept sentences (from the saliency map when it has them)."""
    if sal.targets is not None:
        return np.asarray(clf.classes)[np.asarray(sal.targets)[kept.idx]]
    return np.asarray(clf.predict(kept.texts, max_length=max_length))


def _option_settings(options: dict, protocol: str) -> dict:
    """The saliency and probe options a report used (None where they did not apply)."""
    ig = options["saliency"] != "rationale"
    return {
        "saliency": options["saliency"],
        "n_steps": int(options["n_steps"]) if ig else None,
        "saliency_layer": options["saliency_layer_index"] if options["saliency"] == "ig-layer" else None,
        "saliency_units": options["saliency_units"],
        "saliency_rank_by": options["saliency_rank_by"] if ig else None,
        "probe_accuracy": options["probe_accuracy"] if protocol == "probe" else None,
    }


#: The report's name stem of each edit: "" (the concept), "control_", "norm_matched_", "other_concept_".
_STEM = {"after": "", "control": "control_", "norm_matched": "norm_matched_", "other": "other_concept_"}


def _report(result, found: dict, options: dict, settings: dict, *, label_out, n_texts, clf, y_index, pairs,
            n_bootstrap, confidence, rng) -> AblationReport:
    """The numbers of one protocol's outcome: accuracies, drops, flips, intervals, per class, per sentence."""
    preds = result.predictions
    correct = {name: (pred == result.truth) for name, pred in preds.items()}
    probe_accuracies = {} if result.folds is None else _fold_accuracies(correct, result.folds, options)
    acc = {name: float(v.mean()) for name, v in correct.items()}
    if probe_accuracies and options["probe_accuracy"] == "fold-mean":
        acc = {name: probe_accuracies["fold_mean"][name] for name in acc}
    intervals = _bootstrap_drops(correct, n_bootstrap, confidence, rng)
    numbers = {"accuracy_before": acc["before"]}
    for name, stem in _STEM.items():
        numbers["accuracy_after" if name == "after" else f"{stem}accuracy"] = acc[name]
        numbers[f"{stem}drop"] = _relative_drop(acc["before"], acc[name])
        numbers[f"{stem}drop_ci"], numbers[f"{stem}drop_se"] = intervals[name]
        numbers[f"{stem}flip_rate"] = float((preds[name] != preds["before"]).mean())
        numbers[f"{stem}removed_norm"] = result.removed[name]
    classes, counts = np.unique(result.truth, return_counts=True)
    kept, idx = found["kept"], found["kept"].idx
    return AblationReport(
        protocol=settings["protocol"],
        **numbers,
        chance_accuracy=float(counts.max() / counts.sum()),
        per_class=_per_class(result, correct, classes, clf, y_index, settings["protocol"]),
        n_sentences=int(idx.size),
        n_skipped=int(n_texts - idx.size),
        n_distinct_concepts=int(np.unique(found["chosen"]).size),
        layer=found["layer"],
        concept_space=settings["concept_space"],
        probe_accuracies=probe_accuracies,
        settings=settings,
        sentences=_sentence_records(idx, found["rows"], found["positions"], found["ranks"], found["chosen"], kept,
                                    result, label_out, pairs),
    )


def _saliency_layer(option, extractor) -> int:
    """The hidden-state index of the IG analysis layer ("low", "high" or an index of the model)."""
    if isinstance(option, str):
        return int(extractor.layers_[0 if option == "low" else 1])
    n = int(getattr(extractor, "n_layers_", option))
    if option > n:
        raise ValueError(f"saliency_layer={option} is outside the model, which has hidden states 0..{n}.")
    return int(option)


def _classifier_need(protocol: str, saliency: str, target: str) -> str | None:
    """Why the report needs the task classifier (None: it does not)."""
    if protocol == "splice":
        return "protocol='splice'"
    if saliency != "rationale":
        return f"saliency={saliency!r}"
    if target == "prediction":
        return "target='prediction'"
    return None


def _check_pairs(pairs, extractor, texts, max_length):
    """The LayerPairs of the texts (extracted when not given); no text may be empty."""
    if pairs is None:
        pairs = extractor.transform(texts)
    elif not isinstance(pairs, LayerPairs) or pairs.n_docs != len(texts) or tuple(pairs.layers) != tuple(
            extractor.layers_):
        raise ValueError(
            f"pairs must be the LayerPairs of these {len(texts)} texts from the pipeline's extractor "
            f"(layers {tuple(extractor.layers_)})."
        )
    empty = np.flatnonzero(pairs.lengths == 0)
    if empty.size:
        raise ValueError(
            f"{empty.size} text(s) have no token left after truncation to max_length={max_length} and "
            f"dropping special tokens/outliers (indices {empty[:10].tolist()}); remove them or raise max_length."
        )
    return pairs


def _fold_accuracies(correct: dict, folds: np.ndarray, options: dict) -> dict:
    """Pooled and per-fold-averaged accuracies (and drops) of the probe protocol."""
    ids = np.unique(folds)
    per_fold = {name: np.array([v[folds == f].mean() for f in ids]) for name, v in correct.items()}
    pooled = {name: float(v.mean()) for name, v in correct.items()}
    fold_mean = {name: float(v.mean()) for name, v in per_fold.items()}
    pooled["drop"] = _relative_drop(pooled["before"], pooled["after"])
    fold_mean["drop"] = _relative_drop(fold_mean["before"], fold_mean["after"])
    return {"headline": options["probe_accuracy"], "n_splits": int(ids.size), "pooled": pooled,
            "fold_mean": fold_mean, "fold_std": {name: float(v.std()) for name, v in per_fold.items()}}


def _per_class(result, correct, classes, clf, y_index, protocol) -> list:
    out = []
    for c in classes:
        m = result.truth == c
        label = c if y_index is None or protocol == "probe" else np.asarray(clf.classes)[c]
        out.append({
            "label": label.item() if isinstance(label, np.generic) else label,
            "n": int(m.sum()),
            "accuracy_before": float(correct["before"][m].mean()),
            "accuracy_after": float(correct["after"][m].mean()),
            "control_accuracy": float(correct["control"][m].mean()),
            "norm_matched_accuracy": float(correct["norm_matched"][m].mean()),
            "other_concept_accuracy": float(correct["other"][m].mean()),
            "flip_rate": float((result.predictions["after"][m] != result.predictions["before"][m]).mean()),
        })
    return out


def _sentence_records(idx, rows, positions, ranks, chosen, kept, result, label_out, pairs) -> list:
    records = []
    for j, i in enumerate(idx):
        r = int(rows[i])
        records.append({
            "index": int(i), "label": _plain(label_out[j]),
            "token": None if pairs.tokens is None else str(pairs.tokens[r]), "position": int(positions[i]),
            "saliency_rank": int(ranks[i]), "concept": int(chosen[j]),
            "n_directions": int(kept.concept_dirs[j].shape[0]),
            **{name: _plain(result.predictions[name][j]) for name in ("before", *VARIANTS)},
            **{f"{stem}removed_norm": float(result.sentence_removed[name][j]) for name, stem in _STEM.items()},
        })
    return records


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- scorer
_SCORES = ("drop", "drop_vs_control", "drop_vs_norm_matched")


def concept_ablation_score(estimator, X, y, *, score: str = "drop", **options) -> float:
    """Scikit-learn scorer: the relative accuracy drop when salient concepts are removed.

    Greater is better (a more faithful concept set removes more of what the
    model uses), so it plugs into ``GridSearchCV``, ``cross_val_score`` and
    friends as ``scoring=concept_ablation_score``.  Fix options with
    :func:`make_ablation_scorer`.

    Parameters
    ----------
    estimator : Pipeline
        Fitted ``[LayerPairExtractor, concept estimator]``.
    X : sequence of str
        Evaluation texts.
    y : array-like
        Their labels.
    score : {"drop", "drop_vs_control", "drop_vs_norm_matched"}, default="drop"
        ``"drop"``: ``(before - after) / before``, the paper's number.
        ``"drop_vs_control"``: that minus the rank-matched random control's
        drop; ``"drop_vs_norm_matched"``: minus the norm-matched random
        control's drop.
    **options
        Passed to :func:`concept_ablation_report`, e.g. ``preset="paper"``
        (the reference implementation's protocol: IG on the analysis layer,
        word units, 500 steps, 20 folds averaged) or ``protocol="splice"``.

    Returns
    -------
    float

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> search = GridSearchCV(pipe, {"concepts__k": [50, 100]},
    ...                       scoring=concept_ablation_score, cv=3)  # doctest: +SKIP
    >>> search.fit(texts, labels).best_params_  # doctest: +SKIP
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}; got {score!r}.")
    report = concept_ablation_report(estimator, X, y, **options)
    if score == "drop":
        return float(report.drop)
    if score == "drop_vs_norm_matched":
        return float(report.drop - report.norm_matched_drop)
    return float(report.drop - report.control_drop)


_REPORT_OPTIONS = set(inspect.signature(concept_ablation_report).parameters) - {"pipeline", "texts", "labels"}


def make_ablation_scorer(**options):
    """A :func:`concept_ablation_score` with fixed options (for ``scoring=``).

    Parameters
    ----------
    **options
        ``score`` and any keyword of :func:`concept_ablation_report`
        (``protocol``, ``saliency``, ``classifier``, ``rationales``,
        ``probe``, ...).

    Returns
    -------
    callable
        ``scorer(estimator, X, y) -> float`` (a picklable
        ``functools.partial``).

    Raises
    ------
    TypeError
        For an unknown option.

    Examples
    --------
    >>> scorer = make_ablation_scorer(protocol="splice", n_steps=16)
    >>> scorer.keywords["protocol"]
    'splice'
    >>> make_ablation_scorer(preset="paper", n_steps=32).keywords["preset"]
    'paper'
    >>> make_ablation_scorer(protocl="splice")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: unknown option(s) ['protocl'] ...
    """
    unknown = sorted(set(options) - _REPORT_OPTIONS - {"score"})
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for concept_ablation_score; "
                        f"valid: {sorted(_REPORT_OPTIONS | {'score'})}.")
    checked = {k: v for k, v in options.items() if k in _REPORT_CONSTRAINTS}
    validate_parameter_constraints(_REPORT_CONSTRAINTS, checked, caller_name="make_ablation_scorer")
    if "score" in options and options["score"] not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}; got {options['score']!r}.")
    return functools.partial(concept_ablation_score, **options)
