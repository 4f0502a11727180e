"""What each ``clvq`` subcommand does, as plain functions of its options.

Every ``run_*`` function takes the options dataclass of its subcommand
(:mod:`clvqlearn.cli.options`), checks the output folder before any work
(never an input folder, never a folder with files unless ``overwrite``),
writes ``config.yaml`` next to its outputs and returns a small dict of what
it wrote.  The outputs are written into a hidden sibling folder that takes
the output folder's name only when the run has finished
(:func:`~clvqlearn.cli._io.staged_output`): a failed or interrupted run
leaves no output folder, and never a half-written one.  Python users can call them directly; the library functions they
call are the same ones a script would use.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import (
    TEXTS_FILE,
    check_inputs_outside,
    read_config,
    read_text_file,
    resumable_folder,
    staged_output,
    write_config,
    write_texts,
)
from .methods import BY_OPTION, METHODS
from .options import DescribeOptions, EvaluateOptions, ExtractOptions, FitOptions, TableOptions

EXTRACTOR_FILE = "extractor.json"
MODEL_FOLDER = "model"
PAIRS_FOLDER = "pairs"


def _say(quiet: bool):
    return (lambda *args, **kwargs: None) if quiet else print


# ------------------------------------------------------------------------ sources
def load_source(options) -> tuple[list, np.ndarray | None, str]:
    """The texts, labels (or None) and a name, from ``options.texts`` or ``options.dataset``.

    Parameters
    ----------
    options : SourceOptions

    Returns
    -------
    texts : list of str
    labels : ndarray or None
    name : str
    """
    if options.texts:
        texts, labels = read_text_file(options.texts)
        if options.n_texts is not None and options.n_texts < len(texts):
            keep = np.sort(np.random.default_rng(options.seed).permutation(len(texts))[: options.n_texts])
            texts, labels = [texts[i] for i in keep], None if labels is None else labels[keep]
        return texts, labels, Path(options.texts).name
    if not options.dataset:
        raise ValueError("give the texts: --texts FILE or --dataset NAME.")
    from ..datasets import load_dataset

    data = load_dataset(options.dataset)
    if options.n_texts is not None and options.n_texts < len(data):
        data = data.sample(options.n_texts, shuffle=True, random_state=options.seed)
    return list(data.texts), data.labels, data.name


def make_extractor(options):
    """The :class:`~clvqlearn.LayerPairExtractor` of ``options`` (not fitted)."""
    from ..extraction import LayerPairExtractor

    return LayerPairExtractor(options.model, layers=options.layer_pair(), max_length=options.max_length,
                              device=options.device, verbose=not options.quiet)


def _extractor_record(extractor) -> dict:
    return {"model": os.fspath(extractor.model), "layers": list(extractor.layers_),
            "max_length": int(extractor.max_length)}


# ------------------------------------------------------------------------ extract
def run_extract(options: ExtractOptions) -> dict:
    """``clvq extract``: texts -> ``OUTPUT/pairs`` (LayerPairs), ``texts.jsonl``, ``extractor.json``.

    Parameters
    ----------
    options : ExtractOptions

    Returns
    -------
    dict
        ``n_docs``, ``n_tokens``, ``layers`` and ``output``.
    """
    out = check_inputs_outside(options.output, {"--texts": options.texts, "--model": options.model})
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "extract")
        texts, labels, name = load_source(options)
        extractor = make_extractor(options).fit(texts)
        pairs = extractor.transform(texts)
        pairs.save(stage / PAIRS_FOLDER)
        write_texts(texts, labels, stage / TEXTS_FILE)
        (stage / EXTRACTOR_FILE).write_text(json.dumps(_extractor_record(extractor), indent=1))
    _say(options.quiet)(f"[clvq] {len(texts)} texts of {name} -> {pairs.n_tokens} tokens of layers "
                        f"{pairs.layers}; wrote {out / PAIRS_FOLDER}")
    return {"n_docs": pairs.n_docs, "n_tokens": pairs.n_tokens, "layers": list(pairs.layers), "output": str(out)}


def load_pairs(path):
    """A LayerPairs folder, or a ``clvq extract`` folder holding ``pairs/``.

    The arrays are memory-mapped copy-on-write: read lazily from disk, and
    writable (torch warns about read-only arrays) without touching the files.
    """
    from ..data import LayerPairs

    path = Path(path).expanduser()
    if (path / PAIRS_FOLDER / "meta.json").is_file():
        path = path / PAIRS_FOLDER
    return LayerPairs.load(path, mmap_mode="c")


# ---------------------------------------------------------------------------- fit
def make_estimator(method: str, *, k: int, max_epochs=None, params=None, seed=0, device="auto"):
    """One of the four concept estimators by its ``clvq fit --method`` name.

    Parameters
    ----------
    method : {"crosslayer", "singlelayer", "kmeans", "sae", "two-stage"}
        ``"two-stage"`` is ``CrossLayerVQ.from_recipe("two-stage")``.
    k : int
    max_epochs : int, optional
        Set only when given (and the estimator has it).
    params : dict, optional
        Other keyword arguments of the estimator.
    seed : int
    device : str

    Returns
    -------
    ConceptEstimator

    Raises
    ------
    ValueError
        For an unknown method or parameter name.

    Examples
    --------
    >>> make_estimator("kmeans", k=8).k
    8
    >>> make_estimator("crosslayer", k=3).top_k  # top_k never exceeds k
    3
    >>> two_stage = make_estimator("two-stage", k=3)
    >>> type(two_stage).__name__, two_stage.top_k, two_stage.ema_decay
    ('CrossLayerVQ', 1, 1.0)
    >>> make_estimator("sae", k=8, params={"topk": 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) ['topk'] for SparseAutoencoder; ...
    """
    import clvqlearn

    if method not in BY_OPTION:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(BY_OPTION)}.")
    cls = getattr(clvqlearn, BY_OPTION[method].estimator)
    recipe = BY_OPTION[method].recipe
    valid = (cls.from_recipe(recipe) if recipe else cls()).get_params()
    build = functools.partial(cls.from_recipe, recipe) if recipe else cls
    kwargs = {"k": k, "random_state": seed, **({"device": device} if "device" in valid else {})}
    if max_epochs is not None and "max_epochs" in valid:
        kwargs["max_epochs"] = max_epochs
    if isinstance(valid.get("top_k"), int) and k < valid["top_k"]:
        kwargs["top_k"] = k
    unknown = sorted(set(params or {}) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}.")
    return build(**{**kwargs, **(params or {})})


def run_fit(options: FitOptions) -> dict:
    """``clvq fit``: fit one estimator and save it to ``OUTPUT/model`` (safetensors + JSON).

    Parameters
    ----------
    options : FitOptions

    Returns
    -------
    dict
        ``method``, ``k``, ``n_tokens``, ``train_score`` (fraction of
        variance explained on the fitted tokens) and ``output``.
    """
    estimator = make_estimator(options.method, k=options.k, max_epochs=options.max_epochs,
                               params=options.params, seed=options.seed, device=options.device)
    if hasattr(estimator, "verbose") and not options.quiet:
        estimator.set_params(verbose=1)
    estimator._validate_params()
    out = check_inputs_outside(options.output, {"--pairs": options.pairs, "--texts": options.texts,
                                                "--model": options.model})
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "fit")
        pairs, record = _fit_data(options)
        estimator.fit(pairs)
        estimator.save(stage / MODEL_FOLDER)
        (stage / EXTRACTOR_FILE).write_text(json.dumps(record, indent=1))
        score = float(estimator.score(pairs))
    _say(options.quiet)(f"[clvq] {type(estimator).__name__}(k={options.k}) on {pairs.n_tokens} tokens: "
                        f"fraction of variance explained {score:.3f}; wrote {out / MODEL_FOLDER}")
    return {"method": options.method, "k": options.k, "n_tokens": pairs.n_tokens, "train_score": score,
            "output": str(out)}


def _fit_data(options: FitOptions):
    """The pairs to fit on and the extractor record (model, layers, max_length) to save with the model."""
    if options.pairs:
        pairs = load_pairs(options.pairs)
        saved = Path(options.pairs) / EXTRACTOR_FILE
        record = json.loads(saved.read_text()) if saved.is_file() else {
            "model": pairs.model_name, "layers": list(pairs.layers), "max_length": options.max_length}
        return pairs, record
    texts, _, _ = load_source(options)
    extractor = make_extractor(options).fit(texts)
    return extractor.transform(texts), _extractor_record(extractor)


def load_estimator(path):
    """A saved concept estimator: a ``clvq fit`` folder or the folder given to ``save``.

    Raises
    ------
    FileNotFoundError, ValueError
        When the folder holds no saved estimator (the message names it).
    """
    import clvqlearn

    from .._sidecar import read_sidecar
    from ..concepts._persistence import FORMAT_NAME, FORMAT_VERSION

    path = Path(path).expanduser()
    if (path / MODEL_FOLDER / "config.json").is_file():
        path = path / MODEL_FOLDER
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} holds no saved model (no config.json); give a folder written by `clvq fit`.")
    config = read_sidecar(config_file, format_tag=FORMAT_NAME, max_version=FORMAT_VERSION, required={"class": str})
    name = config["class"]
    classes = sorted({m.estimator for m in METHODS})
    if name not in classes:
        raise ValueError(f"{config_file} holds a {name!r}, not one of {classes}.")
    return getattr(clvqlearn, name).load(path)


# ----------------------------------------------------------------------- describe
def run_describe(options: DescribeOptions) -> dict:
    """``clvq describe``: ``concepts.csv`` (size, share, top tokens, examples per concept) and ``browser.html``.

    Parameters
    ----------
    options : DescribeOptions

    Returns
    -------
    dict
        ``n_concepts``, ``n_used`` (concepts with at least one token) and ``output``.
    """
    from ..report.browser import write_concept_browser
    from ..report.descriptions import describe_concepts

    out = check_inputs_outside(options.output, {"--model": options.model, "--pairs": options.pairs})
    estimator, pairs = load_estimator(options.model), load_pairs(options.pairs)
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "describe")
        ids = estimator.predict(pairs)
        table = describe_concepts(ids, pairs, k=estimator.k, top_tokens=options.top_tokens,
                                  n_examples=options.n_examples, random_state=options.seed)
        table["usage_train"] = estimator.usage_
        table.to_csv(stage / "concepts.csv")
        write_concept_browser(stage / "browser.html", {type(estimator).__name__: ids}, pairs,
                              title=f"clvq describe: {options.model}")
    return {"n_concepts": len(table), "n_used": int((table["n_tokens"] > 0).sum()), "output": str(out)}


# ----------------------------------------------------------------------- evaluate
def run_evaluate(options: EvaluateOptions) -> dict:
    """``clvq evaluate``: the concept-removal score of each saved model -> ``ablation.csv``.

    Parameters
    ----------
    options : EvaluateOptions

    Returns
    -------
    dict
        ``rows`` (one summary dict per model) and ``output``.
    """
    from tqdm.auto import tqdm

    out = check_inputs_outside(options.output, {"--models": options.models, "--classifier": options.classifier})
    fitted = [(path, load_estimator(path), _saved_extractor(path)) for path in options.models]
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "evaluate")
        train, evaluation = _labelled_split(options)
        classifier = _classifier(options, train, evaluation, fitted[0][2])
        rows = []
        for path, estimator, record in tqdm(fitted, desc="concept removal", disable=options.quiet):
            report = removal_report(estimator, record, evaluation, classifier, protocol=options.protocol,
                                    probe=options.probe, n_steps=options.n_steps, n_splits=options.n_splits,
                                    pooling=options.pooling, seed=options.seed, device=options.device)
            rows.append({"model": str(path), "method": type(estimator).__name__, "k": estimator.k,
                         **report.summary()})
        pd.DataFrame(rows).to_csv(stage / "ablation.csv", index=False)
    for row in rows:
        _say(options.quiet)(f"[clvq] {row['method']}(k={row['k']}) {row['model']}: accuracy "
                            f"{row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f}, drop {row['drop']:.1%} "
                            f"(random control {row['control_drop']:.1%})")
    return {"rows": rows, "output": str(out)}


def _saved_extractor(path) -> dict:
    file = Path(path).expanduser() / EXTRACTOR_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: `clvq evaluate` needs a folder written by `clvq fit`.")
    return json.loads(file.read_text())


def _labelled_split(options):
    """Disjoint classifier-training and class-balanced evaluation texts of a labelled data set."""
    from ..datasets import load_dataset

    data = load_dataset(options.dataset)
    if data.labels is None:
        raise ValueError(f"data set {options.dataset!r} has no labels; concept removal needs a labelled one.")
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(data))
    n_train = min(options.n_train, len(data) - options.n_texts)
    if n_train < 2:
        raise ValueError(f"data set {options.dataset!r} has {len(data)} texts: too few for --n-texts "
                         f"{options.n_texts} plus classifier training texts.")
    rest = data.take(order[n_train:])
    return data.take(order[:n_train]), rest.sample(options.n_texts, random_state=options.seed)


def _classifier(options, train, evaluation, record):
    """The task classifier: the one named by ``--classifier``, else fine-tuned (and cached)."""
    if options.classifier:
        from ..evaluation import load_classifier

        return load_classifier(options.classifier)
    return task_classifier(train, evaluation, model=record["model"], max_length=record["max_length"],
                           epochs=options.epochs, seed=options.seed, device=options.device, quiet=options.quiet)


def task_classifier(train, evaluation, *, model, max_length, epochs, seed=0, device="auto", quiet=True):
    """A classifier fine-tuned on ``train`` (cached under ``$CLVQLEARN_CACHE/classifiers``).

    Parameters
    ----------
    train, evaluation : TextDataset
        Labelled training texts and the held-out texts whose accuracy is recorded.
    model : str
    max_length, epochs, seed : int
    device : str
    quiet : bool

    Returns
    -------
    ClassifierResult
    """
    from ..evaluation import fine_tune_classifier

    return fine_tune_classifier(train.texts, train.labels, model=model, label_names=train.label_names,
                                num_labels=len(train.label_names),
                                validation_data=(evaluation.texts, evaluation.labels), epochs=epochs,
                                max_length=max_length, random_state=seed, device=device, verbose=not quiet)


def removal_report(estimator, record, evaluation, classifier, *, protocol="probe", probe="logistic", n_steps=16,
                   n_splits=5, pooling="auto", seed=0, device="auto", pairs=None):
    """:func:`~clvqlearn.concept_ablation_report` of one fitted estimator on labelled evaluation texts.

    Parameters
    ----------
    estimator : fitted concept estimator
    record : dict
        The extractor it was fitted through: ``model``, ``layers``, ``max_length``.
    evaluation : TextDataset
        Labelled evaluation texts.
    classifier : ClassifierResult
        The task classifier whose Integrated Gradients pick each text's salient token.
    protocol, probe, n_steps, n_splits, pooling
        As in :func:`~clvqlearn.concept_ablation_report`.
    seed : int
    device : str
    pairs : LayerPairs, optional
        The extractor's pairs of the evaluation texts, when already computed.

    Returns
    -------
    AblationReport
    """
    from sklearn.pipeline import Pipeline

    from ..evaluation import concept_ablation_report
    from ..extraction import LayerPairExtractor

    extractor = LayerPairExtractor(record["model"], layers=tuple(record["layers"]),
                                   max_length=record["max_length"], device=device)
    pipe = Pipeline([("extract", extractor.fit(evaluation.texts)), ("concepts", estimator)])
    return concept_ablation_report(pipe, evaluation.texts, evaluation.labels, protocol=protocol,
                                   classifier=classifier, probe=probe, n_steps=n_steps, n_splits=n_splits,
                                   pooling=pooling, random_state=seed, device=device, n_bootstrap=200, pairs=pairs)


# -------------------------------------------------------------------------- table
def run_table(options: TableOptions, command: str = "clvq table") -> dict:
    """``clvq table``: :func:`clvqlearn.cli.comparison.run_comparison` with these options.

    Parameters
    ----------
    options : TableOptions
    command : str
        The command line recorded in ``comparison.md``.

    Returns
    -------
    dict
        ``output``.
    """
    from .comparison import run_comparison

    config = options.comparison_config()
    target = Path(options.out).expanduser()
    if not (options.resume or options.overwrite) and target.is_dir() and any(target.iterdir()):
        raise FileExistsError(f"output folder {target} already holds files (an earlier run?); pass --resume true "
                              "to continue it, --overwrite true to run again in it, or choose another folder.")
    with resumable_folder(target) as out:
        write_config(options, out, "table")
        run_comparison(config, out, resume=options.resume, verbose=not options.quiet, command=command)
    return {"output": str(out)}


def run_judge(options, command: str = "clvq judge") -> dict:
    """``clvq judge``: :func:`clvqlearn.cli.judging.run_judging` with these options.

    Parameters
    ----------
    options : JudgeOptions
    command : str
        The command line recorded with the results.

    Returns
    -------
    dict
        The run's summary (``meta`` holds the seconds taken).
    """
    from ..evaluation.llm import HFChatBackend, OpenAIBackend
    from .judging import run_judging

    with resumable_folder(options.out) as out:
        write_config(options, out, "judge")
        backend = (OpenAIBackend(options.judge_model, base_url=options.base_url, timeout=options.timeout)
                   if options.base_url else
                   HFChatBackend(options.judge_model, device="cpu" if options.device == "auto" else options.device))
        return run_judging(out, dataset=options.dataset, n_sentences=options.n_sentences, k=options.k,
                           concept_epochs=options.concept_epochs, n_fit=options.n_fit, backend=backend,
                           llm=not options.no_llm, seed=options.seed, device=options.device, command=command,
                           log=None if options.quiet else (lambda m: print(f"[judge] {m}", flush=True)))


__all__ = ["load_estimator", "load_pairs", "load_source", "make_estimator", "read_config", "removal_report",
           "run_describe", "run_evaluate", "run_extract", "run_fit", "run_judge", "run_table"]
