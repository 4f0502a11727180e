"""Golden values of the default fit path: a refactor of the training loop must not change a fit.

CrossLayerVQ (mlp decoder) and SparseAutoencoder (``dead_latents="resample"``)
are fitted with fixed random states, in memory and streamed from a small
sharded store over several shuffle buffers.  Their learning curves and
checksums of ``components_`` and ``usage_`` must equal the values recorded
from the code at commit 4cd524d (before the training loop was split into
``_Run`` / ``_StepHook`` / ``_Totals`` and gained checkpoints, callbacks and
data-parallel fits): the working tree gave bit-identical values then.

The tolerance (rtol 1e-5) absorbs BLAS and summation-order differences
between CPUs of one kind, not a changed batch order, initialisation or loss.
To record new values after an intended change of the fit, run this file as
a script and paste its output into ``GOLDEN``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from clvqlearn import CrossLayerVQ, LayerPairs, SparseAutoencoder
from clvqlearn.concepts._data import BUFFER_ENV
from clvqlearn.data import StoreSpec, write_store

#: Recorded with ``PYTHONPATH=<git archive of 4cd524d> python tests/concepts/test_fit_golden.py``.
GOLDEN = {
    "vq": {"loss_curve_": [0.2771439500711377, 0.2723175906395727, 0.2718793253103892],
           "components_": [26.29467365751043, 33.85533987910933, 1.687627633975353],
           "usage_": [1.0, 0.1314813654513246, 0.4292959427207637]},
    "sae": {"loss_curve_": [5.67602522571349, 5.368492320779182, 5.093942088671728],
            "components_": [21.455319384112954, 8.130746358576111, 0.855684150605359],
            "usage_": [1.0, 0.0993671715244274, 0.4099045346062052]},
    "vq_store": {"loss_curve_": [0.27611950230091176, 0.27299937851568484, 0.27354982903504627],
                 "components_": [31.18688874039799, 39.86797230227353, -0.5263714056636672],
                 "usage_": [1.0, 0.1324496898513907, 0.46569212410501193]},
    "sae_store": {"loss_curve_": [5.550109929051892, 5.135968855900853, 4.763154591426293],
                  "components_": [16.916867168154567, 5.479006417236976, 0.01761495964213594],
                  "usage_": [0.9999999999999998, 0.09508376006060572, 0.48806682577565635]},
}
#: Shuffle buffers of 10 KiB: the streamed fits read the 60 documents in several buffers.
BUFFER_MB = "0.01"


def pairs() -> LayerPairs:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 12, size=60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    low = rng.normal(size=(offsets[-1], 8)).astype(np.float32)
    high = np.tanh(low @ rng.normal(size=(8, 6)) / np.sqrt(8)).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=offsets, layers=(1, 2), model_name="toy")


def store(folder):
    """``pairs()`` as a sharded store of 9 shards."""
    data = pairs()
    spec = StoreSpec("toy", (1, 2), (8, 6), n_docs=60, shard_size=7, texts_sha256="0" * 64)
    return write_store(folder, lambda start, stop: data[start:stop], spec)


def make(name: str):
    if name.startswith("vq"):
        return CrossLayerVQ(k=8, top_k=3, decoder="mlp", decoder_hidden=16, max_epochs=3, batch_size=6,
                            warmup_steps=4, random_state=0, device="cpu")
    return SparseAutoencoder(k=12, max_epochs=3, batch_size=64, dead_latents="resample", random_state=0,
                             device="cpu")


def checksum(values) -> list:
    """Three numbers that change with any value or its place: sum of |x|, of x², and a place-weighted sum."""
    a = np.asarray(values, dtype=np.float64)
    place = np.arange(a.size, dtype=np.float64).reshape(a.shape) / a.size
    return [float(np.abs(a).sum()), float((a * a).sum()), float((a * place).sum())]


def summary(model) -> dict:
    return {"loss_curve_": [float(v) for v in model.loss_curve_], "components_": checksum(model.components_),
            "usage_": checksum(model.usage_)}


def fit(name: str, folder) -> dict:
    X = store(folder / "store") if name.endswith("_store") else pairs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 3-epoch fit may warn that it did not converge
        return summary(make(name).fit(X))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_default_fit_gives_the_recorded_model(name, tmp_path, monkeypatch):
    monkeypatch.setenv(BUFFER_ENV, BUFFER_MB)
    got = fit(name, tmp_path)
    for key, expected in GOLDEN[name].items():
        scale = max(abs(v) for v in expected)
        np.testing.assert_allclose(got[key], expected, rtol=1e-5, atol=1e-7 * scale, err_msg=f"{name}: {key}")


if __name__ == "__main__":
    import os
    import sys
    import tempfile
    from pathlib import Path

    os.environ[BUFFER_ENV] = BUFFER_MB
    with tempfile.TemporaryDirectory() as folder:
        sys.stdout.write(json.dumps({name: fit(name, Path(folder) / name) for name in GOLDEN}, indent=1) + "\n")
