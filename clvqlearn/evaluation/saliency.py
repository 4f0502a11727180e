"""The most salient token of each sentence: Integrated Gradients or human rationales.

Step 1 of the paper's concept-removal evaluation ("Evaluation axis 1" in
METHOD.md) finds, for every evaluation sentence, its most salient word with
Integrated Gradients (IG) on the fine-tuned classifier, towards the predicted
class.  :func:`token_saliency` does that with captum's
``LayerIntegratedGradients``, in two variants:

* ``saliency="ig-layer"`` (the paper's reference code): IG on the OUTPUT of
  the analysis layer (hidden state ``layer``, the layer whose concepts are
  removed), attributions summed over the hidden dimension; with
  ``units="word"``, ``normalize=True`` and ``rank_by="absolute"`` this is the
  reference's exact recipe (a word scores the max over its subword tokens,
  words ranked by absolute value);
* ``saliency="ig-embeddings"``: IG on the token-embedding layer (the
  textbook form; clvqlearn's earlier default).

``saliency="rationale"`` uses the ERASER-Movie human rationales instead.

Token positions follow :attr:`clvqlearn.LayerPairs.positions`: the index in
the tokenised input sequence, special tokens included, so
:meth:`Saliency.rows` finds the salient token's row in a ``LayerPairs``
extracted from the same texts with the same tokenizer and ``max_length``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import models as _models
from .._batching import length_batches, pad_right
from .._config import get_cache_home
from .._sklearn_compat import Hidden, Interval, StrOptions, validate_params
from .._torch_utils import resolve_device
from .._validation import check_texts
from ..data import LayerPairs
from .tasks import INFO_FILE, ClassifierResult, ensure_pad_token, resolve_classifier

__all__ = ["Saliency", "cached_token_saliency", "clear_saliency_cache", "rank_words", "saliency_memory",
           "token_saliency"]

_METHODS = ("ig-layer", "ig-embeddings", "rationale")
#: older name of "ig-embeddings", still accepted
_ALIASES = {"integrated_gradients": "ig-embeddings"}
_CONSTRAINTS = {
    "saliency": [StrOptions(set(_METHODS)), Hidden(StrOptions(set(_ALIASES)))],
    "layer": [Interval(Integral, None, None, closed="neither"), None],
    "units": [StrOptions({"token", "word"})],
    "normalize": ["boolean"],
    "top_n": [Interval(Integral, 1, None, closed="left")],
    "n_steps": [Interval(Integral, 1, None, closed="left")],
    "internal_batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "max_length": [Interval(Integral, 1, None, closed="left")],
    "keep_first": [StrOptions({"auto"}), "boolean"],
    "rank_by": [StrOptions({"value", "absolute"})],
    "verbose": ["boolean"],
}


@dataclass
class Saliency:
    """Per-token saliency of a set of documents and their top tokens.

    Attributes
    ----------
    method : str
        ``"ig-layer"``, ``"ig-embeddings"`` or ``"rationale"``.
    input_ids : list of ndarray
        The tokenised documents (special tokens included, no padding).
    tokens : list of list of str
        The token strings.
    attributions : list of ndarray of float
        One score per token of each document: IG attribution summed over the
        hidden (or embedding) dimension, positive = evidence for the target
        class, divided by its L2 norm over the document with
        ``normalize=True``; or 1.0 on rationale tokens and 0.0 elsewhere.
    special_mask : list of ndarray of bool
        True on special tokens (never among the top tokens).
    fixed_mask : list of ndarray of bool
        True on tokens the IG reference keeps as they are (special tokens,
        and a decoder's first token with ``keep_first``); they are never
        among the top tokens (with ``"ig-embeddings"`` their attribution is
        exactly zero; at a deeper layer their hidden state still moves with
        the other tokens).  For rationales, the special tokens.
    top_positions : ndarray of shape (n_docs, top_n) of int64
        Positions of the ``top_n`` most salient tokens, best first; -1 where a
        document has fewer candidate tokens (or no rationale).  With
        ``units="word"``, one token per word: the subword that carries the
        word's score (its max).
    word_ids : list of ndarray of int, optional
        With ``units="word"``: the word index of every token (the fast
        tokenizer's ``word_ids``), -1 on special tokens.
    targets : ndarray of shape (n_docs,), optional
        The class the IG attributions explain (the predicted one by default).
    probabilities : ndarray of shape (n_docs, n_classes), optional
        The classifier's probabilities.
    convergence_delta : ndarray of shape (n_docs,), optional
        captum's completeness error: attribution sum minus
        ``F(input) - F(baseline)`` for the target logit.
    params : dict
        The settings used (``n_steps``, ``max_length``, ...).

    Examples
    --------
    >>> sal = token_saliency(classifier_path, texts)  # doctest: +SKIP
    >>> sal.top_tokens()[:2]  # doctest: +SKIP
    [['ludicrous'], ['waste']]
    """

    method: str
    input_ids: list
    tokens: list
    attributions: list
    special_mask: list
    fixed_mask: list
    top_positions: np.ndarray
    word_ids: list | None = None
    targets: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    convergence_delta: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def top_tokens(self) -> list[list[str]]:
        """The token strings at :attr:`top_positions` (None where -1)."""
        return [
            [self.tokens[i][p] if p >= 0 else None for p in row]
            for i, row in enumerate(self.top_positions.tolist())
        ]

    def ranking(self, i: int) -> np.ndarray:
        """All candidate positions of document ``i``, most salient first.

        Candidates are the tokens not in :attr:`fixed_mask` (IG) or the
        rationale tokens; :attr:`top_positions` is the head of this ranking.
        With ``units="word"`` the ranking holds one position per word (see
        :func:`rank_words`).
        """
        att, fixed = self.attributions[i], self.fixed_mask[i]
        candidates = (att > 0) & ~fixed if self.method == "rationale" else ~fixed
        rank_by = self.params.get("rank_by", "value")
        if self.params.get("units", "token") == "word":
            return rank_words(att, candidates, self.word_ids[i], rank_by)
        return _top_positions(att, candidates, int(candidates.sum()), rank_by)

    def rows(self, pairs: LayerPairs, rank: int = 0, *, skip_missing: bool = False) -> np.ndarray:
        """Row of each document's ``rank``-th salient token in ``pairs``.

        Parameters
        ----------
        pairs : LayerPairs
            Extracted from the same texts, in the same order, with the same
            tokenizer and ``max_length``; must carry ``positions``.
        rank : int, default=0
            0 = the most salient token.
        skip_missing : bool, default=False
            When a salient token has no row in ``pairs`` (the extractor
            dropped it, e.g. a decoder's massive-activation first token),
            walk down the document's :meth:`ranking` and count only tokens
            that have a row.  Without it such documents get -1.

        Returns
        -------
        ndarray of shape (n_docs,) of int64
            Row index into ``pairs`` (its ``low``/``high`` arrays), or -1
            where the document has no such token in ``pairs``.

        Raises
        ------
        ValueError
            When ``pairs`` has another number of documents, has no
            ``positions``, or its token ids disagree with these documents.

        Examples
        --------
        >>> rows = sal.rows(pairs)  # doctest: +SKIP
        >>> concept_ids = estimator.predict(pairs)[rows]  # doctest: +SKIP
        """
        if not isinstance(pairs, LayerPairs):
            raise TypeError(f"pairs must be a LayerPairs; got {type(pairs).__name__}.")
        if pairs.n_docs != len(self):
            raise ValueError(f"pairs holds {pairs.n_docs} documents but the saliency map {len(self)}.")
        if pairs.positions is None:
            raise ValueError("pairs has no positions; extract it with a LayerPairExtractor that records them.")
        if not isinstance(rank, Integral) or rank < 0 or (not skip_missing and rank >= self.top_positions.shape[1]):
            raise ValueError(
                f"rank must be an integer in [0, {self.top_positions.shape[1]}) (any rank >= 0 with "
                f"skip_missing=True); got {rank!r}."
            )
        theirs = pairs.extra.get("max_length") if isinstance(pairs.extra, dict) else None
        if theirs is not None and int(theirs) != self.params.get("max_length", theirs):
            warnings.warn(
                f"pairs were extracted with max_length={theirs} but the saliency map used "
                f"max_length={self.params['max_length']}; salient tokens past the shorter limit get row -1.",
                stacklevel=2,
            )
        out = np.full(len(self), -1, dtype=np.int64)
        for i in range(len(self)):
            start, stop = pairs.offsets[i], pairs.offsets[i + 1]
            doc_positions = np.asarray(pairs.positions[start:stop])
            found = 0
            candidates = self.ranking(i) if skip_missing else self.top_positions[i, rank : rank + 1]
            for pos in candidates:
                if pos < 0:
                    break
                hits = np.flatnonzero(doc_positions == pos)
                if hits.size == 0:
                    continue
                row = start + int(hits[0])
                if pairs.token_ids is not None and int(pairs.token_ids[row]) != int(self.input_ids[i][pos]):
                    raise ValueError(
                        f"Document {i}: LayerPairs token id {int(pairs.token_ids[row])} at position {pos} "
                        f"differs from the saliency map's {int(self.input_ids[i][pos])}; were both made from "
                        "the same texts with the same tokenizer and max_length?"
                    )
                if not skip_missing or found == rank:
                    out[i] = row
                    break
                found += 1
        return out

    def to_frame(self):
        """A pandas DataFrame with one row per token: doc, position, token, word, attribution, special, rank.

        ``word`` is the token's word index (-1 on special tokens, and
        everywhere with ``units="token"``).
        """
        import pandas as pd

        records = []
        for i in range(len(self)):
            ranks = {int(p): r for r, p in enumerate(self.top_positions[i]) if p >= 0}
            words = self.word_ids[i] if self.word_ids is not None else np.full(len(self.tokens[i]), -1)
            for pos, (tok, att, sp) in enumerate(zip(self.tokens[i], self.attributions[i], self.special_mask[i])):
                records.append((i, pos, tok, int(words[pos]), float(att), bool(sp), ranks.get(pos, -1)))
        return pd.DataFrame(records, columns=["doc", "position", "token", "word", "attribution", "special", "rank"])


# ---------------------------------------------------------------------- helpers
def _top_positions(scores: np.ndarray, candidates: np.ndarray, top_n: int, rank_by: str) -> np.ndarray:
    """Best ``top_n`` candidate positions, best first, padded with -1."""
    key = np.abs(scores) if rank_by == "absolute" else scores
    idx = np.flatnonzero(candidates)
    idx = idx[np.argsort(-key[idx], kind="stable")][:top_n]
    return np.concatenate([idx, np.full(top_n - idx.size, -1)]).astype(np.int64)


def rank_words(scores: np.ndarray, candidates: np.ndarray, word_ids: np.ndarray, rank_by: str) -> np.ndarray:
    """Rank words by the max of their subword scores; one position per word.

    A word's score is the MAX of the scores of its candidate subword tokens
    (the reference implementation's rule); words are ranked by that score
    (``rank_by="value"``) or by its magnitude (``"absolute"``), ties in
    reading order.  Each word is represented by the subword that carries
    its max, so the result indexes tokens like :func:`_top_positions`.

    Parameters
    ----------
    scores : ndarray of shape (n_tokens,)
    candidates : ndarray of bool, shape (n_tokens,)
        Tokens that may be chosen (not special, not fixed).
    word_ids : ndarray of int, shape (n_tokens,)
        Word index per token; a negative id makes the token its own word.
    rank_by : {"value", "absolute"}

    Returns
    -------
    ndarray of int64
        Token positions, best word first.

    Examples
    --------
    >>> scores = np.array([0.0, -0.7, -0.9, 0.5, 0.0])
    >>> words = np.array([-1, 0, 0, 1, -1])      # [CLS] un ##fit film [SEP]
    >>> cand = np.array([False, True, True, True, False])
    >>> rank_words(scores, cand, words, "value").tolist()     # "unfit" scores max(-0.7, -0.9)
    [3, 1]
    >>> rank_words(scores, cand, words, "absolute").tolist()  # |-0.7| > |0.5|
    [1, 3]
    """
    best: dict = {}
    for pos in np.flatnonzero(candidates):
        word = int(word_ids[pos]) if word_ids[pos] >= 0 else -(int(pos) + 1)
        if word not in best or scores[pos] > scores[best[word]]:
            best[word] = int(pos)
    reps = np.array(sorted(best.values()), dtype=np.int64)
    key = np.abs(scores[reps]) if rank_by == "absolute" else scores[reps]
    return reps[np.argsort(-key, kind="stable")]


def _pad(positions: np.ndarray, top_n: int) -> np.ndarray:
    head = np.asarray(positions, dtype=np.int64)[:top_n]
    return np.concatenate([head, np.full(top_n - head.size, -1, dtype=np.int64)])


def _attribution_module(model, saliency: str, layer):
    """(module, attribute_to_layer_input, layer index or None) that IG integrates over."""
    if saliency == "ig-embeddings":
        return _models.get_embedding_module(model), False, None
    n = len(_models.get_layer_list(model))
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not -n <= layer <= n:
        raise ValueError(
            f"layer must be the analysis layer's hidden-state index, an int in [{-n}, {n}] "
            f"(0 = embeddings output) for saliency='ig-layer'; got {layer!r}."
        )
    layer = int(layer) % (n + 1) if layer < 0 else int(layer)
    if layer == 0:  # hidden_states[0]: the embeddings module's output
        embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
        module = embeddings if isinstance(embeddings, torch.nn.Module) else _models.get_embedding_module(model)
        return module, False, 0
    module, _ = _models.hook_site(model, layer)  # block layer-1's output (a decoder's final norm at the top)
    return module, False, layer


def _classifier_model(classifier, device):
    """(model, tokenizer, is_decoder) from a result, checkpoint path or model name."""
    result = resolve_classifier(classifier)
    if result is not None:
        model, tokenizer = result.load(device)
        return model, tokenizer, _models.resolve_model(str(result.path)).is_decoder
    tokenizer = _models.load_tokenizer(classifier)
    model = _models.load_model(classifier, head="sequence-classification")
    ensure_pad_token(model, tokenizer)
    return model.to(resolve_device(device)).eval(), tokenizer, _models.resolve_model(classifier).is_decoder


def _baseline_token(model, tokenizer, baseline, is_decoder: bool) -> int:
    """The reference token id of IG."""
    if isinstance(baseline, Integral) and not isinstance(baseline, bool):
        if not 0 <= baseline < _models.get_embedding_module(model).num_embeddings:
            raise ValueError(f"baseline token id {baseline} is outside the vocabulary.")
        return int(baseline)
    if baseline not in ("auto", "pad", "unk"):
        raise ValueError(f"baseline must be 'auto', 'pad', 'unk' or a token id; got {baseline!r}.")
    if baseline == "auto" and is_decoder:
        # decoder heads find the last real token by looking for pad ids, so an
        # all-pad reference would move the pooled position: use another token
        pad = model.config.pad_token_id
        for token in (tokenizer.unk_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
            if token is not None and token != pad:
                return int(token)
        raise ValueError("Found no unk, eos or bos token other than the pad token; pass baseline=<token id>.")
    if baseline == "auto":
        baseline = "pad"
    token = tokenizer.pad_token_id if baseline == "pad" else tokenizer.unk_token_id
    if token is None:
        raise ValueError(f"The tokenizer has no {baseline} token; pass baseline=<token id>.")
    if is_decoder and token == model.config.pad_token_id:
        raise ValueError(
            f"The {baseline} token is this decoder's pad token, which its classification head uses to "
            "find the last real token; pass baseline=<another token id>."
        )
    return int(token)


def _locate(text: str, evidence) -> list[tuple[int, int]]:
    """Character spans of the rationale(s) of one document."""
    if evidence is None:
        return []
    if isinstance(evidence, (str, dict)):
        evidence = [evidence]
    elif not isinstance(evidence, (list, tuple, np.ndarray)):
        raise TypeError(
            "a rationale must be a string or a span dict (or a list of them) per document; "
            f"got {type(evidence).__name__}."
        )
    spans = []
    for ev in evidence:
        if isinstance(ev, dict):
            if ev.get("start_char") is not None and ev.get("end_char") is not None:
                spans.append((int(ev["start_char"]), int(ev["end_char"])))
                continue
            ev = ev.get("text")
        if not isinstance(ev, str):
            raise TypeError(f"a rationale must be a string or a span dict; got {type(ev).__name__}.")
        ev = ev.strip()
        if not ev:
            continue
        start = text.find(ev)
        if start < 0:
            start = text.lower().find(ev.lower())
        if start < 0:
            raise ValueError(f"rationale {ev[:60]!r} does not occur in its text {text[:60]!r}.")
        spans.append((start, start + len(ev)))
    return spans


# ------------------------------------------------------------------ main entry
@validate_params(_CONSTRAINTS, prefer_skip_nested_validation=False)
def token_saliency(
    classifier,
    texts,
    *,
    saliency: str = "ig-embeddings",
    layer: int | None = None,
    units: str = "token",
    normalize: bool = False,
    rationales=None,
    top_n: int = 1,
    n_steps: int = 50,
    internal_batch_size: int | None = 128,
    batch_size: int = 8,
    max_length: int = 128,
    target=None,
    baseline="auto",
    keep_first="auto",
    rank_by: str = "value",
    device="auto",
    verbose: bool = True,
) -> Saliency:
    """Token attributions and the top salient token positions of each text.

    Integrated Gradients runs captum's ``LayerIntegratedGradients`` on the
    classifier's target logit along a straight path from a reference input
    (every non-special token replaced by ``baseline``) to the real one, and
    sums the attributions over the hidden dimension:

    * ``saliency="ig-layer"``: over the OUTPUT of hidden-state layer
      ``layer`` (``hidden_states[layer]``: block ``layer - 1``'s output; a
      decoder's final norm at the top), interpolating between the layer's
      activations on the reference and on the real input.  This is the
      paper's reference implementation; it uses 500 steps, the L2-normalised
      attributions, word units and absolute ranking
      (``units="word", normalize=True, rank_by="absolute"``).
    * ``saliency="ig-embeddings"``: over the token-embedding layer.

    The default of 50 steps (Gauss-Legendre) gives the same top token as
    500 on most sentences at a tenth of the cost (docs/evaluation.md).
    With ``saliency="rationale"``, human rationale texts are mapped to the
    tokens they cover.

    Parameters
    ----------
    classifier : ClassifierResult or str
        The fine-tuned classifier (see
        :func:`~clvqlearn.evaluation.tasks.fine_tune_classifier`), its
        checkpoint folder, or any sequence-classification model name.  For
        ``"rationale"`` only its tokenizer is used.
    texts : sequence of str
        The documents.
    saliency : {"ig-embeddings", "ig-layer", "rationale"}, default="ig-embeddings"
        ``"integrated_gradients"`` is accepted as the older name of
        ``"ig-embeddings"``.
    layer : int, optional
        Required for ``"ig-layer"``: the hidden-state index of the analysis
        layer (the extractor's convention: 0 = embeddings output, ``i`` =
        output of block ``i``; negative counts from the top).
    units : {"token", "word"}, default="token"
        ``"word"``: a word's score is the max over its subword tokens (the
        fast tokenizer's ``word_ids``) and words are ranked; each top
        position is the subword carrying its word's max.
    normalize : bool, default=False
        Divide each document's attributions by their L2 norm (the
        reference's step; it does not change any ranking).
    rationales : sequence, optional
        Required for ``"rationale"``: per document, an evidence string, a list
        of them, or span dicts with ``start_char``/``end_char`` (as in
        ``TextDataset.rationale_spans``).  Evidence must occur in its text.
    top_n : int, default=1
        How many top positions to return per document.
    n_steps : int, default=50
        IG integration steps.
    internal_batch_size : int or None, default=128
        How many interpolated inputs captum runs per forward pass (memory
        bound); None = all steps of a batch at once.
    batch_size : int, default=8
        Documents per IG call.
    max_length : int, default=128
        Truncation; must match the ``LayerPairExtractor``'s so positions agree.
    target : array-like of int, optional
        The class to explain per document; default the predicted class.
    baseline : {"auto", "pad", "unk"} or int, default="auto"
        Reference token: ``[PAD]`` for encoders; for decoders (whose heads
        locate the last real token through pad ids) the first of unk, eos,
        bos that is not the pad token.
    keep_first : {"auto", True, False}, default="auto"
        Keep the first token of every sequence in the reference input (never
        a top token).  ``"auto"``: for decoders, whose first position is an
        attention sink with massive activations; moving its embedding makes
        the IG path so rough that it does not converge (SmolLM2: convergence
        deltas of about 10 logits at 100 steps).
    rank_by : {"value", "absolute"}, default="value"
        Rank tokens (words) by signed attribution (evidence for the target)
        or by its magnitude.
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, default="auto"
    verbose : bool, default=True
        Show a progress bar.

    Returns
    -------
    Saliency

    Raises
    ------
    ValueError
        On empty texts, an unknown method or option, ``"ig-layer"`` without
        a valid ``layer``, ``units="word"`` with a slow tokenizer, missing or
        misplaced rationales, or targets outside the classifier's classes.

    Examples
    --------
    Human rationales need only the tokenizer:

    >>> sal = token_saliency("minilm", ["a dull , lifeless film ."], saliency="rationale",
    ...                      rationales=[["lifeless film"]], top_n=3)
    >>> sal.top_tokens()
    [['lifeless', 'film', None]]

    Integrated Gradients needs a fine-tuned classifier; the paper's recipe:

    >>> sal = token_saliency(clf, ["a dull , lifeless film ."], saliency="ig-layer", layer=4,
    ...                      units="word", normalize=True, rank_by="absolute", n_steps=500)  # doctest: +SKIP
    >>> sal.top_tokens()  # doctest: +SKIP
    [['dull']]
    """
    texts = check_texts(texts)
    saliency = _ALIASES.get(saliency, saliency)
    if saliency == "ig-layer" and layer is None:
        raise ValueError("saliency='ig-layer' needs layer=<the analysis layer's hidden-state index>.")
    params = dict(max_length=int(max_length), top_n=int(top_n), units=units, normalize=bool(normalize))
    if saliency == "rationale":
        if rationales is None:
            raise ValueError("saliency='rationale' needs rationales= (the evidence texts of each document).")
        rationales = list(rationales)
        if len(rationales) != len(texts):
            raise ValueError(f"Got {len(texts)} texts but {len(rationales)} rationales: expected one entry per text.")
        name = str(classifier.path) if isinstance(classifier, ClassifierResult) else classifier
        return _rationale_saliency(_models.load_tokenizer(name), texts, rationales, top_n, max_length, params)
    model, tokenizer, is_decoder = _classifier_model(classifier, device)
    module, to_input, layer = _attribution_module(model, saliency, layer)
    keep_first = is_decoder if keep_first == "auto" else bool(keep_first)
    ref_token = _baseline_token(model, tokenizer, baseline, is_decoder)
    params.update(n_steps=int(n_steps), baseline_token=ref_token, rank_by=rank_by, keep_first=keep_first,
                  layer=layer)
    enc = _encode(tokenizer, texts, max_length, units)
    fixed = [m.copy() for m in enc["special"]]
    for m in fixed if keep_first else ():
        m[0] = True
    out = _integrate(model, tokenizer, module, to_input, enc["input_ids"], fixed, ref_token,
                     _check_target(target, len(texts), model.config.num_labels), n_steps=n_steps,
                     internal_batch_size=internal_batch_size, batch_size=batch_size, verbose=verbose)
    if normalize:
        out["attributions"] = [a / n if (n := float(np.linalg.norm(a))) > 0 else a for a in out["attributions"]]
    return _ranked(Saliency(
        method=saliency, input_ids=enc["input_ids"],
        tokens=[tokenizer.convert_ids_to_tokens(ids.tolist()) for ids in enc["input_ids"]],
        attributions=out["attributions"], special_mask=enc["special"], fixed_mask=fixed,
        top_positions=np.zeros((len(texts), top_n), dtype=np.int64), word_ids=enc["word_ids"],
        targets=out["targets"], probabilities=out["probabilities"], convergence_delta=out["deltas"], params=params,
    ))


def _ranked(sal: Saliency) -> Saliency:
    """Fill ``top_positions`` from each document's ranking."""
    top_n = sal.top_positions.shape[1]
    sal.top_positions = np.stack([_pad(sal.ranking(i), top_n) for i in range(len(sal))])
    return sal


def _check_target(target, n: int, n_classes: int):
    if target is None:
        return None
    target = np.asarray(target)
    if target.shape != (n,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"target must be {n} integer class ids; got shape {target.shape}, dtype {target.dtype}.")
    if target.min() < 0 or target.max() >= n_classes:
        raise ValueError(f"target must lie in [0, {n_classes}); got values {target.min()}..{target.max()}.")
    return target


def _encode(tokenizer, texts, max_length, units) -> dict:
    """Token ids, special-token masks and (for word units) word ids of every text."""
    if units == "word" and not getattr(tokenizer, "is_fast", False):
        raise ValueError("units='word' needs a fast tokenizer (word_ids); this one is not.")
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    word_ids = None
    if units == "word":
        word_ids = [np.array([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64)
                    for i in range(len(texts))]
    return {
        "input_ids": [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]],
        "special": [np.asarray(m, dtype=bool) for m in enc["special_tokens_mask"]],
        "word_ids": word_ids,
    }


def _integrate(model, tokenizer, module, to_input, input_ids, fixed, ref_token, target, *, n_steps,
               internal_batch_size, batch_size, verbose) -> dict:
    """captum LayerIntegratedGradients over ``module``, in padded batches of similar length."""
    from captum.attr import LayerIntegratedGradients

    dev = next(model.parameters()).device

    def forward(ids, attention_mask):
        return model(input_ids=ids, attention_mask=attention_mask).logits

    lig = LayerIntegratedGradients(forward, module)
    n = len(input_ids)
    attributions = [None] * n
    targets = np.zeros(n, dtype=np.int64)
    probs = np.zeros((n, model.config.num_labels), dtype=np.float32)
    deltas = np.zeros(n, dtype=np.float64)
    batches = length_batches([ids.size for ids in input_ids], batch_size)
    model.eval()
    for idx in tqdm(batches, desc=f"integrated gradients ({n_steps} steps)", disable=not verbose, leave=False):
        ids, mask = pad_right([input_ids[i] for i in idx], tokenizer.pad_token_id)
        ref, _ = pad_right([np.where(fixed[i], input_ids[i], ref_token) for i in idx], tokenizer.pad_token_id)
        ids, mask, ref = (torch.from_numpy(a) for a in (ids, mask, ref))
        ids, mask, ref = ids.to(dev), mask.to(dev), ref.to(dev)
        with torch.no_grad():
            p = torch.softmax(forward(ids, mask).float(), dim=-1).cpu().numpy()
        tgt = p.argmax(1) if target is None else target[idx]
        attr, delta = lig.attribute(
            inputs=ids,
            baselines=ref,
            target=torch.as_tensor(tgt, device=dev),
            additional_forward_args=(mask,),
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
            attribute_to_layer_input=to_input,
        )
        if isinstance(attr, (tuple, list)):  # a module with several outputs: the hidden state comes first
            attr = attr[0]
        attr = attr.sum(-1).detach().float().cpu().numpy()
        for j, i in enumerate(idx):
            attributions[i] = attr[j, : input_ids[i].size]
        targets[idx], probs[idx], deltas[idx] = tgt, p, delta.detach().float().cpu().numpy()
    return {"attributions": attributions, "targets": targets, "probabilities": probs, "deltas": deltas}


def _rationale_saliency(tokenizer, texts, rationales, top_n, max_length, params) -> Saliency:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("saliency='rationale' needs a fast tokenizer (character offsets); this one is not.")
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    return_offsets_mapping=True)
    input_ids, special, attributions = [], [], []
    for i, text in enumerate(texts):
        ids = np.asarray(enc["input_ids"][i], dtype=np.int64)
        sp = np.asarray(enc["special_tokens_mask"][i], dtype=bool)
        offsets = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        score = np.zeros(ids.size)
        for a, b in _locate(text, rationales[i]):
            score[(offsets[:, 0] < b) & (offsets[:, 1] > a) & ~sp] = 1.0
        input_ids.append(ids)
        special.append(sp)
        attributions.append(score)
    word_ids = None
    if params.get("units") == "word":
        word_ids = [np.array([-1 if w is None else w for w in enc.word_ids(i)], dtype=np.int64)
                    for i in range(len(texts))]
    sal = Saliency(
        method="rationale",
        input_ids=input_ids,
        tokens=[tokenizer.convert_ids_to_tokens(ids.tolist()) for ids in input_ids],
        attributions=attributions,
        special_mask=special,
        fixed_mask=special,
        top_positions=np.zeros((len(texts), top_n), dtype=np.int64),
        word_ids=word_ids,
        params={**params, "rank_by": "value"},
    )
    return _ranked(sal)  # rationale tokens (words) in reading order: no ranking inside a rationale


# ----------------------------------------------------------------------- the cache
#: The cache folder (under ``get_cache_home()``) of :func:`saliency_memory` ``("auto")``.
CACHE_FOLDER = "saliency"


def saliency_memory(memory="auto"):
    """The ``joblib.Memory`` that caches saliency maps.

    Parameters
    ----------
    memory : "auto", str, path-like, joblib.Memory or None, default="auto"
        ``"auto"``: the folder ``saliency`` under
        :func:`clvqlearn._config.get_cache_home` (``$CLVQLEARN_CACHE``); a
        folder: that folder; a ``joblib.Memory``: itself; None: no cache.

    Returns
    -------
    joblib.Memory or None

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     saliency_memory(tmp).location == tmp
    True
    >>> saliency_memory(None) is None
    True
    """
    import joblib

    if memory is None or isinstance(memory, joblib.Memory):
        return memory
    location = get_cache_home() / CACHE_FOLDER if isinstance(memory, str) and memory == "auto" else memory
    return joblib.Memory(location=os.fspath(location), verbose=0)


def clear_saliency_cache(memory="auto") -> None:
    """Forget the saliency maps cached by :func:`cached_token_saliency` (and the ablation report).

    Parameters
    ----------
    memory : "auto", str, path-like or joblib.Memory, default="auto"
        As in :func:`saliency_memory`.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     clear_saliency_cache(tmp)
    """
    cache = saliency_memory(memory)
    if cache is not None:
        cache.clear(warn=False)


def cached_token_saliency(classifier, texts, *, memory="auto", device="auto", verbose: bool = False,
                          **options) -> Saliency:
    """:func:`token_saliency` through a ``joblib.Memory`` shared by processes.

    A grid search over concept estimators (also with ``n_jobs``: the cache
    is a folder that every joblib worker reads) computes Integrated
    Gradients once per classifier, texts and settings.  The key holds the
    classifier checkpoint's record (base model, fingerprint, accuracy and
    training history, not its folder), or the model name for a plain
    model, the texts and every option except ``device`` and ``verbose``.

    Parameters
    ----------
    classifier : ClassifierResult or str
        As in :func:`token_saliency`.
    texts : sequence of str
    memory : "auto", str, path-like, joblib.Memory or None, default="auto"
        Where the maps are kept (:func:`saliency_memory`); None computes
        without a cache.
    device : str, default="auto"
    verbose : bool, default=False
    **options
        The other keywords of :func:`token_saliency`.

    Returns
    -------
    Saliency

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     first = cached_token_saliency("minilm", ["a dull film"], memory=tmp, saliency="rationale",
    ...                                   rationales=[["dull"]])
    ...     again = cached_token_saliency("minilm", ["a dull film"], memory=tmp, saliency="rationale",
    ...                                   rationales=[["dull"]])
    >>> first.top_tokens() == again.top_tokens() == [["dull"]]
    True
    """
    texts = check_texts(texts)
    cache = saliency_memory(memory)
    if cache is None:
        return token_saliency(classifier, texts, device=device, verbose=verbose, **options)
    compute = cache.cache(_saliency_of, ignore=["classifier", "device", "verbose"])
    return compute(_classifier_key(classifier), classifier, texts, options, device, verbose)


def _saliency_of(key, classifier, texts, options, device, verbose) -> Saliency:
    """What :func:`cached_token_saliency` caches (``key`` stands for ``classifier`` in the hash)."""
    return token_saliency(classifier, texts, device=device, verbose=verbose, **options)


def _classifier_key(classifier):
    """What identifies a classifier's weights: its checkpoint record, or the name of a plain model."""
    result = resolve_classifier(classifier)
    if result is None:
        return str(classifier)
    record = json.loads((Path(result.path) / INFO_FILE).read_text())
    return {name: record.get(name) for name in ("base_model", "fingerprint", "accuracy", "history", "params")}
