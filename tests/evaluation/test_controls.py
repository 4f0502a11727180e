"""The controls of concept removal: the norm-matched random control, and reports pooled over seeds."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from sklearn.pipeline import Pipeline

from clvqlearn.concepts.kmeans import KMeansConcepts
from clvqlearn.evaluation import PooledAblationReport, pool_ablation_reports
from clvqlearn.evaluation.ablation import concept_ablation_report
from clvqlearn.evaluation.pooling import rubin_pool
from clvqlearn.evaluation.projection import (
    norm_matched_removal,
    norm_matched_removal_torch,
    project_out,
    removed_norms,
)
from clvqlearn.evaluation.splice import splice_logits, splice_projection
from clvqlearn.extraction import LayerPairExtractor
from clvqlearn.models import hook_site

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from movie_corpus import LABELS, TEXTS

# ============================================================= the norm-matched control
finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def rows_and_direction_sets(draw):
    d = draw(st.integers(2, 12))
    n = draw(st.integers(1, 6))
    X = draw(arrays(np.float64, (n, d), elements=finite))
    sets = [draw(arrays(np.float64, (draw(st.integers(0, d)), d), elements=finite)) for _ in range(n)]
    return X, sets, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=80, deadline=None)
@given(rows_and_direction_sets())
def test_norm_matched_control_removes_exactly_the_concepts_share_of_every_row(data):
    X, sets, seed = data
    noise = np.random.default_rng(seed).standard_normal(X.shape)
    concept = np.stack([X[i] if D.size == 0 else project_out(X[i], D) for i, D in enumerate(sets)])
    removed = removed_norms(X, sets)
    out = norm_matched_removal(X, removed, noise)
    norm = np.linalg.norm(X, axis=1)

    def close(a, b, tol):  # per row, relative to the row's norm
        assert np.all(np.abs(a - b) <= tol), (a, b)

    # the same length of edit as the concept's removal, per row ...
    close(np.linalg.norm(X - out, axis=1), np.linalg.norm(X - concept, axis=1), 1e-9 * (1 + norm))
    close(np.linalg.norm(X - out, axis=1), removed, 1e-9 * (1 + norm))
    # ... the same remaining norm (sqrt(||x||^2 - removed^2): where the concept takes nearly all of x,
    # rounding in the share grows to sqrt(eps) ||x|| there), and an orthogonal projection: the edit is
    # orthogonal to what is left
    close(np.linalg.norm(out, axis=1), np.linalg.norm(concept, axis=1), 1e-7 * (1 + norm))
    close(np.einsum("nd,nd->n", X - out, out), 0.0, 1e-9 * (1 + norm) ** 2)
    # zero rows, and rows the concept leaves alone, are unchanged
    untouched = (norm == 0) | (removed == 0)
    np.testing.assert_array_equal(out[untouched], X[untouched])
    # the torch version, with one draw broadcast over a sequence axis, agrees
    got = norm_matched_removal_torch(torch.from_numpy(X)[:, None, :].expand(-1, 2, -1),
                                     torch.from_numpy(removed)[:, None].expand(-1, 2),
                                     torch.from_numpy(noise)[:, None, :]).numpy()
    np.testing.assert_allclose(got, np.stack([out, out], axis=1), atol=1e-12 * (1 + norm.max()))


def test_norm_matched_direction_is_random_not_the_concepts():
    rng = np.random.default_rng(0)
    x, D = rng.normal(size=(1, 16)), rng.normal(size=(1, 16))
    removed = removed_norms(x, [D])
    a = norm_matched_removal(x, removed, rng.normal(size=16))
    b = norm_matched_removal(x, removed, rng.normal(size=16))
    concept_edit = x - project_out(x, D)
    for edit in (x - a, x - b):
        cosine = float((edit @ concept_edit.T).item() / (np.linalg.norm(edit) * np.linalg.norm(concept_edit)))
        assert abs(cosine) < 0.9  # not the concept's direction
    assert not np.allclose(a, b)  # another draw, another direction
    np.testing.assert_array_equal(norm_matched_removal(x, removed, np.ones(16)),
                                  norm_matched_removal(x, removed, np.ones(16)))
    with pytest.raises(ValueError, match=r"noise \(n, d\) or \(d,\); got shapes \(1, 16\), \(1,\), \(3,\)"):
        norm_matched_removal(x, removed, np.ones(3))
    with pytest.raises(ValueError, match="one direction set per row"):
        removed_norms(x, [D, D])


@pytest.mark.parametrize("which", ["bert", "llama"])
@pytest.mark.parametrize("at", ["salient", "all"])
def test_splice_norm_matched_control_edits_the_hidden_state_by_the_concepts_share(
        which, at, tiny_bert_dir, tiny_llama_dir):
    from transformers import AutoModel, AutoTokenizer

    path = tiny_bert_dir if which == "bert" else tiny_llama_dir
    model = AutoModel.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)(["the cat sat on the mat", "stocks fell sharply", "a film"],
                                              padding=True, return_tensors="pt")
    d, layer = model.config.hidden_size, 2
    rng = np.random.default_rng(1)
    dirs = [rng.normal(size=(2, d)), rng.normal(size=(1, d)), np.zeros((0, d))]
    noise = rng.standard_normal((3, d))
    positions = np.array([2, 1, 1]) if at == "salient" else None
    with torch.no_grad():
        reference = model(**enc, output_hidden_states=True).hidden_states[layer].numpy().astype(np.float64)
    expected = reference.copy()
    for b, D in enumerate(dirs):
        T = reference.shape[1]
        cols = np.arange(T) if positions is None else np.array([positions[b]])
        rows = reference[b, cols]
        expected[b, cols] = norm_matched_removal(rows, removed_norms(rows, [D] * len(cols)), noise[b])
    module, kind = hook_site(model, layer)
    store = {}

    def grab(mod, args, output):  # registered after the splice hook: sees the edited state
        store["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    assert kind == "post"  # layer 2 is a block's output
    with splice_projection(model, layer, dirs, positions=positions, norm_matched_noise=noise):
        handle = module.register_forward_hook(grab)
        try:
            with torch.no_grad():
                model(**enc)
        finally:
            handle.remove()
    got = store["h"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # per edited vector: the share removed is the concept's share, and the third sequence (rank 0) is untouched
    concept_share = np.linalg.norm(reference[0] - project_out(reference[0], dirs[0]), axis=1)
    moved = np.linalg.norm(got[0] - reference[0], axis=1)
    edited = np.arange(reference.shape[1]) if positions is None else [2]
    np.testing.assert_allclose(moved[edited], concept_share[edited], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[2], reference[2].astype(np.float32))
    with pytest.raises(ValueError, match=r"norm_matched_noise must have shape \(3, \d+\): one draw per sequence"):
        with splice_projection(model, layer, dirs, norm_matched_noise=noise[:2]), torch.no_grad():
            model(**enc)


def test_splice_logits_checks_the_noise_count(tiny_clf):
    model, tok = tiny_clf.load("cpu")
    d = model.config.hidden_size
    with pytest.raises(ValueError, match=r"norm_matched_noise must have one row per text \(2\); got 1"):
        splice_logits(model, tok, TEXTS[:2], layer=2, directions=[np.ones((1, d))] * 2,
                      norm_matched_noise=np.ones((1, d)))


# ===================================================================== in the report
def _pipe(clf, seed=0):
    ext = LayerPairExtractor(str(clf.path), layers=(2, 4), max_length=32, device="cpu")
    return Pipeline([("extract", ext), ("concepts", KMeansConcepts(k=4, layer="low", random_state=seed))]).fit(TEXTS)


_KW = dict(n_steps=8, probe="logistic", n_splits=4, n_bootstrap=200)


@pytest.mark.parametrize("protocol, positions", [("probe", "salient"), ("splice", "salient"), ("splice", "all")])
def test_report_carries_every_control_with_its_removed_norm(tiny_clf, protocol, positions):
    report = concept_ablation_report(_pipe(tiny_clf), TEXTS, LABELS, protocol=protocol,
                                     splice_positions=positions, **_KW)
    frame = report.to_frame()
    truth = frame["label"].to_numpy()
    if protocol == "splice":
        truth = np.searchsorted(tiny_clf.classes, truth)
    # the norm-matched control removes the concept's share of every edited vector ...
    assert report.removed_norm > 0
    assert report.norm_matched_removed_norm == pytest.approx(report.removed_norm, abs=1e-9)
    np.testing.assert_allclose(frame["norm_matched_removed_norm"], frame["removed_norm"], atol=1e-9)
    if positions == "salient":  # one edited vector per sentence: the report's share is the sentences' mean
        assert report.control_removed_norm == pytest.approx(frame["control_removed_norm"].mean(), abs=1e-12)
    assert frame["other_concept_removed_norm"].between(0, 1 + 1e-9).all()
    # ... and its accuracy, drop and flip rate come from its own predictions, as the other controls'
    for stem, column in (("norm_matched_", "norm_matched"), ("other_concept_", "other"), ("control_", "control")):
        assert getattr(report, f"{stem}accuracy") == pytest.approx((frame[column] == truth).mean())
        assert getattr(report, f"{stem}flip_rate") == pytest.approx((frame[column] != frame["before"]).mean())
        drop = (report.accuracy_before - getattr(report, f"{stem}accuracy")) / report.accuracy_before
        assert getattr(report, f"{stem}drop") == pytest.approx(drop)
        lo, hi = getattr(report, f"{stem}drop_ci")
        assert lo <= hi and getattr(report, f"{stem}drop_se") >= 0
    summary = report.summary()
    for key in ("norm_matched_accuracy", "norm_matched_drop", "norm_matched_drop_ci_low", "norm_matched_drop_ci_high",
                "norm_matched_drop_se", "norm_matched_flip_rate", "norm_matched_removed_norm",
                "other_concept_accuracy", "other_concept_drop", "other_concept_drop_ci_low", "other_concept_flip_rate",
                "other_concept_removed_norm", "control_drop_ci_low", "control_drop_se", "drop_ci_low", "drop_se"):
        assert np.isfinite(summary[key]), key
    assert not any(isinstance(v, tuple) for v in summary.values())
    if protocol == "probe":
        assert summary["pooled_accuracy_norm_matched"] == pytest.approx(report.norm_matched_accuracy)
        assert "fold_mean_accuracy_norm_matched" in summary and "fold_mean_accuracy_other" in summary
    assert {"norm_matched_accuracy", "other_concept_accuracy"} <= set(report.per_class[0])
    assert json.loads(json.dumps(report.to_dict()))["norm_matched_removed_norm"] == report.norm_matched_removed_norm
    assert "norm-matched random" in str(report)


# ================================================================ pooled over seeds
def test_rubin_pool_follows_its_limits():
    # no within-seed error: the interval is a t-interval on m - 1 df with the (1 + 1/m) between variance
    q = np.array([0.2, 0.35, 0.3])
    out = rubin_pool(q, np.zeros(3), confidence=0.9)
    half = stats.t.ppf(0.95, 2) * np.sqrt((1 + 1 / 3) * q.var(ddof=1))
    assert out["df"] == pytest.approx(2.0) and out["ci"] == pytest.approx((q.mean() - half, q.mean() + half))
    # seeds that agree: the sentence bootstrap's error alone, with Barnard-Rubin's complete-data df
    out = rubin_pool([0.3, 0.3, 0.3], [0.05, 0.05, 0.05], n_complete=99)
    df = 100 / 102 * 99
    assert out["df"] == pytest.approx(df) and out["se"] == pytest.approx(0.05)
    assert out["ci"][1] - 0.3 == pytest.approx(stats.t.ppf(0.975, df) * 0.05)
    # both: the seed spread widens the sentence bootstrap's interval
    both = rubin_pool(q, [0.05, 0.05, 0.05], n_complete=99)
    assert both["se"] == pytest.approx(np.sqrt(0.05**2 + (1 + 1 / 3) * q.var(ddof=1)))
    assert both["ci"][1] - both["ci"][0] > out["ci"][1] - out["ci"][0]
    with pytest.raises(ValueError, match="at least 2 estimates"):
        rubin_pool([0.3], [0.05])
    with pytest.raises(ValueError, match="must be finite"):
        rubin_pool([0.3, np.nan], [0.05, 0.05])


@pytest.fixture(scope="module")
def seed_reports(tiny_clf):
    return [concept_ablation_report(_pipe(tiny_clf, seed), TEXTS, LABELS, random_state=seed, **_KW)
            for seed in range(3)]


def test_pool_ablation_reports_combines_sentences_and_seeds(seed_reports):
    reports = [dataclasses.replace(r, drop=d, drop_se=0.04) for r, d in zip(seed_reports, (0.1, 0.2, 0.3))]
    pooled = pool_ablation_reports(reports)
    assert isinstance(pooled, PooledAblationReport) and pooled.n_seeds == 3 and pooled.protocol == "probe"
    n = min(r.n_sentences for r in reports)
    assert pooled.drops["drop"] == rubin_pool([0.1, 0.2, 0.3], [0.04] * 3, n_complete=n - 1)
    assert pooled.drops["drop"]["seed_sd"] == pytest.approx(0.1)
    for name in ("control_drop", "norm_matched_drop", "other_concept_drop"):
        assert pooled.drops[name]["per_seed"] == [getattr(r, name) for r in reports]
    summary = pooled.summary()
    assert summary["drop"] == pytest.approx(0.2) and summary["drop_ci_low"] < 0.1 and summary["drop_ci_high"] > 0.3
    assert summary["norm_matched_removed_norm"] == pytest.approx(np.mean([r.norm_matched_removed_norm
                                                                          for r in reports]))
    assert summary["n_seeds"] == 3 and [s[1] for s in pooled.seeds] == [0, 1, 2]
    assert json.loads(json.dumps(pooled.to_dict()))["n_seeds"] == 3
    assert "pooled over 3 seeds" in str(pooled)


def test_pool_ablation_reports_rejects_what_cannot_be_pooled(seed_reports):
    a, b, _ = seed_reports
    with pytest.raises(ValueError, match="at least 2 reports"):
        pool_ablation_reports([a])
    with pytest.raises(TypeError, match=r"takes AblationReport objects; got \['dict'\]"):
        pool_ablation_reports([a, a.summary()])
    with pytest.raises(ValueError, match=r"reports 0 and 1 differ in protocol \('probe' vs 'splice'\)"):
        pool_ablation_reports([a, dataclasses.replace(b, protocol="splice")])
    other_layer = dataclasses.replace(b, settings={**b.settings, "layer": 4})
    with pytest.raises(ValueError, match=r"differ in layer \(2 vs 4\)"):
        pool_ablation_reports([a, other_layer])
    with pytest.raises(ValueError, match=r"report\(s\) \[1\] have no bootstrap standard error.*n_bootstrap > 0"):
        pool_ablation_reports([a, dataclasses.replace(b, drop_se=float("nan"))])
