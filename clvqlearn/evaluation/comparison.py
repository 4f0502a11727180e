"""The paper's comparison table for evaluation axis 1, in one command.

``python -m clvqlearn.evaluation.comparison --out benchmarks/results/comparison``
builds, for every model (MiniLM encoder, SmolLM2 decoder) and data set
(ERASER-Movie, Jigsaw, AG News), two tables:

* the PRIMARY, layer-matched table: every method reads and edits the
  analysis layer ``l`` (the low layer of CrossLayerVQ's ``l -> h``), as the
  paper's reference runs its single-layer baseline (BERT 8 -> 8):
  ``KMeansConcepts(layer="low")``, ``SingleLayerVQ(layer="low")``,
  ``SparseAutoencoder(layer="low")`` and ``CrossLayerVQ`` ``l -> h``;
* the high-layer variant: the single-layer baselines at ``h`` and the
  cross-layer SAE ``l -> h`` (CrossLayerVQ's row is the same fit);

each with these steps:

1. a task classifier: the model fine-tuned with a classification head
   (:func:`~clvqlearn.evaluation.tasks.fine_tune_classifier`, cached);
   the paper fine-tunes its encoders and prompts its decoders zero-shot, but
   Integrated Gradients and the splice protocol need a differentiable
   classifier with a head, so SmolLM2 gets a fine-tuned head too;
2. the four concept estimators (CrossLayerVQ, SingleLayerVQ, KMeansConcepts,
   SparseAutoencoder), fitted on the hidden states of that classifier;
3. :func:`~clvqlearn.evaluation.ablation.concept_ablation_report` with the
   probe and the splice protocol on held-out evaluation sentences, under
   ``preset="paper"`` by default (IG on the analysis layer's output, word
   units, 20 stratified folds averaged; the IG steps are reduced from 500 to
   ``ig_steps`` for the CPU budget), the saliency computed once per model
   and data set and shared by all rows,

and writes ``comparison.csv`` (every number, a ``table`` column), ``comparison.md``
(both tables) and ``comparison.png`` / ``comparison_high_layer.png`` (bar
charts) to ``--out``.  Each (model, data set)
unit is also saved under ``parts/`` so ``--resume`` continues an interrupted
run.

Everything is subsampled so that the full table runs on a 2-core CPU in
about an hour (see ``--help`` and ``docs/ablation.md``); the numbers are
therefore noisier and smaller-scale than the paper's (856 to 1,200
evaluation sentences, K = 400, full training sets, BERT/RoBERTa/LLaMA).

``main(argv=None)`` is the entry point (``clvq table``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ComparisonConfig", "build_parser", "main", "run_comparison"]

DATASETS = ("eraser_movie", "jigsaw", "ag_news")
MODELS = {
    # layers follow the paper's rule "two thirds of the depth -> last layer"
    "minilm": {"layers": (4, 6), "learning_rate": 1e-4},
    "smollm2": {"layers": (20, 30), "learning_rate": 5e-5},
}
METHODS = ("CrossLayerVQ", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder")
PROTOCOLS = ("probe", "splice")
#: "layer-matched": every method at the analysis layer l (the primary table); "high-layer": the
#: single-layer baselines at h and the cross-layer SAE l -> h (the variant).
TABLES = ("layer-matched", "high-layer")
#: classes per data set (the evaluation sets are class-balanced)
N_CLASSES = {"eraser_movie": 2, "jigsaw": 2, "ag_news": 4}
_PART_VERSION = 3
# The allowed values of ComparisonConfig's choice settings (also the CLI's choices).
CHOICES = {
    "preset": ("paper", "fast"),
    "clvq_decoder": ("mlp", "transformer", "transformer-codes"),
    "probe": ("mlp", "logistic"),
    "splice_positions": ("salient", "all"),
    "decoder_classifier": ("head", "fine-tune"),
}
_HEAD_VERSION = 2  # bump when linear_head_classifier's fitting changes (its cache key)


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
        Decoder of the two VQ models ("mlp" is fast; "transformer" is the
        reference form).
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
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}.")
        for name, allowed in (("datasets", DATASETS), ("models", tuple(MODELS)), ("methods", METHODS),
                              ("protocols", PROTOCOLS), ("tables", TABLES)):
            values = getattr(self, name)
            if isinstance(values, str) or not values or not set(values) <= set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}; got {values!r}.")
        for name in ("n_classifier_train", "n_classifier_train_decoder", "n_fit", "n_fit_decoder", "n_eval",
                     "n_eval_decoder", "max_length", "k", "epochs", "epochs_decoder", "ig_steps",
                     "ig_steps_decoder", "concept_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        self._check_folds()

    def _check_folds(self) -> None:
        """The probe's folds must fit the smallest class of every evaluation set."""
        from .ablation import PRESETS

        n_splits = PRESETS[self.preset]["n_splits"] if self.n_splits is None else self.n_splits
        if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
            raise ValueError(f"n_splits must be an integer >= 2 or None (the preset's); got {n_splits!r}.")
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


# -------------------------------------------------------------- decoder classifier
def linear_head_classifier(model: str, train, evaluation, *, max_length: int = 64, random_state=0,
                           device="auto", batch_size: int = 16):
    """A frozen language model with a logistic-regression classification head.

    The paper prompts its decoders zero-shot: their weights are never
    trained.  This keeps the decoder frozen too, but gives it a linear head:
    L2-regularised logistic regression (no intercept, ``C`` chosen by
    stratified 5-fold CV) on the final hidden state of the last token, the
    very vector a Hugging Face ``*ForSequenceClassification`` head reads.
    The fitted weights are written into the model's ``score`` layer and the
    model is saved as a checkpoint that
    :func:`~clvqlearn.evaluation.tasks.load_classifier`,
    :func:`~clvqlearn.evaluation.saliency.token_saliency`, the splice
    protocol and ``LayerPairExtractor(model=str(path))`` all read.  One
    forward pass over the training texts replaces fine-tuning, and the
    checkpoint is cached under ``get_cache_home() / "classifiers"``.

    Parameters
    ----------
    model : str
        A causal language model (short name, folder or hub id).
    train, evaluation : TextDataset
        Labelled training texts and the held-out set whose accuracy is
        recorded.
    max_length : int, default=64
    random_state : int, default=0
    device : str, default="auto"
    batch_size : int, default=16

    Returns
    -------
    ClassifierResult

    Examples
    --------
    >>> clf = linear_head_classifier("smollm2", train, ev)  # doctest: +SKIP
    >>> clf.accuracy  # doctest: +SKIP
    0.717
    """
    import torch
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from .. import models as _models
    from .._config import get_cache_home
    from .._torch_utils import resolve_device, seeded
    from .tasks import _INFO_FORMAT, _INFO_VERSION, INFO_FILE, ensure_pad_token, load_classifier, save_checkpoint

    classes = np.arange(len(evaluation.label_names))
    params = {"kind": "linear-head", "version": _HEAD_VERSION, "max_length": int(max_length),
              "random_state": random_state, "Cs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}
    present = np.unique(train.labels)
    if not np.array_equal(present, classes):
        raise ValueError(
            f"the training texts must hold every class 0..{classes.size - 1} of {list(evaluation.label_names)}; "
            f"got labels {present.tolist()}."
        )
    digest = hashlib.sha256(json.dumps(
        {"model": model, "params": params, "train": [train.texts, train.labels.tolist()],
         "eval": [evaluation.texts, evaluation.labels.tolist()]}).encode()).hexdigest()[:16]
    folder = get_cache_home() / "classifiers" / f"{Path(model).name}-head-{digest}"
    if (folder / INFO_FILE).is_file():
        return load_classifier(folder)

    dev = resolve_device(device)
    tokenizer = _models.load_tokenizer(model)
    with seeded(int(random_state or 0), torch.device("cpu")):  # the head's (overwritten) initialisation
        net = _models.load_model(model, head="sequence-classification", num_labels=int(classes.size))
    ensure_pad_token(net, tokenizer)
    net.to(dev).eval()
    head = getattr(net, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"{type(net).__name__} has no bias-free `score` head; use decoder_classifier='fine-tune'.")

    @torch.no_grad()
    def last_token_states(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], truncation=True, max_length=int(max_length),
                            padding=True, return_tensors="pt").to(dev)
            hidden = net.base_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
            # the position the HF head reads: the rightmost token that is not the pad token
            non_pad = (enc["input_ids"] != net.config.pad_token_id).int()
            last = (torch.arange(non_pad.shape[1], device=dev) * non_pad).argmax(-1)
            out.append(hidden[torch.arange(hidden.shape[0], device=dev), last].float().cpu().numpy())
        return np.concatenate(out)

    X_train, X_eval = last_token_states(list(train.texts)), last_token_states(list(evaluation.texts))
    probe = LogisticRegressionCV(Cs=params["Cs"], fit_intercept=False, max_iter=5000,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=int(random_state or 0)))
    probe.fit(X_train, train.labels)
    coef = probe.coef_
    weight = np.vstack([-coef / 2, coef / 2]) if classes.size == 2 and coef.shape[0] == 1 else coef
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        logits = head(torch.as_tensor(X_eval, dtype=head.weight.dtype, device=dev)).cpu().numpy()
    if not np.array_equal(logits.argmax(axis=1), probe.predict(X_eval)):
        raise RuntimeError("the head written into the model does not reproduce the fitted probe's predictions.")
    accuracy = float((logits.argmax(axis=1) == evaluation.labels).mean())
    net.config.id2label = dict(enumerate(evaluation.label_names))
    net.config.label2id = {name: i for i, name in enumerate(evaluation.label_names)}
    info = dict(format=_INFO_FORMAT, version=_INFO_VERSION, base_model=model, fingerprint=digest,
                label_names=list(evaluation.label_names), classes=classes.tolist(), accuracy=accuracy,
                n_train=len(train), n_test=len(evaluation),
                history=[{"C": float(np.ravel(probe.C_)[0]), "train_accuracy": float(probe.score(X_train, train.labels)),
                          "test_accuracy": accuracy}],
                params=params)
    return save_checkpoint(net, tokenizer, info, folder)


def make_estimator(method: str, config: ComparisonConfig, model: str, table: str = "layer-matched"):
    """One of the four concept estimators with the comparison's fast settings.

    Parameters
    ----------
    method : {"CrossLayerVQ", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"}
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
    from ..concepts.kmeans import KMeansConcepts
    from ..concepts.sae import SparseAutoencoder
    from ..concepts.vq import CrossLayerVQ, SingleLayerVQ

    k, seed, device = config.k, config.seed, config.device
    single = "low" if table == "layer-matched" else "high"
    # CrossLayerVQ's own defaults (regression-started, frozen linear encoder; see
    # docs/crosslayervq.md), with the decoder and epoch budget of the comparison.
    vq = dict(top_k=min(5, k), decoder=config.clvq_decoder, decoder_hidden=512,
              max_epochs=config.concept_epochs, random_state=seed, device=device)
    if method == "CrossLayerVQ":
        return CrossLayerVQ(k, **vq)
    if method == "SingleLayerVQ":
        return SingleLayerVQ(k, layer=single, **vq)
    if method == "KMeansConcepts":
        return KMeansConcepts(k, layer=single, random_state=seed)
    if method == "SparseAutoencoder":
        return SparseAutoencoder(k, layer="low" if table == "layer-matched" else None,
                                 max_epochs=config.concept_epochs, early_stopping_patience=5, batch_size=256,
                                 random_state=seed, device=device)
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")


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
    from .tasks import fine_tune_classifier

    if model not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}; got {model!r}.")
    spec = MODELS[model]
    decoder = model == "smollm2"
    n_eval = config.n_eval_decoder if decoder else config.n_eval
    ig_steps = config.ig_steps_decoder if decoder else config.ig_steps
    epochs = config.epochs_decoder if decoder else config.epochs
    n_train = config.n_classifier_train_decoder if decoder else config.n_classifier_train
    n_fit = config.n_fit_decoder if decoder else config.n_fit
    seconds: dict = {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    clf_train, fit_texts, ev = load_splits(dataset, config, n_eval=n_eval, n_train=n_train, n_fit=n_fit)
    log(f"[{model}/{dataset}] classifier on {len(clf_train)} texts, concepts on {len(fit_texts)}, "
        f"evaluation on {len(ev)} ({ev.class_counts()})")
    if decoder and config.decoder_classifier == "head":
        clf = linear_head_classifier(model, clf_train, ev, max_length=config.max_length, random_state=config.seed,
                                     device=config.device)
    else:
        clf = fine_tune_classifier(
            clf_train.texts, clf_train.labels, model=model, label_names=ev.label_names, num_labels=ev.n_classes,
            validation_data=(ev.texts, ev.labels), epochs=epochs, learning_rate=spec["learning_rate"],
            batch_size=16, max_length=config.max_length, random_state=config.seed, device=config.device,
            verbose=False,
        )
    seconds["classifier"] = time.perf_counter() - t0
    took = "reused" if clf.reused else f"{seconds['classifier']:.0f} s"
    log(f"[{model}/{dataset}] classifier accuracy on the evaluation set {clf.accuracy:.3f} ({took})")

    t = time.perf_counter()
    extractor = LayerPairExtractor(str(clf.path), layers=spec["layers"], max_length=config.max_length,
                                   device=config.device).fit(fit_texts)
    fit_pairs = extractor.transform(fit_texts)
    eval_pairs = extractor.transform(ev.texts)
    seconds["extract"] = time.perf_counter() - t
    log(f"[{model}/{dataset}] {fit_pairs.n_tokens} fit tokens, {eval_pairs.n_tokens} evaluation tokens "
        f"({seconds['extract']:.0f} s)")

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


def _evaluate(estimator, config, extractor, fit_pairs, eval_pairs, ev, clf, ig_steps, *, tag, log) -> list:
    """Fit one concept estimator and run every protocol on it: one summary row per protocol."""
    from sklearn.pipeline import Pipeline

    from .ablation import concept_ablation_report

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
            f"other concept {report.other_concept_drop:+.1%}) flip {report.flip_rate:.1%} "
            f"[{row['eval_seconds']:.0f} s]")
    return rows


# ----------------------------------------------------------------------- the table
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
                   f"{p}: flip rate", f"{p}: norm removed (concept / random)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["model", "dataset", "method"]
    for (model, dataset, method), group in frame.groupby(keys, sort=False):
        cells = [model, dataset, method] + ([str(int(group["layer"].iloc[0]))] if with_layer else [])
        cells.append(f"{group['classifier_accuracy'].iloc[0]:.3f}")
        for p in protocols:
            sub = group[group["protocol"] == p]
            if sub.empty:
                cells += [""] * 5
                continue
            r = sub.iloc[0]
            drop = f"{r['drop']:.1%}"
            if "drop_ci_low" in r and np.isfinite(r["drop_ci_low"]):
                drop += f" ({r['drop_ci_low']:.0%} to {r['drop_ci_high']:.0%})"
            removed = ""
            if "removed_norm" in r and np.isfinite(r["removed_norm"]):
                removed = f"{r['removed_norm']:.2f} / {r['control_removed_norm']:.2f}"
            cells += [f"{r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}", drop,
                      f"{r['control_drop']:.1%}", f"{r['flip_rate']:.1%}", removed]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(frame, path) -> Path:
    """Bar chart of the drops: one panel per (model, data set), bars per method and protocol.

    The random-direction control's drop is drawn as a black marker on each
    bar.

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
    methods = [m for m in METHODS if m in set(frame["method"])]
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
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xticks(x)
            ax.set_xticklabels([m.replace("Concepts", "").replace("Autoencoder", "AE") for m in methods],
                               rotation=20, fontsize=8)
            ax.set_title(f"{model} / {dataset}", fontsize=10)
            if j == 0:
                ax.set_ylabel("relative accuracy drop (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = {}
    for h, lab in zip(handles, labels):
        seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), 3), fontsize=9)
    fig.suptitle("Concept removal: relative accuracy drop when the salient token's concept\n"
                 "is projected out (bars) vs. random directions of the same rank (x)", fontsize=11)
    bottom = 0.5 / (3.6 * len(models) + 1.2)
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ run
def run_comparison(config: ComparisonConfig, out, *, resume: bool = False, verbose: bool = True,
                   command: str | None = None):
    """Run every (model, data set) unit and write the CSV, Markdown and PNG.

    Parameters
    ----------
    config : ComparisonConfig
    out : str or path-like
        Output folder (created).
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
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    rows, units = [], {}
    for model in config.models:
        for dataset in config.datasets:
            key = config.unit_key(model, dataset)
            part_file = parts_dir / f"{model}_{dataset}.json"
            if resume and part_file.is_file():
                part = json.loads(part_file.read_text())
                if part.get("key") == key:
                    log(f"[{model}/{dataset}] reusing {part_file}")
                    rows += part["rows"]
                    units[f"{model}/{dataset}"] = {k: v for k, v in part.items() if k != "rows"}
                    continue
            part = run_unit(model, dataset, config, log=log)
            part["key"] = key
            part_file.write_text(json.dumps(part, indent=1, default=_jsonable))
            rows += part["rows"]
            units[f"{model}/{dataset}"] = {k: v for k, v in part.items() if k != "rows"}
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "comparison.csv", index=False)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    if command is None:
        command = "run_comparison(" + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")"
    unit_wall = sum(u.get("seconds", {}).get("total", 0.0) for u in units.values())
    unit_cpu = sum(u.get("seconds", {}).get("cpu_total", 0.0) for u in units.values())
    md = [
        "# Concept removal: comparison tables (evaluation axis 1)\n",
        f"Produced by `{command.strip()}`. The units took {unit_wall / 60:.1f} min wall clock and "
        f"{unit_cpu / 60:.1f} min of CPU time when they ran (this call: {total / 60:.1f} min; units reused "
        "with --resume keep their own times, see run.json).\n",
        _legend(config),
        f"Subsampled settings: {json.dumps(settings, default=str)}\n",
    ]
    for table in config.tables:
        sub = frame[frame["table"] == table] if len(frame) else frame
        md += [_TABLE_TITLES[table], to_markdown(sub) if len(sub) else "(no rows)\n"]
    (out / "comparison.md").write_text("\n".join(md))
    (out / "run.json").write_text(json.dumps({"settings": settings, "units": units, "minutes": total / 60,
                                              "cpu_minutes": cpu / 60},
                                             indent=1, default=_jsonable))
    for table in config.tables:
        sub = frame[frame["table"] == table] if len(frame) else frame
        if len(sub):
            plot(sub, out / _PLOT_FILES[table])
    log(f"wrote {out}/comparison.csv, comparison.md and the charts ({total / 60:.1f} min)")
    return frame


_TABLE_TITLES = {
    "layer-matched": "## Primary: layer-matched (every method reads and edits the analysis layer l)\n\n"
                     "KMeansConcepts, SingleLayerVQ and the SAE at layer l (single-layer), CrossLayerVQ l -> h, "
                     "as the paper's reference runs its single-layer baseline (BERT 8 -> 8).\n",
    "high-layer": "## Variant: baselines at the high layer h\n\n"
                  "KMeansConcepts and SingleLayerVQ at layer h, the SAE cross-layer l -> h (its concepts in l), "
                  "CrossLayerVQ l -> h (the same fit as in the primary table).\n",
}
_PLOT_FILES = {"layer-matched": "comparison.png", "high-layer": "comparison_high_layer.png"}


def _legend(config: ComparisonConfig) -> str:
    """What the columns of the tables mean, for these settings."""
    from .ablation import PRESETS

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
        "and read the model's own head.\n"
    )


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


# ------------------------------------------------------------------------------ CLI
def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The command-line options (also usable as a ``clvq table`` sub-parser).

    Parameters
    ----------
    parser : argparse.ArgumentParser, optional
        Add the options to this parser (e.g. a sub-command's) instead of a new one.

    Returns
    -------
    argparse.ArgumentParser

    Examples
    --------
    >>> args = build_parser().parse_args(["--out", "x", "--models", "minilm"])
    >>> args.models, args.n_eval
    (['minilm'], 400)
    """
    d = ComparisonConfig()
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="python -m clvqlearn.evaluation.comparison",
            description="Concept-removal comparison table: 4 concept methods x data sets x models, "
                        "probe and splice protocols.",
        )
    parser.add_argument("--out", default="benchmarks/results/comparison", help="output folder")
    parser.add_argument("--datasets", nargs="+", default=list(d.datasets), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(d.models), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS)
    parser.add_argument("--protocols", nargs="+", default=list(d.protocols), choices=PROTOCOLS)
    parser.add_argument("--tables", nargs="+", default=list(d.tables), choices=TABLES,
                        help="layer-matched (primary: every method at the analysis layer l) and/or high-layer "
                             "(single-layer baselines at h, cross-layer SAE)")
    parser.add_argument("--preset", default=d.preset, choices=CHOICES["preset"],
                        help="evaluation protocol: 'paper' (IG on layer l's output, word units, |attribution|, "
                             "20 folds averaged) or 'fast' (embedding IG, 5 pooled folds); IG steps come from "
                             "--ig-steps")
    parser.add_argument("--n-splits", type=int, default=d.n_splits,
                        help="probe folds (default: the preset's, paper 20)")
    parser.add_argument("--n-classifier-train", type=int, default=d.n_classifier_train,
                        help="labelled sentences to fine-tune each encoder classifier")
    parser.add_argument("--n-classifier-train-decoder", type=int, default=d.n_classifier_train_decoder,
                        help="labelled sentences to fine-tune each decoder classifier")
    parser.add_argument("--n-fit", type=int, default=d.n_fit, help="sentences to fit the concept models (encoder)")
    parser.add_argument("--n-fit-decoder", type=int, default=d.n_fit_decoder,
                        help="sentences to fit the concept models (decoder)")
    parser.add_argument("--n-eval", type=int, default=d.n_eval, help="evaluation sentences (encoder)")
    parser.add_argument("--n-eval-decoder", type=int, default=d.n_eval_decoder,
                        help="evaluation sentences (decoder)")
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--k", type=int, default=d.k, help="concepts per estimator")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="encoder fine-tuning epochs")
    parser.add_argument("--epochs-decoder", type=int, default=d.epochs_decoder, help="decoder fine-tuning epochs")
    parser.add_argument("--ig-steps", type=int, default=d.ig_steps,
                        help="IG steps, encoder (the paper: 500; reduced for the CPU budget)")
    parser.add_argument("--ig-steps-decoder", type=int, default=d.ig_steps_decoder, help="IG steps, decoder")
    parser.add_argument("--concept-epochs", type=int, default=d.concept_epochs)
    parser.add_argument("--clvq-decoder", default=d.clvq_decoder, choices=CHOICES["clvq_decoder"])
    parser.add_argument("--probe", default=d.probe, choices=CHOICES["probe"])
    parser.add_argument("--splice-positions", default=d.splice_positions, choices=CHOICES["splice_positions"])
    parser.add_argument("--decoder-classifier", default=d.decoder_classifier, choices=CHOICES["decoder_classifier"],
                        help="frozen decoder + logistic head (default) or full fine-tuning")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--resume", action="store_true", help="reuse finished units from OUT/parts")
    parser.add_argument("--quiet", action="store_true")
    return parser


def config_from_args(args) -> ComparisonConfig:
    """A :class:`ComparisonConfig` from parsed arguments.

    Raises
    ------
    ValueError
        When a size or count is not a positive integer.

    Examples
    --------
    >>> config_from_args(build_parser().parse_args(["--k", "20"])).k
    20
    """
    for name in ("n_classifier_train", "n_classifier_train_decoder", "n_fit", "n_fit_decoder", "n_eval",
                 "n_eval_decoder",
                 "max_length", "k", "epochs", "epochs_decoder", "ig_steps", "ig_steps_decoder", "concept_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}.")
    return ComparisonConfig(
        datasets=tuple(args.datasets), models=tuple(args.models), methods=tuple(args.methods),
        protocols=tuple(args.protocols), n_classifier_train=args.n_classifier_train,
        n_classifier_train_decoder=args.n_classifier_train_decoder, n_fit=args.n_fit,
        n_fit_decoder=args.n_fit_decoder,
        n_eval=args.n_eval, n_eval_decoder=args.n_eval_decoder, max_length=args.max_length, k=args.k,
        epochs=args.epochs, epochs_decoder=args.epochs_decoder, ig_steps=args.ig_steps, ig_steps_decoder=args.ig_steps_decoder,
        concept_epochs=args.concept_epochs, clvq_decoder=args.clvq_decoder, tables=tuple(args.tables),
        preset=args.preset, n_splits=args.n_splits,
        probe=args.probe,
        splice_positions=args.splice_positions, decoder_classifier=args.decoder_classifier, seed=args.seed,
        device=args.device,
    )


def main(argv=None) -> int:
    """Entry point: ``python -m clvqlearn.evaluation.comparison`` (or ``clvq table``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on bad input or missing data/models.

    Examples
    --------
    >>> main(["--out", "benchmarks/results/comparison", "--models", "minilm"])  # doctest: +SKIP
    0
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        argv = sys.argv[1:] if argv is None else list(argv)
        command = " ".join(["python -m clvqlearn.evaluation.comparison", *(shlex.quote(a) for a in argv)])
        run_comparison(config, args.out, resume=args.resume, verbose=not args.quiet, command=command)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"comparison: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
