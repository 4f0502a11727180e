"""The splice protocol: remove a concept INSIDE the model's forward pass.

Where the probe protocol edits a sentence vector after the fact and asks a
separately trained probe, splicing edits the hidden state at the concept's
layer while the model runs, lets the remaining blocks process the edited
state, and reads the model's own classification head.  This is the
field's other standard for causal concept removal (interventions /
"activation patching").

:func:`splice_projection` is a context manager that installs one forward
hook (removed in ``finally``, also when the forward raises) that projects
given directions out of the hidden state of layer ``layer``, at one
position per sequence or at all positions.  :func:`splice_logits` runs a
sequence-classification model over texts with such an edit.

Layer convention (as :class:`~clvqlearn.LayerPairExtractor`): ``0`` is the
embeddings output (the input of the first block; a forward PRE-hook on
block 0), ``i`` is the output of block ``i`` (a forward hook on block
``i - 1`` of :func:`clvqlearn.models.get_layer_list`), and ``n_layers`` is
the model's ``last_hidden_state``: for decoders whose base model applies a
final norm (Llama ``norm``, GPT-2 ``ln_f``) the hook sits on that norm, so
the edit happens exactly where the extractor read the concept's vectors.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..models import get_layer_list
from .projection import orthonormalize, project_out_torch

__all__ = ["hook_site", "splice_logits", "splice_projection"]

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
    """Which module to hook to edit hidden-state layer ``layer``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        With or without a head.
    layer : int
        Non-negative layer index, ``0 <= layer <= n_layers``.

    Returns
    -------
    (module, kind)
        ``kind`` is ``"pre"`` (edit the module's input) or ``"post"`` (edit
        its output).

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
    """
    blocks = get_layer_list(model)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n:
        raise ValueError(f"layer must be an int in [0, {n}] (0 = embeddings output); got {layer!r}.")
    layer = int(layer)
    if layer == 0:
        return blocks[0], "pre"
    if layer == n:
        norm = _final_norm(model)
        if norm is not None:
            return norm, "post"
    return blocks[layer - 1], "post"


def _as_direction_tensor(directions, batch: int | None, d: int, ref: torch.Tensor) -> torch.Tensor:
    """(r, d) shared or (B, r, d) per-sequence ORTHONORMAL directions on ref's device/dtype."""
    if isinstance(directions, torch.Tensor):
        D = directions.detach()
    elif isinstance(directions, (list, tuple)):
        sets = [orthonormalize(np.asarray(x)) if np.asarray(x).size else np.zeros((0, d)) for x in directions]
        r = max([s.shape[0] for s in sets] + [1])
        D = torch.zeros((len(sets), r, d), dtype=torch.float64)
        for i, s in enumerate(sets):
            if s.shape[1] != d:
                raise ValueError(f"direction set {i} has width {s.shape[1]}; the hidden states have {d}.")
            D[i, : s.shape[0]] = torch.from_numpy(s)
    else:
        arr = np.asarray(directions, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim == 2:
            D = torch.from_numpy(orthonormalize(arr))
        elif arr.ndim == 3:
            D = torch.zeros(arr.shape, dtype=torch.float64)
            for i in range(arr.shape[0]):
                q = orthonormalize(arr[i])
                D[i, : q.shape[0]] = torch.from_numpy(q)
        else:
            raise ValueError(f"directions must have shape (r, d) or (batch, r, d); got {arr.shape}.")
    if D.shape[-1] != d:
        raise ValueError(f"directions have width {D.shape[-1]} but the hidden states have {d}.")
    if D.dim() == 3 and batch is not None and D.shape[0] != batch:
        raise ValueError(f"Got {D.shape[0]} direction sets for a batch of {batch} sequences.")
    return D.to(device=ref.device, dtype=ref.dtype)


def _edit(hidden: torch.Tensor, directions, positions) -> torch.Tensor:
    """Project the directions out of ``hidden`` (B, T, d) at the given positions."""
    B, T, d = hidden.shape
    D = _as_direction_tensor(directions, B, d, hidden)
    if positions is None:  # every position of every sequence
        if D.dim() == 2:
            return project_out_torch(hidden, D)
        coeff = torch.einsum("btd,brd->btr", hidden, D)
        return hidden - torch.einsum("btr,brd->btd", coeff, D)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=hidden.device)
    if pos.shape != (B,):
        raise ValueError(f"positions must hold one position per sequence (shape ({B},)); got {tuple(pos.shape)}.")
    if bool((pos >= T).any()):
        raise ValueError(f"positions must be < the sequence length {T}; got max {int(pos.max())}.")
    rows = torch.nonzero(pos >= 0).flatten()  # -1 = leave this sequence alone
    out = hidden.clone()
    if rows.numel():
        picked = hidden[rows, pos[rows]]  # (R, d)
        out[rows, pos[rows]] = _rowwise(picked, D if D.dim() == 2 else D[rows])
    return out


def _rowwise(x: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """x (R, d) minus its projection on D (r, d) shared or (R, r, d) per row."""
    if D.dim() == 2:
        return project_out_torch(x, D)
    coeff = torch.einsum("nd,nrd->nr", x, D)
    return x - torch.einsum("nr,nrd->nd", coeff, D)


@contextlib.contextmanager
def splice_projection(model: nn.Module, layer: int, directions, positions=None):
    """Project directions out of one layer's hidden states during forward passes.

    Inside the ``with`` block every forward of ``model`` has its hidden
    state at ``layer`` replaced by ``h - (h Q^T) Q`` (``Q`` the orthonormalised
    directions), at ``positions[b]`` of sequence ``b`` or, with
    ``positions=None``, at every position.  The blocks above see the edited
    state.  The hook is removed on exit, also when the block raises.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any HF model (bare or with a head).
    layer : int
        Layer index, ``0 <= layer <= n_layers`` (see the module docstring).
    directions : array-like or torch.Tensor
        ``(r, d)``: the same directions for every sequence; ``(B, r, d)`` or a
        list of B arrays ``(r_b, d)``: one set per sequence of the batch
        (``r_b`` may be 0).  Orthonormalised here (numpy input); a
        ``torch.Tensor`` is used as given and must already be orthonormal.
    positions : array-like of int of shape (B,), optional
        Position (index in the tokenised input, special tokens included) to
        edit in each sequence; -1 leaves a sequence unchanged.  None edits all
        positions (padding included, which the attention mask ignores).

    Yields
    ------
    dict
        ``{"calls": int}``: how many times the hook ran (a check that the
        edit took place).

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> cfg = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                  intermediate_size=16, vocab_size=20)
    >>> model = BertModel(cfg).eval()
    >>> ids = torch.tensor([[1, 5, 6, 2]])
    >>> u = torch.nn.functional.normalize(torch.ones(1, 8), dim=1)
    >>> with splice_projection(model, 1, u, positions=[2]) as info:
    ...     edited = model(ids).last_hidden_state
    >>> info["calls"], len(model.encoder.layer[0]._forward_hooks)
    (1, 0)
    """
    module, kind = hook_site(model, layer)
    info = {"calls": 0}

    def edit_value(value):
        if isinstance(value, torch.Tensor):
            return _edit(value, directions, positions)
        if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
            return (_edit(value[0], directions, positions),) + tuple(value[1:])
        raise TypeError(f"cannot edit a hidden state of type {type(value).__name__}.")

    if kind == "pre":

        def hook(mod, args, kwargs):
            info["calls"] += 1
            if args:
                return (edit_value(args[0]),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = edit_value(kwargs["hidden_states"])
            return args, kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    else:

        def hook(mod, args, output):
            info["calls"] += 1
            return edit_value(output)

        handle = module.register_forward_hook(hook)
    try:
        yield info
    finally:
        handle.remove()


@torch.no_grad()
def splice_logits(model, tokenizer, texts, *, layer=None, directions=None, positions=None,
                  max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """Classification logits of ``texts``, optionally with a spliced edit per text.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A sequence-classification model in eval mode.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer (right padding; a pad token must be set).
    texts : list of str
    layer : int, optional
        Layer to edit; None runs the model unedited.
    directions : list of n arrays of shape (r_i, d), optional
        Directions to remove from text ``i``.
    positions : array-like of int of shape (n,), optional
        Position to edit in text ``i`` (-1: none); None with ``layer`` set
        edits all positions.
    max_length : int, default=128
        Truncation, as for the extractor and the saliency map.
    batch_size : int, default=32

    Returns
    -------
    ndarray of shape (n, num_labels), float32

    Examples
    --------
    >>> logits = splice_logits(model, tok, ["a fine film"], layer=4,
    ...                        directions=[u], positions=[2])  # doctest: +SKIP
    """
    texts = list(texts)
    n = len(texts)
    if layer is not None and (directions is None or len(directions) != n):
        raise ValueError("splice_logits needs one direction set per text when layer is given.")
    if positions is not None and len(positions) != n:
        raise ValueError(f"positions must have one entry per text ({n}); got {len(positions)}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first.")
    device = next(model.parameters()).device
    enc = tokenizer(texts, truncation=True, max_length=int(max_length))
    ids = enc["input_ids"]
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(-lengths, kind="stable")
    out = np.zeros((n, model.config.num_labels), dtype=np.float32)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            input_ids[j, : lengths[i]] = torch.as_tensor(ids[i])
            mask[j, : lengths[i]] = 1
        kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if layer is None:
            logits = model(**kwargs).logits
        else:
            batch_dirs = [directions[i] for i in idx]
            batch_pos = None if positions is None else np.asarray(positions)[idx]
            with splice_projection(model, layer, batch_dirs, positions=batch_pos) as info:
                logits = model(**kwargs).logits
            if info["calls"] == 0:  # pragma: no cover - a model that skips its own blocks
                raise RuntimeError(f"the splice hook on layer {layer} never ran.")
        out[idx] = logits.float().cpu().numpy()
    return out
