"""The base of the torch estimators: CrossLayerVQ, SingleLayerVQ and SparseAutoencoder.

It holds what their ``_fit_data`` and inference share, once: whether a call
starts a new network or continues the fitted one (:meth:`_begin_fit`),
and the private cache of the torch network rebuilt from the fitted numpy
state (:meth:`_network`).  The cache is keyed on the device and on the
settings the network is built with besides its shapes (``temperature``,
``top_k``, the SAE's ``activation``, ...), so a ``set_params`` that only
steers the model takes effect at once.

A subclass implements four hooks:

``_network_settings()``
    What the network is built with besides its shapes (compared with ``==``).
``_empty_network()``
    A new network with the fitted shapes; its weights are overwritten.
``_network_arrays()``
    The fitted state as ``{parameter name: array}`` for ``load_numpy_state``.
``_start_network(data, rng, device)``
    A new network started from the data, for ``fit`` and a first ``partial_fit``.
``_blank_network(data, device)``
    A network of the data's shapes whose weights a checkpoint overwrites.

It also holds the training settings the two share (``checkpoint_dir``,
``checkpoint_every``, ``callbacks``, ``distributed``: :data:`TRAINING_CONSTRAINTS`)
and :meth:`_begin_fit`, which resolves them for one call: the process
group, this rank's device, the checkpoint to write and the one to resume
(with a warning), the network broadcast from rank 0.

A fit's checkpoints go to a folder of their own inside ``checkpoint_dir``,
named after the fit's *fingerprint* (:meth:`_NetworkEstimator._fit_fingerprint`:
class, parameters, model and layers, document offsets and a hash of the
activations): clones in a grid search or a cross-validation never share a
folder, and running the same fit again finds its own.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch

from .._sklearn_compat import Interval, StrOptions
from .._torch_utils import load_numpy_state, seeded
from ._base import ConceptEstimator
from ._checkpoint import Checkpointer, fit_folder
from ._data import _LAYER_NAMES, StreamData
from ._distributed import Comm, rank_device, resolve_comm
from ._training import CHECKPOINT_SCHEMA, rng_state_from_list, rng_state_to_list

#: Parameters of the torch estimators' training runs (validated in ``fit``; none shapes the model).
TRAINING_CONSTRAINTS: dict = {
    "checkpoint_dir": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left"), None],
    "callbacks": [list, tuple, None],
    "distributed": ["boolean", StrOptions({"auto"})],
}
#: Parameters of the run, not of the model: a checkpoint does not record them (a fit resumes whatever
#: they are now), ``save`` writes them at their defaults and the model card leaves them out.
_RUN_PARAMS = frozenset({"checkpoint_dir", "checkpoint_every", "callbacks", "verbose", "device", "distributed"})
#: Rows of each layer hashed for a fit's fingerprint (evenly spaced, first and last included).
_HASHED_ROWS = 1024
#: Documents of a store without a manifest read for a fit's fingerprint.
_HASHED_DOCS = 16
#: The hooks a training callback may have (clvqlearn.concepts.callbacks).
CALLBACK_HOOKS = ("on_train_begin", "on_step_end", "on_epoch_end", "on_train_end")


@dataclass
class FitRun:
    """What one ``fit`` / ``partial_fit`` call trains with (from :meth:`_NetworkEstimator._begin_fit`)."""

    rng: np.random.RandomState
    network: torch.nn.Module
    device: torch.device
    comm: Comm
    checkpoint: Checkpointer | None = None
    callbacks: list = field(default_factory=list)

    def dropout_seed(self, seed: int) -> int:
        """The global torch RNG's seed on this rank (dropout masks differ between ranks)."""
        return seed + self.comm.rank

    def train_kwargs(self, **settings) -> dict:
        """Keyword arguments of ``train_module`` for this run."""
        return {"comm": self.comm, "checkpoint": self.checkpoint, "callbacks": self.callbacks, **settings}


class _NetworkEstimator(ConceptEstimator):
    """Shared machinery of the estimators fitted as a torch network (not public)."""

    #: Run-only parameters (left out of checkpoints' fingerprints, saves and model cards).
    _run_params = _RUN_PARAMS

    # ------------------------------------------------------------ hooks
    def _network_settings(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _empty_network(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _network_arrays(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _start_network(self, data, rng, device):  # pragma: no cover - abstract
        raise NotImplementedError

    def _blank_network(self, data, device):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---------------------------------------------------------- training
    def _begin_fit(self, data, partial: bool) -> FitRun:
        """The random state, network, device, process group, checkpoint and callbacks of one call.

        A ``partial_fit`` that continues a fitted state (``_resumes``) goes
        on with the fitted network and the random state of the earlier
        calls.  Otherwise a new network is started from ``data`` with a
        fresh random state, and the counters and curves start at zero; a
        ``fit`` whose ``checkpoint_dir`` holds a checkpoint of the same fit
        instead takes the network and random state it saved (a
        ``UserWarning`` says so) and ``train_module`` resumes the rest.  In
        a data-parallel fit (``distributed=True``, or ``"auto"`` inside a
        process group) rank 0's random state and network are given to
        every rank, and every rank must fit the same data.
        """
        device = self._resolve_device()
        comm = resolve_comm(self.distributed, device)
        if comm.active:
            device = rank_device(device)
            comm.device = device if device.type == "cuda" else None
            self._check_same_fit(data, partial, comm)
        checkpoint = self._checkpointer(data, partial, comm)
        callbacks = self._checked_callbacks()
        if self._resumes(partial):
            rng = getattr(self, "_rng", None) or self._check_random_state()
            network = self._network(device)
        else:
            rng, network = self._new_or_saved_network(data, device, comm, checkpoint)
            self.n_iter_, self.n_steps_, self.loss_curve_, self.validation_curve_ = 0, 0, [], []
            self._train_state = None
        self._rng = rng
        return FitRun(rng=rng, network=network, device=device, comm=comm, checkpoint=checkpoint, callbacks=callbacks)

    def _new_or_saved_network(self, data, device, comm: Comm, checkpoint):
        """``(rng, network)``: started from the data, or as the checkpoint saved them."""
        rng = self._check_random_state()
        if comm.active:  # random_state=None draws fresh entropy on each rank: rank 0's wins
            rng.set_state(comm.broadcast_object(rng.get_state()))
        saved = checkpoint.load() if checkpoint is not None else None
        if saved is None:
            network = self._start_network(data, rng, device)
            comm.broadcast_module(network)  # equal starts even where a GPU kernel is not deterministic
            if comm.active:
                rng.set_state(comm.broadcast_object(rng.get_state()))
        else:
            _warn_resume(self, checkpoint.folder, saved)
            network = self._blank_network(data, device)
            with checkpoint.reading():  # every rank holds the same state: all of them raise, none waits
                rng.set_state(rng_state_from_list(saved["estimator"]["rng"]))
                network.load_state_dict(saved["module"])
        if checkpoint is not None:
            checkpoint.extra = {"rng": rng_state_to_list(rng.get_state())}
        return rng, network

    def _checkpointer(self, data, partial: bool, comm: Comm) -> Checkpointer | None:
        """The checkpoints of a ``fit`` with ``checkpoint_dir`` (``partial_fit`` writes none).

        They go to ``checkpoint_dir / <the fingerprint's hash>``, so fits of
        other settings or data (clones in a grid search, folds of a
        cross-validation) never share a folder.
        """
        if partial or self.checkpoint_dir is None:
            return None
        fingerprint = self._fit_fingerprint(data, partial)
        return Checkpointer(fit_folder(self.checkpoint_dir, fingerprint), self.checkpoint_every, fingerprint, comm,
                            required={**CHECKPOINT_SCHEMA, "estimator": dict})

    def _fit_fingerprint(self, data, partial: bool) -> dict:
        """What identifies a fit: class, the parameters that steer it, provenance and a hash of the data."""
        offsets = np.ascontiguousarray(np.asarray(data.offsets, dtype=np.int64))
        params = {k: _plain(v) for k, v in self.get_params(deep=False).items() if k not in _RUN_PARAMS}
        layers = getattr(self, "pairs_layers_", None)
        return {"class": type(self).__name__, "params": params, "partial": bool(partial),
                "model": getattr(self, "pairs_model_name_", None), "layers": None if layers is None else list(layers),
                "n_docs": int(offsets.size - 1), "widths": list(_data_widths(data)),
                "offsets_sha1": hashlib.sha1(offsets.tobytes()).hexdigest(), "data_sha1": _data_sha1(data)}

    def _check_same_fit(self, data, partial: bool, comm: Comm) -> None:
        """Every rank of a process group must fit the same data with the same settings."""
        mine = json.dumps(self._fit_fingerprint(data, partial), sort_keys=True)
        others = comm.all_objects(mine)
        differing = [rank for rank, value in enumerate(others) if value != others[0]]
        if differing:
            raise ValueError(
                f"{type(self).__name__}.fit in a torch.distributed group of {comm.world_size} processes: rank(s) "
                f"{differing} got other data or settings than rank 0 (documents, layer widths or parameters). "
                "Give every rank the same X and estimator; each rank trains on its share of every batch by itself."
            )

    def _checked_callbacks(self) -> list:
        """``callbacks`` as a list, each with at least one training hook."""
        callbacks = list(self.callbacks or ())
        for i, callback in enumerate(callbacks):
            if not any(callable(getattr(callback, hook, None)) for hook in CALLBACK_HOOKS):
                raise TypeError(
                    f"callbacks[{i}] is a {type(callback).__name__}, which has none of the hooks "
                    f"{', '.join(CALLBACK_HOOKS)}; pass callback objects such as "
                    "clvqlearn.concepts.callbacks.TensorBoardLogger(log_dir)."
                )
        return callbacks

    # ---------------------------------------------------------- saving
    def save(self, path, *, overwrite=False, card=None):
        """Save a fitted estimator without pickle (see :meth:`ConceptEstimator.save`).

        The run-only parameters (``checkpoint_dir``, ``checkpoint_every``,
        ``callbacks``, ``distributed``, ``device``, ``verbose``) are saved at
        their defaults and left out of the model card: they belong to the
        training run, not to the model (a local ``checkpoint_dir`` path must
        not travel with a shared model, nor a loaded model write into it).
        """
        defaults = _init_defaults(type(self))
        kept = {name: getattr(self, name) for name in self._run_params if name in defaults and hasattr(self, name)}
        vars(self).update({name: defaults[name] for name in kept})
        try:
            return super().save(path, overwrite=overwrite, card=card)
        finally:
            vars(self).update(kept)

    def _keep_network(self, network, device) -> None:
        """Cache the network just trained for inference on ``device``."""
        self._cache_network = (device, self._network_settings(), network)

    # --------------------------------------------------------- inference
    def _network(self, device=None):
        """The torch network for the fitted state (a private, rebuilt cache)."""
        device = device or self._resolve_device()
        cached = getattr(self, "_cache_network", None)
        if cached is not None and cached[:2] == (device, self._network_settings()):
            return cached[2]  # rebuilt when set_params changed a setting it is built with (temperature, ...)
        with seeded(0, device):  # construction draws from the global RNG; the weights are overwritten
            network = self._empty_network()
        network.to(device)
        load_numpy_state(network, self._network_arrays())
        network.eval()
        self._keep_network(network, device)
        return network


def _data_widths(data) -> tuple[int, int]:
    """Widths of the source and target layers of in-memory or streamed data."""
    if isinstance(data, StreamData):
        return (int(data.widths[_LAYER_NAMES.index(data.source_role)]),
                int(data.widths[_LAYER_NAMES.index(data.target_role)]))
    return int(data.source.shape[1]), int(data.target.shape[1])


def _data_sha1(data) -> str:
    """A cheap hash of what a fit reads.

    In memory: :data:`_HASHED_ROWS` evenly spaced rows of the source and
    target layers (with their shapes and dtype).  A store with a manifest:
    its identity (the texts' hash, the extraction settings, model, layers,
    widths, dtype); another lazy view: the rows of :data:`_HASHED_DOCS`
    evenly spaced documents.
    """
    digest = hashlib.sha1()
    if isinstance(data, StreamData):
        identity = _store_identity(data.pairs)
        if identity is not None:
            digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
            return digest.hexdigest()
        sample = data.pairs.take(_spaced(data.n_docs, _HASHED_DOCS))
        arrays = [getattr(sample, data.source_role), getattr(sample, data.target_role)]
    else:
        arrays = [data.source, data.target]
    for array in arrays:
        rows = _spaced(int(array.shape[0]), _HASHED_ROWS)
        picked = np.ascontiguousarray(np.asarray(array[rows]))
        digest.update(f"{tuple(array.shape)} {picked.dtype.str}".encode())
        digest.update(picked.tobytes())
    return digest.hexdigest()


def _store_identity(view) -> dict | None:
    """What a store's manifest says of its content (None: no manifest, or no hash of its texts)."""
    manifest = getattr(view, "manifest", None)
    if not isinstance(manifest, dict) or not manifest.get("texts_sha256"):
        return None
    keys = ("texts_sha256", "settings", "model_name", "model_revision", "layers", "widths", "dtype", "n_docs")
    return {key: manifest.get(key) for key in keys}


def _spaced(n: int, most: int) -> np.ndarray:
    """At most ``most`` evenly spaced indices of ``range(n)``, the first and last included."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(n, most)).round().astype(np.int64))


def _init_defaults(cls) -> dict:
    """``{parameter: default}`` of an estimator class's ``__init__``."""
    return {name: param.default for name, param in inspect.signature(cls.__init__).parameters.items()
            if param.default is not inspect.Parameter.empty}


def _plain(value):
    """A parameter as a JSON value for a fingerprint (objects by their class name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return type(value).__name__


def _warn_resume(estimator, folder, saved: dict) -> None:
    what = ("a finished fit: fit returns its result without training" if saved["finished"] else
            f"epoch {int(saved['epoch']) + 1}, after optimiser step {int(saved['n_steps'])}")
    warnings.warn(
        f"{type(estimator).__name__}.fit resumes from the checkpoint in {folder} ({what}). Delete the folder, or "
        "set checkpoint_dir to another one, to fit from the start.",
        UserWarning,
        stacklevel=7,  # the caller of fit (through _begin_fit, _fit_data, fit and scikit-learn's _fit_context)
    )
