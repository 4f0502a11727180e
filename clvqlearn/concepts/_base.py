"""The base shared by all four concept estimators.

Everything the four estimators have in common lives here, once: input
validation (LayerPairs or plain arrays), the choice of source and target
layer, the minimum-token check, ``partial_fit`` rollback on failure,
``transform`` / ``predict`` / ``inverse_transform`` / ``reconstruct`` /
``score``, concept directions for ablation, device and random-state
handling, pickling without torch modules, and the pickle-free
``save`` / ``load`` (written in :mod:`clvqlearn.concepts._persistence`).
The data it validates into are :mod:`clvqlearn.concepts._data`'s records;
the torch estimators share :mod:`clvqlearn.concepts._network` on top.

A subclass implements a handful of hooks:

``_layer_roles()``
    ``("low", "high")`` for a cross-layer model, ``("high", "high")`` etc.
    for a single-layer one.
``_fit_data(data, partial)``
    Learn from a :class:`_Data` and set the fitted attributes, at least
    ``components_`` (k, d), ``usage_``, ``n_iter_``, ``loss_curve_``.
    ``partial`` is True for a ``partial_fit`` call (stream: one pass, no
    validation split), the first one included; ``_resumes(partial)`` says
    whether there is a fitted state to continue from.
``_activations(data)``
    (n_tokens, k) concept activations; ``predict`` is their arg-max unless
    ``_predict_ids`` is overridden.
``_reconstruct_data(data)``
    (n_tokens, d_target) prediction of the target layer.
"""

from __future__ import annotations

import copy
import os
import re
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions, _fit_context, validate_data
from .._torch_utils import release_free_memory, resolve_device
from ..data import LayerPairs
from ..metrics import fraction_of_variance_explained
from ._data import _LAYER_NAMES, BUFFER_ENV, StreamData, _Data, all_documents, is_lazy_pairs, open_store, streamed_fve
from ._persistence import _STATISTIC_DTYPES, load_estimator, save_estimator

#: float32 max ** 0.25: squares of squares of such values still fit float32.
_FLOAT32_SAFE_ABS = float(np.finfo(np.float32).max) ** 0.25


class ConceptEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base class of CrossLayerVQ, SingleLayerVQ, KMeansConcepts, SparseAutoencoder.

    Not for direct use.  See the module docstring for the hooks.
    """

    _parameter_constraints: dict = {
        "k": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto", "cpu", "cuda", "mps"}), str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    #: Largest input magnitude the estimator computes with safely (None = any
    #: finite value); see ``_check_magnitude``.
    _max_abs_input: float | None = _FLOAT32_SAFE_ABS
    #: dtypes :meth:`load` accepts for a saved array, by attribute name
    #: (``"network_state_.<key>"`` for an entry of a dict of arrays); every
    #: other saved array must be float32, as ``save`` writes it.
    _saved_dtypes: dict = {"usage_": _STATISTIC_DTYPES}
    #: Saved arrays that may hold infinities (none here; see ``_check_saved_tensors``).
    _saved_nonfinite: frozenset = frozenset()

    # ------------------------------------------------------------ hooks
    def _layer_roles(self) -> tuple[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_data(self, data: _Data, partial: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _activations(self, data: _Data) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _reconstruct_data(self, data: _Data) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _predict_ids(self, data: _Data) -> np.ndarray:
        return np.asarray(self._activations(data)).argmax(axis=1)

    def _structure(self) -> dict:
        """The settings that fix the fitted state's shapes and architecture (a hook).

        Recorded by ``fit`` and the first ``partial_fit``; a later
        ``partial_fit``, inference or ``save`` refuses to run once one of
        them has changed (:meth:`_check_fitted`).  Settings that only
        steer training or inference are not part of it.
        """
        return {"k": self.k}

    def _components_width(self) -> int | None:
        """Columns of ``components_``: the source layer's width (None when unknown)."""
        return self._layer_width(self._source_layer())

    def _inverse_bias(self):
        """Added by ``inverse_transform`` (None when there is no bias)."""
        return None

    # --------------------------------------------------------- sklearn glue
    def _upgrade_loaded_state(self) -> None:
        """Derive fitted attributes that a save of an older format lacks (none here)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.target_tags.required = False
        return tags

    @property
    def _n_features_out(self):
        return self.k

    def _is_cross_layer(self) -> bool:
        source, target = self._layer_roles()
        return source != target

    def _source_layer(self) -> str:
        return self._layer_roles()[0]

    @property
    def concept_space_(self) -> str:
        """Which layer ("low" or "high") the concept directions live in."""
        return self._source_layer()

    def _resolve_device(self):
        return resolve_device(getattr(self, "device", "auto"))

    def _check_random_state(self):
        return check_random_state(getattr(self, "random_state", None))

    # ----------------------------------------------------------- validation
    def _low_width(self, n_columns: int) -> int:
        """Columns of a plain [low | high] array that belong to the low layer.

        ``n_low_features`` (when the estimator has it and it is set) fixes
        the split; otherwise the array is cut into two equal halves.
        """
        n_low = getattr(self, "n_low_features", None)
        if n_low is None:
            if n_columns % 2:
                raise ValueError(
                    f"{type(self).__name__} reads two layers; a plain array must be [low | high] "
                    f"with an even number of columns, got {n_columns}. Set n_low_features, or pass "
                    "LayerPairs from LayerPairExtractor."
                )
            return n_columns // 2
        if not 0 < n_low < n_columns:
            raise ValueError(
                f"n_low_features={n_low} must leave at least one column for each layer; the array "
                f"has {n_columns} columns."
            )
        return int(n_low)

    def _fitted_split(self, n_columns: int) -> int:
        """Low-layer columns of a plain array given to a fitted estimator.

        The split recorded at fit time (``layer_widths_``) wins; a
        different ``n_low_features`` set since is an error naming both.
        """
        recorded = getattr(self, "layer_widths_", None)
        if recorded is None:
            return self._low_width(n_columns)
        n_low = getattr(self, "n_low_features", None)
        if n_low is not None and int(n_low) != recorded[0]:
            raise ValueError(
                f"n_low_features={n_low} splits X as low {n_low} + high {n_columns - n_low}, but "
                f"{type(self).__name__} was fitted on low {recorded[0]} + high {recorded[1]}. "
                "Refit, or set n_low_features back."
            )
        return int(recorded[0])

    def _layer_width(self, role: str) -> int | None:
        """Fitted width of layer ``role`` ("low" / "high"); None when the fit did not record it."""
        widths = getattr(self, "layer_widths_", None)
        if widths is not None:
            return int(widths[_LAYER_NAMES.index(role)])
        return None if self._is_cross_layer() else int(self.n_features_in_)

    def _check_fitted(self) -> None:
        """``check_is_fitted``, then refuse settings changed since fit that shape the fitted state.

        The estimator counterpart of the extractor's "changed since fit"
        check: ``set_params(k=6)`` on a fitted model would otherwise meet
        arrays of the old shape deep inside the computation.
        """
        check_is_fitted(self)
        fitted = getattr(self, "_fitted_structure", None)
        if fitted is None:  # unpickled from a version that did not record it
            return
        now = self._structure()
        changed = [name for name in now if name not in fitted or fitted[name] != now[name]]
        changed += [name for name in fitted if name not in now]
        if not changed:
            return
        was = ", ".join(f"{name}={fitted.get(name)!r}" for name in changed)
        is_now = ", ".join(f"{name}={now.get(name)!r}" for name in changed)
        raise ValueError(
            f"{', '.join(changed)} changed since fit: {type(self).__name__} was fitted with {was}, and "
            f"set_params has set {is_now} since; the fitted state has the shape and architecture of the old "
            f"setting. Call fit (not partial_fit, which continues the fitted model) to start over with the "
            f"new setting, or set_params({was}) to go on with the fitted one."
        )

    def _fitted_layer_width(self) -> int | None:
        """Width of the one layer a single-layer estimator fitted on LayerPairs reads."""
        recorded = getattr(self, "layer_widths_", None)
        if recorded is None or self._is_cross_layer():
            return None
        return int(recorded[_LAYER_NAMES.index(self._source_layer())])

    def _check_widths(self, widths: tuple) -> None:
        """LayerPairs given to a fitted estimator: same total width and same split."""
        total = sum(widths)
        name = type(self).__name__
        if total != self.n_features_in_:
            raise ValueError(
                f"X has {total} features (low {widths[0]} + high {widths[1]}), "
                f"but {name} was fitted with {self.n_features_in_} features."
            )
        recorded = getattr(self, "layer_widths_", None)
        if recorded is not None and tuple(recorded) != tuple(widths):
            raise ValueError(
                f"X splits its {total} features as low {widths[0]} + high {widths[1]}, but {name} "
                f"was fitted on low {recorded[0]} + high {recorded[1]}: these pairs come from other "
                "layers or another model."
            )

    def _check_provenance(self, X: LayerPairs) -> None:
        """Refuse LayerPairs of another model or layer pair than the fitted ones."""
        fitted_model = getattr(self, "pairs_model_name_", None)
        if fitted_model is None or not X.model_name:
            return  # no provenance on one side (plain arrays, hand-built pairs)
        fitted_layers = tuple(getattr(self, "pairs_layers_", None) or ())
        if X.model_name == fitted_model and tuple(X.layers) == fitted_layers:
            return
        plain = "np.asarray(X)" if self._is_cross_layer() else f"X.{self._source_layer()}"
        raise ValueError(
            f"X holds layers {tuple(X.layers)} of model {X.model_name!r}, but {type(self).__name__} "
            f"was fitted on layers {fitted_layers} of model {fitted_model!r}; concepts learned on "
            f"one model and layer pair do not apply to another. To use them anyway, pass a plain "
            f"array ({plain}: plain arrays carry no provenance)."
        )

    def _check_magnitude(self, array: np.ndarray) -> None:
        """Refuse finite values too large for the estimator's arithmetic.

        The torch estimators compute in float32 and square their errors (and
        the optimiser squares gradients again), so values beyond
        ``float32_max ** 0.25`` (about 4.3e9) overflow to inf or NaN.
        """
        bound = self._max_abs_input
        if bound is None or array.size == 0:
            return
        largest = max(abs(float(array.max())), abs(float(array.min())))
        if largest > bound:
            raise ValueError(
                f"X holds values up to {largest:.3g} in magnitude; {type(self).__name__} computes in "
                f"float32 and squares its errors, which overflows beyond {bound:.3g}. Rescale X "
                "(e.g. divide by its standard deviation)."
            )

    def _validate_input(self, X, *, reset: bool, fitting: bool = False, stream: bool = False) -> _Data:
        """Turn LayerPairs or a 2-D array into a :class:`_Data`.

        ``reset=True`` records ``n_features_in_``, the layer widths and the
        provenance of LayerPairs (model name, layers); otherwise the input is
        checked against them.  Every error names the argument ``X``.
        An activation store (its path or lazy view) becomes a
        ``_data.StreamData`` with ``stream=True``, and is read into
        memory otherwise.
        """
        source_role, target_role = self._layer_roles()
        for role in (source_role, target_role):
            if role not in _LAYER_NAMES:
                raise ValueError(f"layer must be 'low' or 'high'; got {role!r}")
        X = self._open_store_input(X, stream)
        if stream and is_lazy_pairs(X):
            return self._validate_store(X, reset=reset, fitting=fitting)
        with _naming_argument("X"):
            if isinstance(X, LayerPairs):
                data = self._validate_pairs(X, reset=reset)
            else:
                data = self._validate_array(X, reset=reset)
            for array in {id(data.source): data.source, id(data.target): data.target}.values():
                self._check_magnitude(array)
        if fitting:
            self._check_enough_tokens(data.n_tokens)
        return data

    def _open_store_input(self, X, stream: bool):
        """A store path becomes its lazy view; a lazy view is read into memory unless streaming."""
        with _naming_argument("X"):
            if isinstance(X, (str, os.PathLike)):
                X = open_store(X)
            if not stream and is_lazy_pairs(X):
                X = X.take(all_documents(X))
        return X

    def _validate_store(self, X, *, reset: bool, fitting: bool):
        """Validate a lazy store view from a few documents: widths, dtype, provenance.

        The activations themselves are checked (finite, float, magnitude)
        as they are read.
        """
        source_role, target_role = self._layer_roles()
        offsets = np.asarray(X.offsets, dtype=np.int64)
        with _naming_argument("X"):
            if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
                raise ValueError("X: the store's offsets must rise from 0 and hold at least one document.")
            probe = X.take(np.arange(min(8, offsets.size - 1)))
            widths = (int(probe.low.shape[1]), int(probe.high.shape[1]))
            dtype = np.dtype(np.float64 if probe.low.dtype == np.float64 else np.float32)
            self._record_or_check_pairs(X, widths, reset=reset)
        data = StreamData(pairs=X, source_role=source_role, target_role=target_role, offsets=offsets,
                          dtype=dtype, widths=widths, check=self._check_magnitude)
        if fitting:
            self._check_enough_tokens(data.n_tokens)
        if fitting and data.buffer_tokens < self.k:
            raise ValueError(
                f"the streaming buffer holds {data.buffer_tokens} token rows of this store, fewer than "
                f"k={self.k} (the initialisation sample must hold k tokens); raise "
                f"{BUFFER_ENV} (now {data.buffer_bytes / 2**20:g} MiB)."
            )
        return data

    def _check_enough_tokens(self, n_tokens: int) -> None:
        """Fitting k concepts needs at least k token rows."""
        if n_tokens < self.k:
            raise ValueError(
                f"X has {n_tokens} token row(s), but k={self.k} concepts need at least k token "
                f"rows to fit (n_samples={n_tokens}). Use a smaller k or more texts."
            )

    def _record_or_check_pairs(self, X: LayerPairs, widths: tuple, *, reset: bool) -> None:
        """Record the widths and provenance of LayerPairs at fit, check them afterwards."""
        if not reset:
            self._check_widths(widths)
            self._check_provenance(X)
            return
        self.n_features_in_ = sum(widths)
        if hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.layer_widths_ = widths
        self.pairs_model_name_ = X.model_name or None
        self.pairs_layers_ = tuple(int(v) for v in X.layers) if X.model_name else None

    def _validate_pairs(self, X: LayerPairs, *, reset: bool) -> _Data:
        """Validate LayerPairs: dtypes, finiteness, widths and provenance."""
        source_role, target_role = self._layer_roles()
        arrays = {}
        for role in {source_role, target_role}:
            arrays[role] = check_array(
                getattr(X, role),
                dtype=[np.float64, np.float32],
                ensure_all_finite=True,
                input_name=f"X (LayerPairs.{role})",
                ensure_min_samples=1,
            )
        if arrays[source_role].dtype != arrays[target_role].dtype:
            arrays[target_role] = arrays[target_role].astype(arrays[source_role].dtype)
        widths = (int(X.low.shape[1]), int(X.high.shape[1]))
        self._record_or_check_pairs(X, widths, reset=reset)
        return _Data(
            source=arrays[source_role],
            target=arrays[target_role],
            offsets=np.asarray(X.offsets, dtype=np.int64),
            dtype=arrays[source_role].dtype,
        )

    def _validate_array(self, X, *, reset: bool) -> _Data:
        """Validate a plain 2-D array (no provenance: any model is accepted)."""
        source_role, target_role = self._layer_roles()
        if isinstance(X, (list, tuple)) and X and all(isinstance(x, str) and len(x) <= 1 for x in X):
            raise TypeError(
                f"{type(self).__name__} received single characters as X: "
                "scikit-learn's model selection splits a string, such as a store path, into its "
                "characters. Pass the store as LayerPairs.open(path), which counts documents and "
                "pickles as its path."
            )
        if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
            raise TypeError(
                f"{type(self).__name__} received raw texts as X. Put a LayerPairExtractor in front "
                "of it (Pipeline([('extract', LayerPairExtractor(...)), ('concepts', ...)]))."
            )
        layer_width = None if reset else self._fitted_layer_width()
        if layer_width is None:
            Xa = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=True)
        else:  # a single-layer estimator fitted on LayerPairs reads one layer
            Xa = check_array(X, dtype=[np.float64, np.float32], ensure_all_finite=True, input_name="X")
            if Xa.shape[1] != layer_width:
                raise ValueError(
                    f"X has {Xa.shape[1]} features, but {type(self).__name__} was fitted on the "
                    f"{source_role!r} layer of LayerPairs, {layer_width} features wide."
                )
        if reset:
            for name in ("layer_widths_", "pairs_model_name_", "pairs_layers_"):
                setattr(self, name, None)
        if self._is_cross_layer():
            split = self._low_width(Xa.shape[1]) if reset else self._fitted_split(Xa.shape[1])
            if reset:
                self.layer_widths_ = (split, Xa.shape[1] - split)
            parts = {"low": Xa[:, :split], "high": Xa[:, split:]}
            source, target = parts[source_role], parts[target_role]
        else:
            source = target = Xa
        return _Data(
            source=source,
            target=target,
            offsets=np.arange(Xa.shape[0] + 1, dtype=np.int64),
            dtype=Xa.dtype,
        )

    # --------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the k concepts.

        Parameters
        ----------
        X : LayerPairs, activation store, path or array-like of shape (n_tokens, n_features)
            Output of :class:`~clvqlearn.LayerPairExtractor`, or a plain
            array: ``[low | high]`` for a cross-layer estimator (split into
            two equal halves, each row its own one-token sequence), the
            layer itself for a single-layer one.  An activation store (a
            lazy view such as ``LayerPairs.open(folder)``, or the folder's
            path) is streamed in bounded memory (docs/streaming.md).
        y : None
            Ignored.

        Returns
        -------
        self

        Notes
        -----
        The model name and layers of LayerPairs are recorded
        (``pairs_model_name_``, ``pairs_layers_``), as is the low/high split
        (``layer_widths_``); later calls refuse LayerPairs of another model,
        layer pair or split with a ValueError.  Plain arrays carry no
        provenance and are always accepted (split as at fit time), which is
        the way to apply the estimator to other activations on purpose.
        So is the size of the training data (``n_docs_seen_``,
        ``n_tokens_seen_``: documents and token rows given to ``fit``,
        summed over ``partial_fit`` calls), which the model card written by
        :meth:`save` reports.
        If ``fit`` fails, the estimator keeps its previous state.
        """
        before = dict(vars(self))
        try:
            for name in list(vars(self)):
                if name.endswith("_") and not name.startswith("__"):
                    delattr(self, name)
            self._fitted_structure = self._structure()
            data = self._validate_input(X, reset=True, fitting=True, stream=True)
            self._drop_caches()
            self._fit_data(data, partial=False)
            self._record_seen(data, add=False)
        except BaseException:
            _restore_state(self, before)
            raise
        finally:
            release_free_memory()  # what the fit freed goes back to the system, not to a fragmented heap
        return self

    def partial_fit(self, X, y=None):
        """Update the concepts with one more batch of data.

        The first call initialises the model.  Trainable estimators run one
        epoch over the batch with no validation split (optimiser state
        carries over between calls in one session: Adam's moments, the
        plateau schedule and the warm-up position; it is not pickled).  If
        a call fails (bad input, or an error during the update) the fitted
        state, the optimiser state included, is left exactly as it was
        before the call.  A setting that shapes the fitted state (``k``,
        the layer, the network's architecture) cannot change between calls:
        after ``set_params`` changed one, ``partial_fit`` raises a
        ValueError naming it, before any work; ``fit`` starts over.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)
            As for :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        first = not hasattr(self, "components_")
        if first:
            self._validate_params()
        else:
            self._check_fitted()
        snapshot = copy.deepcopy({k: v for k, v in vars(self).items() if not k.startswith("_cache")})
        try:
            if first:
                self._fitted_structure = self._structure()
            data = self._validate_input(X, reset=first, fitting=first)
            self._fit_data(data, partial=True)
            self._record_seen(data, add=not first)
        except BaseException:
            for name in list(vars(self)):
                if not name.startswith("_cache"):
                    delattr(self, name)
            vars(self).update(snapshot)
            self._drop_caches()
            raise
        return self

    def _record_seen(self, data, *, add: bool) -> None:
        """Record how much data trained the estimator: ``n_docs_seen_`` and ``n_tokens_seen_``.

        ``fit`` records the documents and token rows it was given (held-out
        validation documents included; a plain array counts each row as a
        one-token document); each ``partial_fit`` call adds its own
        (``add=True``), as scikit-learn's ``n_samples_seen_`` does.  A count
        that cannot be known (a ``partial_fit`` continuing a model loaded
        from a save made before these were recorded) stays None.  Set only
        after the fit succeeded; no fitted number depends on them.
        """
        n_docs, n_tokens = int(np.asarray(data.offsets).size - 1), int(data.n_tokens)
        if add:
            docs_before, tokens_before = getattr(self, "n_docs_seen_", None), getattr(self, "n_tokens_seen_", None)
            n_docs = None if docs_before is None else int(docs_before) + n_docs
            n_tokens = None if tokens_before is None else int(tokens_before) + n_tokens
        self.n_docs_seen_, self.n_tokens_seen_ = n_docs, n_tokens

    def _resumes(self, partial: bool) -> bool:
        """Whether ``_fit_data(data, partial)`` continues from a fitted state.

        A ``partial_fit`` call resumes unless it is the first one (no
        ``components_`` yet); ``fit`` removed every fitted attribute, so it
        never resumes.
        """
        return partial and hasattr(self, "components_")

    # ------------------------------------------------------------ inference
    def transform(self, X):
        """Concept activations of every token.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)

        Returns
        -------
        ndarray of shape (n_tokens, k)
            One-hot rows for the VQ models and k-means, non-negative latents
            for the sparse autoencoder; same float dtype as the input.
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False)
        return np.asarray(self._activations(data), dtype=data.dtype)

    def predict(self, X):
        """Concept id of every token.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)

        Returns
        -------
        ndarray of shape (n_tokens,), dtype int64
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False)
        return np.asarray(self._predict_ids(data), dtype=np.int64)

    def decision_function(self, X):
        """Graded concept activations of every token: how strongly each concept holds.

        Where :meth:`transform` is one-hot for the VQ models and k-means,
        this grades every concept, which activation quantiles need (the
        tokens of a concept at its median or its 90th percentile):

        - CrossLayerVQ and SingleLayerVQ: the softmax over the negative
          squared distances from the token's codebook vector ``z`` to the
          ``k`` codes, at the estimator's ``temperature`` (the distribution
          training samples from, over all codes instead of the ``top_k``);
        - KMeansConcepts: the softmax over the negative squared distances to
          the centres, divided by twice the variance of one coordinate around
          its centre (``2 * loss_curve_[-1] / d``): the posterior of an
          isotropic Gaussian mixture with equal weights at the k-means
          variance;
        - SparseAutoencoder: its latents (non-negative, as :meth:`transform`).

        For the VQ models and k-means each row sums to one and its arg-max is
        :meth:`predict` (ties go to the lower id, as in :meth:`predict`; see
        :func:`softmax_of_distances`).

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)

        Returns
        -------
        ndarray of shape (n_tokens, k), dtype float64
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False)
        return np.asarray(self._graded(data), dtype=np.float64)

    def _graded(self, data: _Data) -> np.ndarray:
        """Graded activations behind :meth:`decision_function` (a hook; default :meth:`transform`'s)."""
        return self._activations(data)

    def inverse_transform(self, X):
        """Map concept activations back to vectors: ``X @ components_`` (+ bias).

        Parameters
        ----------
        X : array-like of shape (n_tokens, k)
            Output of :meth:`transform` (or any weights over the k concepts).

        Returns
        -------
        ndarray of shape (n_tokens, d)
        """
        self._check_fitted()
        with _naming_argument("X"):
            codes = check_array(X, dtype=[np.float64, np.float32], input_name="X")
        if codes.shape[1] != self.k:
            raise ValueError(
                f"inverse_transform expects X with {self.k} columns (one per concept); got {codes.shape[1]}."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            out = codes @ self.components_.astype(codes.dtype, copy=False)
            bias = self._inverse_bias()
            if bias is not None:
                out = out + np.asarray(bias, dtype=codes.dtype)
        if not np.isfinite(out).all():
            raise ValueError(
                f"X holds concept weights up to {float(np.abs(codes).max()):.3g}: the concept vectors "
                f"they weight overflow {codes.dtype} (the result is not finite). Pass smaller weights."
            )
        return out

    def reconstruct(self, X):
        """The model's prediction of the target layer for every token.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)

        Returns
        -------
        ndarray of shape (n_tokens, d_target)
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False)
        return np.asarray(self._reconstruct_data(data), dtype=data.dtype)

    def score(self, X, y=None):
        """Fraction of the target layer's variance explained (higher is better).

        ``1 - sum((target - reconstruct(X))**2) / sum((target - mean)**2)``,
        the mean taken over the tokens of ``X``.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False, stream=True)
        if isinstance(data, StreamData):  # an activation store: chunk by chunk
            return streamed_fve(data, self._reconstruct_data)
        return fraction_of_variance_explained(data.target, self._reconstruct_data(data))

    # ------------------------------------------------------------ concepts
    def concept_directions(self, concept: int) -> np.ndarray:
        """Orthonormal direction(s) that identify one concept, for ablation.

        Parameters
        ----------
        concept : int
            Concept id in ``[0, k)``.

        Returns
        -------
        ndarray of shape (n_directions, d)
            Orthonormal rows in the space named by ``concept_space_``.
        """
        self._check_fitted()
        concept = self._check_concept(concept)
        vector = np.asarray(self._concept_vector(concept), dtype=np.float64)
        norm = np.linalg.norm(vector)
        if norm == 0:
            return np.zeros((0, vector.size))
        return (vector / norm)[None, :]

    def _concept_vector(self, concept: int) -> np.ndarray:
        """The vector whose direction :meth:`concept_directions` returns (a hook)."""
        return self.components_[concept]

    def _check_concept(self, concept) -> int:
        if not isinstance(concept, Integral) or isinstance(concept, bool) or not 0 <= concept < self.k:
            raise ValueError(f"concept must be an integer in [0, {self.k}); got {concept!r}.")
        return int(concept)

    # ---------------------------------------------------------- persistence
    def _drop_caches(self) -> None:
        for name in [n for n in vars(self) if n.startswith("_cache")]:
            delattr(self, name)

    def __getstate__(self):
        state = super().__getstate__()
        # torch modules and the optimiser's streaming state stay out of pickles
        return {k: v for k, v in state.items() if not k.startswith("_cache") and k != "_train_state"}

    def save(self, path, *, overwrite=False, card=None) -> Path:
        """Save a fitted estimator without pickle: safetensors + JSON, and a model card.

        Parameters
        ----------
        path : str or path-like
            A folder; ``model.safetensors``, ``config.json`` and the model
            card ``README.md`` (Hugging Face's format: docs/sharing.md) are
            written.
        overwrite : bool, default=False
            Allow a folder that already holds files; its ``config.json``,
            ``model.safetensors`` and ``README.md`` are replaced (other files
            are left alone).
        card : dict, optional
            What the model card says beyond the estimator's own record: keys
            ``"data"`` (a description, a dict with ``n_docs``/``n_tokens``,
            or the training LayerPairs; without it the card gives the
            training data's size recorded at fit, ``n_docs_seen_`` and
            ``n_tokens_seen_``), ``"metrics"`` (held-out figures,
            name -> number), ``"model"`` and ``"layers"`` (for an estimator
            fitted on a plain array); see ``clvqlearn.write_model_card``.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        FileExistsError
            When ``path`` is a non-empty folder and ``overwrite`` is False,
            or is a file.
        ValueError
            When a setting that shapes the fitted state changed since fit,
            or ``card`` holds something the card cannot (named).

        Notes
        -----
        The files are written under temporary names in the folder and then
        moved into place, so a failed save leaves an earlier save whole.
        """
        self._check_fitted()
        return save_estimator(self, path, overwrite=overwrite, card=card)

    @classmethod
    def load(cls, path):
        """Load an estimator written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            The folder given to :meth:`save`.

        Returns
        -------
        estimator
            A fitted instance of this class.

        Raises
        ------
        ValueError
            When the folder holds another kind of estimator or a newer
            format, when ``config.json`` breaks its schema (JSON types,
            required keys, parameters the class accepts, fitted-attribute
            names), when the parameters disagree with the tensors' shapes
            (e.g. ``components_`` is not ``(k, d)``), when a tensor holds NaN
            or infinity or has another dtype than ``save`` writes, or when
            ``model.safetensors`` is truncated or foreign.  The message
            names the file (and the tensor).
        FileNotFoundError
            When the folder or its files are missing.

        Warns
        -----
        UserWarning
            When the saved ``device`` (e.g. ``"cuda"``) is not available on
            this machine: the estimator is loaded with ``device="cpu"``
            (its fitted state is device independent); ``set_params(device=...)``
            chooses another.
        """
        return load_estimator(cls, path)


def softmax_of_distances(distances: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(-distances / temperature)`` by rows, in float64, the nearest always largest.

    The nearest entry's logit is exactly 0 (distances are taken relative to
    the row's minimum), so its weight is the row's largest: the arg-max is
    the arg-min of the distances, ties to the lower index (a distance less
    than about ``1e-16 * temperature`` above the minimum can tie with it).

    Parameters
    ----------
    distances : ndarray of shape (n, k)
        Non-negative squared distances.
    temperature : float
        Positive; 0 gives the one-hot limit.

    Returns
    -------
    ndarray of shape (n, k), float64, rows summing to one

    Examples
    --------
    >>> softmax_of_distances(np.array([[0.0, np.log(3.0)]]), 1.0).round(3).tolist()
    [[0.75, 0.25]]
    """
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape[0] == 0:
        return distances.copy()
    gaps = distances - distances.min(axis=1, keepdims=True)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        logits = np.where(gaps > 0, -gaps / temperature, 0.0) if temperature > 0 else np.where(gaps > 0, -np.inf, 0.0)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


@contextmanager
def _naming_argument(name: str):
    """Re-raise a ValueError / TypeError whose message does not name ``name``, prefixed by it."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if re.search(rf"\b{re.escape(name)}\b", message):
            raise
        kind = TypeError if isinstance(exc, TypeError) and not isinstance(exc, ValueError) else ValueError
        raise kind(f"{name}: {message}") from exc


def _restore_state(estimator, state: dict) -> None:
    """Put back exactly the attributes ``state`` holds (after a failed fit)."""
    for name in list(vars(estimator)):
        delattr(estimator, name)
    vars(estimator).update(state)
