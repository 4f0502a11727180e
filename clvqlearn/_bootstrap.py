"""Percentile bootstrap: the resampling draws and the interval, shared by the evaluation code.

Every function takes the caller's random generator and draws from it in a
fixed order, so one ``random_state`` gives the same intervals as before the
code was shared.  The draws come in two forms:

* :func:`resample_indices`: ``(n_boot, n)`` indices drawn with replacement,
  for a statistic of the resampled units (a mean, a ratio of sums);
* :func:`resample_weights`: how often each unit is drawn, ``(n_boot, n)``,
  for a statistic recomputed from per-unit sums (``weights @ sums``).

Examples
--------
>>> import numpy as np
>>> low, high = percentile_ci(np.arange(10.0), n_boot=500, ci=0.9, rng=np.random.default_rng(0))
>>> bool(low < 4.5 < high)
True
>>> resample_weights(4, 3, np.random.default_rng(0)).sum(axis=1)
array([4., 4., 4.])
"""

from __future__ import annotations

import numpy as np


def resample_indices(n: int, n_boot: int, rng) -> np.ndarray:
    """``(n_boot, n)`` indices into ``n`` units, drawn with replacement.

    Parameters
    ----------
    n : int
        Units to resample (items, sentences, concepts).
    n_boot : int
        Resamples.
    rng : numpy.random.Generator or numpy.random.RandomState
        Drawn from with ``integers`` (a Generator) or ``randint`` (a
        RandomState, as :func:`sklearn.utils.check_random_state` gives).

    Returns
    -------
    ndarray of shape (n_boot, n)

    Examples
    --------
    >>> resample_indices(3, 2, np.random.default_rng(0)).shape
    (2, 3)
    """
    draw = rng.integers if isinstance(rng, np.random.Generator) else rng.randint
    return draw(0, n, size=(n_boot, n))


def resample_weights(n: int, n_boot: int, rng) -> np.ndarray:
    """How often each of ``n`` units is drawn, per resample: float ``(n_boot, n)``, rows summing to ``n``.

    One multinomial draw per resample (not :func:`resample_indices`
    counted), for statistics recomputed from per-unit sums.

    Examples
    --------
    >>> resample_weights(5, 2, np.random.default_rng(0)).shape
    (2, 5)
    """
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def percentile_interval(draws, ci: float, *, axis=None, skip_nan: bool = False) -> tuple:
    """The central ``ci`` percentile interval of bootstrap ``draws``: ``(low, high)``.

    Parameters
    ----------
    draws : array-like
        The statistic on each resample.
    ci : float
        Coverage in (0, 1), e.g. 0.95 for the 2.5 and 97.5 percentiles.
    axis : int, optional
        The resample axis (default: all values; the bounds are then scalars).
    skip_nan : bool, default=False
        Ignore NaN draws (:func:`numpy.nanpercentile`).

    Returns
    -------
    tuple
        ``(low, high)``, floats or arrays (with ``axis``).

    Examples
    --------
    >>> low, high = percentile_interval(np.arange(101.0), 0.5)
    >>> float(low), float(high)
    (25.0, 75.0)
    """
    percentile = np.nanpercentile if skip_nan else np.percentile
    return (percentile(draws, (1 - ci) / 2 * 100, axis=axis), percentile(draws, (1 + ci) / 2 * 100, axis=axis))


def percentile_ci(values, *, n_boot: int, ci: float, rng) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaN, NaN when there are none).

    Parameters
    ----------
    values : array-like of shape (n,)
    n_boot : int
    ci : float
        Coverage in (0, 1).
    rng : numpy.random.Generator or numpy.random.RandomState

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Examples
    --------
    >>> percentile_ci([], n_boot=10, ci=0.95, rng=np.random.default_rng(0))
    (nan, nan)
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return np.nan, np.nan
    means = values[resample_indices(values.size, n_boot, rng)].mean(axis=1)
    low, high = percentile_interval(means, ci)
    return float(low), float(high)
