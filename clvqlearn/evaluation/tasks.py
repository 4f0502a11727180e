"""Task models and their checkpoints: the classifiers whose salient tokens and accuracy the removal measures.

The paper's first evaluation axis needs, for every data set, a model that
solves the task.  Encoders (BERT, RoBERTa; here MiniLM) are fine-tuned with
a sequence-classification head; decoders get a classification head on a
frozen model here (the paper prompts them zero-shot:
:class:`~clvqlearn.evaluation.zero_shot.ZeroShotClassifier`).

:func:`fine_tune_classifier`
    Fine-tunes any Hugging Face encoder or decoder with a classification head
    in a plain torch loop, measures held-out accuracy and saves an ordinary
    HF checkpoint (plus ``clvqlearn_classifier.json``) that
    ``LayerPairExtractor(model=path)`` and :mod:`clvqlearn.evaluation.saliency`
    load.  Checkpoints are cached and reused.
:func:`linear_head_classifier`
    A frozen language model with a logistic-regression head on its last
    token, saved as the same kind of checkpoint.
:func:`load_classifier`, :func:`resolve_classifier`, :class:`ClassifierResult`
    Reading a checkpoint back; the one rule by which the evaluation turns a
    result, a folder or an extractor's model into a classifier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from .. import models as _models
from .._batching import length_batches, model_inputs
from .._config import get_cache_home
from .._sidecar import read_sidecar
from .._sklearn_compat import Interval, validate_params
from .._torch_utils import parameter_groups, resolve_device, seeded, torch_seed
from .._validation import check_texts

logger = logging.getLogger(__name__)

INFO_FILE = "clvqlearn_classifier.json"
_INFO_FORMAT = "clvqlearn.classifier"
_INFO_VERSION = 1
_INFO_KEYS = {"base_model": str, "label_names": list, "classes": list, "accuracy": (int, float), "n_train": int,
              "n_test": int}

__all__ = [
    "ClassifierResult",
    "ensure_pad_token",
    "fine_tune_classifier",
    "linear_head_classifier",
    "load_classifier",
    "resolve_classifier",
    "save_checkpoint",
]


# --------------------------------------------------------------------- input checks
def _encode_labels(labels, n_texts: int, num_labels, label_names):
    """Map labels to ids ``0..C-1``; return (ids, classes, label_names)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per text); got shape {y.shape}.")
    if y.shape[0] != n_texts:
        raise ValueError(f"Got {n_texts} texts but {y.shape[0]} labels: expected one label per text.")
    if num_labels is not None:
        if not isinstance(num_labels, Integral) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2; got {num_labels!r}.")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"With num_labels={num_labels}, labels must be integers in [0, {num_labels}); "
                f"got labels of dtype {y.dtype}."
            )
        if y.min() < 0 or y.max() >= num_labels:
            raise ValueError(
                f"labels must lie in [0, num_labels={num_labels}); got values from {y.min()} to {y.max()}."
            )
        classes = np.arange(int(num_labels))
    else:
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"labels hold a single class ({classes.tolist()}); a classifier needs at least 2.")
    ids = np.searchsorted(classes, y).astype(np.int64)
    if label_names is None:
        label_names = [str(c) for c in classes.tolist()]
    else:
        label_names = [str(n) for n in label_names]
        if len(label_names) != classes.size:
            raise ValueError(
                f"label_names has {len(label_names)} entries but there are {classes.size} classes "
                f"({classes.tolist()}): expected one name per class."
            )
    return ids, classes, label_names


# ------------------------------------------------------------------------ results
@dataclass
class ClassifierResult:
    """A fine-tuned classifier checkpoint and what was measured on it.

    Returned by :func:`fine_tune_classifier` and :func:`load_classifier`.
    The model itself loads lazily, on the first call to :meth:`predict`.

    Attributes
    ----------
    path : pathlib.Path
        The checkpoint folder (``save_pretrained`` of model and tokenizer,
        plus ``clvqlearn_classifier.json``).  Give it to
        ``LayerPairExtractor(model=str(path))``.
    base_model : str
        The model that was fine-tuned (short name, HF id or path).
    label_names : list of str
        Name of class ``i`` (the head's output ``i``).
    classes : list
        The original label value of class ``i``.
    accuracy : float
        Held-out accuracy after the last epoch.
    n_train, n_test : int
        Sizes of the training and held-out sets.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``test_accuracy``, ``seconds``.
    params : dict
        The training parameters.
    reused : bool
        True when an existing checkpoint was reused instead of training.

    Examples
    --------
    >>> result = fine_tune_classifier(texts, labels, model="minilm")  # doctest: +SKIP
    >>> result.accuracy, result.path  # doctest: +SKIP
    """

    path: Path
    base_model: str
    label_names: list
    classes: list
    accuracy: float
    n_train: int
    n_test: int
    history: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    reused: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    def load(self, device="auto"):
        """Load (once) and return ``(model, tokenizer)`` in eval mode on ``device``."""
        dev = resolve_device(device)
        key = str(dev)
        if key not in self._cache:
            tokenizer = _models.load_tokenizer(str(self.path))
            model = _models.load_model(str(self.path), head="sequence-classification", num_labels=self.num_labels)
            ensure_pad_token(model, tokenizer)
            self._cache.clear()
            self._cache[key] = (model.to(dev).eval(), tokenizer)
        return self._cache[key]

    def predict_proba(self, texts, *, batch_size=32, max_length=None, device="auto", verbose=False):
        """Class probabilities, shape (n_texts, num_labels).

        ``max_length`` defaults to the one used for training.
        """
        texts = check_texts(texts)
        model, tokenizer = self.load(device)
        max_length = self.params.get("max_length", 128) if max_length is None else max_length
        logits = _predict_logits(model, tokenizer, texts, batch_size, max_length, verbose)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()

    def predict(self, texts, **kwargs):
        """Predicted labels (original label values), shape (n_texts,)."""
        proba = self.predict_proba(texts, **kwargs)
        return np.asarray(self.classes)[proba.argmax(axis=1)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


def load_classifier(path) -> ClassifierResult:
    """Read a checkpoint folder written by :func:`fine_tune_classifier`.

    Parameters
    ----------
    path : str or path-like
        The checkpoint folder.

    Returns
    -------
    ClassifierResult

    Raises
    ------
    FileNotFoundError
        When the folder holds no ``clvqlearn_classifier.json``.
    ValueError
        When ``clvqlearn_classifier.json`` is not valid JSON, describes
        something else, was written by a newer clvqlearn, or lacks a key
        (the message names the file).

    Examples
    --------
    >>> load_classifier("/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /no/such/folder is not a clvqlearn classifier checkpoint ...
    """
    path = Path(path)
    info = _read_info(path)
    return ClassifierResult(
        path=path,
        base_model=info["base_model"],
        label_names=list(info["label_names"]),
        classes=list(info["classes"]),
        accuracy=float(info["accuracy"]),
        n_train=int(info["n_train"]),
        n_test=int(info["n_test"]),
        history=list(info.get("history", [])),
        params=dict(info.get("params", {})),
        reused=True,
    )


def _read_info(path: Path) -> dict:
    """The checked ``clvqlearn_classifier.json`` of the checkpoint folder ``path``."""
    info_file = path / INFO_FILE
    if not info_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a clvqlearn classifier checkpoint ({INFO_FILE} is missing). "
            "Create one with clvqlearn.evaluation.tasks.fine_tune_classifier."
        )
    return read_sidecar(info_file, format_tag=_INFO_FORMAT, max_version=_INFO_VERSION, required=_INFO_KEYS)


# ----------------------------------------------------------------------- helpers
def ensure_pad_token(model, tokenizer) -> None:
    """Give decoders (which ship without a pad token) EOS as pad, and tell the model.

    Examples
    --------
    >>> ensure_pad_token(model, tokenizer)  # doctest: +SKIP
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token first.")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


@torch.no_grad()
def _predict_logits(model, tokenizer, texts, batch_size, max_length, verbose=False) -> np.ndarray:
    device = next(model.parameters()).device
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    model.eval()
    batches = length_batches([len(x) for x in ids], batch_size)
    for idx in tqdm(batches, desc="predict", disable=not verbose, leave=False):
        batch = model_inputs([ids[i] for i in idx], tokenizer.pad_token_id, device)
        out[idx] = model(**batch).logits.float().cpu().numpy()
    return out


def _fingerprint(model: str, texts, ids, validation, params: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model, "params": params}, sort_keys=True).encode())
    for part in (texts, ids.tolist()):
        h.update(json.dumps(part).encode())
    if validation is not None:
        h.update(json.dumps([validation[0], validation[1].tolist()]).encode())
    return h.hexdigest()


def _publish(tmp: Path, output_dir: Path) -> None:
    """Move a finished checkpoint into place (whole-folder rename when possible).

    A folder that held an older classifier is replaced; into any other
    existing folder (one the user chose) the files are moved one by one.
    """
    if output_dir.exists() and (output_dir / INFO_FILE).is_file():
        shutil.rmtree(output_dir)
    if output_dir.exists():
        for item in tmp.iterdir():
            os.replace(item, output_dir / item.name)
    else:
        os.replace(tmp, output_dir)


def save_checkpoint(net, tokenizer, info: dict, output_dir) -> "ClassifierResult":
    """Write a classifier checkpoint atomically and load it back.

    The model and tokenizer are saved with ``save_pretrained`` next to
    ``clvqlearn_classifier.json`` (``info``) in a temporary folder that is
    then moved into place, so an interrupted write never leaves a
    half-written classifier.

    Parameters
    ----------
    net : transformers.PreTrainedModel
        A ``*ForSequenceClassification`` model (moved to the CPU).
    tokenizer : transformers.PreTrainedTokenizerBase
    info : dict
        The classifier record (format, version, label names, classes,
        accuracy, ...), as :func:`load_classifier` reads it.
    output_dir : path-like

    Returns
    -------
    ClassifierResult
        With ``reused=False``.

    Examples
    --------
    >>> clf = save_checkpoint(net, tokenizer, info, "my-classifier")  # doctest: +SKIP
    """
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with _models._quiet_transformers():
            net.to("cpu").save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))
        _publish(tmp, output_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = load_classifier(output_dir)
    result.reused = False
    return result


def _slug(model: str) -> str:
    name = Path(model).name if (os.sep in model or Path(model).exists()) else model
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "model"


# --------------------------------------------------------------------- fine-tuning
_POSITIVE = [Interval(Integral, 1, None, closed="left")]
_FINE_TUNE_CONSTRAINTS = {
    "model": [str],
    "label_names": ["array-like", None],
    "num_labels": [Interval(Integral, 2, None, closed="left"), None],
    "validation_data": [tuple, list, None],
    "output_dir": [str, os.PathLike, None],
    "overwrite": ["boolean"],
    "epochs": _POSITIVE,
    "batch_size": _POSITIVE,
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "warmup_fraction": [Interval(Real, 0, 1, closed="both")],
    "max_length": [Interval(Integral, 2, None, closed="left")],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "random_state": ["random_state"],
    "verbose": ["boolean"],
}


@validate_params(_FINE_TUNE_CONSTRAINTS, prefer_skip_nested_validation=True)
def fine_tune_classifier(
    texts,
    labels,
    *,
    model: str = "minilm",
    label_names=None,
    num_labels: int | None = None,
    validation_data=None,
    output_dir=None,
    overwrite: bool = False,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    max_length: int = 128,
    validation_fraction: float = 0.25,
    random_state=0,
    device="auto",
    verbose: bool = True,
) -> ClassifierResult:
    """Fine-tune a Hugging Face model with a sequence-classification head.

    The paper fine-tunes its encoders on each data set before concept
    discovery, so that the salient tokens and the ablation accuracy refer to
    a model that solves the task.  This is that step, as a plain torch loop:
    AdamW, linear warm-up and decay, gradient clipping at 1.0, batches of
    similar length, then held-out accuracy.  The result is saved with
    ``save_pretrained`` (model and tokenizer, ``id2label`` set) plus
    ``clvqlearn_classifier.json``, and the folder is reused on the next call
    with the same model, data and parameters.

    Parameters
    ----------
    texts : sequence of str
        Training documents.
    labels : array-like of shape (n_texts,)
        Their labels (integers or strings).  Class ``i`` of the head is the
        ``i``-th sorted unique label, or label ``i`` when ``num_labels`` is
        given.
    model : str, default="minilm"
        A packaged short name (``"minilm"``, ``"smollm2"``), a HF id or a
        local path, as in :func:`clvqlearn.models.load_model`.
    label_names : sequence of str, optional
        Human-readable name of each class (stored as ``id2label``).
    num_labels : int, optional
        Number of classes when ``labels`` are ids ``0..num_labels-1`` and some
        class may be missing from ``texts``.
    validation_data : tuple (texts, labels), optional
        An explicit held-out set.  When None, ``validation_fraction`` of
        ``texts`` is held out (stratified).
    output_dir : str or path-like, optional
        Where to save.  Default:
        ``get_cache_home() / "classifiers" / "<model>-<hash>"``, where the
        hash covers model, data and parameters.
    overwrite : bool, default=False
        Retrain even if ``output_dir`` already holds this classifier.
    epochs, batch_size, learning_rate, weight_decay, warmup_fraction
        Optimisation settings.  The defaults (3 epochs, 16, 1e-4, 0.01,
        0.1) are the ones measured in docs/evaluation.md.
    max_length : int, default=128
        Truncation length in tokens (including special tokens).
    validation_fraction : float, default=0.25
        Held-out share when ``validation_data`` is None.
    random_state : int, RandomState or None, default=0
        Seeds the split, the head initialisation, shuffling and dropout
        (through explicit generators; the global RNG is left as it was).
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
    verbose : bool, default=True
        Show progress bars, and log each epoch's loss and held-out accuracy
        (logger ``clvqlearn.evaluation.tasks``, level INFO).

    Returns
    -------
    ClassifierResult
        Checkpoint path, held-out accuracy, label names and history.

    Raises
    ------
    ValueError
        On empty texts, mismatched label counts, labels outside
        ``[0, num_labels)``, an option out of range (scikit-learn's
        ``InvalidParameterError``), or a folder holding a different
        classifier.

    Examples
    --------
    >>> from clvqlearn.datasets import load_ag_news  # doctest: +SKIP
    >>> data = load_ag_news()  # doctest: +SKIP
    >>> result = fine_tune_classifier(data.texts[:1500], data.labels[:1500],
    ...                               label_names=data.label_names)  # doctest: +SKIP
    >>> round(result.accuracy, 2)  # doctest: +SKIP
    0.88
    """
    texts = check_texts(texts)
    ids, classes, label_names = _encode_labels(labels, len(texts), num_labels, label_names)
    validation = _validation_ids(validation_data, classes)
    params = dict(
        epochs=int(epochs), batch_size=int(batch_size), learning_rate=float(learning_rate),
        weight_decay=float(weight_decay), warmup_fraction=float(warmup_fraction), max_length=int(max_length),
        validation_fraction=float(validation_fraction),
        random_state=random_state if isinstance(random_state, (int, type(None))) else "RandomState",
    )
    fingerprint = _fingerprint(model, texts, ids, validation, params)
    if output_dir is None:
        output_dir = get_cache_home() / "classifiers" / f"{_slug(model)}-{fingerprint[:16]}"
    output_dir = Path(output_dir)
    if (output_dir / INFO_FILE).is_file() and not overwrite:
        return _reuse(output_dir, fingerprint)

    rng = check_random_state(random_state)
    train, test = _held_out_split(texts, ids, classes, validation, validation_fraction, rng)
    dev = resolve_device(device)
    seed = torch_seed(rng)
    tokenizer = _models.load_tokenizer(model)
    with seeded(seed, torch.device("cpu")):  # the new head reads the global RNG
        net = _models.load_model(model, head="sequence-classification", num_labels=int(classes.size))
    ensure_pad_token(net, tokenizer)
    net.config.id2label = dict(enumerate(label_names))
    net.config.label2id = {name: i for i, name in enumerate(label_names)}
    net.to(dev)
    start = time.perf_counter()
    with seeded(seed + 1, dev):  # dropout
        history = _train(net, tokenizer, train, test, params, np.random.RandomState(rng.randint(2**31 - 1)),
                         verbose=verbose)
    net.eval()
    info = dict(
        format=_INFO_FORMAT, version=_INFO_VERSION, base_model=model, fingerprint=fingerprint,
        label_names=label_names, classes=classes.tolist(), accuracy=history[-1]["test_accuracy"],
        n_train=len(train[0]), n_test=len(test[0]), history=history, params=params,
        seconds=round(time.perf_counter() - start, 2),
    )
    result = save_checkpoint(net, tokenizer, info, output_dir)
    result._cache[str(dev)] = (net.to(dev).eval(), tokenizer)
    return result


def _validation_ids(validation_data, classes: np.ndarray):
    """``(texts, class ids)`` of an explicit held-out set, or None."""
    if validation_data is None:
        return None
    try:
        val_texts, val_labels = validation_data
    except (TypeError, ValueError) as exc:
        raise TypeError("validation_data must be a (texts, labels) tuple.") from exc
    val_texts = check_texts(val_texts, "validation_data texts")
    val_y = np.asarray(val_labels)
    if val_y.shape != (len(val_texts),):
        raise ValueError(f"validation_data has {len(val_texts)} texts but {val_y.shape} labels.")
    unknown = set(np.unique(val_y).tolist()) - set(classes.tolist())
    if unknown:
        raise ValueError(f"validation_data has labels {sorted(unknown)} not seen in training labels "
                         f"{classes.tolist()}.")
    return val_texts, np.searchsorted(classes, val_y).astype(np.int64)


def _reuse(output_dir: Path, fingerprint: str) -> ClassifierResult:
    """The classifier already in ``output_dir``, when it was trained on the same data and parameters."""
    info = _read_info(output_dir)
    if info.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{output_dir} already holds a classifier trained on other data or parameters. "
            "Pass overwrite=True to replace it, or choose another output_dir."
        )
    logger.info("Reusing fine-tuned classifier at %s (held-out accuracy %.3f).", output_dir, info["accuracy"])
    return load_classifier(output_dir)


def _held_out_split(texts, ids, classes, validation, validation_fraction, rng):
    """``((train texts, ids), (test texts, ids))``: the explicit held-out set or a stratified split."""
    if validation is not None:
        return (texts, ids), validation
    n = len(texts)
    n_test = max(int(round(validation_fraction * n)), classes.size)
    if n - n_test < classes.size:
        raise ValueError(f"Too few texts ({n}) to hold out {validation_fraction:.0%} and still train on every class.")
    counts = np.bincount(ids)
    stratify = ids if counts[counts > 0].min() >= 2 else None
    train_idx, test_idx = train_test_split(np.arange(n), test_size=n_test, stratify=stratify,
                                           random_state=rng.randint(2**31 - 1))
    return ([texts[i] for i in train_idx], ids[train_idx]), ([texts[i] for i in test_idx], ids[test_idx])


def _train(net, tokenizer, train, test, params: dict, shuffle_rng, *, verbose: bool) -> list:
    """AdamW, linear warm-up and decay, clipping at 1.0, length-bucketed batches; one history row per epoch."""
    dev = next(net.parameters()).device
    epochs, batch_size, max_length = params["epochs"], params["batch_size"], params["max_length"]
    ids = tokenizer(train[0], truncation=True, max_length=max_length)["input_ids"]
    targets = torch.as_tensor(train[1])
    total = math.ceil(len(ids) / batch_size) * epochs
    optimizer = torch.optim.AdamW(parameter_groups(net, params["weight_decay"]), lr=params["learning_rate"])
    warmup = int(params["warmup_fraction"] * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(total - s, 0) / max(total - warmup, 1)
    )
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        net.train()
        losses = []
        bar = tqdm(length_batches([len(x) for x in ids], batch_size, rng=shuffle_rng, descending=True),
                   desc=f"fine-tune {epoch + 1}/{epochs}", disable=not verbose, leave=False)
        for idx in bar:
            out = net(**model_inputs([ids[i] for i in idx], tokenizer.pad_token_id, dev), labels=targets[idx].to(dev))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        logits = _predict_logits(net, tokenizer, test[0], batch_size * 2, max_length)
        acc = float((logits.argmax(1) == test[1]).mean())
        history.append(dict(epoch=epoch + 1, train_loss=float(np.mean(losses)), test_accuracy=acc,
                            seconds=round(time.perf_counter() - start, 2)))
        if verbose:
            logger.info("epoch %d/%d: train loss %.4f, held-out accuracy %.4f", epoch + 1, epochs,
                        history[-1]["train_loss"], acc)
    return history


# ------------------------------------------------------------ frozen model + linear head
_HEAD_VERSION = 2  # bump when linear_head_classifier's fitting changes (its cache key)


def linear_head_classifier(model: str, train, evaluation, *, max_length: int = 64, random_state=0,
                           device="auto", batch_size: int = 16) -> ClassifierResult:
    """A frozen language model with a logistic-regression classification head.

    The paper prompts its decoders zero-shot: their weights are never
    trained.  This keeps the decoder frozen too, but gives it a linear head:
    L2-regularised logistic regression (no intercept, ``C`` chosen by
    stratified 5-fold CV) on the final hidden state of the last token, the
    very vector a Hugging Face ``*ForSequenceClassification`` head reads.
    The fitted weights are written into the model's ``score`` layer and the
    model is saved as a checkpoint that :func:`load_classifier`,
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
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

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
    net, tokenizer, head = _frozen_with_head(model, int(classes.size), random_state, device)
    X_train = _last_token_states(net, tokenizer, list(train.texts), max_length, batch_size)
    X_eval = _last_token_states(net, tokenizer, list(evaluation.texts), max_length, batch_size)
    probe = LogisticRegressionCV(Cs=params["Cs"], fit_intercept=False, max_iter=5000,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=int(random_state or 0)))
    probe.fit(X_train, train.labels)
    coef = probe.coef_
    weight = np.vstack([-coef / 2, coef / 2]) if classes.size == 2 and coef.shape[0] == 1 else coef
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        logits = head(torch.as_tensor(X_eval, dtype=head.weight.dtype, device=head.weight.device)).cpu().numpy()
    if not np.array_equal(logits.argmax(axis=1), probe.predict(X_eval)):
        raise RuntimeError("the head written into the model does not reproduce the fitted probe's predictions.")
    accuracy = float((logits.argmax(axis=1) == evaluation.labels).mean())
    net.config.id2label = dict(enumerate(evaluation.label_names))
    net.config.label2id = {name: i for i, name in enumerate(evaluation.label_names)}
    history = [{"C": float(np.ravel(probe.C_)[0]), "train_accuracy": float(probe.score(X_train, train.labels)),
                "test_accuracy": accuracy}]
    info = dict(format=_INFO_FORMAT, version=_INFO_VERSION, base_model=model, fingerprint=digest,
                label_names=list(evaluation.label_names), classes=classes.tolist(), accuracy=accuracy,
                n_train=len(train), n_test=len(evaluation), history=history, params=params)
    return save_checkpoint(net, tokenizer, info, folder)


def _frozen_with_head(model: str, n_classes: int, random_state, device):
    """``(model with a classification head, tokenizer, its bias-free score layer)``, in eval mode."""
    tokenizer = _models.load_tokenizer(model)
    with seeded(int(random_state or 0), torch.device("cpu")):  # the head's (overwritten) initialisation
        net = _models.load_model(model, head="sequence-classification", num_labels=n_classes)
    ensure_pad_token(net, tokenizer)
    net.to(resolve_device(device)).eval()
    head = getattr(net, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"{type(net).__name__} has no bias-free `score` head; use decoder_classifier='fine-tune'.")
    return net, tokenizer, head


@torch.no_grad()
def _last_token_states(net, tokenizer, texts: list, max_length: int, batch_size: int) -> np.ndarray:
    """The final hidden state at the position the HF head reads: the rightmost token that is not padding."""
    dev = next(net.parameters()).device
    ids = tokenizer(texts, truncation=True, max_length=int(max_length))["input_ids"]
    out = np.zeros((len(texts), net.config.get_text_config().hidden_size), dtype=np.float32)
    for idx in length_batches([len(x) for x in ids], batch_size):
        batch = model_inputs([ids[i] for i in idx], net.config.pad_token_id, dev)
        hidden = net.base_model(**batch)[0]
        non_pad = (batch["input_ids"] != net.config.pad_token_id).int()
        last = (torch.arange(non_pad.shape[1], device=dev) * non_pad).argmax(-1)
        out[idx] = hidden[torch.arange(hidden.shape[0], device=dev), last].float().cpu().numpy()
    return out


# ------------------------------------------------------------------ classifier resolution
def resolve_classifier(classifier, *, fallback=None, required_for: str | None = None):
    """The task classifier named by ``classifier`` (or, when it is None, by ``fallback``).

    The one rule of the evaluation: a :class:`ClassifierResult` is used as
    is; a string or path must be a checkpoint folder (:func:`load_classifier`);
    None tries ``fallback`` (e.g. the folder a ``LayerPairExtractor`` reads).
    When no checkpoint is found, the result is None, unless
    ``required_for`` says what needs one: then an explicit folder raises
    :class:`FileNotFoundError` and a missing one a :class:`ValueError` that
    says how to provide it.

    Parameters
    ----------
    classifier : ClassifierResult, str, path-like or None
    fallback : str or path-like, optional
        Tried when ``classifier`` is None.
    required_for : str, optional
        What needs the classifier (quoted in the error), e.g.
        ``"protocol='splice'"``.

    Returns
    -------
    ClassifierResult or None

    Raises
    ------
    TypeError
        For another kind of ``classifier``.

    Examples
    --------
    >>> resolve_classifier(None, fallback="minilm") is None  # a model name, not a checkpoint
    True
    >>> resolve_classifier("/no/such/folder", required_for="the splice")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: /no/such/folder is not a clvqlearn classifier checkpoint ...
    """
    if isinstance(classifier, ClassifierResult):
        return classifier
    if classifier is not None and not isinstance(classifier, (str, os.PathLike)):
        raise TypeError(
            "classifier must be a ClassifierResult (from fine_tune_classifier), the path of its "
            f"checkpoint folder, or None; got {type(classifier).__name__}."
        )
    source = classifier if classifier is not None else fallback
    try:
        return None if source is None else load_classifier(os.fspath(source))
    except (FileNotFoundError, ValueError):
        if required_for is None:
            return None
        if classifier is not None:
            raise
    raise ValueError(
        f"{required_for} needs the task classifier, and none was given: the pipeline's "
        f"LayerPairExtractor reads {fallback!r}, which is not a fine-tuned classifier checkpoint. "
        "Either extract from the classifier itself (LayerPairExtractor(model=str(fine_tune_classifier(...).path))), "
        "pass classifier=..., or use saliency='rationale' with the probe protocol."
    )
