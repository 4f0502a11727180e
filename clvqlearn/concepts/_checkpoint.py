"""Checkpoints of a torch estimator's fit: written as it trains, resumed exactly by ``fit``.

A checkpoint folder holds ``checkpoint.json`` and one
``state-<step>-<tag>.safetensors``.  The safetensors file holds every
tensor of the training state (the network, the best state kept for early
stopping, Adam's moments, generator and torch RNG states); the JSON holds
the rest (epoch, position in the epoch, the numpy random state of the data
order, the plateau schedule, the learning curves, the estimator's own
counters) with a placeholder naming the tensor wherever one stood, and a
*fingerprint* of the fit (class, parameters, provenance, a hash of the
data) that a resume must match.  No pickle: the optimiser's state dict is
split the same way.  Each fit has a folder of its own under the
estimator's ``checkpoint_dir``, named after its fingerprint
(:func:`fit_folder`).

Writes are atomic: the tensor file is written under a temporary name,
flushed to disk and renamed; then ``checkpoint.json`` -- which names the
tensor file -- is written the same way; only then are older tensor files
removed.  A process killed at any moment leaves the previous checkpoint or
the new one, never a mix (``tests/concepts/test_checkpoints.py`` kills a
fit with SIGKILL).  A checkpoint that cannot be read or does not hold what
a resume needs raises a ``ValueError`` naming its folder, on every rank of
a distributed fit (rank 0 reads it and sends the error to the others).

Examples
--------
>>> import tempfile, torch
>>> saver = Checkpointer(tempfile.mkdtemp(), every=10, fingerprint={"fit": 1})
>>> saver.save({"n_steps": 10, "weights": torch.ones(2), "curve": [0.5], "state": {0: {"step": 3}}})
>>> back = Checkpointer(saver.folder, every=10, fingerprint={"fit": 1}).load()
>>> back["weights"].tolist(), back["curve"], back["state"][0]["step"], saver.due(20), saver.due(25)
([1.0, 1.0], [0.5], 3, True, False)
>>> fit_folder("checkpoints", {"fit": 1}).name
'7ae6adfcdbc77f1a'
"""

from __future__ import annotations

import hashlib
import json
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .._folders import write_file_atomic
from .._sidecar import _check_required, read_sidecar
from ._distributed import SINGLE, Comm

FORMAT_NAME = "clvqlearn.checkpoint"
FORMAT_VERSION = 1
#: The file that names the current checkpoint (written last).
POINTER = "checkpoint.json"
_SCHEMA = {"format": str, "version": int, "fingerprint": dict, "tensors": str, "state": dict}
#: Hex digits of the fingerprint's hash that name a fit's folder.
FOLDER_DIGITS = 16


def fit_folder(root, fingerprint: dict) -> Path:
    """The folder under ``root`` where the fit described by ``fingerprint`` keeps its checkpoints.

    Named after the SHA-1 of the fingerprint's JSON: fits of other settings
    or data never share a folder, and the same fit finds its own again.

    Parameters
    ----------
    root : str or path-like
        The estimator's ``checkpoint_dir``.
    fingerprint : dict
        JSON values describing the fit.

    Returns
    -------
    pathlib.Path
    """
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return Path(root).expanduser() / hashlib.sha1(text.encode()).hexdigest()[:FOLDER_DIGITS]


class Checkpointer:
    """Where one fit writes its checkpoints, and the one it resumes from.

    Parameters
    ----------
    folder : str or path-like
    every : int or None
        Optimiser steps between checkpoints (None: only at epoch ends,
        which the training loop always writes).
    fingerprint : dict
        JSON values describing the fit; a checkpoint written with another
        fingerprint is refused, naming the keys that differ.
    comm : Comm, optional
        Rank 0 reads and writes; the other ranks receive what it read (or
        the error it raised).
    required : dict, optional
        Keys the saved payload must hold, with their JSON types (``bool``
        is not an ``int``); a checkpoint lacking one is refused.

    Attributes
    ----------
    restored : dict or None
        What :meth:`load` found (the payload given to :meth:`save`).
    extra : dict
        The estimator's own JSON state, saved with every checkpoint under
        ``"estimator"``.
    """

    def __init__(self, folder, every: int | None, fingerprint: dict, comm: Comm = SINGLE, required: dict | None = None):
        self.folder = Path(folder).expanduser()
        self.every = every
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        self.comm = comm
        self.required = dict(required or {})
        self.restored: dict | None = None
        self.extra: dict = {}

    def due(self, step: int) -> bool:
        """Whether a checkpoint is written after optimiser step ``step``."""
        return bool(self.every) and step % int(self.every) == 0

    # -------------------------------------------------------------- reading
    def load(self) -> dict | None:
        """The checkpoint in :attr:`folder` (None when there is none), checked against the fingerprint.

        Raises
        ------
        ValueError
            A checkpoint of another fit, or one that is damaged, edited or
            lacks a key of ``required`` (the message names the folder).
        OSError
            The folder cannot be read.
        """
        found = None
        if self.comm.is_main:
            try:
                found = ("ok", self._read())
            except Exception as exc:  # noqa: BLE001 - every rank raises it, none waits forever in the broadcast
                found = ("error", *self._error(exc))
                if not self.comm.active:
                    raise _raised(found) from (None if isinstance(exc, (ValueError, OSError)) else exc)
        found = self.comm.broadcast_object(found)
        if found[0] == "error":
            raise _raised(found)
        self.restored = found[1]
        return self.restored

    @contextmanager
    def reading(self):
        """Turn an error while a resume applies the restored state into one naming the folder."""
        try:
            yield
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            raise ValueError(self._damaged(exc)) from exc

    def _error(self, exc: Exception) -> tuple[str, str]:
        """``(kind, message)`` of an error raised reading the checkpoint."""
        if isinstance(exc, OSError):
            return "OSError", f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ValueError) and "elete" in str(exc):  # our own message says what to do
            return "ValueError", str(exc)
        return "ValueError", self._damaged(exc)

    def _damaged(self, exc: Exception) -> str:
        return (f"the checkpoint in {self.folder} is damaged or was written by another clvqlearn "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); delete it to start the fit over.")

    def _read(self) -> dict | None:
        pointer = self.folder / POINTER
        if not pointer.is_file():
            return None
        meta = read_sidecar(pointer, format_tag=FORMAT_NAME, max_version=FORMAT_VERSION, required=_SCHEMA)
        self._check_fingerprint(meta["fingerprint"], pointer)
        tensor_file = self.folder / meta["tensors"]
        if Path(meta["tensors"]).name != meta["tensors"] or not tensor_file.is_file():
            raise ValueError(f"{pointer} names the tensor file {meta['tensors']!r}, which is not in {self.folder}; "
                             "the checkpoint folder was edited. Delete it to start the fit over.")
        from safetensors.torch import load

        try:
            tensors = load(tensor_file.read_bytes())
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"{tensor_file} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                             "delete the checkpoint folder to start the fit over.") from None
        state = _decode(meta["state"], tensors, tensor_file)
        _check_required(pointer, state, self.required)
        return state

    def _check_fingerprint(self, saved: dict, pointer: Path) -> None:
        if saved == self.fingerprint:
            return
        keys = sorted(set(saved) | set(self.fingerprint))
        changed = [k for k in keys if saved.get(k) != self.fingerprint.get(k)]
        details = []
        for key in changed:
            old, new = saved.get(key), self.fingerprint.get(key)
            if isinstance(old, dict) and isinstance(new, dict):
                names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
                details += [f"{key}.{n}: {old.get(n)!r} -> {new.get(n)!r}" for n in names]
            else:
                details.append(f"{key}: {old!r} -> {new!r}")
        raise ValueError(
            f"{pointer} is the checkpoint of another fit ({'; '.join(details)[:400]}); fit resumes only the same "
            "estimator settings on the same data. Delete the folder (or choose another checkpoint_dir) to start over."
        )

    # -------------------------------------------------------------- writing
    def save(self, payload: dict) -> None:
        """Write ``payload`` (nested dicts, lists, numbers, strings, tensors, arrays) atomically."""
        from safetensors.torch import save

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors: dict = {}
        state = _encode({**payload, "estimator": self.extra}, "s", tensors)
        name = f"state-{int(payload.get('n_steps', 0)):09d}-{secrets.token_hex(4)}.safetensors"
        write_file_atomic(self.folder / name, save(tensors), sync_folder=True)
        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "tensors": name, "state": state}
        write_file_atomic(self.folder / POINTER, json.dumps(meta).encode(), sync_folder=True)
        for old in self.folder.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)


def _raised(found: tuple) -> Exception:
    """The exception of ``("error", kind, message)``."""
    return OSError(found[2]) if found[1] == "OSError" else ValueError(found[2])




def _encode(value, key: str, tensors: dict):
    """JSON form of ``value``; tensors and arrays go to ``tensors`` under their path ``key``."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__} (at {key})")


def _decode(value, tensors: dict, tensor_file: Path):
    """Undo :func:`_encode`."""
    if isinstance(value, dict):
        for marker in ("__tensor__", "__ndarray__"):
            if marker in value:
                if value[marker] not in tensors:
                    raise ValueError(f"{tensor_file} lacks the tensor {value[marker]!r} that {POINTER} names; "
                                     "delete the checkpoint folder to start the fit over.")
                tensor = tensors[value[marker]]
                return tensor if marker == "__tensor__" else tensor.numpy()
        if "__items__" in value:
            return {k: _decode(v, tensors, tensor_file) for k, v in value["__items__"]}
        return {k: _decode(v, tensors, tensor_file) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, tensors, tensor_file) for v in value]
    return value
