"""``clvq demo``'s alignment stage: which labels, spaCy present or not, the texts spaCy reads, the table."""

import importlib.util

import numpy as np
import pandas as pd
import pytest

from clvqlearn import LayerPairs
from clvqlearn.cli import demo, main
from clvqlearn.evaluation import LEXICAL_KINDS, concept_alignment, lexical_labels


def _no_spacy(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spacy" else real(name, *a))


def test_spacy_pipeline_choice(monkeypatch, tmp_path):
    assert demo._spacy_pipeline("none") == (None, "--spacy_pipeline none")
    assert demo._spacy_pipeline(str(tmp_path)) == (str(tmp_path), "")  # a pipeline folder is taken as it is
    with pytest.raises(ValueError, match="--spacy_pipeline no_such_pipeline: no installed spaCy pipeline"):
        demo._spacy_pipeline("no_such_pipeline")
    if importlib.util.find_spec("spacy") is not None:
        installed = [p for p in demo.SPACY_PIPELINES if importlib.util.find_spec(p) is not None]
        assert demo._spacy_pipeline(None)[0] == (installed[0] if installed else None)
    _no_spacy(monkeypatch)
    pipeline, reason = demo._spacy_pipeline(None)
    assert pipeline is None and "spaCy is not installed" in reason and "clvqlearn[align]" in reason
    with pytest.raises(ValueError, match="spaCy is not installed"):
        demo._spacy_pipeline("en_core_web_sm")


def test_a_named_pipeline_that_is_missing_stops_the_demo_before_any_work(capsys, tmp_path):
    code = main(["demo", "--spacy_pipeline", "no_such_pipeline", "--output", str(tmp_path / "d"), "--quiet", "true"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no_such_pipeline" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def _toy():
    docs = [["[CLS]", "the", "cat", "sat", "[SEP]"], ["[CLS]", "the", "dog", "run", "##ning", "[SEP]"]] * 4
    tokens = np.array([t for d in docs for t in d], dtype=object)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    rng = np.random.default_rng(0)
    return LayerPairs(low=rng.normal(size=(len(tokens), 2)), high=rng.normal(size=(len(tokens), 2)),
                      offsets=offsets, tokens=tokens)


def test_without_spacy_the_labels_are_lexical_and_one_line_says_so():
    pairs, lines = _toy(), []
    labels, described = demo._alignment_labels(pairs, None, None, (None, "spaCy is not installed"), lines.append)
    assert list(labels.columns) == list(LEXICAL_KINDS) and len(labels) == pairs.n_tokens
    assert lines == ["[clvq] alignment: lexical labels only (spaCy is not installed)."]
    assert described.startswith("lexical (word") and "spaCy" not in described


def test_alignment_table_and_cards():
    """alignment.csv holds the evaluated concepts; the cards say which are aligned, and which are too small."""
    pairs = _toy()
    special = np.isin(pairs.tokens, ["[CLS]", "[SEP]"])
    ids = {"A": np.where(special, 0, np.where(pairs.tokens == "the", 2, 1)),  # special | cat sat dog running | the
           "B": np.arange(pairs.n_tokens) % 9}  # the last concepts of B hold 4 tokens: not evaluated
    labels = lexical_labels(pairs)
    reports = {name: concept_alignment(value, pairs, labels, n_bootstrap=20, random_state=0)
               for name, value in ids.items()}
    table = demo._alignment_table(reports)
    assert table.columns[0] == "method" and "evaluated" not in table
    assert table.groupby("method").size().to_dict() == {"A": 3, "B": int((np.bincount(ids["B"]) >= 5).sum())}
    assert table["n_tokens"].ge(5).all()
    a = table[table["method"] == "A"].set_index("concept")
    assert a["best_label"].tolist() == ["form:special", "word:running", "word:the"]
    assert a["aligned"].tolist() == [True, False, True] and a.loc[1, "purity"] == pytest.approx(8 / 20)
    cards = demo._browser_annotations(reports)
    assert cards["A"].loc[2].tolist() == ["word:the", 1.0, "yes: word"]
    assert cards["A"].loc[1].tolist() == ["word:running", pytest.approx(0.4), "no"]
    small = np.flatnonzero(np.bincount(ids["B"]) < 5)
    assert small.size and cards["B"].loc[small, "purity"].isna().all()
    assert (cards["B"].loc[small, "aligned (purity >= 0.9)"] == "not evaluated (fewer than 5 tokens)").all()


def test_format_shows_the_interval_as_one_column():
    frame = pd.DataFrame({"method": ["ref", "A"], "fve": [0.5, 0.6], "aligned_share": [np.nan, 0.25],
                          "aligned_share_low": [np.nan, 0.125], "aligned_share_high": [np.nan, 0.375],
                          "aligned_control": [np.nan, 0.0]})
    text = demo._format(frame, {"kmeans_low": 0.5, "kmeans_encoder_z": 0.4}, "lexical (word)")
    header, _, ref, a = text.splitlines()[:4]
    assert header == "| method | fve | aligned_share | aligned_share_ci | aligned_control |"
    assert a == "| A | 0.600 | 0.250 | [0.125, 0.375] | 0.000 |" and ref == "| ref | 0.500 |  |  |  |"
    assert "labels lexical (word)" in text


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_llama_dir"])
def test_spacy_reads_each_text_up_to_its_last_extracted_word(request, fixture):
    from clvqlearn.extraction import LayerPairExtractor

    texts = ["the cat sat on the mat while the dog was running far away", "word\n\n  next  words here and more",
             "short one", "end.\n\nNext paragraph starts here with words"]
    extractor = LayerPairExtractor(str(request.getfixturevalue(fixture)), layers=(0, 1), max_length=6,
                                   verbose=False).fit(texts)
    pairs = extractor.transform(texts)
    cut = demo._spacy_texts(texts, extractor, pairs)
    settings = {"truncation": True, "max_length": 6, "add_special_tokens": True}
    for text, short in zip(texts, cut):
        assert text.startswith(short)
        assert extractor.tokenizer_(short, **settings)["input_ids"] == extractor.tokenizer_(text, **settings)[
            "input_ids"]
    assert len(cut[0]) < len(texts[0]) and cut[2] == texts[2]
