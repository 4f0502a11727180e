"""The paper reference's frequency filter: rare words out, frequent words capped.

The reference fits its concepts on a filtered set of tokens, as ConceptX
does (Dalvi et al. 2022): word types seen fewer than 5 times are dropped,
and of every other type at most 20 occurrences, drawn at random, are kept.
:func:`frequency_filter` does this on a :class:`~clvqlearn.LayerPairs`,
word by word: the rows of a word (its subword pieces, joined by
:func:`~clvqlearn.data.words.token_words`) are kept or dropped together.

The kept rows stay in their documents, in their order and with their
original ``positions``, so the gaps are visible.  Estimators that read
tokens one by one (:class:`~clvqlearn.KMeansConcepts`,
:class:`~clvqlearn.SparseAutoencoder`, and the VQ estimators with the
per-token ``decoder="mlp"``) see exactly the filtered token set; a context
decoder (``decoder="transformer"`` or ``"transformer-codes"``) would read
each filtered document as a shorter sentence with words missing.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from .pairs import LayerPairs
from .words import _SPECIAL, token_words

__all__ = ["frequency_filter", "frequency_mask"]


def _check_count(name: str, value, *, optional: bool) -> None:
    """``value`` must be an int >= 1 (or None when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        expected = "an int >= 1" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {expected}; got {value!r}.")


def _check(pairs, min_count, max_count, lowercase) -> None:
    """The settings and the token strings, before any work."""
    if not isinstance(pairs, LayerPairs):
        raise TypeError(f"pairs must be a LayerPairs (what LayerPairExtractor returns or LayerPairs.open reads); "
                        f"got {type(pairs).__name__}.")
    _check_count("min_count", min_count, optional=False)
    _check_count("max_count", max_count, optional=True)
    if not isinstance(lowercase, (bool, np.bool_)):
        raise ValueError(f"lowercase must be True or False; got {lowercase!r}.")
    if pairs.tokens is None:
        raise ValueError("the frequency filter needs pairs.tokens (the token strings, to count words), but it is "
                         "None; use the LayerPairs that LayerPairExtractor returns.")


def _occurrences(pairs: LayerPairs, lowercase: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every row's word occurrence, and each occurrence's type code (-1: a special token or an empty word)."""
    word_index, words = token_words(pairs)
    if words and not any(words):
        raise ValueError("pairs.tokens holds only empty strings: its token strings were not saved (an activation "
                         "store written from LayerPairs without tokens?); the frequency filter counts words.")
    keys = np.array([w.lower() if lowercase else w for w in words], dtype=object)
    countable = np.array([bool(w) and not _SPECIAL.match(w) for w in words], dtype=bool)
    types = np.full(len(words), -1, dtype=np.int64)
    if countable.any():
        _, types[countable] = np.unique(keys[countable].astype(str), return_inverse=True)
    return word_index, types


def _kept_occurrences(types: np.ndarray, min_count: int, max_count: int | None, rng) -> np.ndarray:
    """Occurrences kept: of every type seen ``min_count`` times or more, up to ``max_count`` drawn at random."""
    keep = np.zeros(types.size, dtype=bool)
    counted = np.flatnonzero(types >= 0)
    if not counted.size:
        return keep
    counts = np.bincount(types[counted])
    frequent = counted[counts[types[counted]] >= min_count]
    if max_count is None:
        keep[frequent] = True
        return keep
    # one random key per occurrence, sorted within each type: the first max_count of a type are a draw
    # without replacement of its occurrences
    order = frequent[np.lexsort((rng.random_sample(frequent.size), types[frequent]))]
    first = np.r_[True, types[order][1:] != types[order][:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    keep[order[np.arange(order.size) - group_start < max_count]] = True
    return keep


def frequency_mask(pairs, *, min_count=5, max_count=20, random_state=None, lowercase=False) -> np.ndarray:
    """The token rows that the paper's frequency filter keeps, as a boolean mask.

    What :func:`frequency_filter` keeps (it takes these rows); see there.

    Parameters
    ----------
    pairs : LayerPairs
        With ``tokens``; in memory or a store view.
    min_count : int, default=5
        Word types with fewer occurrences in ``pairs`` are dropped (1: no floor).
    max_count : int or None, default=20
        At most this many occurrences of each type are kept, drawn at random
        without replacement (None: no cap).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.
    lowercase : bool, default=False
        Count ``The`` and ``the`` as one type.

    Returns
    -------
    ndarray of bool, shape (n_tokens,)

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> tokens = np.array(["[CLS]", "the", "cat", "the", "dog", "the"], dtype=object)
    >>> pairs = LayerPairs(low=np.zeros((6, 1)), high=np.zeros((6, 1)), offsets=[0, 6], tokens=tokens)
    >>> frequency_mask(pairs, min_count=2, max_count=None)
    array([False,  True, False,  True, False,  True])
    >>> int(frequency_mask(pairs, min_count=2, max_count=2, random_state=0).sum())
    2
    """
    _check(pairs, min_count, max_count, lowercase)
    rng = check_random_state(random_state)
    word_index, types = _occurrences(pairs, bool(lowercase))
    return _kept_occurrences(types, int(min_count), None if max_count is None else int(max_count), rng)[word_index]


def _take_rows(pairs: LayerPairs, mask: np.ndarray, description: str) -> LayerPairs:
    """The rows ``mask`` of ``pairs``, documents left without a row dropped."""
    rows = np.flatnonzero(mask)
    per_doc = np.bincount(pairs.doc_index[rows], minlength=pairs.n_docs)
    docs = np.flatnonzero(per_doc > 0)

    def pick(column):  # a store's lazy column reads only these rows
        return None if column is None else np.asarray(column[rows])

    extra = dict(pairs.extra)
    extra.update(token_filter=description, source_n_tokens=pairs.n_tokens, source_documents=docs.tolist())
    return LayerPairs(low=pick(pairs.low), high=pick(pairs.high),
                      offsets=np.concatenate([[0], np.cumsum(per_doc[docs])]),
                      token_ids=pick(pairs.token_ids), tokens=pick(pairs.tokens), positions=pick(pairs.positions),
                      layers=pairs.layers, model_name=pairs.model_name, extra=extra)


def frequency_filter(pairs, *, min_count=5, max_count=20, random_state=None, lowercase=False) -> LayerPairs:
    """The token rows the paper's reference fits its concepts on (ConceptX's frequency filter).

    Subword rows are joined into words (:func:`~clvqlearn.data.words.token_words`)
    and words are counted by type over all of ``pairs``.  Kept: every type
    with at least ``min_count`` occurrences, and of each at most
    ``max_count`` occurrences drawn at random without replacement (all of
    them when it has fewer); every row of a kept occurrence is kept, so a
    word's subword pieces stay together.  Special tokens (``[CLS]``,
    ``<s>``, ...) and words that are empty once decoded (a byte-level piece
    that is only a space or a line break) are always dropped.

    The kept rows stay in their documents, in order and with their original
    ``positions`` (so the gaps are visible).  Documents left without a row
    are dropped; ``extra["source_documents"]`` gives the index in ``pairs``
    of every remaining document (to find its text), ``extra["token_filter"]``
    the settings and ``extra["source_n_tokens"]`` the rows before the
    filter.  A context decoder (CrossLayerVQ's ``decoder="transformer"`` or
    ``"transformer-codes"``) reads each filtered document as a shorter
    sentence with words missing; per-token estimators (KMeansConcepts,
    SparseAutoencoder, the VQ estimators with ``decoder="mlp"``) see
    exactly the filtered tokens.

    Parameters
    ----------
    pairs : LayerPairs
        With ``tokens`` (what :class:`~clvqlearn.LayerPairExtractor` returns);
        a store view (:meth:`LayerPairs.open <clvqlearn.LayerPairs.open>`)
        reads all its token strings and only the kept rows of its columns.
    min_count : int, default=5
        Word types seen fewer times are dropped (1: no floor).
    max_count : int or None, default=20
        Occurrences kept per word type (None: no cap).  It may be below
        ``min_count``: the floor applies to the counts in ``pairs``, the cap
        to what is kept.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw of the occurrences kept: the same seed keeps the same
        rows.
    lowercase : bool, default=False
        Count ``The`` and ``the`` as one type (an uncased tokenizer such as
        MiniLM's lowercases already).

    Returns
    -------
    LayerPairs
        In memory, holding only the kept rows.

    Raises
    ------
    ValueError
        For ``min_count`` or ``max_count`` that is not an int >= 1 (None
        allowed for ``max_count``), for ``pairs`` without token strings.
    TypeError
        When ``pairs`` is not a LayerPairs.

    See Also
    --------
    frequency_mask : the boolean row mask of the same selection.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.data import frequency_filter
    >>> tokens = np.array(["[CLS]", "the", "play", "##ing", "cat", "[SEP]",
    ...                    "[CLS]", "the", "dog", "play", "##ing", "[SEP]"], dtype=object)
    >>> pairs = LayerPairs(low=np.zeros((12, 2)), high=np.zeros((12, 2)), offsets=[0, 6, 12],
    ...                    tokens=tokens, positions=np.r_[0:6, 0:6])
    >>> kept = frequency_filter(pairs, min_count=2, max_count=None)
    >>> kept.tokens.tolist(), kept.positions.tolist(), kept.offsets.tolist()
    (['the', 'play', '##ing', 'the', 'play', '##ing'], [1, 2, 3, 1, 3, 4], [0, 3, 6])
    >>> frequency_filter(pairs, min_count=2, max_count=1, random_state=0).n_tokens  # one "the", one "playing"
    3
    """
    mask = frequency_mask(pairs, min_count=min_count, max_count=max_count, random_state=random_state,
                          lowercase=lowercase)
    description = f"min_count={int(min_count)}, max_count={max_count}, lowercase={bool(lowercase)}"
    return _take_rows(pairs, mask, description)
