"""Data-parallel fits (issue 26, item 1): 2 gloo processes under torchrun equal one process.

``distributed_cases.py`` runs under ``torchrun --standalone
--nproc_per_node=2`` on the CPU (gloo, loopback only): CrossLayerVQ on
documents of several lengths (a batch whose last share is empty, sampling
among the top 3 codes, dead-code replacement), SingleLayerVQ on a plain
array, a TopK SAE with the AuxK loss on token batches, CrossLayerVQ
streamed from a store over several shuffle buffers, and a fit that writes
checkpoints.  Each must equal the one-process fit with the same global
batch, to float tolerance.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_cases import BUFFER_MB, data, estimator, fitted_arrays, pairs
from lazy_store import write_store

from clvqlearn.concepts._data import BUFFER_ENV
from clvqlearn.concepts._distributed import Comm, resolve_comm
from clvqlearn.concepts._training import ArrayDocuments, TrainConfig, batch_share
from clvqlearn.nn.codebook import EMACodebook, sample_codes

CASES = Path(__file__).with_name("distributed_cases.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run every case on 2 gloo processes; the folder holds rank 0's fitted arrays and each rank's report."""
    out = tmp_path_factory.mktemp("distributed")
    write_store(out / "store", pairs(n_docs=600, seed=5))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(CASES),
               str(out), str(out / "store")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return out, reports


def _compared(name: str, array: np.ndarray) -> np.ndarray:
    """What is compared of a fitted array.

    The key projection's bias of an attention block gets a gradient that
    is zero in exact arithmetic (softmax ignores a shift shared by all
    keys); Adam scales its float noise, which differs with the summation
    order, up to full steps.  It does not change any output, so those rows
    are left out.
    """
    if name.endswith("in_proj_bias"):
        third = array.size // 3
        return np.concatenate([array[:third], array[2 * third:]])
    return array


@pytest.mark.parametrize("case", ["vq", "single", "sae", "store", "checkpoint"])
def test_two_processes_fit_what_one_process_fits(case, two_processes, monkeypatch):
    out, _ = two_processes
    monkeypatch.setenv(BUFFER_ENV, BUFFER_MB)
    X = data(case, out / "store")
    one = estimator(case).fit(X)
    reference, distributed = fitted_arrays(one), np.load(out / f"{case}.npz")
    assert set(distributed.files) == set(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(_compared(name, distributed[name]), _compared(name, value), rtol=1e-4, atol=1e-5,
                                   err_msg=f"{case}: {name}")
    assert len(reference["loss_curve_"]) >= 2  # trained several epochs


def test_each_rank_reads_its_share_of_a_store(two_processes, monkeypatch):
    out, reports = two_processes
    monkeypatch.setenv(BUFFER_ENV, BUFFER_MB)
    store = data("store", out / "store")
    estimator("store").fit(store)
    alone = sum(store.reads)
    shares = [report["store"]["rows_read"] for report in reports]
    # both ranks read the initialisation sample and the held-out documents; the
    # training epochs and the statistics pass are split between them
    assert all(rows < 0.75 * alone for rows in shares), (shares, alone)
    assert sum(shares) > alone


def test_only_rank_0_calls_the_callbacks_and_writes_checkpoints(two_processes):
    out, reports = two_processes
    assert reports[0]["vq"]["epochs"] == [1, 2]
    assert reports[0]["vq"]["steps"] and all(step % 4 == 0 for step in reports[0]["vq"]["steps"])
    assert reports[1]["vq"] == {**reports[1]["vq"], "steps": [], "epochs": []}
    (folder,) = (out / "checkpoint").iterdir()  # the fit's own folder, named after its fingerprint
    files = sorted(p.name for p in folder.iterdir())
    assert files[0] == "checkpoint.json" and len(files) == 2 and files[1].startswith("state-")
    assert json.loads((folder / "checkpoint.json").read_text())["state"]["finished"] is True


def test_by_default_a_rank_fits_on_its_own_in_a_process_group(two_processes):
    """``if rank == 0: est.fit(X)`` in a torchrun script neither hangs nor changes (the default distributed=False)."""
    _, reports = two_processes
    reference = estimator("sae").fit(pairs()).loss_curve_
    np.testing.assert_allclose(reports[0]["alone"], reference, rtol=1e-6)
    assert reports[1]["alone"] == []


@contextlib.contextmanager
def one_process_group(folder: Path):
    """An initialised gloo group of one process that claims 2 ranks, and collectives that fail if called."""
    dist = torch.distributed
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=0, world_size=1)

    def collective(*args, **kwargs):
        raise RuntimeError("a collective was called")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dist, "get_world_size", lambda *args, **kwargs: 2)
        for name in ("all_reduce", "broadcast", "broadcast_object_list", "all_gather_object"):
            patch.setattr(dist, name, collective)
        try:
            yield
        finally:
            patch.undo()
            dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_the_default_fit_inside_a_process_group_is_a_plain_fit(tmp_path):
    """A script inside a group (torchrun, accelerate) fits as before unless it opts in."""
    plain = fitted_arrays(estimator("vq").fit(pairs()))
    with one_process_group(tmp_path):
        assert torch.distributed.is_initialized()
        inside = estimator("vq").fit(pairs())
        assert inside.distributed is False and not resolve_comm(False).active
        assert resolve_comm("auto").world_size == 2
        with pytest.raises(RuntimeError, match="a collective was called"):  # opting in does use the group
            estimator("vq", distributed="auto").fit(pairs())
    for name, value in plain.items():
        np.testing.assert_array_equal(fitted_arrays(inside)[name], value, err_msg=name)


def test_ranks_with_other_data_all_refuse_to_fit(two_processes):
    _, reports = two_processes
    for report in reports:
        assert "got other data or settings than rank 0" in report["mismatch"]


def test_distributed_true_needs_a_process_group():
    assert not resolve_comm("auto").active and not resolve_comm(False).active
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        resolve_comm(True)
    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="torchrun"):
        estimator("sae", distributed=True).fit(X)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_the_shares_of_a_batch_tile_it_in_order(world_size):
    lengths = np.random.default_rng(world_size).integers(1, 9, size=20)
    index = np.array([3, 11, 0, 7, 19, 4, 8])
    for unit in ("documents", "tokens"):
        shares = [batch_share(index, unit, lengths, Comm(rank, world_size)) for rank in range(world_size)]
        assert np.array_equal(np.concatenate([s[0] for s in shares]), index)
        sizes = lengths[index] if unit == "documents" else np.ones(index.size, dtype=int)
        starts = np.concatenate([[0], np.cumsum([sizes[np.isin(index, s[0])].sum() for s in shares])[:-1]])
        assert [s[1] for s in shares] == starts.tolist()
        assert {s[2] for s in shares} == {int(sizes.sum())}


def test_a_share_draws_the_sampling_noise_of_the_whole_batch():
    distances = torch.rand(11, 6, generator=torch.Generator().manual_seed(0)) * 4
    whole = sample_codes(distances, 3, 1.0, torch.Generator().manual_seed(1))
    parts = [sample_codes(distances[a:b], 3, 1.0, torch.Generator().manual_seed(1), rows=(a, 11))
             for a, b in ((0, 4), (4, 4), (4, 11))]
    assert torch.equal(torch.cat(parts), whole)


def test_an_idle_codebook_draws_what_a_working_one_draws():
    """A rank with an empty share keeps its generator in step with the others."""
    busy, idle = EMACodebook(4, 2, top_k=2), EMACodebook(4, 2, top_k=2)
    for book in (busy, idle):
        book.initialize(torch.eye(4, 2))
        book.generator = torch.Generator().manual_seed(3)
        book.train()
    busy(torch.randn(5, 2))
    idle.idle_step(5)
    assert torch.equal(busy.generator.get_state(), idle.generator.get_state())
    assert torch.equal(idle.cluster_size, torch.ones(4) * 0.99)  # an update with no rows of its own


def test_batches_of_one_process_are_whole():
    x = np.zeros((9, 2), dtype=np.float32)
    part = ArrayDocuments(x, x, np.arange(10)).part(np.arange(9))
    batches = list(part.batches(TrainConfig(batch_size=4), np.random.RandomState(0), True, torch.device("cpu")))
    assert [b.global_rows for b in batches] == [None] * 3 and sorted(b.total_rows for b in batches) == [1, 4, 4]
