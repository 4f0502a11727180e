"""Saving and loading concept estimators without pickle: safetensors + JSON.

``ConceptEstimator.save`` and ``ConceptEstimator.load`` are thin wrappers
of :func:`save_estimator` and :func:`load_estimator`.  A saved estimator is
a folder with ``model.safetensors`` (every fitted array),
``config.json`` (class, format version, params, the other fitted
attributes), read with the shared reader of saved folders' JSON
(:func:`clvqlearn._sidecar.read_sidecar`), and ``README.md``, a model card
in Hugging Face's format (:mod:`._card`; ``load`` does not read it).  Loading checks everything
before it returns: the format and class, the JSON schema, each tensor's
dtype (each class declares in ``_saved_dtypes`` what ``save`` writes) and
finiteness, the parameters against the tensors' shapes, and one prediction.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np

from .._sidecar import read_sidecar
from .._torch_utils import resolve_device
from ._card import CARD_FILE, card_text, check_card_argument
from ._data import _LAYER_NAMES

FORMAT_NAME = "clvqlearn.estimator"
FORMAT_VERSION = 3
#: Parameters added after a format version, with the value that rebuilds a
#: model saved before them exactly as it was (version 2: the decoder's skip
#: read-out and position encodings, both absent before; version 3 adds
#: ``encoder_hidden``, which only the new ``encoder="mlp"`` reads, so its
#: default rebuilds every older save).
_ADDED_PARAMS = {2: {"decoder_skip": False, "decoder_positions": 0.0}}
#: dtypes of a saved statistic (counts, rates): float64, or float32 in older saves.
_STATISTIC_DTYPES = ("float64", "float32")


def save_estimator(estimator, path, *, overwrite: bool = False, card=None) -> Path:
    """Write a fitted estimator to the folder ``path`` (see ``ConceptEstimator.save``).

    The three files (weights, config, model card) are written under
    temporary names in the folder and then moved into place, so a failed
    save leaves an earlier save whole; a folder this call created is removed
    again when the save fails.  ``card`` holds what the model card says
    beyond the estimator's own record (keys ``data``, ``metrics``, ``model``,
    ``layers``; see :func:`write_model_card`); it is checked before any file
    is written.
    """
    from safetensors.numpy import save_file

    tensors, config = saved_content(estimator)
    readme = card_text(estimator, **check_card_argument(card))
    path = Path(path)
    created = _check_save_folder(path, overwrite)
    try:
        _replace_files(path, {
            "model.safetensors": lambda file: save_file(tensors, str(file)),
            "config.json": lambda file: file.write_text(json.dumps(config, indent=1)),
            CARD_FILE: lambda file: file.write_text(readme, encoding="utf-8"),
        })
    except BaseException:
        if created and not any(path.iterdir()):
            path.rmdir()
        raise
    return path


def write_model_card(path, estimator, *, data=None, metrics=None, model=None, layers=None) -> Path:
    """Write (or rewrite) the model card ``README.md`` of a saved estimator's folder.

    ``estimator.save(path, card={...})`` writes the same card in the same
    call; this function adds one to a folder saved earlier, or replaces it,
    for instance with held-out figures computed after saving.  The card is
    Hugging Face's model-card format: YAML metadata (``library_name:
    clvqlearn``, ``tags``, ``base_model`` when the language model has a hub
    id, and a ``clvqlearn`` block with the estimator's class, ``k``, model,
    layers, parameters, data and figures), then a Markdown description.
    :func:`read_model_card` reads the metadata back.

    Parameters
    ----------
    path : str or path-like
        The folder given to ``save`` (it must exist).
    estimator : fitted concept estimator
        The estimator saved there.
    data : str, dict, LayerPairs or None, default=None
        The training data: a description, a dict (``"description"``,
        ``"n_docs"``, ``"n_tokens"`` and any other JSON values), or the
        training ``LayerPairs`` themselves (their document and token counts,
        model and layers are recorded; they must come from the model and
        layers the estimator was fitted on).  Default: the size of the
        training data recorded at fit (``n_docs_seen_``, ``n_tokens_seen_``).
    metrics : dict of str to float or str, optional
        Held-out figures, for example ``{"held-out FVE": 0.21}``.
    model : str, optional
        The language model, for an estimator that records none (fitted on a
        plain array); default the recorded ``pairs_model_name_``.
    layers : (int, int), optional
        The layer pair, likewise; default the recorded ``pairs_layers_``.

    Returns
    -------
    pathlib.Path
        The card file.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a folder.
    ValueError, TypeError
        For a value of ``data``, ``metrics``, ``model`` or ``layers`` the
        card cannot hold (the message names it).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from clvqlearn import KMeansConcepts, read_model_card, write_model_card
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> est = KMeansConcepts(k=3, random_state=0).fit(X)
    >>> folder = est.save(tempfile.mkdtemp() + "/concepts")
    >>> _ = write_model_card(folder, est, model="minilm", layers=(4, 6),
    ...                      data="50 random rows", metrics={"held-out FVE": 0.1})
    >>> card = read_model_card(folder)
    >>> card["clvqlearn"]["data"], card["clvqlearn"]["metrics"]
    ({'description': '50 random rows'}, {'held-out FVE': 0.1})
    >>> read_model_card(est.save(tempfile.mkdtemp() + "/again"))["clvqlearn"]["data"]  # the size seen by fit
    {'n_docs': 50, 'n_tokens': 50}
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; write_model_card writes into a folder given to save().")
    estimator._check_fitted()
    text = card_text(estimator, data=data, metrics=metrics, model=model, layers=layers)
    _replace_files(folder, {CARD_FILE: lambda file: file.write_text(text, encoding="utf-8")})
    return folder / CARD_FILE


def saved_content(estimator) -> tuple[dict, dict]:
    """``(tensors, config)`` that :func:`save_estimator` writes: every fitted array, and the rest as JSON."""
    tensors, attributes = {}, {}
    for name, value in vars(estimator).items():
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
        "class": type(estimator).__name__,
        "params": {k: _jsonable(v, k) for k, v in estimator.get_params(deep=False).items()},
        "attributes": attributes,
    }
    return tensors, config


def load_estimator(cls, path):
    """The fitted ``cls`` saved in the folder ``path`` (see ``ConceptEstimator.load``), checked throughout."""
    path = Path(path)
    config_file, tensor_file = path / "config.json", path / "model.safetensors"
    config = _read_config(config_file, cls)
    if not tensor_file.is_file():
        raise FileNotFoundError(f"{tensor_file} not found: {path} is not a folder written by {cls.__name__}.save().")
    tensors = _read_tensors(tensor_file)
    _check_saved_tensors(cls, tensors, tensor_file)
    estimator = _build_estimator(cls, config, config_file)
    _use_available_device(estimator, config_file)
    _set_saved_state(estimator, config, tensors, config_file, tensor_file)
    estimator._fitted_structure = estimator._structure()  # save refuses a state its params do not describe
    _check_loaded_state(estimator, path)
    return estimator


#: Keys of ``config.json`` and their JSON types.
_CONFIG_SCHEMA = {"format": str, "version": int, "class": str, "params": dict, "attributes": dict}
#: Fitted attributes every saved estimator holds.
_REQUIRED_ATTRIBUTES = ("components_", "usage_", "n_features_in_", "n_iter_", "loss_curve_")
#: Fitted arrays with one entry (row) per concept.
_PER_CONCEPT = ("components_", "cluster_centers_", "usage_", "counts_", "firing_rate_",
                "tokens_since_fired_", "encoder_weights_", "encoder_bias_")
#: Saved as JSON lists, restored as tuples.
_TUPLE_ATTRIBUTES = ("layer_widths_", "pairs_layers_")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*_\Z")


def _read_config(config_file: Path, cls) -> dict:
    """Parse ``config.json`` with the shared sidecar reader, then check its class (ValueError names the file)."""
    config = read_sidecar(config_file, format_tag=FORMAT_NAME, max_version=FORMAT_VERSION, required=_CONFIG_SCHEMA,
                          missing_hint=f"{config_file.parent} is not a folder written by {cls.__name__}.save().")
    if config["class"] != cls.__name__:
        raise ValueError(
            f"{config_file} holds a {config['class']}, not a {cls.__name__}; load it with "
            f"{config['class']}.load()."
        )
    return config


def _read_tensors(tensor_file: Path) -> dict:
    """Read ``model.safetensors``; a truncated or foreign file is a ValueError naming it."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(tensor_file))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(
            f"{tensor_file} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may be "
            "truncated or written by another program. Save the estimator again."
        ) from None


def _saved_name(key: str) -> str:
    """The attribute a saved tensor restores: ``attr.x_`` -> ``x_``, ``dict.x_.key`` -> ``x_.key``."""
    return key.partition(".")[2]


def _check_saved_tensors(cls, tensors: dict, tensor_file: Path) -> None:
    """Refuse tensors of another dtype than ``save`` writes, and NaN or infinity (naming the tensor)."""
    for key, array in tensors.items():
        name = _saved_name(key)
        allowed = cls._saved_dtypes.get(name, ("float32",))
        if array.dtype.name not in allowed:
            raise ValueError(
                f"{tensor_file}: tensor {key!r} has dtype {array.dtype.name}, expected "
                f"{' or '.join(allowed)} ({cls.__name__}.save writes it so). The file was edited or written "
                "by another program; save the estimator again."
            )
        if array.dtype.kind == "f" and name not in cls._saved_nonfinite and not np.isfinite(array).all():
            what = "NaN" if np.isnan(array).any() else "infinity"
            raise ValueError(
                f"{tensor_file}: tensor {key!r} holds {what}; a fitted {cls.__name__} has finite values only. "
                "The file is damaged or was edited; fit and save the estimator again."
            )


def _use_available_device(estimator, config_file: Path) -> None:
    """A saved device this machine lacks (``"cuda"`` on a CPU-only one) becomes ``"cpu"``, with a warning."""
    device = getattr(estimator, "device", "auto")
    try:
        resolve_device(device)
    except ValueError as exc:
        warnings.warn(
            f"{config_file}: the estimator was saved with device={device!r}, which this machine cannot use "
            f"({exc}); it is loaded with device='cpu' (the fitted state does not depend on the device). "
            "Call set_params(device=...) to choose another.",
            UserWarning,
            stacklevel=4,  # the caller of ConceptEstimator.load
        )
        estimator.set_params(device="cpu")


def _check_save_folder(path: Path, overwrite: bool) -> bool:
    """Refuse a file or (unless ``overwrite``) a non-empty folder; create the folder. True when created."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; save() writes a folder. Choose another path.")
    if path.is_dir():
        if not overwrite and any(path.iterdir()):
            raise FileExistsError(
                f"{path} already exists and is not empty; pass overwrite=True to replace the saved estimator "
                "in it (config.json, model.safetensors and README.md), or choose another folder."
            )
        return False
    path.mkdir(parents=True)
    return True


def _replace_files(folder: Path, writers: dict) -> None:
    """Write every file under a temporary name in ``folder``, then move them all into place."""
    temporary = {name: folder / f".{name}.{uuid.uuid4().hex}.tmp" for name in writers}
    try:
        for name, write in writers.items():
            write(temporary[name])
        for name, file in temporary.items():
            os.replace(file, folder / name)
    finally:
        for file in temporary.values():
            file.unlink(missing_ok=True)


def _build_estimator(cls, config: dict, config_file: Path):
    """The estimator of ``config['params']``; unknown or invalid params name the file."""
    allowed = set(cls().get_params(deep=False))
    params = dict(config["params"])
    for version, added in _ADDED_PARAMS.items():
        if config["version"] < version:  # an older save: what it lacks is what it was built with
            params = {**{k: v for k, v in added.items() if k in allowed}, **params}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{config_file}: params {unknown} are not parameters of {cls.__name__} "
                         f"(expected some of {sorted(allowed)}).")
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items()}
    estimator = cls(**params)
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{config_file}: invalid params: {exc}") from None
    return estimator


def _check_attribute_name(cls, name: str, file: Path) -> None:
    if not _ATTRIBUTE_NAME.match(name) or hasattr(cls, name):
        raise ValueError(
            f"{file}: {name!r} is not a fitted-attribute name of {cls.__name__} (expected an "
            "identifier ending in '_' that is not a method or property)."
        )


def _set_saved_state(estimator, config: dict, tensors: dict, config_file: Path, tensor_file: Path) -> None:
    """Set the fitted attributes from the tensors and ``config['attributes']``."""
    cls = type(estimator)
    for key, array in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "attr":
            _check_attribute_name(cls, rest, tensor_file)
            setattr(estimator, rest, array)
        elif kind != "dict":
            raise ValueError(f"{tensor_file}: unexpected tensor {key!r} (expected 'attr.*' or 'dict.*').")
    for name, value in config["attributes"].items():
        _check_attribute_name(cls, name, config_file)
        if isinstance(value, dict) and "__dict_of_arrays__" in value:
            keys = value["__dict_of_arrays__"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"{config_file}: attribute {name!r} must list its array names as strings; "
                                 f"got {keys!r:.60}.")
            missing = [k for k in keys if f"dict.{name}.{k}" not in tensors] if isinstance(keys, list) else keys
            if missing:
                raise ValueError(f"{tensor_file}: {name}: missing tensors {missing!r:.200}.")
            value = {k: tensors[f"dict.{name}.{k}"] for k in keys}
        elif name in _TUPLE_ATTRIBUTES and isinstance(value, list):
            value = tuple(value)
        setattr(estimator, name, value)
    missing = [name for name in _REQUIRED_ATTRIBUTES if not hasattr(estimator, name)]
    if missing:
        raise ValueError(f"{config_file} with {tensor_file.name}: missing fitted attribute(s) {missing}.")
    # older saves lack these
    for name in ("layer_widths_", "pairs_model_name_", "pairs_layers_", "n_docs_seen_", "n_tokens_seen_"):
        if not hasattr(estimator, name):
            setattr(estimator, name, None)
    estimator._upgrade_loaded_state()


def _check_loaded_state(estimator, path: Path) -> None:
    """Check params against tensor shapes, then run the estimator on one zero row."""
    k = estimator.k
    n_features = estimator.n_features_in_
    if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
        raise ValueError(f"{path / 'config.json'}: n_features_in_ must be a positive integer; got {n_features!r}.")
    for name in ("n_docs_seen_", "n_tokens_seen_"):
        seen = getattr(estimator, name, None)
        if seen is not None and (not isinstance(seen, int) or isinstance(seen, bool) or seen < 0):
            raise ValueError(f"{path / 'config.json'}: {name} must be a non-negative integer or null; got {seen!r}.")
    _check_components_shape(estimator, path)
    for name in _PER_CONCEPT:
        array = getattr(estimator, name, None)
        if isinstance(array, np.ndarray) and (array.ndim == 0 or array.shape[0] != k):
            raise ValueError(
                f"{path}: config.json says k={k}, but {name} in model.safetensors has shape "
                f"{array.shape} (expected {k} rows, one per concept)."
            )
    state = getattr(estimator, "network_state_", None)
    codes = state.get("codebook.codes") if isinstance(state, dict) else None
    if codes is not None and codes.shape[0] != k:
        raise ValueError(
            f"{path}: config.json says k={k}, but the saved codebook has {codes.shape[0]} codes."
        )
    widths = estimator.layer_widths_
    if widths is None and estimator._is_cross_layer():
        return  # saved before layer widths were recorded: the split is unknown
    width = n_features
    if widths is not None and not estimator._is_cross_layer():
        width = int(widths[_LAYER_NAMES.index(estimator._source_layer())])
    try:
        probe = np.zeros((1, width), dtype=np.float32)
        codes_out = estimator.transform(probe)
        estimator.reconstruct(probe)
    except Exception as exc:
        raise ValueError(
            f"{path}: the saved parameters and tensors do not fit together ({type(exc).__name__}: {exc})."
        ) from None
    finally:
        estimator._drop_caches()
    if codes_out.shape != (1, k):
        raise ValueError(f"{path}: the saved model gives {codes_out.shape[1]} concepts, but config.json says k={k}.")


def _check_components_shape(estimator, path: Path) -> None:
    """``components_`` (and KMeans' ``cluster_centers_``) must be (k, d) for the fitted layer width d."""
    try:
        width = estimator._components_width()
    except (TypeError, ValueError, IndexError):
        width = None  # a damaged layer_widths_: the test prediction reports it
    expected = (estimator.k, width)
    for name in ("components_", "cluster_centers_"):
        array = getattr(estimator, name, None)
        if array is None and name == "cluster_centers_":
            continue
        shape = np.shape(array)
        if len(shape) != 2 or shape[0] != expected[0] or width is not None and shape[1] != width:
            shown = f"({expected[0]}, {width if width is not None else 'd'})"
            raise ValueError(
                f"{path / 'model.safetensors'}: {name} has shape {shape}, expected {shown}: config.json says "
                f"k={estimator.k}" + (f" and the fitted layer is {width} features wide" if width is not None else "")
                + ". The folder's two files do not belong together; save the estimator again."
            )



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
