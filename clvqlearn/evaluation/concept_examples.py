"""Examples of concepts for automatic interpretability: delphi's latent records, for token concepts.

For every concept, :func:`sample_concept_examples` draws context windows of
the corpus (EleutherAI's delphi, Paulo et al. 2024, "Automatically
Interpreting Millions of Features in Large Language Models"):

- **activating examples**: windows of ``window`` tokens around tokens of the
  concept, the concept's tokens marked ``<<like this>>``.  The
  ``n_train`` windows of the most strongly activating tokens are shown to
  the explainer; the ``n_test`` scoring examples are drawn evenly from
  ``n_quantiles`` activation quantiles of the remaining tokens (rank bins of
  the concept's graded activation, :meth:`decision_function`, among its
  tokens), so scores cover weak members as well as typical ones;
- **non-activating examples** (scoring only): windows holding no token of
  the concept.  ``negatives="random"`` draws them anywhere (delphi's
  random sampling); ``"similar"`` draws them around tokens whose runner-up
  concept is this one (near misses, as delphi's neighbour sampling);
  ``"mixed"`` (default) takes half of each.

A token belongs to the concept of its largest graded activation when that
activation is positive (:meth:`predict` for the VQ models and k-means; for
the sparse autoencoder the arg-max latent, tokens with no active latent
belonging to no concept).  Vector-quantised codes are dense: each token has
one, so a concept fires on about one token in ``k``, where a sparse
autoencoder latent fires on far fewer.  A whole window free of a dense
concept can be rare; a non-activating window is then cut short at the
nearest tokens of the concept, down to ``min_window`` tokens (each example
records its length, ``stop - start``, so a length cue can be checked).

Windows are whole words (subword pieces are never split) and never overlap:
no token is shown in two examples of one concept, so the explanation and
the scoring examples share nothing.  Sampling is deterministic given
``random_state``, and each concept's draw depends only on the seed and the
concept's id, not on which other concepts were chosen.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> tokens = np.array("the cat sat on the mat and the dog ate".split() * 6, dtype=object)
>>> pairs = LayerPairs(low=np.zeros((60, 1)), high=np.zeros((60, 1)), offsets=[0, 30, 60], tokens=tokens)
>>> scores = np.where(tokens == "the", 0.9, 0.1)[:, None] * [1.0, 0.0] + [0.0, 0.5]
>>> activity = ConceptActivity.from_scores(scores)
>>> record, = sample_concept_examples(activity, pairs, concepts=[0], window=4, n_train=2, n_test=2,
...                                   n_negatives=2, random_state=0)
>>> record.n_tokens, record.train[0].marked_text
(18, '<<the>> cat sat on')
>>> all("the" not in ex.words for ex in record.negatives)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import NamedTuple

import numpy as np

from .._sklearn_compat import HasMethods, Interval, StrOptions, validate_params
from ..data import LayerPairs
from ..data.words import token_words

__all__ = ["NEGATIVE_STRATEGIES", "ConceptActivity", "ConceptExample", "ConceptRecord", "concept_activity",
           "render_marked", "sample_concept_examples"]

#: How non-activating examples are drawn (see :func:`sample_concept_examples`).
NEGATIVE_STRATEGIES = ("random", "similar", "mixed")

MARKS = ("<<", ">>")

#: Tokens per call of ``decision_function`` in :func:`concept_activity` (whole documents per chunk).
_CHUNK_TOKENS = 65536


class ConceptActivity(NamedTuple):
    """Which concept holds each token, and how strongly; the runner-up concept.

    Attributes
    ----------
    ids : ndarray of shape (n_tokens,), dtype int64
        The concept of each token: its largest graded activation, if positive;
        -1 for tokens with no positive activation (a silent SAE token).
    value : ndarray of shape (n_tokens,), dtype float64
        That activation.
    second : ndarray of shape (n_tokens,), dtype int64
        The runner-up concept (-1 when there is none with a positive activation).
    second_value : ndarray of shape (n_tokens,), dtype float64
        Its activation.
    k : int
        Number of concepts.
    """

    ids: np.ndarray
    value: np.ndarray
    second: np.ndarray
    second_value: np.ndarray
    k: int

    @classmethod
    def from_scores(cls, scores) -> ConceptActivity:
        """From a graded activation matrix ``(n_tokens, k)`` (``decision_function``'s output).

        Ties go to the lower concept id, as in :meth:`predict`.

        Examples
        --------
        >>> a = ConceptActivity.from_scores([[0.2, 0.7, 0.1], [0.0, 0.0, 0.0]])
        >>> a.ids.tolist(), a.second.tolist(), a.k
        ([1, -1], [0, -1], 3)
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] < 1:
            raise ValueError(f"scores must be a 2-D array (n_tokens, k) with k >= 1; got shape {scores.shape}.")
        if not np.isfinite(scores).all():
            raise ValueError("scores hold NaN or infinite values; graded activations must be finite.")
        rows = np.arange(scores.shape[0])
        ids = scores.argmax(axis=1) if scores.size else np.zeros(0, dtype=np.int64)
        value = scores[rows, ids] if scores.size else np.zeros(0)
        if scores.shape[1] > 1 and scores.size:
            rest = scores.copy()
            rest[rows, ids] = -np.inf
            second = rest.argmax(axis=1)
            second_value = rest[rows, second]
        else:
            second, second_value = np.full(scores.shape[0], -1), np.zeros(scores.shape[0])
        ids = np.where(value > 0, ids, -1).astype(np.int64)
        second = np.where(second_value > 0, second, -1).astype(np.int64)
        return cls(ids, value.astype(np.float64), second, np.asarray(second_value, dtype=np.float64),
                   int(scores.shape[1]))

    @classmethod
    def concatenate(cls, parts) -> ConceptActivity:
        """Rows of several activities (of the same ``k``) one after the other."""
        parts = list(parts)
        ids, value, second, second_value = (np.concatenate([getattr(p, f) for p in parts]) for f in cls._fields[:4])
        return cls(ids, value, second, second_value, parts[0].k)

    def members(self, concept: int) -> np.ndarray:
        """Token rows of ``concept``, ascending."""
        return np.flatnonzero(self.ids == concept)


@validate_params({"estimator": [HasMethods(["decision_function"])], "pairs": [LayerPairs]},
                 prefer_skip_nested_validation=True)
def concept_activity(estimator, pairs) -> ConceptActivity:
    """The :class:`ConceptActivity` of a fitted concept estimator on ``pairs``.

    Calls ``estimator.decision_function`` on chunks of whole documents (about
    65k tokens each), so the ``(n_tokens, k)`` matrix is never held whole.

    Parameters
    ----------
    estimator : fitted CrossLayerVQ, SingleLayerVQ, KMeansConcepts or SparseAutoencoder
        Anything with ``decision_function(pairs) -> (n_tokens, k)``.
    pairs : LayerPairs

    Returns
    -------
    ConceptActivity

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import KMeansConcepts, LayerPairs
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(40, 3)), high=rng.normal(size=(40, 3)), offsets=[0, 20, 40])
    >>> km = KMeansConcepts(k=4, random_state=0).fit(pairs)
    >>> activity = concept_activity(km, pairs)
    >>> bool((activity.ids == km.predict(pairs)).all()), activity.k
    (True, 4)
    """
    offsets, bounds = pairs.offsets, [0]
    while bounds[-1] < pairs.n_docs:
        stop = int(np.searchsorted(offsets, offsets[bounds[-1]] + _CHUNK_TOKENS, side="right")) - 1
        bounds.append(min(max(stop, bounds[-1] + 1), pairs.n_docs))
    chunks = [pairs] if len(bounds) <= 2 else [pairs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    parts = []
    for chunk in chunks:
        scores = np.asarray(estimator.decision_function(chunk))
        if scores.ndim != 2 or scores.shape[0] != chunk.n_tokens:
            raise ValueError(f"estimator.decision_function must return (n_tokens, k) = ({chunk.n_tokens}, k) "
                             f"graded activations; got shape {scores.shape}.")
        parts.append(ConceptActivity.from_scores(scores))
    return ConceptActivity.concatenate(parts)


@dataclass(frozen=True)
class ConceptExample:
    """One context window shown for a concept.

    Attributes
    ----------
    concept : int
        The concept it was drawn for.
    kind : {"train", "test", "random", "similar"}
        ``"train"``: activating, shown to the explainer; ``"test"``:
        activating, for scoring; ``"random"`` and ``"similar"``:
        non-activating, for scoring.
    doc : int
        Document number.
    start, stop : int
        Token rows ``start:stop`` of ``pairs`` (whole words).
    centre : int
        The token row the window was drawn around.
    words : tuple of str
        The window's words (subword pieces merged).
    marks : tuple of int
        Positions in ``words`` of the words holding a token of ``concept``
        (empty for non-activating examples).
    decoy_marks : tuple of int
        Non-activating examples: positions of the words holding a token of
        the centre token's own concept (what the example would show as an
        example of that concept; used for intruders and for the wrong
        highlighting of similar examples); empty for activating ones.
    activation : float
        ``concept``'s graded activation at the centre token (NaN when not
        known: a random non-activating example).
    quantile : int
        Activating examples: the activation quantile bin of the centre token
        among the concept's tokens (0 = weakest); -1 otherwise.
    source_concept : int
        The centre token's own concept (``concept`` for activating examples;
        -1 for a token with no concept).
    """

    concept: int
    kind: str
    doc: int
    start: int
    stop: int
    centre: int
    words: tuple
    marks: tuple
    decoy_marks: tuple
    activation: float
    quantile: int
    source_concept: int

    @property
    def activating(self) -> bool:
        """True for the concept's own examples (``"train"`` and ``"test"``)."""
        return self.kind in ("train", "test")

    @property
    def text(self) -> str:
        """The window's words, nothing marked."""
        return render_marked(self.words, ())

    @property
    def marked_text(self) -> str:
        """The window with the concept's words marked ``<<like this>>``."""
        return render_marked(self.words, self.marks)


@dataclass(frozen=True)
class ConceptRecord:
    """Everything sampled for one concept (delphi's latent record).

    Attributes
    ----------
    concept : int
    n_tokens : int
        The concept's tokens in ``pairs`` (its firing count).
    frequency : float
        ``n_tokens`` over all tokens.
    train : tuple of ConceptExample
        Activating examples for the explainer (the strongest first).
    test : tuple of ConceptExample
        Activating examples for scoring, from every activation quantile.
    negatives : tuple of ConceptExample
        Non-activating examples for scoring.
    """

    concept: int
    n_tokens: int
    frequency: float
    train: tuple
    test: tuple
    negatives: tuple


def render_marked(words, marks) -> str:
    """Words joined by spaces, the words at ``marks`` in ``<<>>`` (neighbours marked together).

    Examples
    --------
    >>> render_marked(["a", "big", "red", "dog"], [1, 2])
    'a <<big red>> dog'
    """
    marks = set(int(m) for m in marks)
    out, open_ = [], False
    for i, word in enumerate(words):
        piece = str(word)
        if i in marks and not open_:
            piece, open_ = MARKS[0] + piece, True
        if open_ and i + 1 not in marks:
            piece, open_ = piece + MARKS[1], False
        out.append(piece)
    return " ".join(out)


class _Corpus:
    """Word spans, window bounds and documents of every token row, computed once per call."""

    def __init__(self, pairs: LayerPairs, window: int):
        if pairs.tokens is None:
            raise ValueError("Concept examples need LayerPairs with token strings (pairs.tokens is None); "
                             "extract them with LayerPairExtractor, which records the tokens.")
        offsets = np.asarray(pairs.offsets, dtype=np.int64)
        word, words = token_words(pairs)
        n = word.shape[0]
        self.n = n
        self.word = np.asarray(word, dtype=np.int64)  # word number of every row (words never cross documents)
        first = np.flatnonzero(np.r_[True, np.diff(self.word) != 0]) if n else np.zeros(0, dtype=np.int64)
        self.word_first = first  # first row of every word
        self.word_stop = np.r_[first[1:], n].astype(np.int64)  # end row of every word
        self.word_text = np.asarray(words, dtype=object)
        self.doc = np.searchsorted(offsets, np.arange(n), side="right") - 1
        rows = np.arange(n)
        lo, hi = offsets[self.doc], offsets[self.doc + 1]
        start = np.maximum(lo, rows - window // 2)
        stop = np.minimum(hi, start + window)
        start = np.maximum(lo, stop - window)
        if n:
            self.win_start = self.word_first[self.word[start]]
            self.win_stop = self.word_stop[self.word[stop - 1]]
        else:
            self.win_start = self.win_stop = np.zeros(0, dtype=np.int64)

    def example(self, ids, concept, kind, start, stop, centre, *, activation, quantile, source):
        """A :class:`ConceptExample` of rows ``start:stop`` (``ids``: every row's concept)."""
        start, stop, centre = int(start), int(stop), int(centre)
        w0, w1 = int(self.word[start]), int(self.word[stop - 1]) + 1
        words = tuple(str(w) for w in self.word_text[w0:w1])

        def word_positions(target):
            rows = np.flatnonzero(ids[start:stop] == target) + start
            return {int(p) for p in self.word[rows] - w0}

        marks: tuple = ()
        decoys: tuple = ()
        if kind in ("train", "test"):
            marks = tuple(sorted(word_positions(concept)))
        else:
            own = word_positions(source) if source >= 0 else set()
            decoys = tuple(sorted(own | {int(self.word[centre]) - w0}))
        return ConceptExample(int(concept), kind, int(self.doc[centre]), start, stop, centre, words, marks, decoys,
                              float(activation), int(quantile), int(source))


def _take(starts, stops, used, quota) -> list:
    """Greedy pick, in order, of up to ``quota`` windows that overlap no used row; marks them used."""
    picked: list = []
    if quota <= 0:
        return picked
    for i, (s, e) in enumerate(zip(starts.tolist(), stops.tolist())):
        if e <= s or used[s:e].any():
            continue
        used[s:e] = True
        picked.append(i)
        if len(picked) == quota:
            break
    return picked


def _max_disjoint(starts, stops) -> int:
    """The most windows among these that overlap no other (greedy by end, which is optimal for intervals)."""
    count, end = 0, -1
    for i in np.argsort(stops, kind="stable"):
        if starts[i] >= end:
            count, end = count + 1, stops[i]
    return count


def _quota(n: int, parts: int) -> list:
    return [n // parts + (q < n % parts) for q in range(parts)]


def _trimmed(corpus: _Corpus, members: np.ndarray, centres: np.ndarray):
    """Window bounds around ``centres`` cut short at the nearest tokens of the concept (whole words kept)."""
    start, stop = corpus.win_start[centres].copy(), corpus.win_stop[centres].copy()
    if members.size:
        pos = np.searchsorted(members, centres)
        has_prev, has_next = pos > 0, pos < members.size
        prev = members[np.maximum(pos - 1, 0)]
        nxt = members[np.minimum(pos, members.size - 1)]
        start = np.where(has_prev, np.maximum(start, corpus.word_stop[corpus.word[prev]]), start)
        stop = np.where(has_next, np.minimum(stop, corpus.word_first[corpus.word[nxt]]), stop)
    return start, stop


def _pick_negatives(corpus, members, cand, used, quota, min_window, *, whole_first=False):
    """(centre, start, stop) rows of up to ``quota`` non-activating windows around ``cand``, in order."""
    start, stop = _trimmed(corpus, members, cand)
    ok = (stop - start) >= min_window
    picked = []
    if whole_first:  # windows the concept does not touch at all come first
        whole = ok & (start == corpus.win_start[cand]) & (stop == corpus.win_stop[cand])
        idx = np.flatnonzero(whole)
        picked = idx[_take(start[idx], stop[idx], used, quota)].tolist()
    idx = np.flatnonzero(ok)
    picked += idx[_take(start[idx], stop[idx], used, quota - len(picked))].tolist()
    return np.column_stack([cand, start, stop])[picked].reshape(-1, 3)


def _sample_one(corpus, activity, concept, rng, *, n_train, n_test, n_quantiles, n_negatives, negatives,
                min_window):
    ids = activity.ids
    members = np.flatnonzero(ids == concept)  # ascending rows
    # a word is in the concept when any of its pieces is; windows never cut a word
    word_hit = np.zeros(corpus.word_first.size, dtype=bool)
    word_hit[corpus.word[members]] = True
    used = np.zeros(corpus.n, dtype=bool)
    by_strength = members[np.lexsort((members, -activity.value[members]))]
    member_bin = np.empty(members.size, dtype=np.int64)  # quantile bin of every member (0 = weakest)
    rank_bins = np.array_split(by_strength[::-1], n_quantiles)
    for q, rows in enumerate(rank_bins):
        member_bin[np.searchsorted(members, rows)] = q

    def positives(rows, kind):
        return [corpus.example(ids, concept, kind, corpus.win_start[r], corpus.win_stop[r], r,
                               activation=activity.value[r], quantile=member_bin[np.searchsorted(members, r)],
                               source=concept) for r in rows]

    # a concept with few separate windows shares them between the two sets in proportion
    room = _max_disjoint(corpus.win_start[members], corpus.win_stop[members])
    if room < n_train + n_test:
        n_train = min(n_train, max(1, int(round(room * n_train / (n_train + n_test)))))
    train_rows = by_strength[_take(corpus.win_start[by_strength], corpus.win_stop[by_strength], used, n_train)]
    test_rows: list = []
    for q, quota in enumerate(_quota(n_test, n_quantiles)):
        rows = rng.permutation(rank_bins[q])
        test_rows.extend(rows[_take(corpus.win_start[rows], corpus.win_stop[rows], used, quota)].tolist())

    n_similar = {"random": 0, "similar": n_negatives, "mixed": n_negatives // 2}[negatives]
    similar = np.zeros((0, 3), dtype=np.int64)
    if n_similar:
        cand = np.flatnonzero(activity.second == concept)
        cand = cand[~word_hit[corpus.word[cand]]]
        cand = cand[np.lexsort((cand, -activity.second_value[cand]))]  # the nearest misses first
        similar = _pick_negatives(corpus, members, cand, used, n_similar, min_window)
    cand = np.flatnonzero(~word_hit[corpus.word])
    cand = cand[rng.permutation(cand.size)]
    random = _pick_negatives(corpus, members, cand, used, n_negatives - len(similar), min_window, whole_first=True)

    def non_activating(rows, kind):
        return [corpus.example(ids, concept, kind, start, stop, centre, quantile=-1, source=int(ids[centre]),
                               activation=activity.second_value[centre] if kind == "similar" else np.nan)
                for centre, start, stop in rows.tolist()]

    return ConceptRecord(int(concept), int(members.size), float(members.size / max(corpus.n, 1)),
                         tuple(positives(train_rows, "train")), tuple(positives(test_rows, "test")),
                         tuple(non_activating(similar, "similar") + non_activating(random, "random")))


def _seed(random_state) -> int:
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**32))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**32 - 1))
    if random_state is None:
        return int(np.random.default_rng().integers(2**32))
    return int(random_state)


def choose_concepts(activity: ConceptActivity, *, concepts=None, n_concepts=None, min_tokens: int = 10,
                    random_state=None) -> list:
    """The concepts to study: the given ones, or ``n_concepts`` drawn among those with ``min_tokens`` tokens.

    Parameters
    ----------
    activity : ConceptActivity
    concepts : sequence of int, optional
        Explicit concept ids (``min_tokens`` is not applied).
    n_concepts : int, optional
        How many to draw (default: all eligible ones); fewer when fewer are eligible.
    min_tokens : int, default=10
    random_state : int, Generator or None

    Returns
    -------
    list of int
        Ascending.
    """
    if concepts is not None:
        ids = sorted({int(c) for c in concepts})
        bad = [c for c in ids if not 0 <= c < activity.k]
        if bad:
            raise ValueError(f"concepts must be ids in [0, {activity.k}); got {bad[:5]}.")
        return ids
    counts = np.bincount(activity.ids[activity.ids >= 0], minlength=activity.k)
    eligible = np.flatnonzero(counts >= min_tokens)
    if eligible.size == 0:
        raise ValueError(f"No concept has min_tokens={min_tokens} tokens in pairs (the largest has "
                         f"{int(counts.max(initial=0))}); lower min_tokens or pass more documents.")
    if n_concepts is not None and n_concepts < eligible.size:
        eligible = np.random.default_rng(_seed(random_state)).choice(eligible, size=n_concepts, replace=False)
    return sorted(int(c) for c in eligible)


_SAMPLING_CONSTRAINTS = {
    "window": [Interval(Integral, 1, None, closed="left")],
    "n_train": [Interval(Integral, 1, None, closed="left")],
    "n_test": [Interval(Integral, 1, None, closed="left")],
    "n_quantiles": [Interval(Integral, 1, None, closed="left")],
    "n_negatives": [Interval(Integral, 0, None, closed="left")],
    "negatives": [StrOptions(set(NEGATIVE_STRATEGIES))],
    "min_tokens": [Interval(Integral, 1, None, closed="left")],
    "min_window": [Interval(Integral, 1, None, closed="left"), None],
}


@validate_params(
    {"source": [HasMethods(["decision_function"]), ConceptActivity], "pairs": [LayerPairs],
     "concepts": ["array-like", None], "n_concepts": [Interval(Integral, 1, None, closed="left"), None],
     "random_state": ["random_state", np.random.Generator], **_SAMPLING_CONSTRAINTS},
    prefer_skip_nested_validation=True,
)
def sample_concept_examples(source, pairs, *, concepts=None, n_concepts=None, window=32, n_train=20, n_test=20,
                            n_quantiles=5, n_negatives=20, negatives="mixed", min_tokens=10, min_window=None,
                            random_state=None) -> list:
    """Activating and non-activating context windows of concepts (delphi's latent records).

    Parameters
    ----------
    source : fitted concept estimator or ConceptActivity
        An estimator is run once over ``pairs`` (:func:`concept_activity`).
    pairs : LayerPairs
        With token strings.
    concepts : sequence of int, optional
        The concepts to sample; default: ``n_concepts`` of those with at
        least ``min_tokens`` tokens (all of them when ``n_concepts`` is None).
    n_concepts : int, optional
    window : int, default=32
        Tokens per window (widened to whole words; shorter at document ends).
    n_train : int, default=20
        Activating examples for the explainer: the windows of the strongest
        tokens.
    n_test : int, default=20
        Activating examples for scoring, spread evenly over the quantiles.
        When the concept has fewer than ``n_train + n_test`` separate
        windows in ``pairs``, the two sets share them in proportion (at
        least one for the explainer).
    n_quantiles : int, default=5
        Equal-count bins of the concept's activation among its tokens.
    n_negatives : int, default=20
        Non-activating examples for scoring.
    negatives : {"random", "similar", "mixed"}, default="mixed"
        Where non-activating examples come from (see the module docstring);
        too few similar windows are made up with random ones.
    min_tokens : int, default=10
        The fewest tokens a concept needs to be drawn.
    min_window : int, optional
        The shortest non-activating window, once cut short at the concept's
        tokens; default ``max(1, window // 4)``.
    random_state : int, Generator or None

    Returns
    -------
    list of ConceptRecord
        One per concept, ascending.  A concept may get fewer examples than
        asked when the corpus holds too few non-overlapping windows.
    """
    activity = source if isinstance(source, ConceptActivity) else concept_activity(source, pairs)
    if activity.ids.shape[0] != pairs.n_tokens:
        raise ValueError(f"The activity has {activity.ids.shape[0]} token rows but pairs has {pairs.n_tokens}.")
    seed = _seed(random_state)
    chosen = choose_concepts(activity, concepts=concepts, n_concepts=n_concepts, min_tokens=min_tokens,
                             random_state=seed)
    corpus = _Corpus(pairs, window)
    min_window = max(1, window // 4) if min_window is None else min_window
    return [_sample_one(corpus, activity, c, np.random.default_rng([seed, c]), n_train=n_train, n_test=n_test,
                        n_quantiles=n_quantiles, n_negatives=n_negatives, negatives=negatives,
                        min_window=min_window) for c in chosen]
