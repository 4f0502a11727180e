"""Streaming fits in bounded memory: peak RSS against the size of the store.

Builds two SYNTHETIC activation stores (384 + 384 float32 features per
token, documents of 20-128 tokens; low = clustered vectors plus noise,
high = tanh of a fixed linear map of low) of 1x and 4x a memory cap, then
fits CrossLayerVQ (k=64, MLP decoder, 1 epoch) and KMeansConcepts (k=64,
1 epoch of MiniBatchKMeans) on each in a child process whose resident set
is capped (a watchdog kills the child above the cap; RLIMIT_AS, the
address space, is capped too, below the larger store's size), and
reports the child's peak RSS (``ru_maxrss``).

The store is a folder of ``low.npy`` / ``high.npy`` / ``offsets.npy`` read
through :class:`FileStore`, a lazy view that reads rows with plain file
reads (no memory map, so the page cache is not counted in the RSS); it
implements the protocol the estimators stream from (``offsets``,
``take(docs)``, ``layers``, ``model_name``).

Usage::

    python benchmarks/bench_streaming.py --scratch /work/scratch/streaming \\
        --cap-mb 768 --out benchmarks/results/streaming/streaming.json

The stores are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 384
DTYPE = np.float32


class FileStore:
    """Lazy view of a store folder: rows are read with ``np.fromfile`` (no mmap)."""

    def __init__(self, path):
        self.path = Path(path)
        self.offsets = np.load(self.path / "offsets.npy")
        meta = json.loads((self.path / "meta.json").read_text())
        self.layers, self.model_name = tuple(meta["layers"]), meta["model_name"]
        self._header = {name: _header_size(self.path / f"{name}.npy") for name in ("low", "high")}

    def __len__(self):
        return self.offsets.size - 1

    def __reduce__(self):
        return (FileStore, (str(self.path),))

    def _rows(self, name, start, stop):
        return np.fromfile(self.path / f"{name}.npy", dtype=DTYPE, count=(stop - start) * D,
                           offset=self._header[name] + start * D * 4).reshape(stop - start, D)

    def take(self, docs):
        from clvqlearn import LayerPairs

        docs = np.asarray(docs, dtype=np.int64)
        starts, stops = self.offsets[docs], self.offsets[docs + 1]
        # contiguous runs of documents are read with one call each
        breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
        runs = zip(np.split(starts, breaks), np.split(stops, breaks))
        low, high = [], []
        for run_starts, run_stops in runs:
            if run_starts.size:
                low.append(self._rows("low", run_starts[0], run_stops[-1]))
                high.append(self._rows("high", run_starts[0], run_stops[-1]))
        empty = np.zeros((0, D), DTYPE)
        return LayerPairs(low=np.concatenate(low) if low else empty, high=np.concatenate(high) if high else empty,
                          offsets=np.concatenate([[0], np.cumsum(stops - starts)]), layers=self.layers,
                          model_name=self.model_name)


def _header_size(file: Path) -> int:
    with open(file, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        return fh.tell()


def build_store(path: Path, n_bytes: int, seed: int = 0) -> dict:
    """Write a synthetic store of about ``n_bytes`` of activations (both layers)."""
    rng = np.random.default_rng(seed)
    n_tokens = n_bytes // (2 * D * 4)
    lengths = rng.integers(20, 129, size=n_tokens // 20)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_tokens))]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_tokens = int(offsets[-1])
    path.mkdir(parents=True, exist_ok=True)
    centers = np.random.default_rng(1).normal(size=(256, D)).astype(DTYPE)
    mixing = (np.random.default_rng(2).normal(size=(D, D)) / np.sqrt(D)).astype(DTYPE)
    low = np.lib.format.open_memmap(path / "low.npy", mode="w+", dtype=DTYPE, shape=(n_tokens, D))
    high = np.lib.format.open_memmap(path / "high.npy", mode="w+", dtype=DTYPE, shape=(n_tokens, D))
    for start in range(0, n_tokens, 65536):
        stop = min(start + 65536, n_tokens)
        block = centers[rng.integers(0, 256, size=stop - start)] + 0.5 * rng.standard_normal((stop - start, D), DTYPE)
        low[start:stop] = block
        high[start:stop] = np.tanh(block @ mixing)
    low.flush(), high.flush()
    del low, high
    np.save(path / "offsets.npy", offsets)
    (path / "meta.json").write_text(json.dumps({"layers": [4, 6], "model_name": "synthetic"}))
    return {"n_tokens": n_tokens, "n_docs": int(lengths.size), "bytes": n_tokens * 2 * D * 4}


def child(store: str, estimator: str) -> None:
    """Fit one estimator on one store (runs in the capped child process)."""
    from clvqlearn import CrossLayerVQ
    from clvqlearn.concepts.kmeans import KMeansConcepts

    sys.path.insert(0, str(Path(__file__).parent))
    view = FileStore(store)
    if estimator == "CrossLayerVQ":
        est = CrossLayerVQ(k=64, decoder="mlp", decoder_hidden=256, max_epochs=1, batch_size=64, device="cpu",
                           random_state=0)
    else:
        est = KMeansConcepts(k=64, algorithm="minibatch", max_iter=1, batch_size=4096, random_state=0)
    start = time.perf_counter()
    est.fit(view)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak, "n_iter": int(est.n_iter_),
                      "perplexity_or_usage": float((est.usage_ > 0).sum())}))


def run_capped(store: Path, estimator: str, cap_bytes: int, as_bytes: int, buffer_mb: int,
               mmap_threshold: int) -> dict:
    """Run :func:`child` under RLIMIT_AS and an RSS watchdog; return its report."""
    import psutil

    env = {**os.environ, "CLVQLEARN_STREAM_BUFFER_MB": str(buffer_mb), "OMP_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2"}
    if mmap_threshold:  # glibc: large blocks from mmap, returned to the system when freed
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))

    proc = subprocess.Popen([sys.executable, __file__, "--child", str(store), estimator], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    watched, over = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            over = max(over, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if over > cap_bytes:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"failed": True, "returncode": proc.returncode, "watchdog_peak_rss": over, "stderr": err[-2000:]}
    report = json.loads(out.strip().splitlines()[-1])
    report["watchdog_peak_rss_bytes"] = over
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("STORE", "ESTIMATOR"), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="/work/scratch/streaming")
    parser.add_argument("--cap-mb", type=int, default=768, help="resident-set cap of the fitting process")
    parser.add_argument("--as-mb", type=int, default=2048, help="address-space cap (RLIMIT_AS) of the process")
    parser.add_argument("--buffer-mb", type=int, default=64, help="CLVQLEARN_STREAM_BUFFER_MB of the fits")
    parser.add_argument("--sizes", default="1,4", help="store sizes in multiples of the cap")
    parser.add_argument("--estimators", default="KMeansConcepts,CrossLayerVQ")
    parser.add_argument("--out", default="benchmarks/results/streaming/streaming.json")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=1048576,
                        help="glibc MALLOC_MMAP_THRESHOLD_ of the child (0 = glibc's dynamic default, under which "
                             "heap fragmentation grows the RSS of long torch fits)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    cap, scratch = args.cap_mb * 2**20, Path(args.scratch)
    results = []
    try:
        for factor in [float(v) for v in args.sizes.split(",")]:
            store = scratch / f"store-{factor:g}x"
            info = build_store(store, int(factor * cap))
            for estimator in args.estimators.split(","):
                report = run_capped(store, estimator, cap, args.as_mb * 2**20, args.buffer_mb,
                                    args.malloc_mmap_threshold)
                results.append({"estimator": estimator, "store_factor_of_cap": factor, **info, **report})
                print(json.dumps(results[-1]), flush=True)
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "data": "SYNTHETIC activations: 384 + 384 float32 features per token, documents of 20-128 tokens",
        "cap_rss_bytes": cap, "rlimit_as_bytes": args.as_mb * 2**20, "buffer_mb": args.buffer_mb,
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
