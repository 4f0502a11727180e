"""Orthogonal projection of concept directions (clvqlearn.evaluation.projection)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clvqlearn.evaluation.projection import (
    orthonormalize,
    project_out,
    project_out_rows,
    project_out_torch,
    random_directions,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


