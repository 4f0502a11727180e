import numpy as np
import pytest

from clvqlearn import KMeansConcepts, LayerPairs
from clvqlearn.report.descriptions import (
    describe_concepts,
    describe_estimator,
    doc_sentences,
    token_words,
)


def test_words_are_merged_and_counted(toy_pairs):
    pairs, ids, _, _ = toy_pairs
    table = describe_concepts(ids, pairs, k=5, random_state=0)
    assert table.loc[1, "words"][0] == "good" and table.loc[1, "word_counts"][0] == 3
    assert "unfunny" in table.loc[3, "words"] and "acting" in table.loc[3, "words"]
    assert "##ing" not in table.loc[3, "words"]
    # a, film, act ##ing, a, plot, film, un ##fun ##ny: 10 tokens, 7 word occurrences
    assert table.loc[3, "n_tokens"] == 10
    assert dict(zip(table.loc[3, "words"], table.loc[3, "word_counts"])) == {
        "a": 2, "film": 2, "acting": 1, "plot": 1, "unfunny": 1}
    assert table["n_tokens"].sum() == pairs.n_tokens


def test_special_token_concepts_are_shown_by_sentences(toy_pairs):
    pairs, ids, *_ = toy_pairs
    table = describe_concepts(ids, pairs, k=5, n_sentences=2, random_state=0)
    assert table.loc[0, "kind"] == "sentences" and table.loc[0, "special_share"] == 1.0
    assert len(table.loc[0, "representation"]) == 2
    assert all("[[" in s for s in table.loc[0, "representation"])
    assert table.loc[1, "kind"] == "words" and table.loc[1, "representation"] == table.loc[1, "words"]


def test_empty_concept_gets_a_row(toy_pairs):
    pairs, ids, *_ = toy_pairs
    table = describe_concepts(ids, pairs, k=5)
    assert table.loc[4, "kind"] == "empty" and table.loc[4, "n_tokens"] == 0
    assert table.loc[4, "representation"] == [] and table.loc[4, "share"] == 0


def test_stop_words_leave_top_words(toy_pairs):
    pairs, ids, *_ = toy_pairs
    plain = describe_concepts(ids, pairs, k=5)
    stopped = describe_concepts(ids, pairs, k=5, stop_words="english")
    assert "a" in plain.loc[3, "words"] and "a" not in stopped.loc[3, "words"]
    assert stopped.loc[3, "n_tokens"] == plain.loc[3, "n_tokens"]
    with pytest.raises(ValueError, match="stop_words"):
        describe_concepts(ids, pairs, stop_words="german")


def test_label_distribution_where_salient(toy_pairs):
    pairs, ids, salient, labels = toy_pairs
    table = describe_concepts(ids, pairs, k=5, salient_rows=salient, labels=labels, label_names=["neg", "pos"])
    assert table.loc[1, "label:pos"] == 3 and table.loc[1, "label:neg"] == 0
    assert table.loc[2, "label:neg"] == 3 and table.loc[2, "n_salient"] == 3
    assert table["n_salient"].sum() == 6


def test_classifier_gives_the_labels(toy_pairs):
    pairs, ids, salient, _ = toy_pairs

    class Fixed:
        def predict(self, texts):
            return np.array(["neg"] * len(texts))

    table = describe_concepts(ids, pairs, k=5, salient_rows=salient, classifier=Fixed(), texts=["x"] * 6)
    assert table["label:neg"].sum() == 6
    with pytest.raises(ValueError, match="texts"):
        describe_concepts(ids, pairs, salient_rows=salient, classifier=Fixed())


def test_bad_inputs_raise(toy_pairs):
    pairs, ids, _, labels = toy_pairs
    with pytest.raises(ValueError, match="shape"):
        describe_concepts(ids[:-1], pairs)
    with pytest.raises(ValueError, match="k=2"):
        describe_concepts(ids, pairs, k=2)
    with pytest.raises(ValueError, match="salient_rows"):
        describe_concepts(ids, pairs, labels=labels)
    no_tokens = LayerPairs(low=np.zeros((2, 1)), high=np.zeros((2, 1)), offsets=[0, 2])
    with pytest.raises(ValueError, match="token strings"):
        describe_concepts([0, 0], no_tokens)


def test_byte_level_bpe_words():
    tokens = np.array(["The", "Ġun", "bear", "able", "Ġfilm"], dtype=object)
    pairs = LayerPairs(low=np.zeros((5, 1)), high=np.zeros((5, 1)), offsets=[0, 5], tokens=tokens)
    assert list(token_words(pairs)) == ["The", "unbearable", "unbearable", "unbearable", "film"]
    assert doc_sentences(pairs, mark_rows=[2]) == ["The [[unbearable]] film"]


def test_describe_estimator_all_rows(toy_pairs):
    pairs, *_ = toy_pairs
    km = KMeansConcepts(k=3, random_state=0).fit(pairs)
    table = describe_estimator(km, pairs)
    assert len(table) == 3 and table["n_tokens"].sum() == pairs.n_tokens
    assert np.array_equal(table["n_tokens"].to_numpy(), np.bincount(km.predict(pairs), minlength=3))


def test_byte_level_words_are_those_of_clvqlearn_data():
    from clvqlearn.data import token_words as data_token_words

    tokens = np.array(["Hello", ",", "Ġworld", "'s", "Ġcaf", "Ã", "©", "Ġcaf", "Ã©"], dtype=object)
    pairs = LayerPairs(low=np.zeros((9, 1)), high=np.zeros((9, 1)), offsets=[0, 4, 9], tokens=tokens)
    word_index, words = data_token_words(pairs)
    assert list(token_words(pairs)) == [words[i] for i in word_index]
    assert list(token_words(pairs)) == ["Hello", ",", "world", "'s", "café", "café", "café", "café", "café"]
    assert doc_sentences(pairs, mark_rows=[2, 5]) == ["Hello , [[world]] 's", "[[café]] café"]
    table = describe_concepts(np.zeros(9, dtype=np.int64), pairs, k=1)
    # "é" split over two tokens counts once, whole; punctuation is a word of its own
    assert dict(zip(table.loc[0, "words"], table.loc[0, "word_counts"])) == {
        "café": 2, "Hello": 1, ",": 1, "world": 1, "'s": 1}
    pieces = describe_concepts(np.zeros(9, dtype=np.int64), pairs, k=1, merge_subwords=False)
    assert "é" in pieces.loc[0, "words"] and not any("Ã" in w for w in pieces.loc[0, "words"])
