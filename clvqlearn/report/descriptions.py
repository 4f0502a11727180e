"""Describe concepts by the tokens and sentences assigned to them.

This is what a person (or an LLM judge) reads: for each concept, its size,
its most frequent words (subword pieces merged into the words they belong
to), a few example sentences with the token marked and, when labels are
given, the labels of the sentences in which the concept holds the salient
token.  The paper's special-token rule is applied: a concept whose tokens
are mostly special tokens ([CLS], ``<s>``, ...) is shown by example
sentences instead of words (its ``kind`` is ``"sentences"``).

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> from clvqlearn.report.descriptions import describe_concepts
>>> pairs = LayerPairs(low=np.zeros((3, 1)), high=np.zeros((3, 1)), offsets=[0, 2, 3],
...                    tokens=np.array(["good", "film", "good"], dtype=object))
>>> table = describe_concepts(np.array([1, 0, 1]), pairs, k=2)
>>> table.loc[1, "top_tokens"]
'good (2)'
>>> table.loc[1, "kind"], table.loc[1, "representation"]
('words', ['good'])
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from ..data import LayerPairs
from ..data.words import _piece, _scheme
from ..data.words import token_words as _data_token_words

__all__ = ["describe_concepts", "describe_estimator", "doc_sentences", "token_words"]

_SPECIAL = re.compile(r"^(\[[A-Z]+\]|<[^<>\s]*>|<\|[^|]*\|>)$")
MARK = ("[[", "]]")


def is_special(token: str) -> bool:
    """True for special-token strings: ``[CLS]``, ``<s>``, ``<|im_start|>``, ...

    Examples
    --------
    >>> is_special("[CLS]"), is_special("</s>"), is_special("cls")
    (True, True, False)
    """
    return bool(_SPECIAL.match(str(token)))


def _token_texts(tokens) -> np.ndarray:
    """Every token's own text, decoded alone (``merge_subwords=False``): no ``##``, ``Ġ`` or ``▁``."""
    scheme = _scheme(tokens)
    return np.array([_piece(str(t), scheme)[0] for t in tokens], dtype=object)


def token_words(pairs: LayerPairs) -> np.ndarray:
    """The whole word each token row belongs to, one entry per row.

    The words of :func:`clvqlearn.data.token_words` (the same words the
    alignment, the autointerp prompts and the frequency filter read),
    spread back over the rows: WordPiece ``##`` pieces join the word
    before them; byte-level BPE (``Ġ``) and SentencePiece (``▁``) pieces
    join it when both sides are letters or digits, so punctuation is a word
    of its own (``"Hello" ","`` -> ``"Hello"``, ``","``) and a character
    split over two byte-level tokens comes out whole.

    Parameters
    ----------
    pairs : LayerPairs
        Must carry token strings.

    Returns
    -------
    ndarray of str of shape (n_tokens,)
        Where :func:`clvqlearn.data.token_words` returns ``(word_index,
        words)``, this is ``words[word_index]``.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> pairs = LayerPairs(low=np.zeros((4, 1)), high=np.zeros((4, 1)), offsets=[0, 4],
    ...                    tokens=np.array(["un", "##bear", "##able", "film"], dtype=object))
    >>> list(token_words(pairs))
    ['unbearable', 'unbearable', 'unbearable', 'film']
    """
    _tokens_of(pairs)
    return _row_words(pairs)[1]


def _row_words(pairs: LayerPairs) -> tuple[np.ndarray, np.ndarray]:
    """The word number of every row and its word (:func:`clvqlearn.data.token_words`, spread over rows)."""
    word_of, words = _data_token_words(pairs)
    return word_of, np.asarray(words, dtype=object)[word_of]


def doc_sentences(pairs: LayerPairs, *, mark_rows=None) -> list[str]:
    """Each document's text rebuilt from its tokens, words joined by spaces.

    Parameters
    ----------
    pairs : LayerPairs
    mark_rows : array-like of int, optional
        One token row per document (-1 = none) whose word is put in ``[[ ]]``.

    Returns
    -------
    list of str

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> pairs = LayerPairs(low=np.zeros((3, 1)), high=np.zeros((3, 1)), offsets=[0, 3],
    ...                    tokens=np.array(["a", "dull", "##ish"], dtype=object))
    >>> doc_sentences(pairs, mark_rows=[1])
    ['a [[dullish]]']
    """
    _tokens_of(pairs)
    word, words = _row_words(pairs)
    marks = np.full(pairs.n_docs, -1) if mark_rows is None else np.asarray(mark_rows, dtype=np.int64)
    out = []
    for doc in range(pairs.n_docs):
        out.append(_sentence(words, word, pairs.offsets[doc], pairs.offsets[doc + 1], int(marks[doc])))
    return out


def _sentence(words, word, start, stop, mark) -> str:
    pieces, last = [], None
    marked = word[mark] if mark >= 0 else None
    for row in range(start, stop):
        if word[row] == last:
            continue
        last = word[row]
        text = str(words[row])
        pieces.append(f"{MARK[0]}{text}{MARK[1]}" if word[row] == marked else text)
    return " ".join(pieces)


def _tokens_of(pairs: LayerPairs) -> np.ndarray:
    if not isinstance(pairs, LayerPairs):
        raise TypeError(f"pairs must be a LayerPairs; got {type(pairs).__name__}.")
    if pairs.tokens is None:
        raise ValueError("Concept descriptions need LayerPairs with token strings (pairs.tokens is None).")
    return np.asarray(pairs.tokens, dtype=object)


def _stop_set(stop_words) -> frozenset:
    if stop_words is None:
        return frozenset()
    if isinstance(stop_words, str):
        if stop_words != "english":
            raise ValueError(f"stop_words must be None, 'english' or a collection of words; got {stop_words!r}.")
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
    return frozenset(str(w).lower() for w in stop_words)


def _check_ids(concept_ids, pairs, k):
    ids = np.asarray(concept_ids)
    if ids.shape != (pairs.n_tokens,):
        raise ValueError(f"concept_ids must have shape ({pairs.n_tokens},) (one per token row); got {ids.shape}.")
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise ValueError("concept_ids must be non-negative integers (estimator.predict(pairs)).")
    ids = ids.astype(np.int64)
    top = int(ids.max()) + 1 if ids.size else 0
    k = top if k is None else int(k)
    if k < top:
        raise ValueError(f"k={k} but concept_ids holds concept {top - 1}.")
    return ids, k


def _label_table(ids, pairs, salient_rows, labels, label_names, k):
    """Per concept: counts of each label over the documents where it is salient."""
    rows = np.asarray(salient_rows, dtype=np.int64)
    labels = np.asarray(labels)
    if rows.shape != (pairs.n_docs,) or labels.shape != (pairs.n_docs,):
        raise ValueError(f"salient_rows and labels must have one entry per document ({pairs.n_docs}); got "
                         f"{rows.shape} and {labels.shape}.")
    names = list(label_names) if label_names is not None else sorted({str(v) for v in labels.tolist()})
    codes = {str(n): i for i, n in enumerate(names)}
    if label_names is not None and np.issubdtype(labels.dtype, np.integer):
        labels = np.array([names[int(v)] for v in labels], dtype=object)
    table = np.zeros((k, len(names)), dtype=np.int64)
    for row, lab in zip(rows.tolist(), labels.tolist()):
        if row >= 0:
            if str(lab) not in codes:
                raise ValueError(f"label {lab!r} is not among label_names {names}.")
            table[ids[row], codes[str(lab)]] += 1
    return names, table


def describe_concepts(concept_ids, pairs: LayerPairs, *, k: int | None = None, top_tokens: int = 10,
                      n_examples: int = 3, n_sentences: int = 5, window: int = 6, stop_words=None,
                      merge_subwords: bool = True, special_share: float = 0.5, salient_rows=None,
                      labels=None, label_names=None, classifier=None, texts=None,
                      random_state=None) -> pd.DataFrame:
    """One row per concept: size, top words, examples, label distribution.

    Parameters
    ----------
    concept_ids : array-like of shape (n_tokens,)
        Concept of every token (``estimator.predict(pairs)``).
    pairs : LayerPairs
        Must carry token strings.
    k : int, optional
        Number of concepts (default: ``max(concept_ids) + 1``); concepts
        with no tokens get a row with ``kind == "empty"``.
    top_tokens : int, default=10
        Most frequent words listed per concept (the paper shows 10).
    n_examples : int, default=3
        Short contexts per concept (column ``examples``).
    n_sentences : int, default=5
        Whole example sentences per concept, the token's word in ``[[ ]]``
        (the paper shows 5 for special-token concepts).
    window : int, default=6
        Tokens of context on each side in ``examples``.
    stop_words : None, "english" or collection of str
        Words left out of the top words (they still count in the size).
    merge_subwords : bool, default=True
        Count whole words (``un ##bear ##able`` -> ``unbearable``) instead
        of subword tokens.
    special_share : float, default=0.5
        A concept whose share of special tokens is above this is shown by
        sentences (the paper's rule: more than half).
    salient_rows : array-like of shape (n_docs,), optional
        Row of each document's salient token in ``pairs`` (-1 = none), e.g.
        ``Saliency.rows(pairs)``.
    labels : array-like of shape (n_docs,), optional
        Gold labels or model predictions of the documents (with
        ``salient_rows``).
    label_names : sequence of str, optional
        Names of integer labels.
    classifier : object with ``predict(texts)``, optional
        Used instead of ``labels`` (with ``texts``): its predictions.
    texts : sequence of str, optional
        The documents of ``pairs``, for ``classifier``.
    random_state : int or None
        Which examples are picked.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``concept``: ``n_tokens``, ``share``, ``n_distinct``,
        ``top_tokens`` (``"word (count), ..."``), ``examples`` (contexts
        joined by `` | ``), ``words`` and ``word_counts`` (lists),
        ``sentences`` (list), ``special_share``, ``kind`` (``"words"``,
        ``"sentences"`` or ``"empty"``), ``representation`` (the list shown to
        a judge: the words, or the sentences), and with labels ``n_salient``
        plus one ``label:<name>`` column of counts per label.
    """
    tokens = _tokens_of(pairs)
    ids, k = _check_ids(concept_ids, pairs, k)
    if classifier is not None:
        if texts is None:
            raise ValueError("classifier needs texts (the documents of pairs) to predict from.")
        labels = classifier.predict(list(texts))
    if labels is not None and salient_rows is None:
        raise ValueError("labels need salient_rows (the row of each document's salient token).")
    rng = np.random.default_rng(random_state)
    word_of, words = _row_words(pairs) if merge_subwords else (np.arange(len(tokens)), _token_texts(tokens))
    special = np.array([is_special(t) for t in tokens], dtype=bool)
    stop = _stop_set(stop_words)
    doc_of = pairs.doc_index
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(k + 1))
    context = {"tokens": tokens, "words": words, "special": special, "stop": stop, "doc_of": doc_of, "pairs": pairs,
               "word_of": word_of}
    rows = []
    for concept in range(k):
        members = order[bounds[concept]:bounds[concept + 1]]
        picks = rng.permutation(members)[:max(n_examples, n_sentences)] if members.size else members
        rows.append(_concept_row(concept, members, picks, context, top_tokens=top_tokens, n_examples=n_examples,
                                 n_sentences=n_sentences, window=window, special_share=special_share))
    table = pd.DataFrame(rows).set_index("concept")
    table["share"] = table["n_tokens"] / max(ids.size, 1)
    if labels is not None:
        names, counts = _label_table(ids, pairs, salient_rows, labels, label_names, k)
        table["n_salient"] = counts.sum(axis=1)
        for j, name in enumerate(names):
            table[f"label:{name}"] = counts[:, j]
    return table


def _concept_row(concept, members, picks, ctx, *, top_tokens, n_examples, n_sentences, window, special_share):
    words, special, stop = ctx["words"], ctx["special"], ctx["stop"]
    # one count per word occurrence, however many of its pieces the concept holds
    _, first = np.unique(ctx["word_of"][members], return_index=True)
    once = members[np.sort(first)]
    counts = Counter(str(w) for w, s in zip(words[once], special[once]) if not s and str(w).lower() not in stop)
    top = counts.most_common(top_tokens)
    sp = float(special[members].mean()) if members.size else 0.0
    sentences = [_marked_sentence(ctx, int(i)) for i in picks[:n_sentences]]
    kind = "empty" if members.size == 0 else ("sentences" if sp > special_share or not top else "words")
    return {
        "concept": concept,
        "n_tokens": int(members.size),
        "n_distinct": len(counts),
        "top_tokens": ", ".join(f"{w} ({c})" for w, c in top),
        "examples": " | ".join(_context(ctx["tokens"], ctx["pairs"].offsets, ctx["doc_of"][i], i, window)
                               for i in picks[:n_examples]),
        "words": [w for w, _ in top],
        "word_counts": [int(c) for _, c in top],
        "sentences": sentences,
        "special_share": sp,
        "kind": kind,
        "representation": sentences if kind == "sentences" else [w for w, _ in top],
    }


def _marked_sentence(ctx, row) -> str:
    pairs, doc = ctx["pairs"], int(ctx["doc_of"][row])
    return _sentence(ctx["words"], ctx["word_of"], pairs.offsets[doc], pairs.offsets[doc + 1], row)


def _context(tokens, offsets, doc, row, window) -> str:
    start, stop = offsets[doc], offsets[doc + 1]
    left = [str(t) for t in tokens[max(start, row - window):row]]
    right = [str(t) for t in tokens[row + 1:min(stop, row + 1 + window)]]
    return " ".join(left + [f"[[{tokens[row]}]]"] + right)


def describe_estimator(estimator, pairs: LayerPairs, **kwargs) -> pd.DataFrame:
    """:func:`describe_concepts` for a fitted concept estimator.

    Works for all four estimators (``CrossLayerVQ``, ``SingleLayerVQ``,
    ``KMeansConcepts``, ``SparseAutoencoder``) and for a fitted Pipeline whose
    last step is one (then ``pairs`` must be what its last step reads).

    Parameters
    ----------
    estimator : fitted estimator with ``predict`` and ``components_``
    pairs : LayerPairs
    **kwargs
        Passed to :func:`describe_concepts`.

    Returns
    -------
    pandas.DataFrame

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import KMeansConcepts, LayerPairs
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(6, 2)), high=rng.normal(size=(6, 2)), offsets=[0, 3, 6],
    ...                    tokens=np.array(list("abcabc"), dtype=object))
    >>> km = KMeansConcepts(k=2, random_state=0).fit(pairs)
    >>> int(describe_estimator(km, pairs)["n_tokens"].sum())
    6
    """
    last = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    k = getattr(last, "components_", None)
    k = None if k is None else int(np.asarray(k).shape[0])
    return describe_concepts(last.predict(pairs), pairs, k=kwargs.pop("k", k), **kwargs)
