"""Where CrossLayerVQ's resident memory goes during a fit, stage by stage (issue 10).

Fits MiniLM 4 -> 6 (the cached training documents of ``bench_learns.py``)
for ``--epochs`` epochs and records the process's peak and current resident
set before and after each stage of the fit: the start (``_initial_network``,
and inside it the MLP encoder's regression fit), then the main training.
The last stage scores the training documents (``score``: the held-out
FVE's memory).  Each configuration runs in its own process, so the
environment variable ``MALLOC_MMAP_THRESHOLD_`` (glibc: a fixed threshold
above which blocks are memory-mapped, which also turns off glibc's dynamic
threshold) can be set for one of them, and the library's
``release_free_memory`` (glibc's ``malloc_trim`` after every epoch and fit)
turned off for another.

Usage::

    python benchmarks/bench_learns.py --dataset jigsaw       # builds the cache first
    python benchmarks/bench_learns_memory.py --dataset jigsaw

Writes ``benchmarks/results/learns/memory_<dataset>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "learns"
#: name: (estimator parameters, environment, release free memory after each epoch and fit)
RUNS = {
    "MLP encoder (default)": ({}, {}, True),
    "MLP encoder, free memory not released": ({}, {}, False),
    "linear encoder": ({"encoder": "linear"}, {}, True),
    "MLP encoder, MALLOC_MMAP_THRESHOLD_=4194304": ({}, {"MALLOC_MMAP_THRESHOLD_": "4194304"}, True),
}


def _mib(start: float) -> tuple[float, float, float]:
    """Peak and current resident MiB, and the seconds since ``start`` (``time.perf_counter``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    now = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return round(peak), round(now), round(time.perf_counter() - start, 1)


def fit_one(dataset: str, epochs: int, params: dict, release: bool) -> list:
    """Fit once, recording (stage, peak MiB, current MiB) around each stage, then score the training part."""
    import torch

    import clvqlearn.concepts._base as base_module
    import clvqlearn.concepts._training as training_module
    import clvqlearn.concepts.vq as vq_module
    from clvqlearn import CrossLayerVQ
    from clvqlearn.pairs import LayerPairs

    torch.set_num_threads(2)
    if not release:
        training_module.release_free_memory = base_module.release_free_memory = lambda: False
    cache = Path(os.environ.get("CLVQLEARN_CACHE", Path.home() / ".cache" / "clvqlearn")) / "bench_learns"
    train = LayerPairs.load(cache / f"{dataset}_train_2000")
    start = time.perf_counter()
    stages = [("data loaded", *_mib(start))]

    def watch(name, function):
        def wrapped(*args, **kwargs):
            stages.append((f"before {name}", *_mib(start)))
            out = function(*args, **kwargs)
            stages.append((f"after {name}", *_mib(start)))
            return out
        return wrapped

    base = vq_module._VQEstimator
    base._initial_network = watch("start (_initial_network)", base._initial_network)
    base._fit_encoder = watch("MLP encoder fit", base._fit_encoder)
    original = vq_module.train_module
    vq_module.train_module = lambda *a, **k: watch(k["config"].description, original)(*a, **k)
    vq = CrossLayerVQ(k=100, random_state=0, max_epochs=epochs, **params).fit(train)
    stages.append(("fitted", *_mib(start)))
    vq.score(train)
    stages.append(("scored on the training documents", *_mib(start)))
    return stages


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="jigsaw")
    parser.add_argument("--epochs", type=int, default=10, help="max_epochs (default: the estimator's, 10)")
    parser.add_argument("--fit-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_one:
        params, _, release = RUNS[args.fit_one]
        print(json.dumps(fit_one(args.dataset, args.epochs, params, release)))
        return
    lines = [f"MiniLM 4 -> 6, {args.dataset}, 2000 training documents, k = 100, {args.epochs} epochs, 2 torch "
             "threads; peak / current resident MiB of the fitting process at each stage, and the wall-clock seconds "
             "since the data were loaded (runs one after another).", "",
             "Command: `python benchmarks/bench_learns_memory.py " + shlex.join(sys.argv[1:]) + "`", ""]
    for name, (_, env, _) in RUNS.items():
        child = subprocess.run([sys.executable, __file__, "--dataset", args.dataset, "--epochs", str(args.epochs),
                                "--fit-one", name], env={**os.environ, **env}, check=True, capture_output=True,
                               text=True)
        stages = json.loads(child.stdout.strip().splitlines()[-1])
        lines += [f"## {name}", "", "| stage | peak MiB | current MiB | seconds |", "|---|---:|---:|---:|"]
        lines += [f"| {stage} | {peak} | {now} | {seconds} |" for stage, peak, now, seconds in stages] + [""]
        print(name, stages[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"memory_{args.dataset}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
