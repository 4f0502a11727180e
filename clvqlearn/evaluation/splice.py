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
position per sequence or at all positions (or, for the norm-matched
control, removes the same norm along a random direction).  :func:`splice_logits` runs a
sequence-classification model over texts with such an edit.

Layer convention: the one of :class:`~clvqlearn.LayerPairExtractor`, through
:func:`clvqlearn.models.hook_site` (``0`` is the embeddings output, ``i``
the output of block ``i``, ``n_layers`` the model's ``last_hidden_state``),
so the edit happens exactly where the extractor read the concept's
vectors.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from .._batching import length_batches, model_inputs
from ..models import layer_hook
from .projection import norm_matched_removal_torch, orthonormalize, project_out_torch

__all__ = ["splice_logits", "splice_projection"]

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


def _as_noise_tensor(noise, batch: int, d: int, ref: torch.Tensor) -> torch.Tensor:
    """(B, d) Gaussian draws of the norm-matched control, one per sequence, on ref's device/dtype."""
    arr = np.asarray(noise, dtype=np.float64)
    if arr.shape != (batch, d):
        raise ValueError(f"norm_matched_noise must have shape ({batch}, {d}): one draw per sequence; got {arr.shape}.")
    return torch.from_numpy(arr).to(device=ref.device, dtype=ref.dtype)


def _edit(hidden: torch.Tensor, directions, positions, noise=None) -> torch.Tensor:
    """Project the directions out of ``hidden`` (B, T, d) at the given positions (or the norm-matched control)."""
    B, T, d = hidden.shape
    D = _as_direction_tensor(directions, B, d, hidden)
    G = None if noise is None else _as_noise_tensor(noise, B, d, hidden)
    if positions is None:  # every position of every sequence
        if D.dim() == 2 and G is None:
            return project_out_torch(hidden, D)
        return _remove(hidden, D if D.dim() == 3 else D.expand(B, *D.shape), G)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.long, device=hidden.device)
    if pos.shape != (B,):
        raise ValueError(f"positions must hold one position per sequence (shape ({B},)); got {tuple(pos.shape)}.")
    if bool((pos >= T).any()):
        raise ValueError(f"positions must be < the sequence length {T}; got max {int(pos.max())}.")
    rows = torch.nonzero(pos >= 0).flatten()  # -1 = leave this sequence alone
    out = hidden.clone()
    if rows.numel():
        picked = hidden[rows, pos[rows]]  # (R, d)
        if D.dim() == 2 and G is None:
            out[rows, pos[rows]] = project_out_torch(picked, D)
        else:
            per_row = D[rows] if D.dim() == 3 else D.expand(rows.numel(), *D.shape)
            out[rows, pos[rows]] = _remove(picked, per_row, None if G is None else G[rows])
    return out


def _remove(x: torch.Tensor, D: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
    """x (N, ..., d) minus its projection on D (N, r, d), one set per leading index.

    With ``G`` (N, d), instead the norm-matched control: each vector loses
    the norm the projection would remove, along a random direction drawn
    from ``G``'s row (:func:`~clvqlearn.evaluation.projection.norm_matched_removal_torch`).
    """
    coeff = torch.einsum("n...d,nrd->n...r", x, D)
    if G is None:
        return x - torch.einsum("n...r,nrd->n...d", coeff, D)
    noise = G.reshape(G.shape[0], *([1] * (x.dim() - 2)), G.shape[1])
    return norm_matched_removal_torch(x, torch.linalg.vector_norm(coeff, dim=-1), noise)


@contextlib.contextmanager
def splice_projection(model: nn.Module, layer: int, directions, positions=None, *, norm_matched_noise=None):
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
    info = {"calls": 0}

    def edit(hidden):
        info["calls"] += 1
        return _edit(hidden, directions, positions, norm_matched_noise)

    with layer_hook(model, layer, edit):
        yield info


@torch.no_grad()
def splice_logits(model, tokenizer, texts, *, layer=None, directions=None, positions=None,
                  norm_matched_noise=None, max_length: int = 128, batch_size: int = 32) -> np.ndarray:
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
    norm_matched_noise : array-like of shape (n, d), optional
        Run the norm-matched random control instead of the projection
        (see :func:`splice_projection`): one Gaussian draw per text.
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
    if norm_matched_noise is not None and len(norm_matched_noise) != n:
        raise ValueError(f"norm_matched_noise must have one row per text ({n}); got {len(norm_matched_noise)}.")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first.")
    device = next(model.parameters()).device
    ids = tokenizer(texts, truncation=True, max_length=int(max_length))["input_ids"]
    out = np.zeros((n, model.config.num_labels), dtype=np.float32)
    for idx in length_batches([len(x) for x in ids], batch_size, descending=True):
        kwargs = model_inputs([ids[i] for i in idx], tokenizer.pad_token_id, device)
        if layer is None:
            logits = model(**kwargs).logits
        else:
            batch_dirs = [directions[i] for i in idx]
            batch_pos = None if positions is None else np.asarray(positions)[idx]
            batch_noise = None if norm_matched_noise is None else np.asarray(norm_matched_noise)[idx]
            with splice_projection(model, layer, batch_dirs, positions=batch_pos,
                                   norm_matched_noise=batch_noise) as info:
                logits = model(**kwargs).logits
            if info["calls"] == 0:  # pragma: no cover - a model that skips its own blocks
                raise RuntimeError(f"the splice hook on layer {layer} never ran.")
        out[idx] = logits.float().cpu().numpy()
    return out
