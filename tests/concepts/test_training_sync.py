"""The training loop (``concepts/_training.py``) on a GPU: no host synchronisation inside a step.

On the CPU, a profiler trace of the training epoch must hold no
``aten::_local_scalar_dense`` (the op behind ``.item()``, ``float(t)``,
``int(t)``, ``bool(t)``: a device-to-host read, a sync on a GPU) outside
the optimiser's own bookkeeping (Adam keeps its step counter as a CPU
scalar), except the one read-back of the epoch's loss.  With CUDA,
``torch.cuda.set_sync_debug_mode("error")`` turns any synchronising call
inside the steps into an error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clvqlearn.concepts._training import (
    ArrayDocuments,
    TrainConfig,
    TrainState,
    _optimizer,
    _train_epoch,
    make_batch,
)
from clvqlearn.nn.clvq import CLVQNetwork
from clvqlearn.nn.sae import SparseAutoencoderNet, auxk_loss, sae_loss

#: ``.item()``, ``float(t)``, ``int(t)`` and ``bool(t)`` all end in this op
#: (``aten::item`` and ``aten::is_nonzero`` call it), so each read counts once.
SYNC_OP = "aten::_local_scalar_dense"


def _corpus(n_docs, d=8, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    low = rng.normal(size=(offsets[-1], d)).astype(np.float32)
    high = np.tanh(low @ rng.normal(size=(d, d))).astype(np.float32)
    return low, high, offsets


def _vq_case(device):
    net = CLVQNetwork(8, 8, 6, encoder="linear", decoder="transformer-codes", decoder_layers=1, decoder_heads=2,
                      decoder_ff=16, top_k=3).to(device)
    net.codebook.initialize(torch.randn(6, 8, device=device))
    net.codebook.generator = torch.Generator(device=device).manual_seed(0)

    def loss_fn(module, batch):
        out = module(batch.source, batch.lengths, batch.max_length)
        return torch.nn.functional.mse_loss(out.prediction.float(), batch.target) + 0.1 * out.commitment

    return net, loss_fn, "documents"


def _sae_case(device):
    net = SparseAutoencoderNet(8, 8, 12, activation="topk", top_k=3).to(device)

    def loss_fn(module, batch):
        out = module(batch.source)
        loss = sae_loss(out, batch.target, 0.01)
        loss = loss + auxk_loss(module, out, batch.target, module.dead_mask(5.0), 4)
        module.update_fired(out.latents)
        return loss

    return net, loss_fn, "tokens"


def _batches(n_docs, unit, device, batch_size=4):
    low, high, offsets = _corpus(n_docs)
    part = ArrayDocuments(low, high, offsets).part(np.arange(n_docs))
    config = TrainConfig(batch_size=batch_size, batch_unit=unit)
    return list(part.batches(config, np.random.RandomState(0), True, device)), config


def _epoch(case, n_docs, device):
    net, loss_fn, unit = case(device)
    batches, config = _batches(n_docs, unit, device)
    optimizer, _, state = _optimizer(net, config, None)
    return lambda: _train_epoch(net, loss_fn, iter(batches), optimizer, config, state, None, _Result(), device)


class _Result:
    n_steps = 0


def _outside_optimizer(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return False
        parent = parent.cpu_parent
    return True


def _host_reads(run) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(1 for e in prof.events() if e.name == SYNC_OP and _outside_optimizer(e))


@pytest.mark.parametrize("case", [_vq_case, _sae_case], ids=["clvq-transformer", "sae-topk-auxk"])
def test_a_training_epoch_reads_back_from_the_device_once(case):
    cpu = torch.device("cpu")
    short, long = _host_reads(_epoch(case, 16, cpu)), _host_reads(_epoch(case, 64, cpu))
    # four times the steps, the same single read-back: the epoch's loss
    assert short == long == 1


def test_the_profiler_sees_a_per_step_read_back():
    """The check can fail: a loss read with float() every step is counted per step."""
    net, loss_fn, unit = _vq_case(torch.device("cpu"))
    batches, _ = _batches(16, unit, torch.device("cpu"))

    def run():
        for batch in batches:
            float(loss_fn(net, batch))

    assert _host_reads(run) >= len(batches)


def test_batches_carry_the_longest_document_from_the_host():
    low, high, offsets = _corpus(10)
    lengths = np.diff(offsets)
    batch = make_batch(torch.from_numpy(low), torch.from_numpy(high), offsets, lengths, np.array([2, 5]),
                       "documents", torch.device("cpu"))
    assert batch.max_length == int(lengths[[2, 5]].max())
    assert batch.n_tokens == int(lengths[[2, 5]].sum())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", [_vq_case, _sae_case], ids=["clvq-transformer", "sae-topk-auxk"])
def test_cuda_training_steps_do_not_synchronise(case):
    device = torch.device("cuda")
    net, loss_fn, unit = case(device)
    low, high, offsets = _corpus(32)
    part = ArrayDocuments(low, high, offsets).part(np.arange(32))
    config = TrainConfig(batch_size=4, batch_unit=unit)
    optimizer, _, state = _optimizer(net, config, TrainState())
    batches = part.batches(config, np.random.RandomState(0), True, device)
    _train_epoch(net, loss_fn, iter([next(batches)]), optimizer, config, state, None, _Result(), device)  # warm-up
    torch.cuda.synchronize()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:  # make_batch (pinned, non-blocking copies) runs inside the check too
            loss = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in params)
