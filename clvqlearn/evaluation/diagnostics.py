"""Does a concept model learn more than clustering? Held-out references and agreement.

Two questions decide whether a cross-layer concept model earns its keep:

1. **Reconstruction against references that need no training.**
   :func:`reference_ladder` fits, on the same training tokens and at the
   same ``k``, the references a discrete model must be read against, and
   scores every row on held-out tokens by the fraction of the higher
   layer's variance explained (FVE):

   ``"k-means(low) -> mean(high)"``
       Cluster the lower layer, predict each token as its cluster's mean
       higher-layer vector.  The best a per-token, codes-only decoder can
       do with k-means codes of layer ``l``: a concept model whose
       decoder reads only its own code must beat it, or its concepts are
       no better than clusters of the lower layer.
   ``"k-means(high)"``
       Cluster the higher layer itself, each token replaced by its
       centroid.  No per-token partition of the tokens can beat it (it
       sees the target); only a decoder that reads context can.
   ``"ridge low -> high"``
       A per-token linear map: the continuous ceiling that a decoder with a
       bypass of the bottleneck should approach.
   ``"k-means(encoder z) -> mean(high)"`` (with ``encoder=``)
       The two-stage baseline: k-means on a fitted :class:`CrossLayerVQ`'s
       own encoder output ``z`` (its regression of the higher layer), each
       token predicted as its cluster's mean higher-layer vector.  Joint
       training earns its place only if the model's codes beat this
       "regress, then cluster" reading of its own encoder.

2. **Agreement of concept ids.** :func:`concept_agreement` is the adjusted
   mutual information (AMI) between two assignments of the same tokens;
   :func:`kmeans_seed_agreement` is its yardstick, the AMI between two
   k-means runs that differ only in their seed.  A concept model whose
   AMI with k-means on layer ``l`` is as high as that yardstick has found
   the k-means clusters of layer ``l`` again.  With ``encoder=`` the
   yardstick clusters the encoder's output ``z`` instead: a model whose
   ids agree with k-means on its own ``z`` as well as two k-means seeds do
   is the two-stage baseline again.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> from clvqlearn.evaluation.diagnostics import reference_ladder
>>> rng = np.random.default_rng(0)
>>> low = rng.normal(size=(400, 3)).astype(np.float32)
>>> pairs = LayerPairs(low=low, high=2 * low, offsets=np.arange(401))
>>> ladder = reference_ladder(pairs[:300], pairs[300:], k=8, random_state=0)
>>> ladder["method"].tolist()
['k-means(low) -> mean(high)', 'k-means(high)', 'ridge low -> high']
>>> bool(ladder.set_index("method").loc["ridge low -> high", "fve"] > 0.99)
True
"""

from __future__ import annotations

import time
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.metrics import adjusted_mutual_info_score

from .._sklearn_compat import HasMethods, Interval, StrOptions, validate_params
from ..concepts.kmeans import KMeansConcepts
from ..data import LayerPairs
from ..metrics import fraction_of_variance_explained

__all__ = ["reference_ladder", "concept_agreement", "kmeans_seed_agreement", "cluster_means"]


def cluster_means(ids: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Mean row of ``values`` per cluster id; empty clusters get the overall mean.

    Parameters
    ----------
    ids : ndarray of shape (n,)
        Cluster ids in ``[0, k)``.
    values : ndarray of shape (n, d)
    k : int

    Returns
    -------
    ndarray of shape (k, d), float64

    Examples
    --------
    >>> import numpy as np
    >>> cluster_means(np.array([0, 0, 2]), np.array([[1.0], [3.0], [5.0]]), 3).ravel().tolist()
    [2.0, 3.0, 5.0]
    """
    values = np.asarray(values, dtype=np.float64)
    sums = np.zeros((k, values.shape[1]))
    np.add.at(sums, ids, values)
    counts = np.bincount(ids, minlength=k)
    means = sums / np.maximum(counts, 1)[:, None]
    means[counts == 0] = values.mean(axis=0)
    return means


def _check_encoder(encoder) -> None:
    """``encoder`` must be fitted (its type is checked by ``validate_params``)."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(encoder, msg="encoder must be a fitted CrossLayerVQ; call fit first.")


def _encoded_kmeans(z_train, k, random_state):
    """k-means (:class:`KMeansConcepts`) on the encoder output ``z_train``: the two-stage clustering."""
    return KMeansConcepts(k, random_state=random_state).fit(z_train)


@validate_params(
    {"train": [LayerPairs], "test": [LayerPairs], "k": [Interval(Integral, 1, None, closed="left")],
     "estimators": [dict, None], "encoder": [None, HasMethods(["encode", "predict"])],
     "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def reference_ladder(train, test, k, *, estimators=None, encoder=None, random_state=0) -> pd.DataFrame:
    """Held-out FVE of the higher layer for the references and any fitted estimators.

    Parameters
    ----------
    train, test : LayerPairs
        Training and held-out tokens of the same layer pair.
    k : int
        Number of clusters of the k-means references (use the estimators' k).
    estimators : dict of str to fitted estimator, optional
        Extra rows: ``name -> estimator`` whose ``score(test)`` is the FVE.
    encoder : fitted CrossLayerVQ, optional
        Adds the two-stage row ``"k-means(encoder z) -> mean(high)"``:
        k-means on ``encoder.encode(train)``, each held-out token predicted
        as its cluster's mean higher-layer vector.
    random_state : int, RandomState or None, default=0
        Seed of the k-means references.

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``fve`` (held out) and ``seconds`` (fit time of
        the reference; NaN for estimators fitted elsewhere; for the
        two-stage row, the clustering's time, not the encoder's).
    """
    if encoder is not None:
        _check_encoder(encoder)
    rows = []
    start = time.perf_counter()
    low = KMeansConcepts(k, layer="low", random_state=random_state).fit(train)
    means = cluster_means(low.predict(train), train.high, k)
    rows.append(("k-means(low) -> mean(high)", fraction_of_variance_explained(test.high, means[low.predict(test)]),
                 time.perf_counter() - start))
    start = time.perf_counter()
    high = KMeansConcepts(k, layer="high", random_state=random_state).fit(train)
    rows.append(("k-means(high)", high.score(test), time.perf_counter() - start))
    start = time.perf_counter()
    ridge = Ridge(alpha=1.0).fit(train.low, train.high)
    rows.append(("ridge low -> high", fraction_of_variance_explained(test.high, ridge.predict(test.low)),
                 time.perf_counter() - start))
    if encoder is not None:
        start = time.perf_counter()
        clusters = _encoded_kmeans(encoder.encode(train), k, random_state)
        means = cluster_means(clusters.labels_, train.high, k)
        rows.append(("k-means(encoder z) -> mean(high)",
                     fraction_of_variance_explained(test.high, means[clusters.predict(encoder.encode(test))]),
                     time.perf_counter() - start))
    for name, estimator in (estimators or {}).items():
        rows.append((name, float(estimator.score(test)), float("nan")))
    return pd.DataFrame(rows, columns=["method", "fve", "seconds"])


def _ids(assignment, X) -> np.ndarray:
    if hasattr(assignment, "predict"):
        if X is None:
            raise ValueError("X is required when an assignment is a fitted estimator.")
        return np.asarray(assignment.predict(X))
    return np.asarray(assignment)


def concept_agreement(a, b, X=None) -> float:
    """Adjusted mutual information between two concept assignments of the same tokens.

    Parameters
    ----------
    a, b : fitted concept estimator or ndarray of shape (n_tokens,)
        An estimator is asked for ``predict(X)``; an array is taken as ids.
    X : LayerPairs or array-like, optional
        The tokens; required when ``a`` or ``b`` is an estimator.

    Returns
    -------
    float
        1 for identical partitions (up to renaming), about 0 for unrelated ones.

    Examples
    --------
    >>> import numpy as np
    >>> concept_agreement(np.array([0, 0, 1, 1]), np.array([5, 5, 7, 7]))
    1.0
    """
    ids_a, ids_b = _ids(a, X), _ids(b, X)
    if ids_a.shape != ids_b.shape or ids_a.ndim != 1:
        raise ValueError(f"the two assignments must be 1-D and of equal length; got {ids_a.shape} and {ids_b.shape}.")
    return float(adjusted_mutual_info_score(ids_a, ids_b))


@validate_params(
    {"train": [LayerPairs], "test": [LayerPairs], "k": [Interval(Integral, 1, None, closed="left")],
     "layer": [StrOptions({"low", "high"})], "seeds": [tuple, list],
     "encoder": [None, HasMethods(["encode", "predict"])]},
    prefer_skip_nested_validation=True,
)
def kmeans_seed_agreement(train, test, k, *, layer="low", seeds=(0, 1), encoder=None) -> float:
    """AMI between k-means runs that differ only in their seed (the agreement yardstick).

    Parameters
    ----------
    train, test : LayerPairs
        k-means is fitted on ``train`` and compared on ``test``.
    k : int
    layer : {"low", "high"}, default="low"
        The layer clustered (ignored with ``encoder``).
    seeds : pair of int, default=(0, 1)
    encoder : fitted CrossLayerVQ, optional
        Cluster ``encoder.encode(X)`` (the two-stage baseline's space)
        instead of a layer.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> rng = np.random.default_rng(0)
    >>> low = (5 * rng.normal(size=(4, 2)))[rng.integers(0, 4, 400)] + rng.normal(size=(400, 2))
    >>> pairs = LayerPairs(low=low, high=low, offsets=np.arange(401))
    >>> round(kmeans_seed_agreement(pairs[:300], pairs[300:], 4), 2)  # four clear clusters: found twice
    1.0
    """
    if len(seeds) != 2:
        raise ValueError(f"seeds must hold exactly two seeds; got {seeds!r}.")
    if encoder is None:
        fits = [KMeansConcepts(k, layer=layer, random_state=seed).fit(train) for seed in seeds]
        return concept_agreement(fits[0], fits[1], test)
    _check_encoder(encoder)
    z_train, held_out = encoder.encode(train), encoder.encode(test)  # once, for both seeds
    fits = [_encoded_kmeans(z_train, k, seed) for seed in seeds]
    return concept_agreement(fits[0], fits[1], held_out)
