"""What an activation store folder holds, and the checks of its JSON files.

A store is a folder::

    manifest.json              what the store holds (see below)
    shard-00000.safetensors    whole documents 0 .. shard_size - 1
    shard-00000.json           that shard's sidecar: written last, it marks the shard finished
    shard-00001.safetensors    ...

``manifest.json`` records the format version, the model and its revision,
the layers, the storage dtype, the widths, the extractor settings, a SHA-256
fingerprint of the input texts, the number of documents and the shard size.
Once every shard is finished, the rank that writes shard 0 adds a ``shards``
summary (documents and tokens per shard); the sidecars stay authoritative.

A sidecar records the shard's number, its documents, its token count, the
size and SHA-256 of its safetensors bytes, and (under ``"store"``) the
manifest fields the shard was written with.  Stores of format version 1
(sidecars without checksum and ``"store"``) are still read.

Every shard holds the documents ``k * shard_size`` up to
``(k + 1) * shard_size`` as safetensors tensors: the activations (float32,
float16 or bfloat16), ``offsets`` (document boundaries inside the shard),
``token_ids``, ``positions`` and the token strings (``token_bytes``, UTF-8,
cut by ``token_offsets``).  A store of two layers (format version 2) names
its activations ``low`` and ``high``; a store of more layers, extracted in
one pass (format version 3), holds one tensor per layer, ``layer_<index>``
(``layer_4``), and its manifest lists every layer and width.  A store is
written in the oldest version that holds it, so a two-layer store stays
readable by earlier releases.

This module is the format only: names, versions, :class:`StoreSpec`, the
reading and checking of the manifest and the sidecars, and the errors that
name a damaged file.  :mod:`clvqlearn.data.store_writer` writes stores,
:mod:`clvqlearn.data.store_reader` opens them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._sidecar import read_sidecar

__all__ = ["STORAGE_DTYPES", "STORE_FORMAT", "STORE_VERSION", "StoreSpec", "shard_name", "texts_fingerprint"]

STORE_FORMAT = "clvqlearn.LayerPairStore"
# the newest version read; 2: sidecars record the shard's SHA-256 and the store fields it was written with;
# 3: more than two layers, one activation tensor per layer (layer_<index>); two-layer stores are still written as 2
STORE_VERSION = 3
MANIFEST = "manifest.json"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "U8": np.uint8}
_TENSORS = {  # name -> (allowed codes, number of dimensions); the activations: _activation_names
    "offsets": (("I64",), 1),
    "token_ids": (("I64",), 1),
    "positions": (("I64",), 1),
    "token_bytes": (("U8",), 1),
    "token_offsets": (("I64",), 1),
}
# the manifest fields that make two stores the same store (a resume and every shard must agree on them)
_IDENTITY = ("model_name", "model_revision", "layers", "widths", "dtype", "settings", "texts_sha256",
             "n_docs", "shard_size")


def _activation_names(layers, version: int) -> list[str]:
    """The activation tensors of a shard, one per layer: ``low``, ``high`` up to version 2, ``layer_<i>`` from 3."""
    if version < 3:
        return ["low", "high"]
    return [f"layer_{int(v)}" for v in layers]


def _is_activation(name: str) -> bool:
    return name in ("low", "high") or name.startswith("layer_")


def shard_name(k: int) -> str:
    """File name of shard ``k`` (``shard-00003.safetensors``)."""
    return f"shard-{k:05d}.safetensors"


def _sidecar_name(k: int) -> str:
    return f"shard-{k:05d}.json"


def _lock_name(rank: int) -> str:
    return f".writer-rank-{rank:05d}.lock"


# ----------------------------------------------------------------------------- identity
def texts_fingerprint(texts) -> str:
    """SHA-256 of a sequence of texts, in order (length-prefixed UTF-8).

    Parameters
    ----------
    texts : sequence of str
        The documents.

    Returns
    -------
    str
        64 hex digits.

    Examples
    --------
    >>> from clvqlearn.data import texts_fingerprint
    >>> texts_fingerprint(["a", "bc"]) == texts_fingerprint(["ab", "c"])
    False
    """
    digest = hashlib.sha256()
    for text in texts:
        data = str(text).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@dataclass
class StoreSpec:
    """What a store holds; two runs may share a store only if their specs agree.

    Parameters
    ----------
    model_name : str
        The model the activations come from.
    layers : tuple of int
        The (low, high) layer indices, or three or more strictly increasing
        layer indices (a store of several layers, format version 3).
    widths : tuple of int
        The width of every layer.
    n_docs : int
        Number of documents in the whole store.
    shard_size : int
        Documents per shard (the last shard may hold fewer).
    texts_sha256 : str
        :func:`texts_fingerprint` of the input texts.
    dtype : {"float32", "float16", "bfloat16"}, default="float32"
        Storage dtype of ``low`` and ``high``.
    model_revision : str, optional
        Commit hash or package version of the model.
    settings : dict
        Extractor settings that change the stored values (JSON-serialisable).

    Examples
    --------
    >>> from clvqlearn.data import StoreSpec
    >>> spec = StoreSpec("minilm", (4, 6), (384, 384), n_docs=10, shard_size=4, texts_sha256="0" * 64)
    >>> spec.n_shards, spec.format_version
    (3, 2)
    >>> StoreSpec("minilm", (2, 4, 6), (384,) * 3, n_docs=10, shard_size=4, texts_sha256="0" * 64).format_version
    3
    """

    model_name: str
    layers: tuple
    widths: tuple
    n_docs: int
    shard_size: int
    texts_sha256: str
    dtype: str = "float32"
    model_revision: str | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}; got {self.dtype!r}.")
        if int(self.n_docs) < 1 or int(self.shard_size) < 1:
            raise ValueError(f"n_docs and shard_size must be >= 1; got {self.n_docs} and {self.shard_size}.")
        self.layers = tuple(int(v) for v in self.layers)
        self.widths = tuple(int(v) for v in self.widths)
        self.n_docs, self.shard_size = int(self.n_docs), int(self.shard_size)
        increasing = all(0 <= a < b for a, b in zip(self.layers, self.layers[1:]))
        if len(self.layers) < 2 or (len(self.layers) > 2 and not increasing):
            raise ValueError(f"layers must be a (low, high) pair or three or more strictly increasing layer "
                             f"indices; got {self.layers}.")
        if len(self.widths) != len(self.layers) or min(self.widths) < 1:
            raise ValueError(f"widths must give a positive width for each of the layers {self.layers}; got "
                             f"{self.widths}.")

    @property
    def format_version(self) -> int:
        """The store format written: 2 for two layers, 3 for more (the oldest that holds the store)."""
        return 2 if len(self.layers) == 2 else 3
    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return math.ceil(self.n_docs / self.shard_size)

    def doc_range(self, k: int) -> tuple[int, int]:
        """Documents ``[start, stop)`` of shard ``k``."""
        return k * self.shard_size, min((k + 1) * self.shard_size, self.n_docs)

    def manifest(self) -> dict:
        """The JSON manifest (without the ``shards`` summary)."""
        out = {"format": STORE_FORMAT, "format_version": self.format_version}
        out.update(asdict(self))
        out["layers"], out["widths"] = list(self.layers), list(self.widths)
        out["n_shards"] = self.n_shards
        return out


def _differences(stored: dict, wanted: dict) -> list[str]:
    """Human-readable list of the identity fields on which two manifests differ."""
    out = []
    for key in _IDENTITY:
        a, b = stored.get(key), wanted.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name}: stored {a.get(name)!r}, now {b.get(name)!r}"
                    for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
        elif a != b:
            if key == "texts_sha256":
                out.append("the input texts (their fingerprint differs)")
            else:
                out.append(f"{key}: stored {a!r}, now {b!r}")
    return out


# ----------------------------------------------------------------------------- the JSON files
def _read_manifest(folder: Path) -> dict:
    """The checked manifest of the store ``folder`` (FileNotFoundError or ValueError naming the problem)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if not folder.exists():
            raise FileNotFoundError(f"there is no activation store at {folder}: the folder does not exist.")
        raise FileNotFoundError(
            f"{folder} is not an activation store: its {MANIFEST} is missing. Write a store with "
            "LayerPairExtractor(..., store=folder); a LayerPairs.save folder is read with LayerPairs.load."
        )
    stored = read_sidecar(manifest, format_tag=STORE_FORMAT, max_version=STORE_VERSION, version_key="format_version")
    _check_manifest(manifest, stored)
    return stored


def _read_shard_sidecar(folder: Path, k: int) -> dict | None:
    """Shard ``k``'s sidecar, or None when it is missing or unreadable (the shard is unfinished)."""
    try:
        info = json.loads((folder / _sidecar_name(k)).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _manifest_error(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the store manifest {path} is damaged or was edited: {why}. The shards are not at fault, do not "
        f"delete them: restore {path.name} (each shard's sidecar, shard-NNNNN.json, records under \"store\" "
        "what it should say), or extract again into a new folder."
    )


def _is_int(value, low: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def _check_manifest(path: Path, stored: dict) -> None:
    """Every field the reader relies on must be there with the right type (ValueError naming it if not)."""
    def pair(low):
        return lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x, low) for x in v)

    def several(v):  # format 3: two or more strictly increasing layers
        return (isinstance(v, list) and len(v) >= 2 and all(_is_int(x, 0) for x in v)
                and all(a < b for a, b in zip(v, v[1:])))

    if stored.get("format_version", 0) >= 3:
        layer_rule = ("layers", several, "a list of two or more strictly increasing layer indices")
        n = len(stored["layers"]) if several(stored.get("layers")) else -1
        width_rule = ("widths", lambda v: isinstance(v, list) and len(v) == n and all(_is_int(x, 1) for x in v),
                      "a positive integer for each layer")
    else:
        layer_rule = ("layers", pair(None), "a [low, high] pair of integers")
        width_rule = ("widths", pair(1), "a [low, high] pair of positive integers")
    rules = [
        ("model_name", lambda v: isinstance(v, str) and v != "", "a model name"),
        layer_rule,
        width_rule,
        ("dtype", lambda v: v in STORAGE_DTYPES, f"one of {list(STORAGE_DTYPES)}"),
        ("n_docs", lambda v: _is_int(v, 1), "a positive integer"),
        ("shard_size", lambda v: _is_int(v, 1), "a positive integer"),
        ("texts_sha256", lambda v: isinstance(v, str), "a hex string"),
    ]
    for key, valid, expected in rules:
        if key not in stored:
            raise _manifest_error(path, f"the field {key!r} is missing")
        if not valid(stored[key]):
            raise _manifest_error(path, f"the field {key!r} is {stored[key]!r}, expected {expected}")
    if not isinstance(stored.get("settings", {}), dict):
        raise _manifest_error(path, f"the field 'settings' is {stored['settings']!r}, expected a JSON object")
    n_shards = math.ceil(stored["n_docs"] / stored["shard_size"])
    if stored.get("n_shards") != n_shards:
        raise _manifest_error(
            path, f"the field 'n_shards' is {stored.get('n_shards')!r}, but n_docs={stored['n_docs']} and "
                  f"shard_size={stored['shard_size']} make {n_shards} shards"
        )


def _check_shard_files(folder: Path, manifest: dict) -> None:
    """No shard file may lie beyond the manifest's ``n_shards``."""
    beyond = sorted(p.name for p in folder.glob("shard-*.*")
                    if p.suffix in (".safetensors", ".json") and p.stem[6:].isdigit()
                    and int(p.stem[6:]) >= manifest["n_shards"])
    if beyond:
        raise _manifest_error(
            folder / MANIFEST,
            f"it says n_shards={manifest['n_shards']} (n_docs={manifest['n_docs']}, shard_size="
            f"{manifest['shard_size']}), but the folder also holds {', '.join(beyond[:4])}"
            f"{' ...' if len(beyond) > 4 else ''}",
        )


def _disagreements(manifest: dict, recorded: dict) -> list[str]:
    """The store fields on which the manifest and a shard's record differ."""
    out = []
    for key in _IDENTITY:
        if key in recorded and manifest.get(key) != recorded[key]:
            if key == "texts_sha256":
                out.append("the input texts (texts_sha256) differ")
            else:
                out.append(f"{key}: the manifest says {manifest.get(key)!r}, the shards were written with "
                           f"{recorded[key]!r}")
    return out


def _check_identity(folder: Path, manifest: dict, recorded: dict) -> None:
    """The manifest must agree with what the finished shards recorded (``recorded``: shard -> fields).

    When every shard disagrees, the manifest is at fault; when only some
    do, those shards come from another store.
    """
    wrong = {k: d for k, d in ((k, _disagreements(manifest, rec)) for k, rec in sorted(recorded.items())) if d}
    if not wrong:
        return
    first = wrong[min(wrong)]
    if len(wrong) == len(recorded):
        raise _manifest_error(folder / MANIFEST, "it disagrees with what its shards recorded when they were "
                                                 f"written: {'; '.join(first)}")
    names = ", ".join(shard_name(k) for k in sorted(wrong)[:4]) + (" ..." if len(wrong) > 4 else "")
    raise ValueError(
        f"the activation store {folder} holds shards written for another store: {names} "
        f"({'; '.join(first).replace('the shards were', 'they were')}). Delete these shards and their .json "
        "sidecars, then run the same extraction again to redo them."
    )


# ----------------------------------------------------------------------------- errors naming a shard
def _misplaced(folder: Path, name: str, k: int, recorded) -> ValueError:
    return ValueError(
        f"{name} in the activation store {folder} records shard {recorded!r}, but it is at the place of shard {k}: "
        "shard files were renamed, swapped or copied over one another. Give each shard-NNNNN.safetensors and "
        "its shard-NNNNN.json the number they record; where a pair is a copy of another shard, delete that "
        "pair and run the same extraction again to redo it."
    )


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"the shard {path.name} of the activation store {path.parent} is damaged: {why}. Delete it and "
        f"its sidecar {path.stem}.json, then run the same extraction again to redo this shard."
    )
