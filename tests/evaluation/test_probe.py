"""The probes of the removal protocol (clvqlearn.evaluation.probe)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clvqlearn.evaluation.probe import MLPProbe, cross_val_probe
from clvqlearn.evaluation.projection import (
    project_out,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


