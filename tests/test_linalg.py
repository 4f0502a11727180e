"""The one orthonormalisation shared by concept directions (SAE) and concept removal (projection)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from clvqlearn._linalg import orthonormalize
from clvqlearn.concepts.sae import encoder_subspace
from clvqlearn.evaluation import projection

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


def _residual(D, Q):
    """What of each row of D lies outside the span of the rows of Q."""
    return D - (D @ Q.T) @ Q


def test_projection_and_the_sae_use_this_implementation():
    assert projection.orthonormalize is orthonormalize


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), st.data())
def test_any_input_gives_orthonormal_rows_whose_span_holds_every_input_row(d, r, data):
    D = data.draw(arrays(np.float64, (r, d), elements=finite))
    Q = orthonormalize(D)
    assert Q.shape[1] == d and Q.shape[0] <= min(r, d) and Q.dtype == np.float64
    np.testing.assert_allclose(Q @ Q.T, np.eye(Q.shape[0]), atol=1e-9)
    scale = np.linalg.norm(D, axis=1).max(initial=0.0)
    # a row is dropped only when less than rtol (1e-8) of the largest row norm is new
    np.testing.assert_allclose(_residual(D, Q), 0.0, atol=1e-7 * (1 + scale))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(1, 8), st.integers(-6, 6), st.data())
def test_rank_deficient_input_gives_a_basis_of_its_span_in_row_order(seed, d, r, exponent, data):
    rng = np.random.default_rng(seed)
    rank = data.draw(st.integers(1, min(r, d)))
    D = (rng.normal(size=(r, rank)) @ rng.normal(size=(rank, d))) * 10.0 ** exponent
    # zero rows and repeats of earlier rows add no direction
    extra = data.draw(st.lists(st.integers(-1, r - 1), max_size=4))
    D = np.vstack([D] + [np.zeros((1, d)) if i < 0 else 3 * D[i:i + 1] for i in extra])
    Q = orthonormalize(D)
    assert Q.shape == (rank, d)  # exactly the rank: the span of D, nothing more, nothing less
    np.testing.assert_allclose(Q @ Q.T, np.eye(rank), atol=1e-9)
    np.testing.assert_allclose(_residual(D, Q), 0.0, atol=1e-8 * np.abs(D).max())
    # the span of Q lies in the span of D: D's own orthonormal basis keeps Q unchanged
    U = np.linalg.svd(D, full_matrices=False)[2][:rank]
    np.testing.assert_allclose(_residual(Q, U), 0.0, atol=1e-8)
    # Gram-Schmidt keeps the order: the first row's direction comes first
    np.testing.assert_allclose(Q[0], D[0] / np.linalg.norm(D[0]), atol=1e-10)


def test_zero_empty_and_one_dimensional_input():
    assert orthonormalize(np.zeros((3, 4))).shape == (0, 4)
    assert orthonormalize(np.zeros((0, 5))).shape == (0, 5)
    np.testing.assert_allclose(orthonormalize([0.0, 3.0, 4.0]), [[0.0, 0.6, 0.8]])
    # a row far below rtol of the largest row adds nothing; a larger rtol drops more
    assert orthonormalize([[1.0, 0.0], [0.0, 1e-12]]).shape == (1, 2)
    assert orthonormalize([[1.0, 0.0], [1.0, 1e-3]]).shape == (2, 2)
    assert orthonormalize([[1.0, 0.0], [1.0, 1e-3]], rtol=1e-2).shape == (1, 2)


@pytest.mark.parametrize(("value", "match"), [
    ([[np.nan, 1.0]], "NaN or infinity"),
    ([[np.inf, 1.0]], "NaN or infinity"),
    (np.zeros((2, 2, 2)), r"shape \(r, d\) or \(d,\)"),
])
def test_bad_directions_are_refused(value, match):
    with pytest.raises(ValueError, match=match):
        orthonormalize(value)


def test_encoder_subspace_keeps_small_rows_relative_to_their_own_norm():
    # the concept's row is 1e-9 of its neighbour's norm: still the first direction
    W = np.array([[1e-9, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    Q = encoder_subspace(W, 0, 2)
    assert Q.shape == (2, 3)
    np.testing.assert_allclose(Q[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.abs(Q[1]), [0.0, 1.0, 0.0], atol=1e-12)
