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
from .options import (
    DescribeOptions,
    EvaluateOptions,
    ExportOptions,
    ExtractOptions,
    FitOptions,
    LossOptions,
    TableOptions,
)

EXTRACTOR_FILE = "extractor.json"
MODEL_FOLDER = "model"
PAIRS_FOLDER = "pairs"
#: ``clvq extract`` of three or more layers writes them to this activation store.
STORE_FOLDER = "store"


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


def make_extractor(options, store=None):
    """The :class:`~clvqlearn.LayerPairExtractor` of ``options`` (not fitted), writing to ``store`` if given."""
    from ..extraction import LayerPairExtractor

    return LayerPairExtractor(options.model, layers=options.extractor_layers(), max_length=options.max_length,
                              device=options.device, verbose=not options.quiet,
                              store=None if store is None else os.fspath(store))


def _extractor_record(extractor) -> dict:
    return {"model": os.fspath(extractor.model), "layers": list(extractor.layers_),
            "max_length": int(extractor.max_length)}


# ------------------------------------------------------------------------ extract
def run_extract(options: ExtractOptions) -> dict:
    """``clvq extract``: texts -> ``OUTPUT/pairs`` (or ``OUTPUT/store``), ``texts.jsonl``, ``extractor.json``.

    Two layers (``--layers 4,6``) are saved as a LayerPairs folder,
    ``OUTPUT/pairs``, which ``clvq fit``, ``describe`` and ``export`` read.
    Three or more (``--layers 2,4,6``) are extracted in one forward pass
    (a :class:`~clvqlearn.LayerStack`) and written as an activation store,
    ``OUTPUT/store`` (:func:`clvqlearn.data.open_store`); any pair of its
    layers is ``LayerPairs.open(OUTPUT / "store", layers=(low, high))``.

    Parameters
    ----------
    options : ExtractOptions

    Returns
    -------
    dict
        ``n_docs``, ``n_tokens``, ``layers`` and ``output``.

    Examples
    --------
    >>> from clvqlearn.cli.options import ExtractOptions
    >>> ExtractOptions(layers="2,4,6").extractor_layers()  # run_extract(...) writes OUTPUT/store
    (2, 4, 6)
    >>> ExtractOptions(layers="6,4,2")  # refused before any model loads
    Traceback (most recent call last):
    ...
    ValueError: --layers '6,4,2': three or more layers must be strictly increasing, such as 2,4,6.
    """
    out = check_inputs_outside(options.output, {"--texts": options.texts, "--model": options.model})
    several = len(options.extractor_layers()) > 2
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "extract")
        texts, labels, name = load_source(options)
        written = stage / (STORE_FOLDER if several else PAIRS_FOLDER)
        extractor = make_extractor(options, store=written if several else None).fit(texts)
        extracted = extractor.transform(texts)  # a stack is written to its store by transform itself
        if not several:
            extracted.save(written)
        summary = {"n_docs": extracted.n_docs, "n_tokens": extracted.n_tokens, "layers": list(extracted.layers)}
        del extracted  # a store's view reads files of the staged folder, which is renamed next
        write_texts(texts, labels, stage / TEXTS_FILE)
        (stage / EXTRACTOR_FILE).write_text(json.dumps(_extractor_record(extractor), indent=1))
    folder = out / written.name
    _say(options.quiet)(f"[clvq] {len(texts)} texts of {name} -> {summary['n_tokens']} tokens of layers "
                        f"{tuple(summary['layers'])}; wrote {folder}"
                        + (f" (an activation store: LayerPairs.open('{folder}', layers=(low, high)) reads a pair)"
                           if several else ""))
    return {**summary, "output": str(out)}


def load_pairs(path):
    """A LayerPairs folder, or a ``clvq extract`` folder holding ``pairs/``.

    The arrays are memory-mapped copy-on-write: read lazily from disk, and
    writable (torch warns about read-only arrays) without touching the files.
    """
    from ..data import LayerPairs, open_store
    from ..data.store_format import MANIFEST

    path = Path(path).expanduser()
    if (path / PAIRS_FOLDER / "meta.json").is_file():
        path = path / PAIRS_FOLDER
    store = path / STORE_FOLDER if (path / STORE_FOLDER / MANIFEST).is_file() else path
    if (store / MANIFEST).is_file():
        raise ValueError(
            f"{store} is an activation store of layers {open_store(store).layers}, and this command reads a saved "
            "LayerPairs folder of one (low, high) pair: run clvq extract with two layers, e.g. --layers 4,6, or "
            "save a pair of the store in Python: "
            f"LayerPairs.open('{store}', layers=(low, high)).to_memory().save(folder)."
        )
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
        estimator.save(stage / MODEL_FOLDER, card={"data": pairs})
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


# ------------------------------------------------------------------------- export
def run_export(options: ExportOptions) -> dict:
    """``clvq export``: a saved model -> ``OUTPUT/latents/HOOKPOINT`` (delphi) or ``OUTPUT/sae`` (SAELens).

    Parameters
    ----------
    options : ExportOptions

    Returns
    -------
    dict
        ``to``, ``path`` (the folder the tool reads) and ``output``.
    """
    from ..sharing import export_delphi_cache, export_saelens

    out = check_inputs_outside(options.output, {"--model": options.model, "--pairs": options.pairs})
    estimator = load_estimator(options.model)
    pairs = load_pairs(options.pairs) if options.to == "delphi" else None
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "export")
        if options.to == "delphi":
            written = export_delphi_cache(estimator, pairs, stage / "latents", hookpoint=options.hookpoint,
                                          n_splits=options.n_splits, top_k=options.top_k)
        else:
            written = export_saelens(estimator, stage / "sae", hook_name=options.hook_name,
                                     hook_name_out=options.hook_name_out)
    path = out / written.relative_to(stage)
    _say(options.quiet)(f"[clvq] {type(estimator).__name__}(k={estimator.k}) -> {options.to}: wrote {path}")
    return {"to": options.to, "path": str(path), "output": str(out)}


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


# --------------------------------------------------------------------------- loss
LOSS_FILES = ("loss_recovered.csv", "loss_recovered.md")


def run_loss(options: LossOptions, command: str = "clvq loss") -> dict:
    """``clvq loss``: loss recovered by every method on a decoder -> ``loss_recovered.csv`` / ``.md``.

    Parameters
    ----------
    options : LossOptions
    command : str
        The command line recorded in ``loss_recovered.md``.

    Returns
    -------
    dict
        ``output`` and ``recovered`` (method name -> recovered fraction).
    """
    import time

    from ..models import resolve_model

    if not resolve_model(options.model).is_decoder:  # before minutes of fitting
        raise ValueError(f"--model {options.model}: loss recovered needs a causal language model (a decoder such "
                         "as smollm2); this one is an encoder.")
    say = _say(options.quiet)
    out = check_inputs_outside(options.output, {"--model": options.model})
    started = time.perf_counter()
    with staged_output(out, overwrite=options.overwrite) as stage:
        write_config(options, stage, "loss")
        frame, baselines = loss_table(options, say)
        frame.to_csv(stage / LOSS_FILES[0], index=False)
        minutes = (time.perf_counter() - started) / 60
        (stage / LOSS_FILES[1]).write_text(loss_markdown(frame, baselines, options, command, minutes))
    say(f"[clvq] wrote {out / LOSS_FILES[0]} and {LOSS_FILES[1]} ({minutes:.1f} min)")
    return {"output": str(out), "recovered": dict(zip(frame["method"], frame["recovered"]))}


def loss_table(options: LossOptions, say=print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit the methods and measure the loss each recovers: (one row per method, one row per replaced layer)."""
    import time

    from ..evaluation import loss_recovered_many
    from ..extraction import LayerPairExtractor
    from .comparison import MODELS, ComparisonConfig, load_splits, make_estimator
    from .methods import BY_NAME
    from .options import parse_layers

    if options.layers is not None:
        layers = parse_layers(options.layers)
    elif options.model in MODELS:
        layers = parse_layers(MODELS[options.model]["layers"])
    else:
        raise ValueError(f"--model {options.model}: give --layers l,h (the comparison has no layer pair for it).")
    config = ComparisonConfig(datasets=(options.dataset,), methods=tuple(options.methods), protocols=("splice",),
                              tables=(options.table,), max_length=options.max_length, k=options.k,
                              concept_epochs=options.concept_epochs, clvq_decoder=options.clvq_decoder,
                              seed=options.seed, device=options.device)
    _, fit_texts, evaluation = load_splits(options.dataset, config, n_eval=options.n_eval,
                                           n_train=config.n_classifier_train_decoder, n_fit=options.n_fit)
    extractor = LayerPairExtractor(options.model, layers=layers, max_length=options.max_length,
                                   device=options.device, verbose=not options.quiet)
    pairs = extractor.fit_transform(fit_texts)
    say(f"[loss] {options.model} layers {extractor.layers_}: {pairs.n_tokens} fit tokens of {len(fit_texts)} "
        f"{options.dataset} texts; {len(evaluation)} evaluation texts")
    groups: dict = {}
    for method in options.methods:
        estimator = make_estimator(method, config, options.model, options.table)
        t = time.perf_counter()
        estimator.fit(pairs)
        replaced = BY_NAME[method].comparison_layer(options.table) or "high"
        groups.setdefault(replaced, {})[method] = (estimator, time.perf_counter() - t)
        say(f"[loss] fitted {method} ({groups[replaced][method][1]:.0f} s)")
    rows, baselines = [], []
    for replaced, fitted in groups.items():
        mean = np.asarray(getattr(pairs, replaced), dtype=np.float64).mean(axis=0)  # the training rows' mean
        results = loss_recovered_many({m: e for m, (e, _) in fitted.items()}, extractor, evaluation.texts,
                                      mean_activation=mean, batch_size=options.batch_size,
                                      n_bootstrap=options.n_bootstrap, random_state=options.seed,
                                      verbose=not options.quiet)
        for method, result in results.items():
            rows.append({"method": method, "model": options.model, "dataset": options.dataset,
                         "table": options.table, "k": options.k, "fit_seconds": round(fitted[method][1], 1),
                         **result.summary()})
            say(f"[loss] {method:22s} layer {result.source_layer}->{result.layer}: CE {result.ce_spliced:.3f} "
                f"(clean {result.ce_clean:.3f}, zero {result.ce_zero:.3f}, mean {result.ce_mean:.3f}); "
                f"recovered {result.recovered:.3f}, vs mean {result.recovered_mean:.3f}; KL {result.kl_spliced:.3f}")
        first = next(iter(results.values())).summary()
        baselines.append({k: v for k, v in first.items() if k.split("_ci_")[0] in (
            "layer", "ce_clean", "ce_zero", "ce_mean", "kl_zero", "kl_mean", "n_texts", "n_scored", "n_edited",
            "n_kept")})
    return pd.DataFrame(rows), pd.DataFrame(baselines)


def _with_ci(row, name: str, fmt: str = "{:.3f}") -> str:
    low, high = row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")
    value = fmt.format(row[name])
    if low is None or not np.isfinite(low):
        return value
    return f"{value} [{fmt.format(low)}, {fmt.format(high)}]"


def loss_markdown(frame: pd.DataFrame, baselines: pd.DataFrame, options: LossOptions, command: str,
                  minutes: float) -> str:
    """``loss_recovered.md``: the command, the settings, the baselines and one row per method."""
    settings = {k: v for k, v in vars(options).items() if k not in ("output", "overwrite", "quiet")}
    confidence = int(round(100 * float(frame["confidence"].iloc[0])))
    lines = [
        "# Loss recovered: next-token loss with a layer replaced by each method's reconstruction\n",
        f"Produced by `{command.strip()}` in {minutes:.1f} min. Settings: {json.dumps(settings)}\n",
        "CE is the mean next-token cross-entropy (nats per scored token) of the language model; recovered = "
        "(CE_zero - CE_spliced) / (CE_zero - CE_clean) and, against mean ablation, (CE_mean - CE_spliced) / "
        "(CE_mean - CE_clean); KL = mean KL(clean || spliced) per token; FVE = the reconstruction's fraction of "
        "the replaced layer's variance explained on the evaluation rows. The mean vector is the mean of the "
        "concept-fitting rows. Brackets: {}% percentile bootstrap intervals over texts "
        f"({int(frame['n_bootstrap'].iloc[0])} draws). Definitions: docs/evaluation.md, \"Loss recovered\".\n"
        .replace("{}", str(confidence)),
        "## Baselines\n",
        "| replaced layer | CE clean | CE zero-ablated | CE mean-ablated | KL zero | KL mean | texts | scored "
        "tokens | edited rows | rows left clean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, b in baselines.iterrows():
        lines.append(f"| {int(b['layer'])} | {_with_ci(b, 'ce_clean')} | {_with_ci(b, 'ce_zero')} | "
                     f"{_with_ci(b, 'ce_mean')} | {_with_ci(b, 'kl_zero')} | {_with_ci(b, 'kl_mean')} | "
                     f"{int(b['n_texts'])} | {int(b['n_scored'])} | {int(b['n_edited'])} | {int(b['n_kept'])} |")
    lines += [
        "\n## Methods\n",
        "| method | layers | FVE | CE spliced | recovered (vs zero) | recovered (vs mean) | KL(clean \\|\\| spliced) "
        "| fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        layers = (f"{int(r['source_layer'])} -> {int(r['layer'])}" if r["source_layer"] != r["layer"]
                  else f"{int(r['layer'])}")
        causal = "" if r["causal"] else " (non-causal decoder)"
        lines.append(f"| {r['method']}{causal} | {layers} | {r['fve']:.3f} | {_with_ci(r, 'ce_spliced')} | "
                     f"{_with_ci(r, 'recovered')} | {_with_ci(r, 'recovered_mean')} | {_with_ci(r, 'kl_spliced')} "
                     f"| {r['fit_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


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


__all__ = ["load_estimator", "load_pairs", "load_source", "loss_markdown", "loss_table", "make_estimator",
           "read_config", "removal_report", "run_describe", "run_evaluate", "run_extract", "run_fit", "run_judge",
           "run_loss", "run_table"]
