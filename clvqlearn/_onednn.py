"""oneDNN Linear layers with pre-packed weights, for float32 inference on the CPU.

PyTorch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm, which
reads the weight in its plain layout on every call.  oneDNN keeps a copy of
the weight reordered once into the blocked layout its kernels want: on a
2-core AVX-512 machine its Linear runs at about twice MKL's rate on the
shapes of MiniLM and SmolLM2 (``benchmarks/bench_cpu_kernels.py``), with
the same float32 values up to rounding (``benchmarks/bench_extraction.py``
reports the whole extractor's gain and its error).  The packed kernel is the one PyTorch's own compiler
(Inductor) uses on the CPU, ``torch.ops.mkldnn._linear_pointwise``, which
reads and writes ordinary tensors; where a PyTorch build lacks it, the
public :class:`torch.utils.mkldnn.MkldnnLinear` (which converts every input
and output, and is slower) takes its place.

:func:`onednn_linears` routes the ``nn.Linear`` layers of the first blocks
of a model through their packed copies for the duration of a ``with``
block and puts the original ``forward`` back afterwards, so outside the
block the model is the one its owner loaded.  The packed copies are kept
(one per Linear, as long as it lives) and re-packed when the weight
changes.  They cost memory: the weights of the packed blocks once more.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn

__all__ = ["onednn_linears", "onednn_usable"]

#: Linear -> ((weight pointer, weight version, bias pointer, bias version), packed forward)
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: whether this PyTorch has Inductor's packed oneDNN Linear (else MkldnnLinear is used)
_HAS_POINTWISE = hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_usable(model: nn.Module) -> bool:
    """Whether :func:`onednn_linears` can speed up ``model``'s forward pass.

    True for a float32 model entirely on the CPU, in a PyTorch built with
    oneDNN, not placed by Accelerate (its hooks own ``forward``) and not
    created under ``torch.inference_mode``.

    Examples
    --------
    >>> from torch import nn
    >>> onednn_usable(nn.Linear(4, 2)) == torch.backends.mkldnn.is_available()
    True
    >>> onednn_usable(nn.Linear(4, 2).to(torch.bfloat16))
    False
    """
    if not torch.backends.mkldnn.is_available() or getattr(model, "hf_device_map", None):
        return False
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 and not p.is_inference()
                                for p in params)


@contextlib.contextmanager
def onednn_linears(modules):
    """Run every plain ``nn.Linear`` inside ``modules`` through pre-packed oneDNN weights.

    For inference on float32 CPU tensors; check :func:`onednn_usable` first.
    A call made with gradients enabled or under autocast (by another thread
    or a hook, say) takes PyTorch's own kernel, so it computes what the
    model would.  Subclasses of ``nn.Linear`` (quantised layers, a LoRA
    wrapper: its inner plain ``base_layer`` is routed) and layers whose
    ``forward`` was already replaced are left alone, so nested use routes
    nothing twice.

    Parameters
    ----------
    modules : iterable of torch.nn.Module
        The modules (e.g. the transformer blocks that will run) whose Linear
        layers to route.

    Yields
    ------
    int
        The number of Linear layers routed.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    >>> x = torch.randn(3, 5, 8)
    >>> with torch.inference_mode():
    ...     plain = net(x)
    ...     with onednn_linears([net]) as n_routed:
    ...         packed = net(x)
    >>> n_routed, torch.allclose(plain, packed, atol=1e-6), "forward" in vars(net[0])
    (2, True, False)
    """
    linears = list(dict.fromkeys(m for module in modules for m in module.modules()
                                 if type(m) is nn.Linear and "forward" not in vars(m)))
    installed: dict = {}
    try:
        for linear in linears:
            installed[linear] = linear.forward = _packed(linear)
        yield len(linears)
    finally:
        for linear, forward in installed.items():
            if vars(linear).get("forward") is forward:  # never remove a forward someone else set meanwhile
                del vars(linear)["forward"]


def _packed(linear: nn.Linear):
    """The packed forward of ``linear``, packed again when its weight or bias changed since the last call."""
    bias = linear.bias
    key = (linear.weight.data_ptr(), linear.weight._version,
           None if bias is None else bias.data_ptr(), None if bias is None else bias._version)
    cached = _PACKED.get(linear)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _pack(linear))
        _PACKED[linear] = cached
    return cached[1]


def _pack(linear: nn.Linear):
    """``x -> linear(x)`` through a oneDNN copy of the weight in its blocked layout.

    With gradients enabled or under CPU autocast it computes with PyTorch's
    kernel instead (the packed one has no gradient and ignores autocast).
    The closure holds the weight and bias, never the Linear, so the weak
    cache lets a dropped model go.
    """
    weight, bias = linear.weight, linear.bias
    ops = torch.ops.mkldnn
    if _HAS_POINTWISE:
        packed = ops._reorder_linear_weight(weight.detach())
        packed_bias = None if bias is None else bias.detach()

        def fast(x):
            return ops._linear_pointwise(x, packed, packed_bias, "none", [], "")
    else:
        from torch.utils.mkldnn import MkldnnLinear

        fast = MkldnnLinear(linear, torch.float32)

    def forward(x):
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return torch.nn.functional.linear(x, weight, bias)
        return fast(x.contiguous())

    return forward
