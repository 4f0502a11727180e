"""Write and read throughput of the sharded store against LayerPairs.save / load.

MiniLM layers (4, 6) over the first ``--n-texts`` BBC News articles
(``max_length`` 128) are extracted once in memory; then, timed:

* ``save``: ``LayerPairs.save(folder)`` (``.npy`` files) and ``load`` (memory
  mapped) followed by reading every row (``np.asarray``);
* ``store-float32`` / ``store-bfloat16``: the same activations written as a
  sharded store (``write_store`` with ``shard_size`` documents per shard,
  the shards' activations already computed, so the model's time is left
  out) and read back by ``LayerPairs.open`` + ``np.asarray``, by
  ``iter_shards()`` and by ``iter_documents`` in shuffled order;
* ``extract-store``: ``LayerPairExtractor(store=...)`` end to end, against
  the in-memory ``transform`` (the model dominates both).

Reads come right after writes, so the files are in the page cache: these
are memory-bandwidth figures, not disk figures.  Store writes include an
``fsync`` per file (``save`` does none).  Every figure is the best of
``--repeats`` runs.  The JSON result holds the
command line that produced it.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_store.py                   # 300 texts
    python benchmarks/bench_store.py --n-texts 100 --shard-size 25      # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "store"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def best_of(repeats: int, fn, before=None) -> float:
    """Smallest wall time of ``repeats`` calls (``before`` runs untimed ahead of each)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        times.append(timed(fn)[1])
    return min(times)


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def bench_formats(pairs, texts, args, work: Path) -> list[dict]:
    """Time save/load against store write/read for the extracted pairs."""
    from clvqlearn import LayerPairs
    from clvqlearn.data import StoreSpec, texts_fingerprint, write_store

    mib = (pairs.low.nbytes + pairs.high.nbytes) / 2**20
    rows, r = [], args.repeats
    write_s = best_of(r, lambda: pairs.save(work / "saved"), lambda: shutil.rmtree(work / "saved", True))
    read_s = best_of(r, lambda: np.asarray(LayerPairs.load(work / "saved")))
    rows.append({"format": "save/load (.npy)", "write_s": write_s, "read_all_s": read_s,
                 "disk_mib": folder_mib(work / "saved")})
    for dtype in ("float32", "bfloat16"):
        spec = StoreSpec(pairs.model_name, pairs.layers, (pairs.low.shape[1], pairs.high.shape[1]), len(pairs),
                         args.shard_size, texts_fingerprint(texts), dtype=dtype)
        folder = work / f"store-{dtype}"
        write_s = best_of(r, lambda: write_store(folder, lambda a, b: pairs[a:b], spec, rank=0, world_size=1),
                          lambda: shutil.rmtree(folder, True))
        open_s = best_of(r, lambda: LayerPairs.open(folder))
        store = LayerPairs.open(folder)
        read_s = best_of(r, lambda: np.asarray(store))
        shards_s = best_of(r, lambda: sum(p.n_tokens for p in store.iter_shards()))
        shuffled_s = best_of(r, lambda: sum(p.n_tokens for p in store.iter_documents(32, shuffle=True,
                                                                                      random_state=0)))
        rows.append({"format": f"store {dtype}", "write_s": write_s, "open_s": open_s, "read_all_s": read_s,
                     "iter_shards_s": shards_s, "iter_documents_shuffled_s": shuffled_s,
                     "disk_mib": folder_mib(folder), "n_shards": store.n_shards})
    for row in rows:
        for key in [k for k in row if k.endswith("_s")]:
            if key != "open_s":  # opening reads only headers and offsets: no throughput
                row[key[:-2] + "_mib_per_s"] = round(mib / row[key], 1) if row[key] > 0 else None
            row[key] = round(row[key], 4)
        row["disk_mib"] = round(row["disk_mib"], 2)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best is kept")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_store.json")
    args = parser.parse_args(argv)

    import torch

    from clvqlearn import LayerPairExtractor
    from clvqlearn.datasets import load_bbc_news

    texts = list(load_bbc_news().texts[: args.n_texts])
    ext = LayerPairExtractor("minilm", layers=(4, 6), max_length=args.max_length, device="cpu").fit(texts[:2])
    pairs, extract_s = timed(lambda: ext.transform(texts))
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        rows = bench_formats(pairs, texts, args, work)
        ext.set_params(store=work / "extracted", shard_size=args.shard_size)
        store, store_s = timed(lambda: ext.transform(texts))
        assert np.array_equal(np.asarray(store.offsets), pairs.offsets)
        extraction = {"in_memory_s": round(extract_s, 2), "to_store_s": round(store_s, 2),
                      "max_abs_difference": float(np.abs(np.asarray(store) - np.asarray(pairs)).max())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(["python", "benchmarks/bench_store.py", *sys.argv[1:]]),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "numpy": np.__version__, "cpu_count": os.cpu_count(),
                        "load_average": [round(v, 2) for v in os.getloadavg()]},
        "data": {"model": "minilm", "layers": [4, 6], "n_texts": len(texts), "max_length": args.max_length,
                 "n_tokens": pairs.n_tokens, "activation_mib_float32": round(
                     (pairs.low.nbytes + pairs.high.nbytes) / 2**20, 2), "shard_size": args.shard_size},
        "formats": rows,
        "extraction": extraction,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for row in rows:
        print({k: v for k, v in row.items() if not k.endswith("_mib_per_s")})
    print(extraction)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
