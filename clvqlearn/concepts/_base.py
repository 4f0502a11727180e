"""The base shared by all four concept estimators.

Everything the four estimators have in common lives here, once: input
validation (LayerPairs or plain arrays), the choice of source and target
layer, the minimum-token check, ``partial_fit`` rollback on failure,
``transform`` / ``predict`` / ``inverse_transform`` / ``reconstruct`` /
``score``, concept directions for ablation, device and random-state
handling, pickling without torch modules, and the pickle-free
``save`` / ``load``.

A subclass implements a handful of hooks:

``_layer_roles()``
    ``("low", "high")`` for a cross-layer model, ``("high", "high")`` etc.
    for a single-layer one.
``_fit_data(data, partial)``
    Learn from a :class:`_Data` and set the fitted attributes, at least
    ``components_`` (k, d), ``usage_``, ``n_iter_``, ``loss_curve_``.
``_activations(data)``
    (n_tokens, k) concept activations; ``predict`` is their arg-max unless
    ``_predict_ids`` is overridden.
``_reconstruct_data(data)``
    (n_tokens, d_target) prediction of the target layer.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_array, check_random_state
from sklearn.utils.validation import check_is_fitted

from .._sklearn_compat import Interval, StrOptions, _fit_context, validate_data
from .._torch_utils import resolve_device
from ..pairs import LayerPairs

FORMAT_NAME = "clvqlearn.estimator"
FORMAT_VERSION = 1
_LAYER_NAMES = ("low", "high")


@dataclass
class _Data:
    """Validated input: source rows, target rows and document offsets."""

    source: np.ndarray
    target: np.ndarray
    offsets: np.ndarray
    dtype: np.dtype

    @property
    def n_tokens(self) -> int:
        return int(self.source.shape[0])


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

    def _inverse_bias(self):
        """Added by ``inverse_transform`` (None when there is no bias)."""
        return None

    # --------------------------------------------------------- sklearn glue
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

    def _validate_input(self, X, *, reset: bool, fitting: bool = False) -> _Data:
        """Turn LayerPairs or a 2-D array into a :class:`_Data`.

        ``reset=True`` records ``n_features_in_`` (and the layer widths);
        otherwise widths are checked against the fitted ones.
        """
        source_role, target_role = self._layer_roles()
        for role in (source_role, target_role):
            if role not in _LAYER_NAMES:
                raise ValueError(f"layer must be 'low' or 'high'; got {role!r}")
        if isinstance(X, LayerPairs):
            arrays = {}
            for role in {source_role, target_role}:
                arrays[role] = check_array(
                    getattr(X, role),
                    dtype=[np.float64, np.float32],
                    ensure_all_finite=True,
                    input_name=f"LayerPairs.{role}",
                    ensure_min_samples=1,
                )
            if arrays[source_role].dtype != arrays[target_role].dtype:
                arrays[target_role] = arrays[target_role].astype(arrays[source_role].dtype)
            n_features = X.low.shape[1] + X.high.shape[1]
            if reset:
                self.n_features_in_ = n_features
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif n_features != self.n_features_in_:
                raise ValueError(
                    f"X has {n_features} features (low {X.low.shape[1]} + high {X.high.shape[1]}), "
                    f"but {type(self).__name__} was fitted with {self.n_features_in_} features."
                )
            data = _Data(
                source=arrays[source_role],
                target=arrays[target_role],
                offsets=np.asarray(X.offsets, dtype=np.int64),
                dtype=arrays[source_role].dtype,
            )
        else:
            if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
                raise TypeError(
                    f"{type(self).__name__} received raw texts. Put a LayerPairExtractor in front "
                    "of it (Pipeline([('extract', LayerPairExtractor(...)), ('concepts', ...)]))."
                )
            Xa = validate_data(
                self, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite=True
            )
            if self._is_cross_layer():
                split = self._low_width(Xa.shape[1])
                low, high = Xa[:, :split], Xa[:, split:]
                parts = {"low": low, "high": high}
                source, target = parts[source_role], parts[target_role]
            else:
                source = target = Xa
            data = _Data(
                source=source,
                target=target,
                offsets=np.arange(Xa.shape[0] + 1, dtype=np.int64),
                dtype=Xa.dtype,
            )
        if fitting and data.n_tokens < self.k:
            raise ValueError(
                f"k={self.k} concepts need at least k token rows to fit; got n_tokens="
                f"{data.n_tokens} (n_samples={data.n_tokens}). Use a smaller k or more texts."
            )
        return data

    # --------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the k concepts.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)
            Output of :class:`~clvqlearn.LayerPairExtractor`, or a plain
            array: ``[low | high]`` for a cross-layer estimator (split into
            two equal halves, each row its own one-token sequence), the
            layer itself for a single-layer one.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        for name in list(vars(self)):
            if name.endswith("_") and not name.startswith("__"):
                delattr(self, name)
        self._drop_caches()
        data = self._validate_input(X, reset=True, fitting=True)
        self._fit_data(data, partial=False)
        return self

    def partial_fit(self, X, y=None):
        """Update the concepts with one more batch of data.

        The first call initialises the model.  Trainable estimators run one
        epoch over the batch with no validation split (optimiser state
        carries over between calls in one session: Adam's moments, the
        plateau schedule and the warm-up position; it is not pickled).  If
        a call fails (bad input, or an error during the update) the fitted
        state, the optimiser state included, is left exactly as it was
        before the call.

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
        snapshot = copy.deepcopy({k: v for k, v in vars(self).items() if not k.startswith("_cache")})
        # ``partial`` tells the hook to resume; ``_partial_call`` tells it the
        # call streams (one pass over the batch, no validation split) even
        # when it is the first one.
        self._partial_call = True
        try:
            data = self._validate_input(X, reset=first, fitting=first)
            self._fit_data(data, partial=not first)
        except BaseException:
            for name in list(vars(self)):
                if not name.startswith("_cache"):
                    delattr(self, name)
            vars(self).update(snapshot)
            self._drop_caches()
            raise
        finally:
            vars(self).pop("_partial_call", None)
        return self

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
        check_is_fitted(self)
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
        check_is_fitted(self)
        data = self._validate_input(X, reset=False)
        return np.asarray(self._predict_ids(data), dtype=np.int64)

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
        check_is_fitted(self)
        codes = check_array(X, dtype=[np.float64, np.float32], input_name="codes")
        if codes.shape[1] != self.k:
            raise ValueError(
                f"inverse_transform expects {self.k} columns (one per concept); got {codes.shape[1]}."
            )
        out = codes @ self.components_.astype(codes.dtype, copy=False)
        bias = self._inverse_bias()
        if bias is not None:
            out = out + np.asarray(bias, dtype=codes.dtype)
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
        check_is_fitted(self)
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
        check_is_fitted(self)
        data = self._validate_input(X, reset=False)
        pred = np.asarray(self._reconstruct_data(data), dtype=np.float64)
        return fraction_of_variance_explained(data.target, pred)

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
        check_is_fitted(self)
        concept = self._check_concept(concept)
        vector = np.asarray(self.components_[concept], dtype=np.float64)
        norm = np.linalg.norm(vector)
        if norm == 0:
            return np.zeros((0, vector.size))
        return (vector / norm)[None, :]

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

    def save(self, path) -> Path:
        """Save a fitted estimator without pickle: safetensors + JSON.

        Parameters
        ----------
        path : str or path-like
            A folder; ``model.safetensors`` and ``config.json`` are written.

        Returns
        -------
        pathlib.Path
        """
        from safetensors.numpy import save_file

        check_is_fitted(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors, attributes = {}, {}
        for name, value in vars(self).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, np.ndarray) and value.dtype != object:
                tensors[f"attr.{name}"] = np.ascontiguousarray(value)
            elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
                for key, array in value.items():
                    tensors[f"dict.{name}.{key}"] = np.ascontiguousarray(array)
                attributes[name] = {"__dict_of_arrays__": sorted(value)}
            else:
                attributes[name] = _jsonable(value, name)
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": {k: _jsonable(v, k) for k, v in self.get_params(deep=False).items()},
            "attributes": attributes,
        }
        save_file(tensors, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(config, indent=1))
        return path

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
            When the folder holds another kind of estimator or a newer format.
        FileNotFoundError
            When the folder or its files are missing.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        config_file, tensor_file = path / "config.json", path / "model.safetensors"
        for file in (config_file, tensor_file):
            if not file.is_file():
                raise FileNotFoundError(
                    f"{file} not found: {path} is not a folder written by {cls.__name__}.save()."
                )
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file} is not valid JSON: {exc}") from exc
        if config.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} does not hold a clvqlearn estimator (format={config.get('format')!r}).")
        if config.get("version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path} was saved with format version {config['version']}; this clvqlearn reads "
                f"up to version {FORMAT_VERSION}. Upgrade clvqlearn."
            )
        if config.get("class") != cls.__name__:
            raise ValueError(
                f"{path} holds a {config.get('class')}, not a {cls.__name__}; load it with "
                f"{config.get('class')}.load()."
            )
        params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config["params"].items()}
        estimator = cls(**params)
        tensors = load_file(str(tensor_file))
        for key, array in tensors.items():
            kind, _, rest = key.partition(".")
            if kind == "attr":
                setattr(estimator, rest, array)
        for name, value in config["attributes"].items():
            if isinstance(value, dict) and "__dict_of_arrays__" in value:
                setattr(estimator, name, {k: tensors[f"dict.{name}.{k}"] for k in value["__dict_of_arrays__"]})
            else:
                setattr(estimator, name, value)
        return estimator


def _jsonable(value, name):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, name) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.random.RandomState):
        warnings.warn(f"{name}: a RandomState object cannot be saved; it is stored as None.", stacklevel=3)
        return None
    raise TypeError(f"cannot save attribute {name!r} of type {type(value).__name__} to JSON")


def fraction_of_variance_explained(target, prediction) -> float:
    """``1 - SSE / SST`` over all features, the mean taken over rows.

    Parameters
    ----------
    target, prediction : array-like of shape (n, d)

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[0.0], [2.0]])
    >>> fraction_of_variance_explained(t, t)
    1.0
    >>> fraction_of_variance_explained(t, np.ones_like(t))
    0.0
    """
    target = np.asarray(target, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    sst = float(((target - target.mean(axis=0)) ** 2).sum())
    sse = float(((target - prediction) ** 2).sum())
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst

