"""Data-parallel training across processes with ``torch.distributed``, or one process.

:class:`Comm` is everything the training loop asks of a process group:
which share of a global batch this rank computes, the sums that make the
ranks agree (gradients, loss totals) and the broadcasts that start them
equal (the network, the random state).  With one process every method is
a no-op, so the loop has one code path.

The design (docs/design.md, "Data-parallel fits"): every rank plans the
same GLOBAL batches from the same random state and computes a contiguous
slice of each; each rank's loss is its slice's mean times its share of
the batch's tokens, and the gradients are summed (not averaged), so the
step is the gradient of the global batch's mean, whatever the number of
processes or how many tokens each slice holds.  The codebook's EMA
statistics are summed in its forward pass (:mod:`clvqlearn.nn.codebook`).

Examples
--------
>>> comm = Comm()  # one process
>>> comm.active, comm.is_main, comm.shard_bounds(5)
(False, True, (0, 5))
>>> Comm(rank=1, world_size=2).shard_bounds(5)
(2, 5)
"""

from __future__ import annotations

import os

import numpy as np
import torch


class Comm:
    """A process group as the training loop sees it (rank ``rank`` of ``world_size``).

    Parameters
    ----------
    rank : int, default=0
    world_size : int, default=1
        1: one process; every collective is a no-op.
    device : torch.device, optional
        Where object collectives stage their bytes (the training device
        for NCCL; None: the backend's default).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device=None):
        self.rank, self.world_size, self.device = int(rank), int(world_size), device

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and calls the loggers."""
        return self.rank == 0

    def shard_bounds(self, n_items: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous share of ``n_items`` (shares differ by at most one)."""
        return n_items * self.rank // self.world_size, n_items * (self.rank + 1) // self.world_size

    # ------------------------------------------------------------ collectives
    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it."""
        if self.active:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Overwrite ``tensor`` with rank 0's, in place; returns it."""
        if self.active:
            torch.distributed.broadcast(tensor, src=0)
        return tensor

    def broadcast_object(self, value):
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def all_objects(self, value) -> list:
        """Every rank's ``value``, in rank order."""
        if not self.active:
            return [value]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def reduce_gradients(self, params) -> None:
        """Sum every parameter's gradient over the ranks (one collective).

        A parameter keeps ``grad=None`` when no rank gave it a gradient, as
        one process would leave it (the optimiser then skips it).
        """
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        local = [p.grad is not None for p in params]
        flags = torch.tensor([float(flag) for flag in local], device=grads[0].device)
        flat = torch.cat([g.reshape(-1).to(flags.dtype) for g in grads] + [flags])
        self.sum_(flat)
        # a gradient held here is held globally: the flags are read back (a
        # host synchronisation) only by a rank that lacks one (an empty share)
        has_grad = local if all(local) else [v > 0 for v in flat[-len(params):].tolist()]
        start = 0
        for param, present in zip(params, has_grad):
            size = param.numel()
            param.grad = flat[start:start + size].view_as(param).to(param.dtype) if present else None
            start += size

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (one collective per tensor)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                self.broadcast_(tensor.data)


#: The single process.
SINGLE = Comm()


def sum_arrays(comm: Comm, arrays: list) -> list:
    """numpy arrays summed over the ranks (float64; one collective; unchanged in one process)."""
    if not comm.active:
        return arrays
    device = comm.device if comm.device is not None else "cpu"
    flat = torch.as_tensor(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]), device=device)
    values = comm.sum_(flat).cpu().numpy()
    out, start = [], 0
    for array in arrays:
        out.append(values[start:start + np.size(array)].reshape(np.shape(array)))
        start += np.size(array)
    return out


def resolve_comm(setting=False, device=None) -> Comm:
    """The process group a fit runs in, from the estimator's ``distributed`` setting.

    Parameters
    ----------
    setting : {False, "auto", True}, default=False
        ``False`` (the estimators' default): one process, even inside a
        group (every rank fits on its own: a script that fits on rank 0
        only, or a sweep with one grid point per rank, runs unchanged);
        ``"auto"``: the initialised default ``torch.distributed`` group
        when there is one (as ``torchrun`` or ``accelerate launch`` scripts
        create), else one process; ``True``: that group, which must exist.
        With a group, every rank must fit the same data and settings.
    device : torch.device, optional
        The training device (object collectives of NCCL stage bytes there).

    Returns
    -------
    Comm

    Raises
    ------
    ValueError
        ``distributed=True`` without an initialised process group.

    Examples
    --------
    >>> resolve_comm("auto").active, resolve_comm(False).active  # no process group here
    (False, False)
    """
    if setting is False:
        return SINGLE
    available = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not available:
        if setting is True:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group: launch the script with "
                "torchrun --nproc_per_node=N (or accelerate launch) and call "
                "torch.distributed.init_process_group() before fit; or use distributed='auto' (data-parallel "
                "only inside a process group) or False (one process)."
            )
        return SINGLE
    staging = device if device is not None and torch.device(device).type == "cuda" else None
    return Comm(torch.distributed.get_rank(), torch.distributed.get_world_size(), staging)


def rank_device(device: torch.device) -> torch.device:
    """This rank's CUDA device for a device without an index (``"cuda"``, or ``"auto"`` resolved to it).

    ``torchrun`` sets ``LOCAL_RANK``: rank ``r`` of a node takes GPU
    ``r % device_count``; without it, the current CUDA device.  Other
    devices are returned unchanged.
    """
    if device.type != "cuda" or device.index is not None:
        return device
    local = os.environ.get("LOCAL_RANK")
    if local is not None and local.isdigit():
        return torch.device("cuda", int(local) % max(torch.cuda.device_count(), 1))
    return torch.device("cuda", torch.cuda.current_device())
