"""``clvq table``: the paper's comparison table for evaluation axis 1 (the runner).

``clvq table --out benchmarks/results/comparison`` builds, for every model
(MiniLM encoder, SmolLM2 decoder) and data set (ERASER-Movie, Jigsaw, AG
News), two tables:

* the PRIMARY, layer-matched table: every method reads and edits the
  analysis layer ``l`` (the low layer of CrossLayerVQ's ``l -> h``), as the
  paper's reference runs its single-layer baseline (BERT 8 -> 8):
  ``KMeansConcepts(layer="low")``, ``SingleLayerVQ(layer="low")``,
  ``SparseAutoencoder(layer="low")`` and ``CrossLayerVQ`` ``l -> h``;
* the high-layer variant: the single-layer baselines at ``h`` and the
  cross-layer SAE ``l -> h`` (CrossLayerVQ's row is the same fit);

each with these steps:

1. a task classifier: the model fine-tuned with a classification head
   (:func:`~clvqlearn.evaluation.fine_tune_classifier`, cached), or for
   the decoder a frozen model with a logistic head
   (:func:`~clvqlearn.evaluation.linear_head_classifier`): Integrated
   Gradients and the splice protocol need a differentiable classifier;
2. the four concept estimators, fitted on the hidden states of that
   classifier (:func:`make_estimator`: the comparison's settings; with
   ``token_filter="reference"``, on the tokens the paper's frequency
   filter keeps: :func:`filter_fit_pairs`);
3. :func:`~clvqlearn.evaluation.concept_ablation_report` with the probe and
   the splice protocol on held-out evaluation sentences, under
   ``preset="paper"`` by default (the IG steps are reduced from 500 to
   ``ig_steps`` for the CPU budget), the saliency computed once per model
   and data set and shared by all rows,

and writes ``comparison.csv``, ``comparison.md`` (both tables) and the bar
charts (:mod:`clvqlearn.cli.tables`).  Each (model, data set) unit is also
saved under ``parts/`` so ``--resume`` continues an interrupted run.

This module is application code: the data-split policy
(:func:`load_splits`), the output folder and the printing live here, not in
the library.  Everything is subsampled so that the full table runs on a
2-core CPU in about an hour (``docs/ablation.md``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from .._sklearn_compat import Interval, StrOptions, validate_parameter_constraints
from .methods import BY_NAME, NAMES, PROTOCOLS, TABLES
from .tables import PLOT_FILES, TABLE_TITLES, legend, plot, to_markdown

__all__ = ["ComparisonConfig", "filter_fit_pairs", "load_splits", "make_estimator", "run_comparison", "run_unit"]

DATASETS = ("eraser_movie", "jigsaw", "ag_news")
MODELS = {
    # layers follow the paper's rule "two thirds of the depth -> last layer"
    "minilm": {"layers": (4, 6), "learning_rate": 1e-4},
    "smollm2": {"layers": (20, 30), "learning_rate": 5e-5},
}
#: The methods' names (:data:`clvqlearn.cli.methods.METHODS`); "CrossLayerVQ-two-stage" is
#: ``CrossLayerVQ.from_recipe("two-stage")``: the baseline its joint training must beat.
METHODS = NAMES
#: classes per data set (the evaluation sets are class-balanced)
N_CLASSES = {"eraser_movie": 2, "jigsaw": 2, "ag_news": 4}
_PART_VERSION = 3
#: ``token_filter`` settings: the paper reference's frequency filter (ConceptX's) of the concept-fit tokens,
#: as :func:`clvqlearn.data.frequency_filter` takes them.
TOKEN_FILTERS = {"reference": {"min_count": 5, "max_count": 20}}
# The allowed values of ComparisonConfig's choice settings (also the CLI's choices).
CHOICES = {
    "preset": ("paper", "fast"),
    "clvq_decoder": ("mlp", "transformer", "transformer-codes"),
    "probe": ("mlp", "logistic"),
    "splice_positions": ("salient", "all"),
    "decoder_classifier": ("head", "fine-tune"),
}


_POSITIVE = [Interval(Integral, 1, None, closed="left")]
#: ComparisonConfig's scalar settings, checked by scikit-learn's parameter validation.
_CONSTRAINTS = {
    **{name: [StrOptions(set(allowed))] for name, allowed in CHOICES.items()},
    **{name: _POSITIVE for name in ("n_classifier_train", "n_classifier_train_decoder", "n_fit", "n_fit_decoder",
                                    "n_eval", "n_eval_decoder", "max_length", "k", "epochs", "epochs_decoder",
                                    "ig_steps", "ig_steps_decoder", "concept_epochs")},
    "n_splits": [Interval(Integral, 2, None, closed="left"), None],
    "seed": [Interval(Integral, 0, None, closed="left")],
    "device": [str],
    "token_filter": [StrOptions(set(TOKEN_FILTERS)), None],
}


@dataclass
class ComparisonConfig:
    """Every setting of a comparison run (recorded in the outputs).

    Attributes
    ----------
    datasets, models, methods, protocols : tuple of str
        What to run.
    tables : tuple of str
        ``"layer-matched"`` (the primary table: every method at the analysis
        layer l) and/or ``"high-layer"`` (single-layer baselines at h, the
        cross-layer SAE); CrossLayerVQ is fitted and evaluated once for both.
    preset : {"paper", "fast"}
        The evaluation protocol of
        :func:`~clvqlearn.evaluation.ablation.concept_ablation_report`
        (``"paper"``: IG on the analysis layer, word units, absolute
        ranking, 20 folds averaged), except for the IG steps, which come
        from ``ig_steps``.
    n_splits : int or None
        Probe folds; None = the preset's (paper: 20).  At most the
        evaluation sentences per class of every data set.
    n_classifier_train, n_classifier_train_decoder : int
        Labelled sentences used to fine-tune each classifier (encoder,
        decoder).
    n_fit, n_fit_decoder : int
        Unlabelled sentences used to fit the concept estimators (encoder,
        decoder).
    n_eval : int
        Evaluation sentences for the encoder (class-balanced).
    n_eval_decoder : int
        Evaluation sentences for the decoder (its IG and splice passes are
        about 10x dearer).
    max_length : int
        Truncation in tokens (classifier, extractor, saliency).
    k : int
        Concepts per estimator.
    epochs, epochs_decoder : int
        Classifier fine-tuning epochs (encoder, decoder).
    ig_steps, ig_steps_decoder : int
        Integrated Gradients steps (the paper: 500; the top-1 word at the
        default 16 against 500 is measured in
        ``benchmarks/results/ig_steps_minilm_eraser.json``).
    concept_epochs : int
        Maximum epochs of the torch concept models (early stopping after 5).
    clvq_decoder : str
        Decoder of the VQ models ("mlp" is fast; "transformer" is the
        reference form).
    token_filter : {"reference"} or None
        None (default): the concepts are fitted on every token of the
        ``n_fit`` texts.  ``"reference"``: on the tokens the paper's
        reference keeps (:func:`clvqlearn.data.frequency_filter`: word types
        seen fewer than 5 times dropped, at most 20 occurrences of each kept,
        drawn with ``seed``); the evaluation sentences are not filtered.
        Needs ``clvq_decoder="mlp"`` when a VQ method runs: a context decoder
        would read the filtered documents as sentences with words missing.
    probe : str
        "mlp" (the paper's) or "logistic".
    splice_positions : str
        "all" (default): remove the salient token's concept from every
        position of the sentence inside the forward pass; "salient": only at
        the salient token.  An edit at the LAST layer reaches the head only
        through the position the head reads ([CLS] or the last token), so
        with "salient" the high-layer estimators could never change a
        prediction; "all" lets every method reach the head.
    decoder_classifier : {"head", "fine-tune"}
        How the decoder gets its classifier: ``"head"`` (default) keeps the
        language model frozen, as the paper's zero-shot decoders, and fits a
        logistic-regression head on its last-token state (written into the
        model's ``score`` layer); ``"fine-tune"`` uses
        :func:`~clvqlearn.evaluation.tasks.fine_tune_classifier` (slow on a
        CPU, and at 1 epoch of 300 sentences it stayed at chance level on
        ERASER-Movie).
    seed : int
    device : str

    Examples
    --------
    >>> config = ComparisonConfig(models=("minilm",), k=50)
    >>> config.k, config.n_eval, config.preset, len(config.unit_key("minilm", "ag_news"))
    (50, 400, 'paper', 16)
    >>> ComparisonConfig(tables=("layer-matched", "middle"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: tables must be a non-empty subset of ('layer-matched', 'high-layer'); got ...
    >>> ComparisonConfig(k=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: The 'k' parameter of ComparisonConfig must be ...
    """

    datasets: tuple = DATASETS
    models: tuple = tuple(MODELS)
    methods: tuple = METHODS
    protocols: tuple = PROTOCOLS
    tables: tuple = TABLES
    preset: str = "paper"
    n_splits: int | None = None
    n_classifier_train: int = 600
    n_classifier_train_decoder: int = 1500
    n_fit: int = 1000
    n_fit_decoder: int = 500
    n_eval: int = 400
    n_eval_decoder: int = 120
    max_length: int = 64
    k: int = 400
    epochs: int = 2
    epochs_decoder: int = 1
    ig_steps: int = 16
    ig_steps_decoder: int = 2
    concept_epochs: int = 30
    clvq_decoder: str = "mlp"
    probe: str = "mlp"
    splice_positions: str = "all"
    decoder_classifier: str = "head"
    seed: int = 0
    device: str = "auto"
    token_filter: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        validate_parameter_constraints(_CONSTRAINTS, {name: getattr(self, name) for name in _CONSTRAINTS},
                                       caller_name=type(self).__name__)
        for name, allowed in (("datasets", DATASETS), ("models", tuple(MODELS)), ("methods", METHODS),
                              ("protocols", PROTOCOLS), ("tables", TABLES)):
            values = getattr(self, name)
            if isinstance(values, str) or not values or not set(values) <= set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}; got {values!r}.")
        self._check_folds()
        self._check_token_filter()

    @property
    def token_filter_settings(self) -> dict | None:
        """The keywords of :func:`clvqlearn.data.frequency_filter` that ``token_filter`` names (None: off)."""
        return None if self.token_filter is None else dict(TOKEN_FILTERS[self.token_filter])

    def _check_token_filter(self) -> None:
        """The frequency filter leaves gaps in the fit documents: only per-token decoders may read them."""
        context = [m for m in self.methods if BY_NAME[m].family == "vq"]
        if self.token_filter is not None and self.clvq_decoder != "mlp" and context:
            raise ValueError(
                f"token_filter={self.token_filter!r} with clvq_decoder={self.clvq_decoder!r}: the filter drops "
                "words from the documents the concepts are fitted on, so a context decoder would read them as "
                f"sentences with words missing ({', '.join(context)}); use clvq_decoder='mlp' (per token), "
                "leave those methods out, or token_filter=None."
            )

    def _check_folds(self) -> None:
        """The probe's folds must fit the smallest class of every evaluation set."""
        from ..evaluation.ablation import PRESETS

        preset_splits: int = PRESETS[self.preset]["n_splits"]  # type: ignore[assignment]
        n_splits = preset_splits if self.n_splits is None else self.n_splits
        if "probe" not in self.protocols:
            return
        for model in self.models:
            n_eval, name = (self.n_eval_decoder, "n_eval_decoder") if model == "smollm2" else (self.n_eval, "n_eval")
            for dataset in self.datasets:
                per_class = n_eval // N_CLASSES[dataset]
                if per_class < n_splits:
                    raise ValueError(
                        f"n_splits={n_splits} probe folds need at least {n_splits} evaluation sentences per "
                        f"class, but {name}={n_eval} gives {per_class} per class on {dataset} "
                        f"({N_CLASSES[dataset]} classes); raise {name} to {n_splits * N_CLASSES[dataset]} or "
                        "lower n_splits."
                    )

    def unit_key(self, model: str, dataset: str) -> str:
        """A hash of the settings that determine one (model, data set) unit.

        Only the settings that unit uses count (the encoder's sizes for
        MiniLM, the decoder's for SmolLM2), so ``--resume`` keeps finished
        units when an unrelated setting changes.
        """
        common = ("methods", "protocols", "tables", "preset", "n_splits", "max_length", "k", "concept_epochs",
                  "clvq_decoder", "probe", "splice_positions", "seed")
        if model == "smollm2":
            own = ("n_classifier_train_decoder", "n_fit_decoder", "n_eval_decoder", "ig_steps_decoder",
                   "decoder_classifier") + (("epochs_decoder",) if self.decoder_classifier == "fine-tune" else ())
        else:
            own = ("n_classifier_train", "n_fit", "n_eval", "epochs", "ig_steps")
        values = asdict(self)
        relevant = {k: values[k] for k in common + own}
        if self.token_filter is not None:  # absent when off, so the units of earlier runs keep their keys
            relevant["token_filter"] = self.token_filter
        relevant.update(model=model, dataset=dataset, version=_PART_VERSION)
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=list).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ data
def load_splits(dataset: str, config: ComparisonConfig, *, n_eval: int, n_train: int | None = None,
                n_fit: int | None = None):
    """(classifier training set, concept-fitting texts, evaluation set) of a data set.

    The three parts never share a text.  ERASER-Movie: the classifier learns
    from Pang & Lee's sentence-polarity snippets (ERASER's own training
    split has no labels here), the concepts from ERASER training sentences,
    the evaluation uses ERASER dev sentences.  Jigsaw: classifier and
    concepts from the training split, evaluation from dev.  AG News (only
    the 7,600-row test split is shipped): disjoint random parts of it.
    Evaluation sets are class-balanced.

    Parameters
    ----------
    dataset : {"eraser_movie", "jigsaw", "ag_news"}
    config : ComparisonConfig
    n_eval : int
        Evaluation sentences (rounded down to a multiple of the class count).
    n_train : int, optional
        Classifier training sentences (default ``config.n_classifier_train``).
    n_fit : int, optional
        Concept-fitting sentences (default ``config.n_fit``).

    Returns
    -------
    (TextDataset, list of str, TextDataset)

    Examples
    --------
    >>> train, fit, ev = load_splits("ag_news", ComparisonConfig(), n_eval=40)  # doctest: +SKIP
    >>> len(ev), ev.class_counts()  # doctest: +SKIP
    (40, {'World': 10, 'Sports': 10, 'Business': 10, 'Sci/Tech': 10})
    """
    from ..datasets import load_ag_news, load_eraser_movie, load_jigsaw, load_movie_reviews

    seed = config.seed
    rng = np.random.RandomState(seed)
    n_train = config.n_classifier_train if n_train is None else int(n_train)
    n_fit = config.n_fit if n_fit is None else int(n_fit)

    def clean(ds):
        keep = [i for i, t in enumerate(ds.texts) if t.strip()]
        return ds.take(keep) if len(keep) < len(ds) else ds

    if dataset == "eraser_movie":
        ev_all = clean(load_eraser_movie("dev"))
        ev = ev_all.subset(n_eval // ev_all.n_classes, random_state=seed)
        clf_train = clean(load_movie_reviews("sentences")).sample(n_train, random_state=seed)
        fit_pool = [t for t in load_eraser_movie("train").texts if t.strip()]
        fit = [fit_pool[i] for i in rng.choice(len(fit_pool), size=n_fit, replace=False)]
    elif dataset == "jigsaw":
        train = clean(load_jigsaw("train"))
        ev_all = clean(load_jigsaw("dev"))
        ev = ev_all.subset(n_eval // ev_all.n_classes, random_state=seed)
        order = rng.permutation(len(train))
        clf_train = train.take(order[:n_train])
        fit = [train.texts[i] for i in order[n_train : n_train + n_fit]]
    elif dataset == "ag_news":
        data = clean(load_ag_news("test"))
        per_class = n_eval // data.n_classes
        chosen = np.sort(np.concatenate([
            rng.choice(np.flatnonzero(data.labels == c), size=per_class, replace=False)
            for c in range(data.n_classes)
        ]))
        ev = data.take(chosen)
        order = rng.permutation(np.setdiff1d(np.arange(len(data)), chosen))
        clf_train = data.take(order[:n_train])
        fit = [data.texts[i] for i in order[n_train : n_train + n_fit]]
    else:
        raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}.")
    return clf_train, fit, ev


def make_estimator(method: str, config: ComparisonConfig, model: str, table: str = "layer-matched"):
    """One of the four concept estimators with the comparison's fast settings.

    Parameters
    ----------
    method : {"CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"}
        ``"CrossLayerVQ-two-stage"``: ``CrossLayerVQ.from_recipe("two-stage")``
        with CrossLayerVQ's settings (l -> h in both tables, like CrossLayerVQ).
    config : ComparisonConfig
    model : str
        Key of ``MODELS`` (kept for the signature; the estimators use their own defaults).
    table : {"layer-matched", "high-layer"}, default="layer-matched"
        ``"layer-matched"``: the single-layer baselines and the SAE (single
        layer) at the analysis layer l; ``"high-layer"``: the single-layer
        baselines at h and the SAE cross-layer l -> h.  CrossLayerVQ is
        l -> h in both.

    Examples
    --------
    >>> make_estimator("KMeansConcepts", ComparisonConfig(k=20), "minilm").k
    20
    >>> make_estimator("SparseAutoencoder", ComparisonConfig(), "minilm").layer
    'low'
    >>> make_estimator("SparseAutoencoder", ComparisonConfig(), "minilm", "high-layer").layer is None
    True
    """
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}; got {table!r}.")
    if method not in BY_NAME:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    import clvqlearn

    row = BY_NAME[method]
    cls = getattr(clvqlearn, row.estimator)
    k, seed, device = config.k, config.seed, config.device
    by_family: dict[str, dict[str, Any]] = {
        # CrossLayerVQ's own defaults (a frozen encoder fitted as a regression of h on l;
        # see docs/crosslayervq.md), with the decoder and epoch budget of the comparison.
        "vq": dict(top_k=min(5, k), decoder=config.clvq_decoder, decoder_hidden=512,
                   max_epochs=config.concept_epochs, random_state=seed, device=device),
        "kmeans": dict(random_state=seed),
        "sae": dict(max_epochs=config.concept_epochs, early_stopping_patience=5, batch_size=256,
                    random_state=seed, device=device),
    }
    settings = by_family[row.family]
    if row.layers:  # a single-layer estimator, or the SAE (cross-layer where its table gives no layer)
        settings["layer"] = row.comparison_layer(table)
    if row.recipe is None:
        return cls(k, **settings)
    from ..concepts.vq import RECIPES

    # the recipe's own settings win (the two-stage baseline keeps top_k=1)
    return cls.from_recipe(row.recipe, k=k, **{n: v for n, v in settings.items() if n not in RECIPES[row.recipe]})


# ------------------------------------------------------------------------- one unit
def run_unit(model: str, dataset: str, config: ComparisonConfig, *, log=print) -> dict:
    """Classifier, concepts and both protocols for one (model, data set).

    Returns
    -------
    dict
        ``{"rows": [...], "classifier": {...}, "seconds": {...}}``: one row per
        (table, method, protocol) with the report's summary numbers.

    Examples
    --------
    >>> part = run_unit("minilm", "ag_news", ComparisonConfig(n_eval=40))  # doctest: +SKIP
    >>> part["rows"][0]["drop"]  # doctest: +SKIP
    """
    from ..extraction import LayerPairExtractor

    if model not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}; got {model!r}.")
    decoder = model == "smollm2"
    n_eval = config.n_eval_decoder if decoder else config.n_eval
    n_train = config.n_classifier_train_decoder if decoder else config.n_classifier_train
    n_fit = config.n_fit_decoder if decoder else config.n_fit
    seconds: dict = {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    clf_train, fit_texts, ev = load_splits(dataset, config, n_eval=n_eval, n_train=n_train, n_fit=n_fit)
    log(f"[{model}/{dataset}] classifier on {len(clf_train)} texts, concepts on {len(fit_texts)}, "
        f"evaluation on {len(ev)} ({ev.class_counts()})")
    clf = task_classifier(model, clf_train, ev, config)
    seconds["classifier"] = time.perf_counter() - t0
    took = "reused" if clf.reused else f"{seconds['classifier']:.0f} s"
    log(f"[{model}/{dataset}] classifier accuracy on the evaluation set {clf.accuracy:.3f} ({took})")

    t = time.perf_counter()
    extractor = LayerPairExtractor(str(clf.path), layers=MODELS[model]["layers"], max_length=config.max_length,
                                   device=config.device).fit(fit_texts)
    fit_pairs = extractor.transform(fit_texts)
    eval_pairs = extractor.transform(ev.texts)
    seconds["extract"] = time.perf_counter() - t
    log(f"[{model}/{dataset}] {fit_pairs.n_tokens} fit tokens, {eval_pairs.n_tokens} evaluation tokens "
        f"({seconds['extract']:.0f} s)")
    fit_pairs = filter_fit_pairs(fit_pairs, config, log=log, tag=f"[{model}/{dataset}]")

    ig_steps = config.ig_steps_decoder if decoder else config.ig_steps
    rows, done = [], {}
    for table in config.tables:
        for method in config.methods:
            estimator = make_estimator(method, config, model, table)
            signature = (method, repr(estimator.get_params()))
            if signature not in done:  # CrossLayerVQ is the same fit in both tables
                done[signature] = _evaluate(estimator, config, extractor, fit_pairs, eval_pairs, ev, clf, ig_steps,
                                            tag=f"[{model}/{dataset}] {table:13s} {method:17s}", log=log)
            base = {"model": model, "dataset": dataset, "table": table, "method": method,
                    "classifier_accuracy": clf.accuracy}
            rows += [{**base, **row} for row in done[signature]]
    seconds["total"] = time.perf_counter() - t0
    seconds["cpu_total"] = time.process_time() - cpu0
    return {"rows": rows, "classifier": {"path": str(clf.path), "accuracy": clf.accuracy,
                                         "n_train": clf.n_train, "reused": clf.reused},
            "seconds": seconds}


def filter_fit_pairs(pairs, config: ComparisonConfig, *, log=print, tag: str = ""):
    """The concept-fit pairs under ``config.token_filter`` (``pairs`` itself when it is None).

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> tokens = np.array(["the", "cat"] * 6 + ["dog"], dtype=object)  # "dog": fewer than 5 times
    >>> pairs = LayerPairs(low=np.zeros((13, 1)), high=np.zeros((13, 1)), offsets=[0, 6, 13], tokens=tokens)
    >>> kept = filter_fit_pairs(pairs, ComparisonConfig(token_filter="reference"))
    the token filter 'reference' (min_count=5, max_count=20) keeps 12 of 13 fit tokens (92.3%), 2 of 2 documents
    >>> filter_fit_pairs(pairs, ComparisonConfig()) is pairs
    True
    """
    if config.token_filter is None:
        return pairs
    from ..data import frequency_filter

    settings = TOKEN_FILTERS[config.token_filter]
    kept = frequency_filter(pairs, **settings, random_state=config.seed)
    share = kept.n_tokens / pairs.n_tokens if pairs.n_tokens else 0.0
    log(f"{tag + ' ' if tag else ''}the token filter {config.token_filter!r} "
        f"({', '.join(f'{k}={v}' for k, v in settings.items())}) keeps {kept.n_tokens} of {pairs.n_tokens} fit "
        f"tokens ({share:.1%}), {kept.n_docs} of {pairs.n_docs} documents")
    return kept


def task_classifier(model: str, train, evaluation, config: ComparisonConfig):
    """The unit's task classifier: fine-tuned, or (decoder, ``decoder_classifier="head"``) a frozen linear head.

    Returns
    -------
    ClassifierResult
    """
    from ..evaluation import fine_tune_classifier, linear_head_classifier

    decoder = model == "smollm2"
    if decoder and config.decoder_classifier == "head":
        return linear_head_classifier(model, train, evaluation, max_length=config.max_length,
                                      random_state=config.seed, device=config.device)
    return fine_tune_classifier(
        train.texts, train.labels, model=model, label_names=evaluation.label_names, num_labels=evaluation.n_classes,
        validation_data=(evaluation.texts, evaluation.labels),
        epochs=config.epochs_decoder if decoder else config.epochs,
        learning_rate=MODELS[model]["learning_rate"], batch_size=16, max_length=config.max_length,
        random_state=config.seed, device=config.device, verbose=False,
    )


def _evaluate(estimator, config, extractor, fit_pairs, eval_pairs, ev, clf, ig_steps, *, tag, log) -> list:
    """Fit one concept estimator and run every protocol on it: one summary row per protocol."""
    from sklearn.pipeline import Pipeline

    from ..evaluation import concept_ablation_report

    t = time.perf_counter()
    estimator.fit(fit_pairs)
    fit_seconds = time.perf_counter() - t
    fve = float(estimator.score(eval_pairs))
    pipe = Pipeline([("extract", extractor), ("concepts", estimator)])
    rows = []
    for protocol in config.protocols:
        t = time.perf_counter()
        report = concept_ablation_report(
            pipe, ev.texts, ev.labels, protocol=protocol, preset=config.preset, classifier=clf, n_steps=ig_steps,
            n_splits=config.n_splits, probe=config.probe, splice_positions=config.splice_positions,
            random_state=config.seed, device=config.device, pairs=eval_pairs,
        )
        row = {"protocol": protocol, "held_out_fve": fve, "fit_seconds": round(fit_seconds, 1),
               "eval_seconds": round(time.perf_counter() - t, 1), **report.summary()}
        rows.append(row)
        log(f"{tag} {protocol:6s} layer {report.layer} acc {report.accuracy_before:.3f} -> "
            f"{report.accuracy_after:.3f} (drop {report.drop:+.1%}; random {report.control_drop:+.1%}; "
            f"norm-matched {report.norm_matched_drop:+.1%}; other concept {report.other_concept_drop:+.1%}) "
            f"flip {report.flip_rate:.1%} "
            f"[{row['eval_seconds']:.0f} s]")
    return rows


# ------------------------------------------------------------------------------ run
def run_comparison(config: ComparisonConfig, out, *, resume: bool = False, verbose: bool = True,
                   command: str | None = None):
    """Run every (model, data set) unit and write the CSV, Markdown and PNG.

    Parameters
    ----------
    config : ComparisonConfig
    out : str or path-like
        Output folder (created).  The finished tables of an earlier run in
        it are removed first and ``comparison.csv`` is written last, so an
        interrupted run never leaves tables that look finished.
    resume : bool, default=False
        Reuse finished units from ``out/parts`` made with the same settings.
    verbose : bool, default=True
    command : str, optional
        The command line to record in ``comparison.md``.

    Returns
    -------
    pandas.DataFrame
        One row per (model, data set, method, protocol).

    Examples
    --------
    >>> frame = run_comparison(ComparisonConfig(models=("minilm",), datasets=("ag_news",)),
    ...                        "out")  # doctest: +SKIP
    """
    import pandas as pd

    log = print if verbose else (lambda *a, **k: None)
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    _remove_finished(out)
    started, cpu_started = time.perf_counter(), time.process_time()
    rows, units = [], {}
    for model in config.models:
        for dataset in config.datasets:
            part = _unit_part(model, dataset, config, out / "parts", resume=resume, log=log)
            rows += part["rows"]
            units[f"{model}/{dataset}"] = {k: v for k, v in part.items() if k != "rows"}
    frame = pd.DataFrame(rows)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    _write_outputs(frame, config, units, out, command=command, minutes=(total / 60, cpu / 60))
    frame.to_csv(out / "comparison.csv", index=False)  # last: the mark of a finished run
    log(f"wrote {out}/comparison.csv, comparison.md and the charts ({total / 60:.1f} min)")
    return frame


def _remove_finished(out: Path) -> None:
    """Remove the tables and charts of an earlier run (``parts/`` stays for ``resume``)."""
    for name in ("comparison.csv", "comparison.md", "run.json", *PLOT_FILES.values()):
        (out / name).unlink(missing_ok=True)


def _unit_part(model: str, dataset: str, config: ComparisonConfig, parts_dir: Path, *, resume: bool, log) -> dict:
    """One unit's part: read back from ``parts_dir`` (``resume`` and the same key) or run and saved there."""
    key = config.unit_key(model, dataset)
    part_file = parts_dir / f"{model}_{dataset}.json"
    if resume and part_file.is_file():
        part = json.loads(part_file.read_text())
        if part.get("key") == key:
            log(f"[{model}/{dataset}] reusing {part_file}")
            return part
    part = run_unit(model, dataset, config, log=log)
    part["key"] = key
    part_file.write_text(json.dumps(part, indent=1, default=_jsonable))
    return part


def _write_outputs(frame, config: ComparisonConfig, units: dict, out: Path, *, command, minutes) -> None:
    """``comparison.md``, ``run.json`` and the charts of a finished run."""
    total, cpu = minutes
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    if command is None:
        command = "run_comparison(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"
    unit_wall = sum(u.get("seconds", {}).get("total", 0.0) for u in units.values())
    unit_cpu = sum(u.get("seconds", {}).get("cpu_total", 0.0) for u in units.values())
    md = [
        "# Concept removal: comparison tables (evaluation axis 1)\n",
        f"Produced by `{command.strip()}`. The units took {unit_wall / 60:.1f} min wall clock and "
        f"{unit_cpu / 60:.1f} min of CPU time when they ran (this call: {total:.1f} min; units reused "
        "with --resume keep their own times, see run.json).\n",
        legend(config),
        f"Subsampled settings: {json.dumps(settings, default=str)}\n",
    ]
    tables = {table: frame[frame["table"] == table] if len(frame) else frame for table in config.tables}
    for table, sub in tables.items():
        md += [TABLE_TITLES[table], to_markdown(sub) if len(sub) else "(no rows)\n"]
    (out / "comparison.md").write_text("\n".join(md))
    (out / "run.json").write_text(json.dumps({"settings": settings, "units": units, "minutes": total,
                                              "cpu_minutes": cpu}, indent=1, default=_jsonable))
    for table, sub in tables.items():
        if len(sub):
            plot(sub, out / PLOT_FILES[table])


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
