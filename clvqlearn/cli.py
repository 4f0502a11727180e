"""The ``clvq`` command line.

``clvq demo``
    The main job on the embedded default (see :mod:`clvqlearn.demo`).
``clvq table``
    The paper's concept-ablation comparison table
    (see :mod:`clvqlearn.evaluation.comparison`).
``clvq judge``
    Concept browser, human study kit, LLM judge and LLM annotator
    (see :mod:`clvqlearn.judging`).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``clvq``."""
    parser = argparse.ArgumentParser(prog="clvq", description="Cross-layer concept discovery in language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="discover concepts on the packaged model and data set")
    demo.add_argument("--model", default="minilm", help="packaged name (minilm, smollm2), HF id or local folder")
    demo.add_argument("--dataset", default="bbc_news", help="bbc_news (packaged), ag_news, jigsaw, eraser_movie, movie_reviews")
    demo.add_argument("--layers", type=int, nargs=2, default=(4, 6), metavar=("LOW", "HIGH"))
    demo.add_argument("--n-texts", type=_at_least(2), default=400)
    demo.add_argument("--k", type=_at_least(1), default=50, help="number of concepts")
    demo.add_argument("--top-k", type=_at_least(1), default=None,
                      help="CrossLayerVQ samples among the top-k nearest codes while training "
                           "(default: min(5, k)); at most --k")
    demo.add_argument("--max-length", type=_at_least(2), default=128)
    demo.add_argument("--max-epochs", type=_at_least(1), default=30)
    demo.add_argument("--decoder", default="mlp", choices=["mlp", "transformer", "transformer-codes"],
                      help="CrossLayerVQ decoder: 'mlp' (per token, learns in minutes on a CPU) or the "
                           "reference 'transformer' (needs many more epochs)")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--output", default="clvq_output")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    judge = sub.add_parser("judge", help="concept browser, study kit, LLM judge and LLM annotator (axes 2 and 3)")
    judge.add_argument("--out", default="clvq_judges", help="output folder (an interrupted run resumes in it)")
    judge.add_argument("--dataset", default="eraser_movie", choices=["eraser_movie", "jigsaw"])
    judge.add_argument("--n-sentences", type=int, default=100)
    judge.add_argument("--k", type=int, default=400)
    judge.add_argument("--concept-epochs", type=int, default=10)
    judge.add_argument("--n-fit", type=int, default=1000, help="unlabelled sentences the concepts are fitted on")
    judge.add_argument("--judge-model", default="smollm2",
                       help="local HF chat model (default: packaged SmolLM2-135M-Instruct) or, with --base-url, "
                            "the model name at an OpenAI-compatible endpoint")
    judge.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    judge.add_argument("--timeout", type=float, default=60.0)
    judge.add_argument("--no-llm", action="store_true", help="write only browser.html and the study kit")
    judge.add_argument("--device", default="auto")
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--quiet", action="store_true")
    from .evaluation.comparison import build_parser as build_table_parser

    build_table_parser(sub.add_parser("table", help="concept-ablation comparison table (evaluation axis 1)"))
    return parser


def main(argv=None) -> int:
    """Entry point of the ``clvq`` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["table"]:
        return _table(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "judge":
        return _judge(args, argv)
    if args.command == "demo":
        from .demo import run_demo

        if args.top_k is not None and args.top_k > args.k:
            parser.error(f"--top-k {args.top_k} cannot exceed --k {args.k}")
        try:
            run_demo(model=args.model, dataset=args.dataset, layers=tuple(args.layers), n_texts=args.n_texts,
                     k=args.k, top_k=args.top_k, max_length=args.max_length, max_epochs=args.max_epochs,
                     decoder=args.decoder, output=args.output, random_state=args.seed,
                     verbose=not args.quiet, device=args.device)
        except (OSError, ValueError, ImportError) as exc:
            print(f"clvq: error: {exc}", file=sys.stderr)
            return 2
    return 0


def _table(argv: list) -> int:
    """``clvq table``: check the output folder and ``--k`` first, then run the comparison."""
    from .demo import writable_folder
    from .evaluation.comparison import build_parser as build_table_parser
    from .evaluation.comparison import main as table_main

    args = build_table_parser().parse_args(argv)
    try:
        if args.k < 5:  # the comparison's CrossLayerVQ samples among 5 nearest codes
            raise ValueError(f"--k {args.k}: the comparison table needs --k >= 5 (its VQ estimators sample "
                             "among the 5 nearest codes).")
        writable_folder(args.out)
    except (OSError, ValueError) as exc:
        print(f"clvq table: error: {exc}", file=sys.stderr)
        return 2
    return table_main(argv)


def _at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _judge(args, argv) -> int:
    import shlex

    from .evaluation.llm import HFChatBackend, OpenAIBackend
    from .judging import run_judging

    backend = (OpenAIBackend(args.judge_model, base_url=args.base_url, timeout=args.timeout) if args.base_url
               else HFChatBackend(args.judge_model, device="cpu" if args.device == "auto" else args.device))
    try:
        result = run_judging(args.out, dataset=args.dataset, n_sentences=args.n_sentences, k=args.k,
                             concept_epochs=args.concept_epochs, n_fit=args.n_fit, backend=backend,
                             llm=not args.no_llm, seed=args.seed,
                             device=args.device, command="clvq " + shlex.join(argv),
                             log=None if args.quiet else (lambda m: print(f"[judge] {m}", flush=True)))
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"clvq: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/ (browser.html, study.html, study_key.json, summary.json"
          f"{'' if args.no_llm else ', report.md'}) in {result['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
