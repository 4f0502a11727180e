"""Orthogonal projection of concept directions out of vectors (numpy and torch).

The one piece of linear algebra behind concept removal: given directions
``D`` (r, d) spanning a subspace ``S``, a vector ``x`` is replaced by its
component orthogonal to ``S``::

    x' = x - Q^T (Q x),    Q = orthonormal basis of span(D)  (rows)

so ``Q x' = 0`` (nothing of the concept is left), projecting twice changes
nothing (idempotent), and a vector already orthogonal to ``S`` is returned
unchanged.  Directions are always re-orthonormalised here (Gram-Schmidt, dropping
directions that add nothing), so callers may pass any spanning set.

Both the probe protocol (sentence vectors, numpy) and the splice protocol
(hidden states inside a forward pass, torch) use these functions.

The controls: :func:`random_directions` (random Gaussian directions of the
concept's rank, the paper's control) and :func:`norm_matched_removal` (one
random direction per vector, chosen so that its removal takes out exactly
the norm the concept's removal took out of that vector)::

    s = ||Q x|| / ||x||                      (the concept edit's share of the norm)
    w = unit part of a Gaussian g orthogonal to x
    v = s x/||x|| + sqrt(1 - s^2) w           (unit; cosine s with x)
    x' = x - (v . x) v = x - s ||x|| v

so ``||x - x'|| = ||Q x||`` and ``||x'||^2 = ||x||^2 - ||Q x||^2``: the
same edit length and the same remaining norm as the concept's removal, by
an orthogonal projection, in a direction drawn uniformly among all those
that remove that share.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils import check_random_state

from .._linalg import orthonormalize

__all__ = [
    "norm_matched_removal",
    "norm_matched_removal_torch",
    "orthonormalize",
    "project_out",
    "project_out_rows",
    "project_out_torch",
    "random_directions",
    "removed_norms",
]


def project_out(X, directions) -> np.ndarray:
    """Remove the span of ``directions`` from every row of ``X``.

    Parameters
    ----------
    X : array-like of shape (n, d) or (d,)
        Vectors.
    directions : array-like of shape (r, d) or (d,)
        Directions to remove (any spanning set; orthonormalised here).

    Returns
    -------
    ndarray of the shape of ``X``
        ``X - (X Q^T) Q`` in float64 (or ``X``'s float dtype when it has one).

    Raises
    ------
    ValueError
        When the widths of ``X`` and ``directions`` differ.

    Examples
    --------
    >>> import numpy as np
    >>> project_out([3.0, 4.0], [1.0, 0.0]).tolist()
    [0.0, 4.0]
    >>> project_out(np.array([[1.0, 2.0, 3.0]]), [[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]).tolist()
    [[1.0, 0.0, 0.0]]
    """
    X_arr = np.asarray(X)
    dtype = X_arr.dtype if np.issubdtype(X_arr.dtype, np.floating) else np.float64
    Xf = X_arr.astype(np.float64, copy=False)
    Q = orthonormalize(directions)
    width = Xf.shape[-1] if Xf.ndim else 0
    if Xf.ndim not in (1, 2) or Q.shape[1] != width:
        raise ValueError(
            f"X must have shape (n, d) or (d,) with d equal to the directions' width {Q.shape[1]}; "
            f"got X of shape {Xf.shape}."
        )
    out = Xf - (Xf @ Q.T) @ Q
    return out.astype(dtype, copy=False)


def project_out_rows(X, directions_per_row) -> np.ndarray:
    """Remove a different subspace from each row of ``X``.

    Parameters
    ----------
    X : array-like of shape (n, d)
        One vector per row (e.g. one sentence representation per sentence).
    directions_per_row : sequence of n arrays of shape (r_i, d)
        The directions to remove from row ``i`` (``r_i`` may be 0: the row is
        left unchanged).

    Returns
    -------
    ndarray of shape (n, d)

    Raises
    ------
    ValueError
        When the number of direction sets differs from the number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 2.0], [1.0, 2.0]])
    >>> project_out_rows(X, [np.array([[1.0, 0.0]]), np.zeros((0, 2))]).tolist()
    [[0.0, 2.0], [1.0, 2.0]]
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (one vector per row); got shape {X.shape}.")
    if len(directions_per_row) != X.shape[0]:
        raise ValueError(
            f"Got {X.shape[0]} rows but {len(directions_per_row)} direction sets: expected one per row."
        )
    out = np.empty(X.shape, dtype=X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64)
    for i, D in enumerate(directions_per_row):
        D = np.asarray(D)
        out[i] = X[i] if D.size == 0 else project_out(X[i], D)
    return out


def random_directions(rank: int, dim: int, random_state=None) -> np.ndarray:
    """Orthonormalised Gaussian directions: the random-direction control.

    Parameters
    ----------
    rank : int
        Number of directions (0 gives an empty (0, dim) array).
    dim : int
        Their width.
    random_state : int, RandomState instance or None
        Seed (``sklearn.utils.check_random_state``); no global state is used.

    Returns
    -------
    ndarray of shape (rank, dim)
        Orthonormal rows.

    Examples
    --------
    >>> import numpy as np
    >>> R = random_directions(2, 5, random_state=0)
    >>> R.shape, np.allclose(R @ R.T, np.eye(2))
    ((2, 5), True)
    """
    if not isinstance(rank, (int, np.integer)) or rank < 0:
        raise ValueError(f"rank must be a non-negative int; got {rank!r}.")
    if not isinstance(dim, (int, np.integer)) or dim < 1 or rank > dim:
        raise ValueError(f"dim must be an int >= max(1, rank={rank}); got {dim!r}.")
    rng = check_random_state(random_state)
    if rank == 0:
        return np.zeros((0, int(dim)))
    return orthonormalize(rng.standard_normal((int(rank), int(dim))))


def project_out_torch(hidden, directions):
    """Torch version of :func:`project_out` for batched hidden states.

    Parameters
    ----------
    hidden : torch.Tensor of shape (..., d)
        Vectors (any leading shape).
    directions : torch.Tensor of shape (r, d)
        ORTHONORMAL rows (zero rows are allowed and remove nothing); same
        dtype and device as ``hidden``.

    Returns
    -------
    torch.Tensor
        ``hidden - (hidden Q^T) Q``, a new tensor (``hidden`` is not modified).

    Examples
    --------
    >>> import torch
    >>> project_out_torch(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])).tolist()
    [[0.0, 4.0]]
    """
    if directions.dim() != 2 or directions.shape[-1] != hidden.shape[-1]:
        raise ValueError(
            f"directions must have shape (r, {hidden.shape[-1]}); got {tuple(directions.shape)}."
        )
    return hidden - (hidden @ directions.T) @ directions


def removed_norms(X, directions_per_row) -> np.ndarray:
    """Per row, the norm ``||Q_i x_i||`` that projecting its directions out removes.

    Parameters
    ----------
    X : array-like of shape (n, d)
    directions_per_row : sequence of n arrays of shape (r_i, d)
        As for :func:`project_out_rows` (``r_i`` may be 0: nothing removed).

    Returns
    -------
    ndarray of shape (n,), float64

    Examples
    --------
    >>> removed_norms([[3.0, 4.0], [3.0, 4.0]], [[[1.0, 0.0]], [[0.0, 2.0]]]).tolist()
    [3.0, 4.0]
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(directions_per_row) != X.shape[0]:
        raise ValueError(
            f"X must be 2-D with one direction set per row; got X of shape {X.shape} and "
            f"{len(directions_per_row)} direction sets."
        )
    out = np.zeros(X.shape[0])
    for i, D in enumerate(directions_per_row):
        if np.asarray(D).size:
            out[i] = np.linalg.norm(orthonormalize(D) @ X[i])
    return out


def norm_matched_removal(X, removed, noise) -> np.ndarray:
    """The norm-matched random control: remove ``removed[i]`` of row ``i``'s norm along a random direction.

    Row ``x`` (norm ``||x|| > 0``) loses its component along the unit
    vector ``v = s x/||x|| + sqrt(1 - s^2) w``, where ``s = removed /
    ||x||`` (clipped to [0, 1]) and ``w`` is the unit part of ``noise``
    orthogonal to ``x``: ``x' = x - (v . x) v``.  Hence ``||x - x'|| =
    removed`` exactly and ``||x'||^2 = ||x||^2 - removed^2``, as for any
    orthogonal projection that removes that much; with isotropic Gaussian
    ``noise``, ``v`` is uniform among the unit vectors at cosine ``s`` to
    ``x``.  Zero rows are returned unchanged.

    Parameters
    ----------
    X : array-like of shape (n, d)
        Vectors.
    removed : array-like of shape (n,)
        Norm to remove from each row (e.g. :func:`removed_norms` of the
        concept's directions), ``0 <= removed[i] <= ||x_i||``.
    noise : array-like of shape (n, d) or (d,)
        Gaussian draws (one per row, or one shared), from the caller's
        random state.  A row of ``noise`` parallel to its ``x`` (probability
        zero for Gaussian noise when ``d >= 2``) leaves no random part.

    Returns
    -------
    ndarray of shape (n, d), float64

    Raises
    ------
    ValueError
        When the shapes disagree.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[3.0, 4.0, 0.0]])
    >>> out = norm_matched_removal(X, [3.0], np.random.default_rng(0).standard_normal((1, 3)))
    >>> round(float(np.linalg.norm(X - out)), 12), round(float(np.linalg.norm(out)), 12)
    (3.0, 4.0)
    """
    Xf = np.asarray(X, dtype=np.float64)
    r = np.asarray(removed, dtype=np.float64)
    g = np.asarray(noise, dtype=np.float64)
    if Xf.ndim != 2 or r.shape != (Xf.shape[0],) or g.shape not in (Xf.shape, Xf.shape[1:]):
        raise ValueError(
            f"X must be (n, d), removed (n,) and noise (n, d) or (d,); got shapes {Xf.shape}, {r.shape}, "
            f"{g.shape}."
        )
    out = norm_matched_removal_torch(torch.from_numpy(Xf), torch.from_numpy(r), torch.from_numpy(g))
    return out.numpy()


def norm_matched_removal_torch(hidden, removed, noise):
    """Torch version of :func:`norm_matched_removal` for any leading shape.

    Parameters
    ----------
    hidden : torch.Tensor of shape (..., d)
    removed : torch.Tensor of shape (...)
        Norm to remove from each vector.
    noise : torch.Tensor broadcastable to ``hidden``
        Gaussian draws (e.g. ``(B, 1, d)`` for one draw per sequence).

    Returns
    -------
    torch.Tensor
        A new tensor of ``hidden``'s shape and dtype (half precision is
        computed in float32: ``sqrt(1 - s^2)`` needs the digits).
    """
    if hidden.dtype in (torch.float16, torch.bfloat16):
        return norm_matched_removal_torch(hidden.float(), removed.float(), noise.float()).to(hidden.dtype)
    tiny = torch.finfo(hidden.dtype).tiny
    norm = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True)
    unit = hidden / norm.clamp_min(tiny)
    share = (removed.unsqueeze(-1).to(hidden.dtype) / norm.clamp_min(tiny)).clamp(0.0, 1.0)
    noise = noise.to(hidden.dtype)
    ortho = noise - (noise * unit).sum(dim=-1, keepdim=True) * unit
    ortho = ortho / torch.linalg.vector_norm(ortho, dim=-1, keepdim=True).clamp_min(tiny)
    direction = share * unit + torch.sqrt(1.0 - share * share) * ortho
    return hidden - (share * norm) * direction
