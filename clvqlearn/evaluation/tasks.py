"""Task models for the evaluation: fine-tuned classifiers and zero-shot prompting.

The paper's first evaluation axis needs, for every data set, a model that
solves the task: encoders (BERT, RoBERTa; here MiniLM) are fine-tuned with a
sequence-classification head, decoders (LLaMA, Qwen; here SmolLM2) are
prompted zero-shot.  This module provides both:

:func:`fine_tune_classifier`
    Fine-tunes any Hugging Face encoder or decoder with a classification head
    in a plain torch loop, measures held-out accuracy and saves an ordinary
    HF checkpoint (plus ``clvqlearn_classifier.json``) that
    ``LayerPairExtractor(model=path)`` and :mod:`clvqlearn.evaluation.saliency`
    load.  Checkpoints are cached and reused.
:class:`ZeroShotClassifier`
    A scikit-learn classifier that scores the next-token log-probability of
    each label word after a chat-template prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .. import models as _models
from .._config import get_cache_home
from .._torch_utils import resolve_device, seeded, torch_seed

INFO_FILE = "clvqlearn_classifier.json"
_INFO_FORMAT = "clvqlearn.classifier"
_INFO_VERSION = 1

__all__ = [
    "ClassifierResult",
    "ZERO_SHOT_PRESETS",
    "ZeroShotClassifier",
    "fine_tune_classifier",
    "load_classifier",
    "save_checkpoint",
]


# --------------------------------------------------------------------- input checks
def check_texts(texts, name: str = "texts") -> list[str]:
    """Validate a sequence of documents and return it as a list of str.

    Parameters
    ----------
    texts : sequence of str
        The documents.  A bare string is refused (it would be read as a
        sequence of characters).
    name : str
        Name used in error messages.

    Returns
    -------
    list of str

    Raises
    ------
    TypeError
        When ``texts`` is a string or holds non-strings.
    ValueError
        When ``texts`` is empty or one document is empty or blank.

    Examples
    --------
    >>> check_texts(["a film", "a plot"])
    ['a film', 'a plot']
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings (one per document), not a single string.")
    try:
        texts = list(texts)
    except TypeError as exc:
        raise TypeError(f"{name} must be a sequence of strings; got {type(texts).__name__}.") from exc
    if not texts:
        raise ValueError(f"{name} is empty: expected at least one document.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is a {type(text).__name__}; expected str.")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty or blank: every document must contain some text.")
    return texts


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

    Examples
    --------
    >>> load_classifier("/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /no/such/folder is not a clvqlearn classifier checkpoint ...
    """
    path = Path(path)
    info_file = path / INFO_FILE
    if not info_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a clvqlearn classifier checkpoint ({INFO_FILE} is missing). "
            "Create one with clvqlearn.evaluation.tasks.fine_tune_classifier."
        )
    info = json.loads(info_file.read_text())
    if info.get("format") != _INFO_FORMAT:
        raise ValueError(f"{info_file} holds {info.get('format')!r}, not {_INFO_FORMAT!r}.")
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


def _length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.RandomState | None):
    """Index batches of similar length (less padding on CPU).

    Without ``rng`` (evaluation), batches follow length order.  With it
    (training), documents are shuffled, sorted by length inside chunks of
    50 batches, and the batches are shuffled again, as transformers'
    ``group_by_length`` does.
    """
    n = lengths.size
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    chunk = batch_size * 50
    batches = []
    for start in range(0, n, chunk):
        idx = perm[start : start + chunk]
        idx = idx[np.argsort(-lengths[idx], kind="stable")]
        batches += [idx[i : i + batch_size] for i in range(0, idx.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _collate(encodings, idx, tokenizer, device):
    feats = [{k: encodings[k][i] for k in encodings} for i in idx]
    batch = tokenizer.pad(feats, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def _predict_logits(model, tokenizer, texts, batch_size, max_length, verbose=False) -> np.ndarray:
    device = next(model.parameters()).device
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    model.eval()
    batches = _length_batches(lengths, batch_size, None)
    for idx in tqdm(batches, desc="predict", disable=not verbose, leave=False):
        batch = _collate(enc, idx, tokenizer, device)
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
        Show progress bars.

    Returns
    -------
    ClassifierResult
        Checkpoint path, held-out accuracy, label names and history.

    Raises
    ------
    ValueError
        On empty texts, mismatched label counts, labels outside
        ``[0, num_labels)``, or a folder holding a different classifier.

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
    if not isinstance(model, str) or not model:
        raise TypeError(f"model must be a model name or path (str); got {type(model).__name__}.")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("max_length", max_length, 2)):
        if not isinstance(value, Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction!r}.")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")

    if validation_data is not None:
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
            raise ValueError(
                f"validation_data has labels {sorted(unknown)} not seen in training labels {classes.tolist()}."
            )
        val_ids = np.searchsorted(classes, val_y).astype(np.int64)
        validation = (val_texts, val_ids)
    else:
        validation = None

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
    info_file = output_dir / INFO_FILE
    if info_file.is_file() and not overwrite:
        info = json.loads(info_file.read_text())
        if info.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{output_dir} already holds a classifier trained on other data or parameters. "
                "Pass overwrite=True to replace it, or choose another output_dir."
            )
        if verbose:
            print(f"Reusing fine-tuned classifier at {output_dir} (held-out accuracy {info['accuracy']:.3f}).")
        return load_classifier(output_dir)

    rng = check_random_state(random_state)
    if validation is None:
        n = len(texts)
        n_test = max(int(round(validation_fraction * n)), classes.size)
        if n - n_test < classes.size:
            raise ValueError(
                f"Too few texts ({n}) to hold out {validation_fraction:.0%} and still train on every class."
            )
        counts = np.bincount(ids)
        stratify = ids if counts[counts > 0].min() >= 2 else None
        train_idx, test_idx = train_test_split(
            np.arange(n), test_size=n_test, stratify=stratify, random_state=rng.randint(2**31 - 1)
        )
        train_texts, train_ids = [texts[i] for i in train_idx], ids[train_idx]
        test_texts, test_ids = [texts[i] for i in test_idx], ids[test_idx]
    else:
        train_texts, train_ids = texts, ids
        test_texts, test_ids = validation

    dev = resolve_device(device)
    seed = torch_seed(rng)
    tokenizer = _models.load_tokenizer(model)
    with seeded(seed, torch.device("cpu")):  # the new head reads the global RNG
        net = _models.load_model(model, head="sequence-classification", num_labels=int(classes.size))
    ensure_pad_token(net, tokenizer)
    net.config.id2label = dict(enumerate(label_names))
    net.config.label2id = {name: i for i, name in enumerate(label_names)}
    net.to(dev)

    enc = tokenizer(train_texts, truncation=True, max_length=max_length)
    lengths = np.array([len(x) for x in enc["input_ids"]])
    targets = torch.as_tensor(train_ids)
    steps_per_epoch = math.ceil(len(train_texts) / batch_size)
    total = steps_per_epoch * epochs
    decay, no_decay = [], []
    for pname, p in net.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in pname.lower() else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )
    warmup = int(warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(warmup, 1) if s < warmup else max(total - s, 0) / max(total - warmup, 1)
    )
    history = []
    shuffle_rng = np.random.RandomState(rng.randint(2**31 - 1))
    start_all = time.perf_counter()
    with seeded(seed + 1, dev):  # dropout
        for epoch in range(epochs):
            start = time.perf_counter()
            net.train()
            losses = []
            bar = tqdm(_length_batches(lengths, batch_size, shuffle_rng), desc=f"fine-tune {epoch + 1}/{epochs}",
                       disable=not verbose, leave=False)
            for idx in bar:
                batch = _collate(enc, idx, tokenizer, dev)
                out = net(**batch, labels=targets[idx].to(dev))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(out.loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            logits = _predict_logits(net, tokenizer, test_texts, batch_size * 2, max_length)
            acc = float((logits.argmax(1) == test_ids).mean())
            history.append(dict(epoch=epoch + 1, train_loss=float(np.mean(losses)), test_accuracy=acc,
                                seconds=round(time.perf_counter() - start, 2)))
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: train loss {history[-1]['train_loss']:.4f}, "
                      f"held-out accuracy {acc:.4f}")
    net.eval()

    info = dict(
        format=_INFO_FORMAT, version=_INFO_VERSION, base_model=model, fingerprint=fingerprint,
        label_names=label_names, classes=classes.tolist(), accuracy=history[-1]["test_accuracy"],
        n_train=len(train_texts), n_test=len(test_texts), history=history, params=params,
        seconds=round(time.perf_counter() - start_all, 2),
    )
    result = save_checkpoint(net, tokenizer, info, output_dir)
    result._cache[str(dev)] = (net.to(dev).eval(), tokenizer)
    return result


# ----------------------------------------------------------------------- zero-shot
ZERO_SHOT_PRESETS = {
    "eraser_movie": dict(
        label_words={0: ["negative", "Negative"], 1: ["positive", "Positive"]},
        template="Review: {text}\nIs this review positive or negative?",
    ),
    "jigsaw": dict(
        label_words={0: ["no", "No"], 1: ["yes", "Yes"]},
        template="Comment: {text}\nIs this comment toxic (rude, insulting or hateful)? Answer yes or no.",
    ),
    "ag_news": dict(
        label_words={0: ["World", "world"], 1: ["Sports"], 2: ["Business", "business"],
                     3: ["Science", "science", "Technology"]},
        template="Article: {text}\nIs this news article about World, Sports, Business or Science?",
    ),
}
"""Label words and prompt templates for the three data sets of the paper.

Keys are the label ids of :mod:`clvqlearn.datasets` loaders (0-based).
Use as ``ZeroShotClassifier(**ZERO_SHOT_PRESETS["ag_news"])``.
"""

_DEFAULT_TEMPLATE = "Classify this text as one of: {choices}.\n\nText: {text}\n\nAnswer with one word."


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """Zero-shot classification by prompting a chat language model.

    The paper prompts its decoder models (LLaMA-2-7B, Qwen2.5-3B) zero-shot
    instead of fine-tuning them.  Each text is put into ``template``, wrapped
    in the model's chat template with a generation prompt, and the class
    scores are the next-token log-probabilities of the label words' first
    tokens (several words per class are combined with log-sum-exp).
    ``predict_proba`` renormalises them over the classes.

    Small models are biased towards one label word whatever the text
    (SmolLM2-135M answers "positive" to every ERASER-Movie sentence), so
    ``calibration`` offers contextual calibration (Zhao et al., 2021):
    subtract the label scores of content-free inputs ("N/A", ...) or the
    mean label scores over the (unlabelled) texts given to ``fit``.

    Parameters
    ----------
    model : str, default="smollm2"
        A packaged short name, HF id or local path of a causal LM with a chat
        template.
    label_words : dict, optional
        ``{class: word or list of words}``.  Default: ``str(class)``.  The
        first tokens of different classes' words must differ.
    template : str, optional
        Prompt with a ``{text}`` placeholder and optionally ``{choices}``
        (the label words, comma-separated).
    system_prompt : str, optional
        A system message; None keeps the chat template's default.
    max_length : int, default=256
        Texts are truncated to this many tokens before being put into the
        prompt.
    batch_size : int, default=8
    calibration : {None, "content-free", "fit"}, default=None
        None: raw label-word log-probabilities (the paper's setting).
        ``"content-free"``: subtract their mean over the content-free texts
        ``CONTENT_FREE``.  ``"fit"``: subtract their mean over the texts
        ``X`` passed to ``fit`` (their labels are not used).
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
    verbose : bool, default=False
        Show a progress bar.

    Attributes
    ----------
    classes_ : ndarray
        The classes seen in ``fit``.
    calibration_offset_ : ndarray of shape (n_classes,)
        What :meth:`decision_function` subtracts (zeros without calibration).

    Examples
    --------
    >>> clf = ZeroShotClassifier(**ZERO_SHOT_PRESETS["eraser_movie"])  # doctest: +SKIP
    >>> clf.fit(None, [0, 1]).predict(["a wonderful, moving film ."])  # doctest: +SKIP
    array([1])
    """

    def __init__(self, model="smollm2", label_words=None, template=None, system_prompt=None,
                 max_length=256, batch_size=8, calibration=None, device="auto", verbose=False):
        self.model = model
        self.label_words = label_words
        self.template = template
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.calibration = calibration
        self.device = device
        self.verbose = verbose

    CONTENT_FREE = ("N/A", "[MASK]", "none")
    """The content-free inputs of ``calibration="content-free"``."""

    def fit(self, X=None, y=None):
        """Record the classes (nothing is trained) and, if asked, the calibration.

        Parameters
        ----------
        X : sequence of str or None
            Only used by ``calibration="fit"`` (mean label scores over X).
        y : array-like
            Labels; their unique values become ``classes_``.

        Returns
        -------
        self
        """
        if y is None:
            raise ValueError("ZeroShotClassifier.fit needs y (the labels) to know the classes.")
        classes = np.unique(np.asarray(y))
        if classes.size < 2:
            raise ValueError(f"y holds a single class ({classes.tolist()}); expected at least 2.")
        words = self._words(classes)
        if self.calibration not in (None, "content-free", "fit"):
            raise ValueError(f"calibration must be None, 'content-free' or 'fit'; got {self.calibration!r}.")
        if self.calibration == "fit" and X is None:
            raise ValueError("calibration='fit' needs the texts X in fit (their labels are not used).")
        self.classes_ = classes
        self._label_words_ = words
        self.calibration_offset_ = np.zeros(classes.size)
        if self.calibration is not None:
            texts = list(self.CONTENT_FREE) if self.calibration == "content-free" else X
            self.calibration_offset_ = self._log_probs(texts).mean(axis=0)
        return self

    def _words(self, classes):
        if self.label_words is None:
            return {c: [str(c)] for c in classes.tolist()}
        if not isinstance(self.label_words, dict):
            raise TypeError(f"label_words must be a dict {{class: word}}; got {type(self.label_words).__name__}.")
        missing = [c for c in classes.tolist() if c not in self.label_words]
        if missing:
            raise ValueError(f"label_words has no entry for classes {missing}; it has keys {list(self.label_words)}.")
        words = {}
        for c in classes.tolist():
            w = self.label_words[c]
            w = [w] if isinstance(w, str) else list(w)
            if not w or not all(isinstance(x, str) and x.strip() for x in w):
                raise ValueError(f"label_words[{c!r}] must be a non-empty word or list of words; got {w!r}.")
            words[c] = w
        return words

    # ------------------------------------------------------------ model cache
    def _load(self):
        dev = resolve_device(self.device)
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != (self.model, str(dev)):
            tokenizer = _models.load_tokenizer(self.model)
            net = _models.load_model(self.model, head="causal-lm")
            ensure_pad_token(net, tokenizer)
            self._cache = ((self.model, str(dev)), net.to(dev).eval(), tokenizer)
        return self._cache[1], self._cache[2]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    def _label_token_ids(self, tokenizer):
        table = []
        owner = {}
        for c in self.classes_.tolist():
            ids = []
            for w in self._label_words_[c]:
                toks = tokenizer.encode(w, add_special_tokens=False)
                if not toks:
                    raise ValueError(f"label word {w!r} tokenises to nothing.")
                if toks[0] in owner and owner[toks[0]] != c:
                    raise ValueError(
                        f"label words of classes {owner[toks[0]]!r} and {c!r} start with the same token "
                        f"{tokenizer.convert_ids_to_tokens(toks[0])!r}; choose words whose first tokens differ."
                    )
                owner[toks[0]] = c
                if toks[0] not in ids:
                    ids.append(toks[0])
            table.append(ids)
        return table

    def build_prompts(self, X) -> list[str]:
        """The chat-formatted prompt of each text (useful to inspect).

        Parameters
        ----------
        X : sequence of str

        Returns
        -------
        list of str
        """
        check_is_fitted(self, "_label_words_")
        texts = check_texts(X, "X")
        _, tokenizer = self._load()
        template = self.template or _DEFAULT_TEMPLATE
        if "{text}" not in template:
            raise ValueError("template must contain a '{text}' placeholder.")
        choices = ", ".join(w[0] for w in self._label_words_.values())
        prompts = []
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) > self.max_length:
                text = tokenizer.decode(ids[: self.max_length])
            messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
            messages.append({"role": "user", "content": template.format(text=text, choices=choices)})
            prompts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        return prompts

    def decision_function(self, X) -> np.ndarray:
        """Calibrated label scores, shape (n_texts, n_classes).

        The log-probability of each class's label word(s) minus
        ``calibration_offset_``.
        """
        check_is_fitted(self, "classes_")
        return self._log_probs(X) - self.calibration_offset_

    def _log_probs(self, X) -> np.ndarray:
        prompts = self.build_prompts(X)
        net, tokenizer = self._load()
        table = self._label_token_ids(tokenizer)
        dev = next(net.parameters()).device
        enc = tokenizer(prompts, add_special_tokens=False)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        out = np.zeros((len(prompts), len(table)), dtype=np.float64)
        with torch.no_grad():
            for idx in tqdm(_length_batches(lengths, self.batch_size, None), desc="zero-shot",
                            disable=not self.verbose, leave=False):
                batch = _collate(enc, idx, tokenizer, dev)
                logits = net(**batch).logits
                last = batch["attention_mask"].sum(1) - 1  # right padding
                logp = torch.log_softmax(logits[torch.arange(len(idx), device=dev), last].float(), dim=-1).cpu()
                out[idx] = np.stack([torch.logsumexp(logp[:, ids], dim=-1).numpy() for ids in table], axis=1)
        return out

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities renormalised over the label words, (n_texts, n_classes)."""
        scores = self.decision_function(X)
        scores = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Predicted classes, shape (n_texts,)."""
        check_is_fitted(self, "classes_")
        return self.classes_[self.decision_function(X).argmax(axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
