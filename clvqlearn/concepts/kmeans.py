"""`KMeansConcepts`: the clustering baseline (k-means or ConceptX-style Ward).

Concepts are clusters of the token vectors of ONE layer.  This is the
"clustering" baseline of the CLVQ-VAE paper: ConceptX clusters token
representations with agglomerative (Ward) clustering; k-means is the
scalable standard.  Both are scikit-learn's own implementations; this
module only adapts them to the shared concept-estimator contract.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, MiniBatchKMeans, kmeans_plusplus
from sklearn.metrics import pairwise_distances
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions
from ._base import ConceptEstimator, softmax_of_distances
from ._data import StreamData, _Data
from ._init import INIT_MAX_SAMPLES
from ._persistence import _STATISTIC_DTYPES

#: ``algorithm="auto"`` uses full k-means up to this many tokens and
#: MiniBatchKMeans above it.
AUTO_MINIBATCH_MIN_TOKENS = 200_000

#: Epochs of a streamed fit when ``max_iter`` is None; it stops earlier when
#: an epoch lowers the mean squared distance by less than ``STREAM_TOL``.
STREAM_MAX_EPOCHS = 100
STREAM_TOL = 1e-3

#: Token rows per chunk when assigning tokens to centres.
_ASSIGN_CHUNK = 4096

#: Rows per chunk when computing the standardisation statistics.
_STATS_CHUNK = 65536

#: Ward clustering is refused when its condensed distance matrix would need
#: more than this fraction of the memory available on the machine.
AGGLOMERATIVE_MEMORY_FRACTION = 0.5


def agglomerative_memory_bytes(n_tokens: int) -> int:
    """Memory of Ward clustering's condensed float64 distance matrix.

    scikit-learn's Ward clustering without a connectivity graph calls
    ``scipy.cluster.hierarchy.ward``, which materialises all
    ``n (n - 1) / 2`` pairwise distances as float64.

    Parameters
    ----------
    n_tokens : int
        Number of token vectors to cluster.

    Returns
    -------
    int
        Bytes.

    Examples
    --------
    >>> agglomerative_memory_bytes(50_000) / 2**30  # GiB
    9.31...
    """
    n = int(n_tokens)
    return 8 * n * (n - 1) // 2


def _available_memory_bytes() -> int | None:
    """Memory available to this process now, or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    try:  # pragma: no cover - only where /proc and sysconf are missing
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return None


def _can_stream(estimator) -> bool:
    if estimator.algorithm == "agglomerative":
        raise AttributeError(
            "KMeansConcepts(algorithm='agglomerative') has no partial_fit: Ward clustering needs "
            "all tokens at once. Use algorithm='minibatch' (or 'auto') to stream, or call fit."
        )
    return True


class KMeansConcepts(ConceptEstimator):
    """Concepts as clusters of one layer's token vectors (k-means or Ward).

    Each of the ``k`` clusters is a concept; its centre is the concept
    vector (``components_``).  A token's concept is its nearest centre.
    The paper's clustering baseline is ConceptX-style agglomerative (Ward)
    clustering; k-means (scikit-learn's :class:`~sklearn.cluster.KMeans`, or
    :class:`~sklearn.cluster.MiniBatchKMeans` for large inputs and for
    streaming with :meth:`partial_fit`) minimises the same within-cluster
    sum of squares and scales to millions of tokens.

    Parameters
    ----------
    k : int, default=400
        Number of concepts (clusters).
    layer : {"high", "low"}, default="high"
        Which layer of a :class:`~clvqlearn.LayerPairs` is clustered (and
        reconstructed).  A plain 2-D array is taken as that layer as a whole.
    algorithm : {"auto", "kmeans", "minibatch", "agglomerative"}, default="auto"
        ``"kmeans"``: :class:`~sklearn.cluster.KMeans` (Lloyd).
        ``"minibatch"``: :class:`~sklearn.cluster.MiniBatchKMeans`.
        ``"agglomerative"``: Ward clustering
        (:class:`~sklearn.cluster.AgglomerativeClustering`), as in ConceptX;
        it needs ``8 * n (n - 1) / 2`` bytes, so it is refused (ValueError)
        when that exceeds half the available memory (about 50,000 tokens
        need 9.3 GiB).  ``"auto"``: ``"kmeans"`` up to
        ``AUTO_MINIBATCH_MIN_TOKENS`` (200,000) tokens, ``"minibatch"`` above.
    batch_size : int, default=4096
        Tokens per mini-batch (``"minibatch"`` and :meth:`partial_fit`).
    n_init : "auto" or int, default="auto"
        Number of k-means++ restarts, as in scikit-learn.
    max_iter : int or None, default=None
        Lloyd iterations (``"kmeans"``) or epochs (``"minibatch"``); None
        keeps scikit-learn's default (300 and 100).  For ``fit`` on an
        activation store: epochs over the store (None = up to
        ``STREAM_MAX_EPOCHS``, stopping when an epoch improves the mean
        squared distance by less than ``STREAM_TOL``).
    transform_output : {"onehot", "distance"}, default="onehot"
        What :meth:`transform` returns: one-hot cluster membership (so
        ``predict == transform(X).argmax(1)`` and ``inverse_transform`` gives
        each token's centroid) or the Euclidean distance to every centre
        (then ``predict == transform(X).argmin(1)``).
    random_state : int, RandomState instance or None, default=None
        Seeds the k-means++ initialisation; an int gives the same clusters as
        scikit-learn's KMeans with that seed.
    device : str, default="auto"
        Accepted for a uniform API with the torch estimators.  Clustering is
        scikit-learn code and always runs on the CPU; asking explicitly for
        another device gives a warning.
    verbose : int, default=0
        Passed to the scikit-learn estimator.

    Attributes
    ----------
    components_ : ndarray of shape (k, d)
        Cluster centres (concept vectors), in the layer named by ``layer``.
    cluster_centers_ : ndarray of shape (k, d)
        The same array, under scikit-learn's name.
    counts_ : ndarray of shape (k,)
        Tokens assigned to each cluster: the training cluster sizes after
        :meth:`fit`, accumulated over all batches by :meth:`partial_fit`.
        They are also the per-centre learning-rate weights with which
        streaming resumes.
    usage_ : ndarray of shape (k,)
        ``counts_ / counts_.sum()``: the fraction of tokens in each cluster.
    labels_ : ndarray of shape (n_tokens,) or None
        Cluster of every token of the last ``fit`` / ``partial_fit`` input
        (for Ward, the agglomerative partition itself).  None after ``fit``
        on an activation store: one label per token would grow with the
        store; ``counts_`` holds the cluster sizes, :meth:`predict` the labels.
    inertia_ : float
        Sum of squared distances of those tokens to their centre.
    n_iter_ : int
        Lloyd iterations (``"kmeans"``), epochs (``"minibatch"``), 1 for
        Ward (a single, non-iterative pass); each :meth:`partial_fit` adds its number of mini-batch steps.
    loss_curve_ : list of float
        Mean squared distance per token (inertia / n_tokens): one entry for
        ``fit`` (scikit-learn does not expose per-iteration inertia), one per
        mini-batch step of :meth:`partial_fit`.
    algorithm_ : str
        The algorithm actually used by the last ``fit`` (``"auto"`` resolved).
    input_shift_ : ndarray of shape (d,)
        Column means of the data the clustering started from.
    input_scale_ : float
        The power of two nearest to their root-mean-square deviation.  All
        clustering and assignment runs on ``(X - input_shift_) / input_scale_``
        (k-means is invariant to this map), so any finite input, however
        large, small or far from the origin, is clustered without overflow,
        underflow or cancellation; ``components_`` are in the input's units.
    n_features_in_ : int
        Width of the input (``d_low + d_high`` for LayerPairs).
    n_docs_seen_, n_tokens_seen_ : int
        Documents and token rows given to :meth:`fit`, summed over
        :meth:`partial_fit` calls; what the model card of :meth:`save`
        reports as training data.

    See Also
    --------
    clvqlearn.concepts.sae.SparseAutoencoder : the sparse-autoencoder baseline.

    Notes
    -----
    :meth:`predict` and :meth:`transform` assign every token to its nearest
    centre.  For k-means that reproduces ``labels_`` on the training data;
    for Ward it is the natural out-of-sample rule (Ward clusters are not
    Voronoi cells, so a few training tokens may get another id than in
    ``labels_``).

    ``fit`` on an activation store (a lazy view such as
    ``LayerPairs.open(folder)``, or its path) streams in bounded memory:
    the standardisation and the k-means++ seeds come from a sample of whole
    documents, then MiniBatchKMeans steps run over shuffle buffers of the
    store (``algorithm`` must be ``"auto"`` or ``"minibatch"``); see
    docs/streaming.md.

    :meth:`partial_fit` streams with MiniBatchKMeans: each call cuts its
    input into ``batch_size`` chunks, in the order given (shuffle first), and
    resumes from ``components_`` and ``counts_``.  It is refused for
    ``algorithm="agglomerative"`` (``hasattr(est, "partial_fit")`` is False).

    References
    ----------
    .. [1] Dalvi et al., "Discovering Latent Concepts Learned in BERT",
       ICLR 2022 (ConceptX).
    .. [2] Sculley, "Web-scale k-means clustering", WWW 2010.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn.concepts.kmeans import KMeansConcepts
    >>> X = np.r_[np.zeros((5, 2)), np.full((5, 2), 10.0)]
    >>> est = KMeansConcepts(k=2, random_state=0).fit(X)
    >>> sorted(est.usage_.tolist())
    [0.5, 0.5]
    >>> est.transform(X[:1]).sum(), round(est.score(X), 3)
    (np.float64(1.0), 1.0)
    """

    _parameter_constraints: dict = {
        **ConceptEstimator._parameter_constraints,
        "layer": [StrOptions({"low", "high"})],
        "algorithm": [StrOptions({"auto", "kmeans", "minibatch", "agglomerative"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_init": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "transform_output": [StrOptions({"onehot", "distance"})],
    }

    def __init__(
        self,
        k=400,
        *,
        layer="high",
        algorithm="auto",
        batch_size=4096,
        n_init="auto",
        max_iter=None,
        transform_output="onehot",
        random_state=None,
        device="auto",
        verbose=0,
    ):
        self.k = k
        self.layer = layer
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.transform_output = transform_output
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    #: Any finite input is clustered: the data are standardised first.
    _max_abs_input = None
    #: The centres keep the dtype of the data they were fitted on.
    _saved_dtypes = {**ConceptEstimator._saved_dtypes, "counts_": _STATISTIC_DTYPES,
                     "input_shift_": _STATISTIC_DTYPES, "labels_": ("int64",),
                     "components_": ("float32", "float64"), "cluster_centers_": ("float32", "float64")}

    # ------------------------------------------------------------ hooks
    def _layer_roles(self):
        return (self.layer, self.layer)

    def _structure(self) -> dict:
        return {"k": self.k, "layer": self.layer}

    def _fit_data(self, data: _Data, partial: bool) -> None:
        self._check_device()
        if isinstance(data, StreamData):
            self._fit_store(data)
            return
        X = data.source
        if partial:
            self._stream(X, first=not self._resumes(partial))
            return
        algorithm = self._resolve_algorithm(X.shape[0])
        self.input_shift_, self.input_scale_ = _location_scale(X)
        X = self._standardize(X)
        if algorithm == "kmeans":
            model = KMeans(
                n_clusters=self.k,
                n_init=self.n_init,
                max_iter=300 if self.max_iter is None else self.max_iter,
                random_state=self.random_state,
                verbose=self.verbose,
            ).fit(X)
            centers, labels, inertia, n_iter = model.cluster_centers_, model.labels_, model.inertia_, model.n_iter_
        elif algorithm == "minibatch":
            model = MiniBatchKMeans(
                n_clusters=self.k,
                n_init=self.n_init,
                max_iter=100 if self.max_iter is None else self.max_iter,
                batch_size=self.batch_size,
                random_state=self.random_state,
                verbose=self.verbose,
            ).fit(X)
            centers, labels, inertia, n_iter = model.cluster_centers_, model.labels_, model.inertia_, model.n_iter_
        else:
            centers, labels, inertia = self._ward(X)
            n_iter = 1
        self.algorithm_ = algorithm
        self._set_state(self._unstandardize(centers, X.dtype), np.asarray(labels, dtype=np.int64))
        self.counts_ = np.bincount(self.labels_, minlength=self.k).astype(np.float64)
        self.usage_ = self.counts_ / self.counts_.sum()
        self.inertia_ = self._unscale_inertia(inertia)
        self.n_iter_ = int(n_iter)
        self.loss_curve_ = [self.inertia_ / X.shape[0]]

    def _activations(self, data: _Data) -> np.ndarray:
        X = data.source
        if self.transform_output == "distance":
            with np.errstate(over="ignore"):
                distances = pairwise_distances(self._standardize(X), self._standardized_centers(X.dtype))
                distances = (distances * self._scaling()[1]).astype(X.dtype, copy=False)
            if not np.isfinite(distances).all():
                raise ValueError(f"X: the distances to the centres overflow {X.dtype}; pass X as float64.")
            return distances
        out = np.zeros((X.shape[0], self.k), dtype=X.dtype)
        out[np.arange(X.shape[0]), self._nearest(X)] = 1
        return out

    def _predict_ids(self, data: _Data) -> np.ndarray:
        return self._nearest(data.source)

    def _graded(self, data: _Data) -> np.ndarray:
        """Softmax over the negative squared distances to the centres (see ``decision_function``).

        The distances are those :meth:`_nearest` ranks (``||x||^2`` does not
        change a row's softmax), on the standardised scale; the temperature
        is twice the fitted per-coordinate variance around the centres,
        ``2 * loss_curve_[-1] / d``, on the same scale.
        """
        X = data.source
        centers = self._standardized_centers(X.dtype)
        half_norms = 0.5 * np.einsum("ij,ij->i", centers, centers)
        out = np.empty((X.shape[0], self.k))
        scale = self._scaling()[1]
        with np.errstate(over="ignore", under="ignore"):
            temperature = 2.0 * (float(self.loss_curve_[-1]) / scale) / scale / centers.shape[1]
        for start in range(0, X.shape[0], _ASSIGN_CHUNK):
            scores = self._standardize(X[start:start + _ASSIGN_CHUNK]) @ centers.T
            scores -= half_norms  # as _nearest computes them: its arg-max is the prediction
            out[start:start + _ASSIGN_CHUNK] = softmax_of_distances(-2.0 * np.asarray(scores, np.float64),
                                                                    temperature)
        return out

    def _reconstruct_data(self, data: _Data) -> np.ndarray:
        X = data.source
        return self._centers(X.dtype)[self._nearest(X)]

    # --------------------------------------------------------- streaming
    @available_if(_can_stream)
    def partial_fit(self, X, y=None):
        """Update the clusters with one more batch (MiniBatchKMeans steps).

        The input is cut into ``batch_size`` chunks, taken in order; each is
        one :meth:`sklearn.cluster.MiniBatchKMeans.partial_fit` step.  The
        first call initialises the centres with k-means++ on the first chunk
        (at least ``3 k`` tokens).  A failed call leaves the state unchanged.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)
            As for :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        self

        Raises
        ------
        AttributeError
            With ``algorithm="agglomerative"`` (the method is not available,
            as scikit-learn does for methods that depend on a parameter):
            Ward clustering cannot be updated incrementally.
        """
        return super().partial_fit(X, y)

    def _check_stream_scale(self, standardized: np.ndarray) -> None:
        """Refuse a later batch far outside the scale the first ``partial_fit`` call fixed.

        The centres are stored as ``centre * input_scale_ + input_shift_``;
        a batch 1e19 times larger than the first would overflow them.
        """
        largest = float(np.max(np.abs(standardized))) if standardized.size else 0.0
        if not np.isfinite(largest) or largest > 1e15:
            raise ValueError(
                f"X holds values about {largest:.3g} times the scale of the first partial_fit batch "
                f"(input_scale_={self.input_scale_:.3g}); streamed batches must share one scale. "
                "Rescale X, or call fit on data of the new scale."
            )

    def _stream(self, X: np.ndarray, first: bool) -> None:
        n = X.shape[0]
        if first:
            self.input_shift_, self.input_scale_ = _location_scale(X)
        X = self._standardize(X)
        if not first:
            self._check_stream_scale(X)
        if first:
            random_state = self.random_state
            model = self._minibatch_model(random_state, reassignment_ratio=0.01)
            first_size = max(self.batch_size, min(n, 3 * self.k))
            chunks = [slice(0, first_size)] + [
                slice(a, min(a + self.batch_size, n)) for a in range(first_size, n, self.batch_size)
            ]
            counts = np.zeros(self.k, dtype=np.float64)
            n_iter, curve = 0, []
        else:
            random_state = self.random_state
            if isinstance(random_state, Integral):
                # A new stream per call, so reassignments do not repeat.
                random_state = np.random.RandomState([int(random_state) % 2**32, self.n_iter_ % 2**32])
            centers = self._standardized_centers(X.dtype)
            # Resume: a step on the centres themselves, weighted by their
            # counts, sets MiniBatchKMeans' per-centre weights to counts_
            # and leaves the centres unchanged (no reassignment in it).
            model = self._minibatch_model(random_state, reassignment_ratio=0.0, init=centers)
            model.partial_fit(centers, sample_weight=self.counts_.astype(X.dtype))
            model.set_params(reassignment_ratio=0.01)
            chunks = [slice(a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size)]
            counts = self.counts_.copy()
            n_iter, curve = self.n_iter_, list(self.loss_curve_)
        labels = np.empty(n, dtype=np.int64)
        inertia = 0.0
        for chunk in chunks:
            model.partial_fit(X[chunk])
            labels[chunk] = model.labels_
            counts += np.bincount(model.labels_, minlength=self.k)
            inertia += float(model.inertia_)
            curve.append(self._unscale_inertia(model.inertia_) / (chunk.stop - chunk.start))
            n_iter += 1
        if first:
            self.algorithm_ = "minibatch"
        self._set_state(self._unstandardize(model.cluster_centers_, X.dtype), labels)
        self.counts_ = counts
        self.usage_ = counts / counts.sum()
        self.inertia_ = self._unscale_inertia(inertia)
        self.n_iter_ = n_iter
        self.loss_curve_ = curve

    def _fit_store(self, data: StreamData) -> None:
        """Mini-batch k-means over an activation store, in bounded memory.

        Standardisation and k-means++ seeding come from a sample of whole
        documents; each epoch streams the store's shuffle buffers (rows
        shuffled inside a buffer) through ``MiniBatchKMeans.partial_fit``
        in ``batch_size`` chunks; a last pass counts every token's cluster.
        """
        if self.algorithm in ("kmeans", "agglomerative"):
            raise ValueError(
                f"X is an activation store, streamed in bounded memory; algorithm={self.algorithm!r} needs "
                "every token in memory. Use algorithm='auto' or 'minibatch', or pass in-memory LayerPairs."
            )
        rng = check_random_state(self.random_state)
        sample = data.sample(min(INIT_MAX_SAMPLES, max(3 * self.batch_size, 3 * self.k)), rng).source
        self.input_shift_, self.input_scale_ = _location_scale(sample)
        sample = self._standardize(sample)
        centers = kmeans_plusplus(sample, self.k, random_state=rng.randint(2**31 - 1))[0]
        model = self._minibatch_model(rng.randint(2**31 - 1), reassignment_ratio=0.01, init=centers)
        max_epochs = STREAM_MAX_EPOCHS if self.max_iter is None else self.max_iter
        curve = []
        for _ in range(max_epochs):
            inertia, n = 0.0, 0
            for buffer in data.epoch_buffers(np.ones(data.n_docs, dtype=bool), rng):
                X = self._standardize(buffer.source)[rng.permutation(buffer.n_tokens)]
                for start in range(0, X.shape[0], self.batch_size):
                    model.partial_fit(X[start:start + self.batch_size])
                    inertia += float(model.inertia_)
                n += X.shape[0]
            curve.append(self._unscale_inertia(inertia) / max(n, 1))
            if len(curve) > 1 and curve[-2] - curve[-1] <= STREAM_TOL * abs(curve[-2]):
                break
        self.algorithm_ = "minibatch"
        self._set_state(self._unstandardize(model.cluster_centers_, data.dtype), None)
        self._count_store(data)
        self.n_iter_ = len(curve)
        self.loss_curve_ = curve

    def _count_store(self, data: StreamData) -> None:
        """``counts_``, ``usage_`` and ``inertia_`` of the fitted centres over the store."""
        counts, inertia = np.zeros(self.k), 0.0
        for chunk in data.chunks():
            ids = self._nearest(chunk.source)
            counts += np.bincount(ids, minlength=self.k)
            residual = self._standardize(chunk.source) - self._standardized_centers(chunk.source.dtype)[ids]
            inertia += float(np.einsum("ij,ij->", residual, residual, dtype=np.float64))
        self.counts_ = counts
        self.usage_ = counts / max(counts.sum(), 1.0)
        self.inertia_ = self._unscale_inertia(inertia)

    def _minibatch_model(self, random_state, reassignment_ratio, init="k-means++"):
        return MiniBatchKMeans(
            n_clusters=self.k,
            init=init,
            n_init=1 if not isinstance(init, str) else self.n_init,
            batch_size=self.batch_size,
            random_state=random_state,
            reassignment_ratio=reassignment_ratio,
            compute_labels=True,
            verbose=self.verbose,
        )

    # ----------------------------------------------------------- helpers
    def _resolve_algorithm(self, n_tokens: int) -> str:
        if self.algorithm == "auto":
            return "minibatch" if n_tokens > AUTO_MINIBATCH_MIN_TOKENS else "kmeans"
        return self.algorithm

    def _check_device(self) -> None:
        device = self._resolve_device()  # raises on an unavailable device
        if self.device not in ("auto", "cpu") and device.type != "cpu":
            warnings.warn(
                f"KMeansConcepts runs scikit-learn's clustering on the CPU; device={self.device!r} "
                "is not used.",
                UserWarning,
                stacklevel=4,
            )

    def _ward(self, X: np.ndarray):
        n = X.shape[0]
        need = agglomerative_memory_bytes(n)
        available = _available_memory_bytes()
        if available is not None and need > AGGLOMERATIVE_MEMORY_FRACTION * available:
            raise ValueError(
                f"algorithm='agglomerative' on {n:,} tokens needs a {n:,} x {n:,} condensed distance "
                f"matrix of about {need / 2**30:,.1f} GiB (8 * n * (n - 1) / 2 bytes), more than half "
                f"of the {available / 2**30:,.1f} GiB of memory available. Cluster a subset of the "
                "tokens, or use algorithm='kmeans' / 'minibatch'."
            )
        model = AgglomerativeClustering(n_clusters=self.k, linkage="ward").fit(X)
        labels = model.labels_.astype(np.int64)
        counts = np.bincount(labels, minlength=self.k)
        sums = np.zeros((self.k, X.shape[1]), dtype=np.float64)
        np.add.at(sums, labels, X)
        centers = sums / np.maximum(counts, 1)[:, None]
        inertia = float(((X - centers[labels]) ** 2).sum())
        return centers, labels, inertia

    def _set_state(self, centers: np.ndarray, labels: np.ndarray) -> None:
        self.components_ = centers
        self.cluster_centers_ = centers
        self.labels_ = labels

    def _centers(self, dtype) -> np.ndarray:
        check_is_fitted(self)
        return self.components_.astype(dtype, copy=False)

    # ------------------------------------------------------ standardisation
    def _scaling(self):
        """``(shift, scale)`` of the fitted standardisation (identity for old saves)."""
        shift = getattr(self, "input_shift_", None)
        if shift is None:
            return np.zeros(self.components_.shape[1]), 1.0
        return np.asarray(shift, dtype=np.float64), float(self.input_scale_)

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        """``(X - input_shift_) / input_scale_`` in X's dtype, computed in float64 by chunks.

        k-means is invariant to this map; working on standardised values
        keeps squared distances from overflowing or underflowing and the
        ``||c||^2 - 2 x.c`` expansion from cancelling when the data sit far
        from the origin.
        """
        shift, scale = self._scaling()
        out = np.empty(X.shape, dtype=X.dtype)
        for start in range(0, X.shape[0], _STATS_CHUNK):
            chunk = np.asarray(X[start:start + _STATS_CHUNK], dtype=np.float64)
            out[start:start + _STATS_CHUNK] = (chunk - shift) / scale
        return out

    def _unstandardize(self, centers, dtype) -> np.ndarray:
        shift, scale = self._scaling()
        return (np.asarray(centers, dtype=np.float64) * scale + shift).astype(dtype)

    def _standardized_centers(self, dtype) -> np.ndarray:
        shift, scale = self._scaling()
        return ((np.asarray(self.components_, dtype=np.float64) - shift) / scale).astype(dtype)

    def _unscale_inertia(self, inertia: float) -> float:
        with np.errstate(over="ignore"):
            return float(np.float64(inertia) * np.float64(self._scaling()[1]) ** 2)

    def _nearest(self, X: np.ndarray) -> np.ndarray:
        """Nearest centre: argmin of ``||c||^2 - 2 x.c`` by chunked BLAS products.

        The same computation as scikit-learn's k-means assignment step, in
        the input's dtype (``pairwise_distances_argmin`` is about 2x slower),
        on standardised values (see :meth:`_standardize`).
        """
        centers = self._standardized_centers(X.dtype)
        half_norms = 0.5 * np.einsum("ij,ij->i", centers, centers)
        out = np.empty(X.shape[0], dtype=np.int64)
        for start in range(0, X.shape[0], _ASSIGN_CHUNK):
            scores = self._standardize(X[start:start + _ASSIGN_CHUNK]) @ centers.T
            scores -= half_norms
            out[start:start + _ASSIGN_CHUNK] = scores.argmax(axis=1)
        return out


def _location_scale(X: np.ndarray) -> tuple[np.ndarray, float]:
    """Column means and one overall scale (a power of two) of ``X``, overflow-free.

    The values are divided by their largest magnitude before summing, so
    any finite input gives finite statistics.  The scale is the power of
    two nearest to the root-mean-square deviation from the means (a power
    of two divides exactly), 1.0 for constant data.

    Parameters
    ----------
    X : ndarray of shape (n, d)

    Returns
    -------
    shift : ndarray of shape (d,), float64
    scale : float

    Examples
    --------
    >>> shift, scale = _location_scale(np.array([[1e6, 0.0], [1e6 + 4, 8.0]]))
    >>> np.round(shift, 6).tolist(), scale
    ([1000002.0, 4.0], 4.0)
    """
    n, d = X.shape
    largest = max(abs(float(X.max(initial=0.0))), abs(float(X.min(initial=0.0))))
    if n == 0 or largest == 0:
        return np.zeros(d), 1.0
    total = np.zeros(d)
    for start in range(0, n, _STATS_CHUNK):
        total += (np.asarray(X[start:start + _STATS_CHUNK], dtype=np.float64) / largest).sum(axis=0)
    mean = total / n
    squares = 0.0
    for start in range(0, n, _STATS_CHUNK):
        chunk = np.asarray(X[start:start + _STATS_CHUNK], dtype=np.float64) / largest - mean
        squares += float((chunk * chunk).sum())
    rms = np.sqrt(squares / (n * d))
    if rms == 0:
        return mean * largest, 1.0
    scale = float(np.ldexp(1.0, int(np.round(np.log2(rms) + np.log2(largest)))))
    return mean * largest, scale
