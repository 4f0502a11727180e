"""Why the extractor's two CPU measures are what they are: the Linear kernels and the token cap per batch.

Two measurements, in one process, with torch's default threads:

1. ``kernels``: GFLOP/s of one float32 Linear on the shapes of MiniLM
   (384 <-> 1536) and SmolLM2 (576 <-> 1536), for 512 input rows, through
   PyTorch's default CPU kernel (MKL sgemm), oneDNN with the weight packed
   once (``torch.ops.mkldnn._linear_pointwise``, what ``clvqlearn._onednn``
   uses) and the public ``torch.utils.mkldnn.MkldnnLinear`` (which converts
   every input and output); the best of ``--repeats`` timings of 30 calls.
2. ``batch_tokens``: seconds for ``LayerPairExtractor(model).transform``
   over ``--n-texts`` AG News test texts and half as many Jigsaw dev texts,
   for ``max_batch_tokens`` in 256, 512, 1024, 2048 and None (no cap: 32
   documents of any length), the defaults otherwise; the settings take turns
   inside each repeat, and the best of ``--repeats`` is kept, so a busy
   neighbour slows all of them alike.

Results go to ``benchmarks/results/cpu_kernels/`` (``kernels.csv``,
``batch_tokens.csv`` and ``README.md`` with the command and the machine's
load).

Usage::

    CLVQLEARN_DATA=/path/to/data python benchmarks/bench_cpu_kernels.py
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "cpu_kernels"
SHAPES = {"minilm": [(384, 384), (384, 1536), (1536, 384)], "smollm2": [(576, 576), (576, 1536), (1536, 576)]}
LAYERS = {"minilm": (4, 6), "smollm2": (16, 20)}
CAPS = (256, 512, 1024, 2048, None)


def best_seconds(fn, repeats: int, calls: int = 30) -> float:
    """Best of ``repeats`` mean times of ``calls`` calls (after 5 warm-up calls)."""
    import torch

    with torch.inference_mode():
        for _ in range(5):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) / calls)
    return min(times)


def kernels(repeats: int, rows: int = 512) -> pd.DataFrame:
    """GFLOP/s of the three float32 Linear kernels on the packaged models' shapes."""
    import torch
    from torch.utils.mkldnn import MkldnnLinear

    torch.manual_seed(0)
    out = []
    for model, shapes in SHAPES.items():
        for d_in, d_out in shapes:
            x = torch.randn(1, rows, d_in)
            linear = torch.nn.Linear(d_in, d_out).eval()
            packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
            public = MkldnnLinear(linear, torch.float32)
            bias = linear.bias.detach()
            flops = 2 * rows * d_in * d_out
            runs = {
                "pytorch (MKL sgemm)": lambda: linear(x),
                "oneDNN packed (_linear_pointwise)": lambda: torch.ops.mkldnn._linear_pointwise(
                    x, packed, bias, "none", [], ""),
                "oneDNN MkldnnLinear": lambda: public(x),
            }
            for kernel, fn in runs.items():
                seconds = best_seconds(fn, repeats)
                out.append({"model": model, "rows": rows, "d_in": d_in, "d_out": d_out, "kernel": kernel,
                            "gflops": round(flops / seconds / 1e9, 1)})
    return pd.DataFrame(out)


def batch_tokens(n_texts: int, repeats: int) -> pd.DataFrame:
    """Extraction seconds per ``max_batch_tokens`` for both models on AG News and Jigsaw texts."""
    from clvqlearn.datasets import load_ag_news, load_jigsaw
    from clvqlearn.extraction import LayerPairExtractor

    corpora = {"ag_news": list(load_ag_news("test").texts)[:n_texts],
               "jigsaw": list(load_jigsaw("dev").texts)[: n_texts // 2]}
    out = []
    for model, layers in LAYERS.items():
        for corpus, texts in corpora.items():
            extractors = {cap: LayerPairExtractor(model, layers=layers, device="cpu", max_batch_tokens=cap).fit(texts)
                          for cap in CAPS}
            for ext in extractors.values():
                ext.transform(texts[:8])  # warm-up (and the packing of the weights)
            best = dict.fromkeys(CAPS, float("inf"))
            for _ in range(repeats):
                for cap, ext in extractors.items():
                    start = time.perf_counter()
                    n_tokens = ext.transform(texts).n_tokens
                    best[cap] = min(best[cap], time.perf_counter() - start)
            fastest = min(best.values())
            out += [{"model": model, "corpus": corpus, "n_texts": len(texts), "n_tokens": n_tokens,
                     "max_batch_tokens": "None" if cap is None else cap, "seconds": round(seconds, 3),
                     "vs_fastest": round(seconds / fastest, 3)} for cap, seconds in best.items()]
    return pd.DataFrame(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=300, help="AG News test texts (Jigsaw: half as many)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    load = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    kernel_table = kernels(args.repeats)
    print(kernel_table.to_string(index=False), flush=True)
    cap_table = batch_tokens(args.n_texts, args.repeats)
    print(cap_table.to_string(index=False), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    kernel_table.to_csv(args.out / "kernels.csv", index=False)
    cap_table.to_csv(args.out / "batch_tokens.csv", index=False)
    command = "python benchmarks/bench_cpu_kernels.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    (args.out / "README.md").write_text(
        f"Command: `{command}`\n\ntorch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs; load average at the start {load}, after "
        f"{[round(v, 2) for v in os.getloadavg()]}; {(time.perf_counter() - start) / 60:.1f} min.\n\n"
        "## Linear kernels (GFLOP/s, float32, 512 rows)\n\n"
        + kernel_table.pivot_table(index=["model", "d_in", "d_out"], columns="kernel", values="gflops")
        .to_markdown(floatfmt=".0f")
        + "\n\n## Extraction seconds per max_batch_tokens (best of the repeats; vs_fastest in brackets)\n\n"
        + cap_table.assign(cell=lambda t: t["seconds"].map("{:.2f}".format) + " ("
                           + t["vs_fastest"].map("{:.2f}".format) + ")")
        .pivot(index=["model", "corpus"], columns="max_batch_tokens", values="cell").to_markdown()
        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
