"""The fits ``test_distributed.py`` runs on 2 gloo processes (``torchrun``) and in one process.

Run as a script under ``torchrun --nproc_per_node=2`` it fits every case
in the process group and rank 0 writes each case's fitted arrays to
``OUT/<case>.npz`` (and every rank what its callback saw and how many
store rows it read).  Imported, it gives the same data and estimators to
the one-process reference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from clvqlearn import CrossLayerVQ, LayerPairs, SingleLayerVQ, SparseAutoencoder

#: 40 KiB shuffle buffers: a streamed fit of the store case runs over several buffers.
BUFFER_MB = "0.0390625"
#: 67 documents: 61 train in batches of 5, so one batch holds one document and rank 1's share is empty.
N_DOCS = 67


def pairs(n_docs=N_DOCS, seed=0, d=6) -> LayerPairs:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    centers = rng.normal(size=(10, d)) * 2
    low = centers[rng.integers(0, 10, size=offsets[-1])] + 0.3 * rng.normal(size=(offsets[-1], d))
    high = np.tanh(low @ rng.normal(size=(d, d)) / np.sqrt(d))
    return LayerPairs(low=low.astype(np.float32), high=high.astype(np.float32), offsets=offsets, layers=(1, 2),
                      model_name="synthetic")


VQ = dict(k=8, top_k=3, encoder="linear", decoder="transformer-codes", decoder_layers=1,
          decoder_heads=2, decoder_ff=16, dropout=0.0, max_epochs=2, batch_size=5, warmup_steps=3,
          dead_code_threshold=0.6, device="cpu", random_state=0)


def estimator(case: str, **params):
    """The estimator of ``case`` (``params`` added)."""
    if case in ("vq", "checkpoint", "mismatch"):
        return CrossLayerVQ(**VQ, **params)
    if case == "store":
        return CrossLayerVQ(**{**VQ, "batch_size": 16}, **params)
    if case == "single":
        return SingleLayerVQ(k=6, top_k=2, decoder="mlp", decoder_hidden=16, max_epochs=3, batch_size=7,
                             layer="high", device="cpu", random_state=1, **params)
    if case == "sae":
        return SparseAutoencoder(k=12, activation="topk", top_k=3, dead_latents="auxk", batch_size=33,
                                 max_epochs=3, learning_rate=3e-3, device="cpu", random_state=2, **params)
    raise ValueError(case)


def data(case: str, store_folder=None):
    """The input of ``case``: LayerPairs, a plain array (one token per document) or a lazy store."""
    if case == "single":
        return np.asarray(pairs(n_docs=40, seed=3).high)[:101]
    if case == "store":
        sys.path.insert(0, str(Path(__file__).parent))
        from lazy_store import NpyStore

        return NpyStore(store_folder)
    return pairs()


def fitted_arrays(model) -> dict:
    """The fitted arrays two fits are compared on."""
    if isinstance(model, SparseAutoencoder):
        names = ["components_", "encoder_weights_", "encoder_bias_", "decoder_bias_", "tokens_since_fired_",
                 "usage_", "firing_rate_"]
        out = {name: np.asarray(getattr(model, name)) for name in names}
    else:
        out = {f"net.{k}": v for k, v in model.network_state_.items()}
        out.update(usage_=model.usage_, source_means_=model.source_means_)
    out["loss_curve_"] = np.asarray(model.loss_curve_)
    out["validation_curve_"] = np.asarray(model.validation_curve_)
    return out


class StepRecord:
    """A callback that records the steps and epochs it saw."""

    log_every_n_steps = 4

    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step_end(self, step, metrics):
        self.steps.append(step)

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)


def main(out: Path, store_folder: str) -> None:
    import torch.distributed as dist

    os.environ["CLVQLEARN_STREAM_BUFFER_MB"] = BUFFER_MB
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {"mismatch": _mismatch(rank), "alone": _alone(rank)}
    for case in ("vq", "single", "sae", "store", "checkpoint"):
        record = StepRecord()
        params = {"callbacks": [record]} if case == "vq" else {}
        if case == "checkpoint":
            params = {"checkpoint_dir": str(out / "checkpoint"), "checkpoint_every": 3}
        params["distributed"] = True  # data-parallel only when asked (the default fits each rank on its own)
        X = data(case, store_folder)
        start = time.perf_counter()
        model = estimator(case, **params).fit(X)
        seen[case] = {"steps": record.steps, "epochs": record.epochs, "seconds": time.perf_counter() - start,
                      "rows_read": int(sum(X.reads)) if case == "store" else None}
        if rank == 0:
            np.savez(out / f"{case}.npz", **fitted_arrays(model))
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def _mismatch(rank: int) -> str:
    """Rank 1 gets other documents: every rank must refuse to fit (none waits for the others)."""
    try:
        estimator("mismatch", distributed="auto").fit(pairs(seed=rank))
    except ValueError as exc:
        return str(exc)
    return "fitted"


def _alone(rank: int) -> list:
    """With the default ``distributed=False`` only rank 0 fits (no rank waits for the other): its curve."""
    if rank == 0:
        return list(estimator("sae").fit(pairs()).loss_curve_)
    return []


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
