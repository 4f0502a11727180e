"""Metrics of concept models: reconstruction and codebook usage.

Plain functions of arrays, usable on any model's output:

- :func:`fraction_of_variance_explained`: what every concept estimator's
  ``score`` returns, the held-out reconstruction quality of the benchmarks
  and of :func:`~clvqlearn.evaluation.diagnostics.reference_ladder`;
- :func:`code_usage`: the share of tokens assigned to each concept (the
  estimators' ``usage_``);
- :func:`usage_perplexity`: ``exp(entropy(usage))``, the effective number
  of concepts in use (``CrossLayerVQ.perplexity_``).

Examples
--------
>>> import numpy as np
>>> from clvqlearn import metrics
>>> ids = np.array([0, 0, 1, 3])
>>> metrics.code_usage(ids, 4).tolist()
[0.5, 0.25, 0.0, 0.25]
>>> round(metrics.usage_perplexity(metrics.code_usage(ids, 4)), 3)
2.828
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["code_usage", "fraction_of_variance_explained", "usage_perplexity"]


def fraction_of_variance_explained(target, prediction) -> float:
    """``1 - SSE / SST`` over all features, the mean taken over rows.

    The fraction of the target's total variance (summed over features) that
    the prediction explains: 1 for a perfect prediction, 0 for predicting
    the target's mean row, negative for worse than that.  Unlike
    :func:`sklearn.metrics.r2_score` it pools the features instead of
    averaging per-feature scores, so low-variance features do not dominate.

    Parameters
    ----------
    target, prediction : array-like of shape (n_samples, n_features) or (n_samples,)
        Finite values, same shape.

    Returns
    -------
    float
        ``1 - sum((target - prediction)**2) / sum((target - target.mean(0))**2)``;
        for a constant target, 1.0 when the prediction is exact and 0.0
        otherwise.

    Raises
    ------
    ValueError
        When the shapes differ or are not 1-D / 2-D.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[0.0], [2.0]])
    >>> fraction_of_variance_explained(t, t)
    1.0
    >>> fraction_of_variance_explained(t, np.ones_like(t))
    0.0
    >>> fraction_of_variance_explained(t, np.array([[0.5], [1.5]]))
    0.75
    """
    target, prediction = _numeric(target), _numeric(prediction)
    if target.shape != prediction.shape or target.ndim not in (1, 2):
        raise ValueError(
            "target and prediction must be 1-D or 2-D arrays of the same shape; got "
            f"{target.shape} and {prediction.shape}."
        )
    # The ratio is scale-free: dividing both by one power of two (exact) keeps
    # huge (but finite) values from overflowing when squared.
    scale = _exact_scale(target, prediction)
    # float64 sums over chunks of rows, never a float64 copy of the whole arrays
    # (100k tokens x 384 features: 300 MB each, and several were made)
    total = sum((t.sum(axis=0) for (t,) in _scaled_chunks(scale, target)), np.float64(0.0))
    mean = total / max(target.shape[0], 1)
    sst = sse = 0.0
    for t, p in _scaled_chunks(scale, target, prediction):
        sst += float(((t - mean) ** 2).sum())
        sse += float(((t - p) ** 2).sum())
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst


#: Bytes of one float64 chunk in :func:`fraction_of_variance_explained` (32 MiB).
_FVE_CHUNK_BYTES = 32 * 2**20


def _numeric(array) -> np.ndarray:
    """``array`` as a numpy array; anything not numeric (e.g. strings) converted to float64."""
    array = np.asarray(array)
    return array if np.issubdtype(array.dtype, np.number) or array.dtype == bool else array.astype(np.float64)


def _scaled_chunks(scale: float, *arrays):
    """Tuples of the same rows of ``arrays``, about 32 MiB of float64 each, divided by ``scale``."""
    width = int(np.prod(arrays[0].shape[1:]))
    step = max(1, _FVE_CHUNK_BYTES // (8 * max(width, 1)))
    for start in range(0, arrays[0].shape[0], step):
        rows = slice(start, start + step)
        yield tuple(np.asarray(a[rows], dtype=np.float64) / scale for a in arrays)


def _exact_scale(*arrays) -> float:
    """A power of two that brings every finite magnitude in ``arrays`` below 2 (1.0 when all are 0).

    It is the largest power of two not above the largest magnitude, so
    dividing by it is exact and cannot overflow (the power of two just
    above ``1.7e308`` would be infinite).  With an infinite or NaN value
    it is 1.0 (the result is then not finite anyway).
    """
    largest = max((max(float(a.max()), -float(a.min())) for a in arrays if a.size), default=0.0)
    if not np.isfinite(largest) or largest <= 0:
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(largest)[1]) - 1))


def code_usage(ids, k) -> np.ndarray:
    """Share of tokens assigned to each of ``k`` concepts.

    Parameters
    ----------
    ids : array-like of int of shape (n_tokens,)
        Concept id of every token (``estimator.predict(X)``), in ``[0, k)``.
    k : int
        Number of concepts.

    Returns
    -------
    ndarray of shape (k,), float64
        Sums to 1 (all zeros when ``ids`` is empty).

    Raises
    ------
    ValueError
        When ``ids`` is not a 1-D integer array in ``[0, k)`` or ``k < 1``.

    Examples
    --------
    >>> code_usage([2, 2, 0], 4).tolist()
    [0.3333333333333333, 0.0, 0.6666666666666666, 0.0]
    """
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D array of integer concept ids; got shape {ids.shape}, dtype {ids.dtype}.")
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise ValueError(f"ids must lie in [0, {k}); got values from {ids.min()} to {ids.max()}.")
    counts = np.bincount(ids.astype(np.int64), minlength=int(k)).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def usage_perplexity(usage) -> float:
    """``exp(entropy(usage))``: the effective number of concepts in use.

    ``k`` when every concept is used equally often, 1 when one concept
    takes every token.

    Parameters
    ----------
    usage : array-like of shape (k,)
        Non-negative usage shares or counts (normalised here); unused
        concepts contribute nothing.

    Returns
    -------
    float
        In ``[1, number of used concepts]``; 1.0 when nothing is used.

    Raises
    ------
    ValueError
        When ``usage`` is not 1-D, or holds negative or non-finite values.

    Examples
    --------
    >>> usage_perplexity([0.25, 0.25, 0.25, 0.25])
    4.0
    >>> usage_perplexity([3, 0, 0])
    1.0
    """
    usage = np.asarray(usage, dtype=np.float64)
    if usage.ndim != 1 or not np.all(np.isfinite(usage)) or np.any(usage < 0):
        raise ValueError("usage must be a 1-D array of finite, non-negative shares or counts.")
    total = usage.sum()
    if total == 0:
        return 1.0
    shares = usage[usage > 0] / total
    return float(np.exp(-(shares * np.log(shares)).sum()))
