"""The ``clvq`` parser: one subcommand per options dataclass, and the error policy."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from . import options as opts

#: subcommand -> (options dataclass, one-line help, example)
SUBCOMMANDS = {
    "extract": (opts.ExtractOptions, "texts -> token vectors of two layers (a saved LayerPairs folder), or of "
                "three or more in one pass (--layers 2,4,6: an activation store)",
                "clvq extract --dataset bbc_news --n_texts 200 --layers 4,6 --output pairs"),
    "fit": (opts.FitOptions, "fit one concept method (crosslayer, singlelayer, kmeans, sae) -> a saved model",
            "clvq fit --method crosslayer --k 50 --pairs pairs --output vq"),
    "describe": (opts.DescribeOptions, "a saved model + pairs -> concepts.csv (top tokens, examples)",
                 "clvq describe --model vq --pairs pairs --output vq_concepts"),
    "evaluate": (opts.EvaluateOptions, "concept-removal score of saved models on a labelled data set",
                 "clvq evaluate --models [vq,km] --dataset bbc_news --n_texts 100 --output removal"),
    "table": (opts.TableOptions, "the paper's concept-removal comparison table (about an hour on 2 CPU cores)",
              "clvq table --models [minilm] --datasets [ag_news] --out benchmarks/results/comparison"),
    "judge": (opts.JudgeOptions, "concept browser, human study kit, LLM judge and LLM annotator (axes 2 and 3)",
              "clvq judge --out clvq_judges --n_sentences 100 --base_url http://localhost:8000/v1"),
    "loss": (opts.LossOptions, "loss recovered on a decoder: next-token CE and KL with a layer replaced by each "
             "method's reconstruction", "clvq loss --dataset ag_news --n_eval 100 --output loss_recovered"),
    "export": (opts.ExportOptions, "a saved model -> a delphi latent cache, or a SAELens SAE (a SparseAutoencoder)",
               "clvq export --model vq --to delphi --pairs pairs --output vq_delphi"),
    "demo": (opts.DemoOptions, "the main job: all four methods on MiniLM + BBC News, compared and plotted",
             "clvq demo --output clvq_output"),
}


class _Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples."""


def _subparser(name: str) -> ArgumentParser:
    cls, summary, example = SUBCOMMANDS[name]
    doc = (cls.__doc__ or "").split("\n\n")[0].strip()
    parser = ArgumentParser(prog=f"clvq {name}", description=f"{doc}\n\n{summary}.", exit_on_error=False,
                            epilog=f"example:\n  {example}\n  clvq {name} --config config.yaml  "
                                   "(the options a run wrote next to its outputs)",
                            formatter_class=_Formatter)
    parser.add_argument("--config", action=ActionConfigFile, help="read options from a YAML or JSON file")
    parser.add_class_arguments(cls, as_group=False)
    flags = {f.name for f in fields(cls) if f.type in (bool, "bool")}
    for action in parser._actions:
        if action.dest in flags:  # `--quiet` alone means `--quiet true`, as the docs write it
            action.nargs, action.const = "?", True
    return parser


def build_parser() -> ArgumentParser:
    """The ``clvq`` argument parser (``jsonargparse``), one subcommand per options dataclass.

    Returns
    -------
    jsonargparse.ArgumentParser

    Examples
    --------
    >>> parser = build_parser()
    >>> parser.parse_args(["fit", "--method", "kmeans", "--k", "8"]).fit.k
    8
    """
    parser = ArgumentParser(prog="clvq", exit_on_error=False, formatter_class=_Formatter,
                            description="Interpretable concepts in language models (CLVQ-VAE and baselines).",
                            epilog="examples:\n" + "\n".join(f"  {ex}" for _, _, ex in SUBCOMMANDS.values()))
    commands = parser.add_subcommands(dest="command", required=True)
    for name, (_, summary, _) in SUBCOMMANDS.items():
        commands.add_subcommand(name, _subparser(name), help=summary)
    return parser


def parse_options(argv) -> tuple[str, object]:
    """``(subcommand, options dataclass)`` of a command line.

    Raises
    ------
    argparse.ArgumentError
        For an unknown subcommand or option, or a value of the wrong type.
    ValueError
        For a value the options dataclass refuses.

    Examples
    --------
    >>> parse_options(["fit", "--method", "sae", "--k", "16"])[1].method
    'sae'
    """
    check_yaml_values(argv)
    namespace = build_parser().parse_args(list(argv))
    name = namespace.command
    cls = SUBCOMMANDS[name][0]
    values = namespace[name]
    return name, cls(**{f.name: values[f.name] for f in fields(cls)})


def _run(name: str, options, argv) -> dict:
    from . import commands

    if name == "demo":
        from .demo import run_demo

        return run_demo(options)
    if name in ("table", "judge", "loss"):
        command = " ".join(["clvq", *(shlex.quote(a) for a in argv)])
        return getattr(commands, f"run_{name}")(options, command=command)
    return getattr(commands, f"run_{name}")(options)


#: Errors that are the user's input (a file, a name, a value): one line, exit status 2.
USER_ERRORS = (argparse.ArgumentError, OSError, ValueError, TypeError, ImportError, KeyError)
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130
#: Largest ``--config`` file (or YAML value) read, in bytes.
MAX_YAML_BYTES = 1 << 20
#: Most values a YAML text may expand to once its aliases (``*name``) are followed.
MAX_YAML_VALUES = 100_000


def check_yaml_values(argv) -> None:
    """Refuse a ``--config`` file or YAML value too large, or whose aliases expand it beyond reason.

    jsonargparse reads ``--config`` files and dict/list values as YAML; a
    few nested aliases (a "billion laughs") expand to billions of values and
    would hang it.  The YAML is composed (aliases stay shared nodes) and its
    expanded size counted first, which takes milliseconds.

    Parameters
    ----------
    argv : list of str

    Raises
    ------
    ValueError
        Naming the file or option.

    Examples
    --------
    >>> levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
    ...     f"&{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    >>> check_yaml_values(["fit", "--params", "[" + ", ".join(levels) + "]"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --params: the YAML expands to more than 100000 values through its aliases (*name); ...
    """
    argv = list(argv)
    for i, arg in enumerate(argv):
        option = argv[i - 1] if i and argv[i - 1].startswith("--") else "a value"
        if option == "--config" or arg.startswith("--config="):
            where = arg.partition("=")[2] if arg.startswith("--config=") else arg
            _check_yaml(_config_text(where), f"--config {where}")
        elif not arg.startswith("--"):
            _check_yaml(arg, option)


def _config_text(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        return value  # jsonargparse also reads a YAML string given in place of the file
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ValueError(f"--config {value}: {size:,} bytes; a config file holds at most {MAX_YAML_BYTES:,} bytes.")
    return path.read_text(encoding="utf-8", errors="replace")


def _check_yaml(text: str, where: str) -> None:
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{where}: {len(text):,} characters of YAML; at most {MAX_YAML_BYTES:,} are read.")
    if "*" not in text:  # no alias, nothing can expand
        return
    import yaml

    try:
        size = _expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), {}, set())
    except yaml.YAMLError:
        return  # not YAML: the parser reports it
    except RecursionError:
        raise ValueError(f"{where}: the YAML nests too deeply.") from None
    if size > MAX_YAML_VALUES:
        raise ValueError(f"{where}: the YAML expands to more than {MAX_YAML_VALUES} values through its aliases "
                         "(*name); write the values out, or use fewer aliases.")


def _expanded_size(node, memo: dict, active: set) -> float:
    """Values in ``node`` with every alias followed (shared nodes counted once each time they are used)."""
    import yaml

    if node is None or id(node) in memo:
        return 0 if node is None else memo[id(node)]
    if id(node) in active:
        return float("inf")  # a recursive alias expands without end
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    total = 1 + sum(_expanded_size(child, memo, active) for child in children)
    active.discard(id(node))
    memo[id(node)] = total
    return total


def main(argv=None) -> int:
    """Entry point of the ``clvq`` command.

    Bad input (an unknown option or data set, a missing file or data home,
    a bad layer spec, an unwritable output folder, a model of another
    width) prints ONE line ``clvq <subcommand>: error: ...`` to stderr and
    returns 2; set ``CLVQ_DEBUG=1`` to see the traceback instead.  Ctrl-C
    prints one line saying what was left of the output and returns 130.

    Parameters
    ----------
    argv : list of str, optional
        Default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on bad input, 130 when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    options = None
    try:
        name, options = parse_options(argv)
        _run(name, options, argv)
    except USER_ERRORS as exc:
        if os.environ.get("CLVQ_DEBUG"):
            raise
        print(f"clvq{' ' + name if name else ''}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("CLVQ_DEBUG"):
            raise
        print(f"clvq{' ' + name if name else ''}: interrupted; {_left_behind(name, options)}", file=sys.stderr)
        return INTERRUPTED
    return 0


def _left_behind(name, options) -> str:
    """What an interrupted run left of its output folder, in one sentence."""
    if options is None:
        return "nothing was written."
    if name == "table":
        return (f"{options.out} is incomplete (no comparison.csv); its finished units are in {options.out}/parts: "
                "add --resume true to continue.")
    if name == "judge":
        return f"{options.out} is incomplete: run the same command again to continue."
    return f"nothing was written to {options.output} (an earlier run there is left as it was)."


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    Examples
    --------
    >>> one_line(ValueError('Parser key "k":\\n  Expected an int'))
    'Parser key "k": Expected an int'
    >>> one_line(KeyError("x"))
    "'x'"
    """
    text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
