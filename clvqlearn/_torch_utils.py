"""Device resolution and seeded randomness for torch, in one place.

Randomness rule: nothing here touches global RNG state for good.  Seeds come
from the estimator's ``random_state`` (a numpy ``RandomState``) and feed
explicit ``torch.Generator`` objects; code that can only use the global
torch RNG (``nn.Dropout``, ``nn.Linear`` initialisation) runs inside
:func:`seeded`, which forks the global state and restores it afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import torch


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` into a device.

    Parameters
    ----------
    device : str or torch.device or None
        ``"auto"`` (or None) picks CUDA when available, else CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        When a CUDA device is asked for and none is available, or the string
        is not a device.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {device!r}"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False). Use device='cpu' or device='auto'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible."
            )
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} was requested but MPS is not available.")
    return dev


def torch_seed(rng: np.random.RandomState) -> int:
    """Draw a 63-bit torch seed from a numpy RandomState."""
    return int(rng.randint(0, 2**31 - 1)) * 2**31 + int(rng.randint(0, 2**31 - 1))


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run a block with the global torch RNG seeded, then restore it.

    Used for module construction and dropout, which read the global RNG.
    """
    devices = [device] if device.type == "cuda" else []
    with contextlib.ExitStack() as stack:
        # silence fork_rng's own notices only: warnings raised inside the
        # block (e.g. a ConvergenceWarning from training) must reach the user
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(seed % (2**63))
        if device.type == "cuda":
            torch.cuda.manual_seed(seed % (2**63))
        yield


@contextlib.contextmanager
def frozen(module: torch.nn.Module, active: bool = True):
    """Turn ``requires_grad`` off for ``module``'s parameters inside the block (when ``active``).

    A parameter the optimiser never updates (learning rate 0) then costs no
    backward pass; each parameter's own setting is restored afterwards.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> with frozen(lin):
    ...     lin(torch.ones(1, 2)).requires_grad
    False
    >>> lin.weight.requires_grad
    True
    """
    params = [p for p in module.parameters() if p.requires_grad] if active else []
    for param in params:
        param.requires_grad_(False)
    try:
        yield module
    finally:
        for param in params:
            param.requires_grad_(True)


def to_numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """A module's state dict as CPU float32 numpy arrays (device-independent)."""
    return {k: v.detach().to("cpu").numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: torch.nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load a :func:`to_numpy_state` dict into ``module`` (on its device)."""
    ref = module.state_dict()
    module.load_state_dict({k: torch.as_tensor(np.asarray(v)).to(ref[k].device, ref[k].dtype)
                            for k, v in state.items()})


def parameter_groups(module: torch.nn.Module, weight_decay: float, lr_scales: dict | None = None,
                     learning_rate: float | None = None) -> list[dict]:
    """Optimiser parameter groups: weight decay on weight matrices only, per-prefix learning rates.

    The one weight-decay split of the package (the concept estimators'
    training loop and the classifier fine-tuning both use it).  No decay on
    biases, 1-D parameters (LayerNorm / RMSNorm weights), parameters whose
    name contains ``"norm"``, or names listed by ``module.no_weight_decay()``.
    Parameters with ``requires_grad=False`` join no group.

    Parameters
    ----------
    module : torch.nn.Module
    weight_decay : float
        Decay of the weight-matrix group(s).
    lr_scales : dict of str to float, optional
        Parameter-name prefix (e.g. ``"encoder."``) -> multiplier of
        ``learning_rate``; the first matching prefix wins.  A multiplier of 0
        freezes those parameters (they join no group).
    learning_rate : float, optional
        When given, every group gets ``"lr": learning_rate * multiplier``;
        otherwise the optimiser's own ``lr`` applies.

    Returns
    -------
    list of dict
        ``{"params", "weight_decay"[, "lr"]}`` groups, decayed groups first,
        for any ``torch.optim`` optimiser.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    >>> groups = parameter_groups(net, 0.01)
    >>> [(g["weight_decay"], len(g["params"])) for g in groups]
    [(0.01, 1), (0.0, 3)]
    >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    skip = set(getattr(module, "no_weight_decay", lambda: ())())
    lr_scales = lr_scales or {}
    groups: dict = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((v for prefix, v in lr_scales.items() if name.startswith(prefix)), 1.0)
        if scale == 0:
            continue
        decay = not (param.ndim < 2 or name in skip or name.endswith(".bias") or "norm" in name.lower())
        groups.setdefault((decay, scale), []).append(param)
    out = []
    for (decay, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1])):
        group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if learning_rate is not None:
            group["lr"] = learning_rate * scale
        out.append(group)
    return out


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move ``tensor`` to ``device`` without a host synchronisation.

    A CPU tensor bound for a CUDA device is pinned (page-locked) first and
    copied with ``non_blocking=True``, so the copy overlaps GPU work instead
    of stalling the host; a tensor already on ``device`` is returned as is.

    Parameters
    ----------
    tensor : torch.Tensor
    device : torch.device

    Returns
    -------
    torch.Tensor

    Examples
    --------
    >>> import torch
    >>> host_to_device(torch.arange(3), torch.device("cpu")).tolist()
    [0, 1, 2]
    """
    device = torch.device(device)
    if tensor.device == device or (device.type == tensor.device.type and device.index is None):
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def release_free_memory() -> bool:
    """Hand the C heap's free memory back to the operating system (glibc's ``malloc_trim``).

    Training allocates CPU tensors of many sizes (every batch has its own
    number of tokens and its own longest document); glibc keeps the freed
    blocks in its heap, so the resident set of a fit grew epoch after
    epoch while the memory was free.  Called after every epoch and at the
    end of ``fit``: MiniLM 4 -> 6 on Jigsaw, the default 10 epochs, peak
    3,080 -> 2,637 MiB, resident after the fit 2,773 -> 860 MiB, at no
    cost in time (``benchmarks/results/learns/memory_jigsaw.md``).  A
    streamed fit also calls it before each read of a shuffle buffer or
    chunk, which keeps its resident set nearly flat.  It frees nothing
    that is in use and changes no allocator setting; where the C library
    has no ``malloc_trim`` (macOS, Windows, musl) it does nothing.

    Returns
    -------
    bool
        True when memory was handed back.

    Examples
    --------
    >>> isinstance(release_free_memory(), bool)
    True
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` through ctypes, or None where the C library lacks it."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library the process already runs on (no ldconfig lookup)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
