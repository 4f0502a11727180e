"""Zero-shot classification by prompting a chat language model (the paper's route for decoders).

:class:`ZeroShotClassifier` scores the next-token log-probability of each
label word after a chat-template prompt; :data:`ZERO_SHOT_PRESETS` holds the
label words and prompts of the paper's three data sets.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .. import models as _models
from .._batching import length_batches, model_inputs
from .._sklearn_compat import Interval, StrOptions
from .._torch_utils import resolve_device
from .._validation import check_texts
from .tasks import ensure_pad_token

__all__ = ["ZERO_SHOT_PRESETS", "ZeroShotClassifier"]

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

    _parameter_constraints: dict = {
        "model": [str],
        "label_words": [dict, None],
        "template": [str, None],
        "system_prompt": [str, None],
        "max_length": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "calibration": [StrOptions({"content-free", "fit"}), None],
        "verbose": ["boolean"],
    }

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
        self._validate_params()
        if y is None:
            raise ValueError("ZeroShotClassifier.fit needs y (the labels) to know the classes.")
        classes = np.unique(np.asarray(y))
        if classes.size < 2:
            raise ValueError(f"y holds a single class ({classes.tolist()}); expected at least 2.")
        words = self._words(classes)
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
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        out = np.zeros((len(prompts), len(table)), dtype=np.float64)
        with torch.no_grad():
            for idx in tqdm(length_batches([len(x) for x in ids], self.batch_size), desc="zero-shot",
                            disable=not self.verbose, leave=False):
                batch = model_inputs([ids[i] for i in idx], tokenizer.pad_token_id, dev)
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
