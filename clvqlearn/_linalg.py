"""Small linear-algebra helpers shared by the concept estimators and the evaluation.

Private: the public entry point is
:func:`clvqlearn.evaluation.projection.orthonormalize`, which is this
module's :func:`orthonormalize`.  It lives here, below both the concept
estimators and the evaluation code, so that a concept estimator (the sparse
autoencoder's ``concept_directions``) and the projection used for concept
removal orthonormalise the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["orthonormalize"]


def orthonormalize(directions, *, rtol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis (rows) of the span of ``directions``, in their order.

    Gram-Schmidt with one re-orthogonalisation pass (stable for the few
    directions a concept has): row ``i`` of the result is the unit part of
    the ``i``-th kept input row orthogonal to the rows before it, so the
    first non-zero input row's direction always comes first.

    Parameters
    ----------
    directions : array-like of shape (r, d) or (d,)
        Spanning vectors (rows).  Zero rows and rows that add no new
        direction are dropped.
    rtol : float, default=1e-8
        A row is dropped when what is left of it after removing the earlier
        directions is below ``rtol`` times the largest row norm.

    Returns
    -------
    ndarray of shape (r', d), float64, r' <= min(r, d)
        Orthonormal rows spanning the same subspace.

    Raises
    ------
    ValueError
        When ``directions`` is not 1-D or 2-D, or holds NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> Q = orthonormalize([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [3.0, 3.0, 0.0]])
    >>> Q.shape, np.allclose(Q @ Q.T, np.eye(2))
    ((2, 3), True)
    >>> Q[0].tolist()  # the first row's direction comes first
    [1.0, 0.0, 0.0]
    """
    D = np.asarray(directions, dtype=np.float64)
    if D.ndim == 1:
        D = D[None, :]
    if D.ndim != 2:
        raise ValueError(f"directions must have shape (r, d) or (d,); got shape {D.shape}.")
    if not np.all(np.isfinite(D)):
        raise ValueError("directions contain NaN or infinity.")
    if D.shape[0] == 0:
        return np.zeros((0, D.shape[1]))
    scale = float(np.linalg.norm(D, axis=1).max())
    if scale == 0.0:
        return np.zeros((0, D.shape[1]))
    basis: list[np.ndarray] = []
    for row in D / scale:
        residual = row.copy()
        for _ in range(2):
            for q in basis:
                residual -= (residual @ q) * q
        norm = float(np.linalg.norm(residual))
        if norm > rtol:
            basis.append(residual / norm)
    return np.asarray(basis).reshape(len(basis), D.shape[1])
