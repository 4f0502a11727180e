"""Words of subword rows: the token rows of a :class:`~clvqlearn.LayerPairs` joined into words.

:func:`token_words` reads the tokenizer's own strings (``pairs.tokens``)
and joins WordPiece (``##``), byte-level BPE (``Ġ``) and SentencePiece
(``▁``) pieces back into words.  The evaluation's lexical labels
(:func:`clvqlearn.evaluation.lexical_labels`) and the data wing's
frequency filter (:mod:`clvqlearn.data.token_filter`) both read it; it
knows no model and imports only :mod:`clvqlearn.data.pairs`.
"""

from __future__ import annotations

import re

import numpy as np

from .pairs import LayerPairs

__all__ = ["token_words"]

#: Special tokens of the usual tokenizers: [CLS], [SEP], <s>, </s>, <|endoftext|>, <pad>, <unk> ...
_SPECIAL = re.compile(r"^(\[[A-Za-z_]+\]|<\|?[A-Za-z_/]+\|?>|</?s>|<pad>|<unk>)$")


def _byte_decoder() -> dict:
    """GPT-2's byte-level alphabet back to bytes (the printable bytes stand for themselves)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTES = _byte_decoder()


def _scheme(tokens) -> str:
    """``"wordpiece"``, ``"bytelevel"`` or ``"sentencepiece"``, from the token strings."""
    sample = [str(t) for t in tokens[:20000]]
    if any(t.startswith("##") for t in sample):
        return "wordpiece"
    if any("Ġ" in t for t in sample):
        return "bytelevel"
    if any(t.startswith("▁") for t in sample):
        return "sentencepiece"
    return "wordpiece"


def _token_bytes(token: str) -> bytes:
    """The bytes a byte-level token stands for (a character outside the alphabet as its UTF-8)."""
    return b"".join(bytes([_BYTES[c]]) if c in _BYTES else c.encode("utf-8") for c in token)


def _ends_inside_a_character(raw: bytes) -> bool:
    """Whether ``raw`` ends with the first bytes of a UTF-8 character whose other bytes are still to come."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte < 0x80:
            return False
        if byte >= 0xC0:  # the lead byte: how many bytes its character takes
            return (2 if byte < 0xE0 else 3 if byte < 0xF0 else 4) > back
    return False  # continuation bytes only: broken, nothing will complete it


def _piece(token: str, scheme: str) -> tuple[str, bool]:
    """The text of one token and whether it starts a word by its own marker (one token decoded alone)."""
    if _SPECIAL.match(token):
        return token, True
    if scheme == "wordpiece":
        return (token[2:], False) if token.startswith("##") else (token, True)
    if scheme == "bytelevel":
        text = _token_bytes(token).decode("utf-8", errors="replace")
        return text.strip(), text[:1].isspace()
    return token.lstrip("▁"), token.startswith("▁")


def _joins(previous: str, current: str) -> bool:
    """Whether two pieces without a word marker belong to one word (both sides alphanumeric)."""
    return bool(previous) and bool(current) and previous[-1].isalnum() and current[0].isalnum()


def _hard_starts(tokens: list[str], offsets: np.ndarray, positions) -> np.ndarray:
    """Rows that start a word whatever their text: a document's first row, a special token or the row
    after one, and the row after a gap in ``positions`` (a dropped row)."""
    n = len(tokens)
    special = np.fromiter((bool(_SPECIAL.match(t)) for t in tokens), dtype=bool, count=n)
    hard = special.copy()
    hard[1:] |= special[:-1]
    starts = np.asarray(offsets[:-1], dtype=np.int64)
    hard[starts[starts < n]] = True
    if positions is not None and n:
        hard[1:] |= np.diff(np.asarray(positions, dtype=np.int64)) != 1
    if n:
        hard[0] = True
    return hard


def _units(tokens: list[str], scheme: str, hard: np.ndarray) -> list[tuple[int, int, str, bool]]:
    """``(first row, end row, text, marked)`` of every unit: one token, or with byte-level BPE the run of
    tokens that one character is split over (``"Ã" "©"`` -> ``"é"``), decoded once."""
    if scheme != "bytelevel":
        return [(row, row + 1, *_piece(token, scheme)) for row, token in enumerate(tokens)]
    units: list[tuple[int, int, str, bool]] = []
    first, raw = 0, b""
    for row, token in enumerate(tokens):
        if row and (hard[row] or not _ends_inside_a_character(raw)):
            units.append(_decoded(first, row, raw, tokens[first]))
            first, raw = row, b""
        raw += _token_bytes(token)
    if tokens:
        units.append(_decoded(first, len(tokens), raw, tokens[first]))
    return units


def _decoded(first: int, end: int, raw: bytes, token: str) -> tuple[int, int, str, bool]:
    if end - first == 1 and _SPECIAL.match(token):
        return first, end, token, True
    text = raw.decode("utf-8", errors="replace")
    # a unit ending in whitespace ("!\n") closes its word: keep one trailing space as that sign
    return first, end, text.strip() + (" " if text[-1:].isspace() and text.strip() else ""), text[:1].isspace()


def token_words(pairs: LayerPairs) -> tuple[np.ndarray, list[str]]:
    """The word each token row belongs to: subword rows joined into words.

    A word is a run of rows of one document: with WordPiece (BERT, MiniLM)
    a row starting with ``##`` continues the previous word; with
    byte-level BPE (GPT-2, SmolLM2: ``Ġ`` marks a leading space) and
    SentencePiece (``▁``), a row without the marker continues it when both
    sides of the join are letters or digits (so ``"Hello" ","`` are two
    words; a row that is only whitespace starts the word that follows
    when that word has no marker of its own, else it is an empty word).
    Byte-level rows are decoded from the bytes of the whole word, so a
    character split over two tokens (``"Ã" "©"``) comes out whole, and the
    join rule reads the decoded text.  A gap in ``positions`` (a dropped
    row) and a special token ([CLS], <s>) always start a word.  The scheme
    is read from the token strings.

    Parameters
    ----------
    pairs : LayerPairs
        With ``tokens`` (what :class:`~clvqlearn.LayerPairExtractor` returns,
        or a store opened with :meth:`LayerPairs.open <clvqlearn.LayerPairs.open>`).

    Returns
    -------
    word_index : ndarray of shape (n_tokens,), int64
        Index into ``words`` of every row.
    words : list of str
        The words, in row order, as written (byte-level pieces decoded).

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> tokens = np.array(["the", "play", "##ing", "cat", ","], dtype=object)
    >>> pairs = LayerPairs(low=np.zeros((5, 1)), high=np.zeros((5, 1)), offsets=[0, 5], tokens=tokens)
    >>> token_words(pairs)
    (array([0, 1, 1, 2, 3]), ['the', 'playing', 'cat', ','])

    Byte-level BPE (SmolLM2): ``é`` is split over the tokens ``Ã`` and ``©``.

    >>> tokens = np.array(["Hello", ",", "Ġcaf", "Ã", "©", "'s"], dtype=object)
    >>> pairs = LayerPairs(low=np.zeros((6, 1)), high=np.zeros((6, 1)), offsets=[0, 6], tokens=tokens)
    >>> token_words(pairs)
    (array([0, 1, 2, 2, 2, 3]), ['Hello', ',', 'café', "'s"])
    """
    if pairs.tokens is None:
        raise ValueError("pairs.tokens is None: the token strings are needed to join subwords into words; "
                         "use the LayerPairs that LayerPairExtractor returns.")
    tokens = [str(t) for t in pairs.tokens]
    scheme = _scheme(tokens)
    # read at once: a store's lazy column would read its rows one by one below
    positions = None if pairs.positions is None else np.asarray(pairs.positions)
    hard = _hard_starts(tokens, np.asarray(pairs.offsets), positions)
    word_index = np.empty(len(tokens), dtype=np.int64)
    words: list[str] = []
    for first, end, text, marked in _units(tokens, scheme, hard):
        if _starts_word(words, text, marked, hard[first], scheme):
            words.append(text)
        else:
            words[-1] += text
        word_index[first:end] = len(words) - 1
    return word_index, [w.rstrip() for w in words]


def _starts_word(words: list[str], text: str, marked: bool, hard: bool, scheme: str) -> bool:
    """Whether a unit starts a new word after ``words`` (see :func:`token_words` for the rule)."""
    if hard or not words:
        return True
    if scheme == "wordpiece":
        return marked
    if words[-1] == "":  # whitespace so far: the piece after it continues it unless it has its own marker
        return marked
    return marked or words[-1][-1:].isspace() or not _joins(words[-1], text)
