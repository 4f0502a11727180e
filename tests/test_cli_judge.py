import argparse

import pytest

from clvqlearn.cli import main
from clvqlearn.cli._main import parse_options


def test_judge_subcommand_options():
    name, options = parse_options(["judge", "--out", "x", "--base_url", "http://127.0.0.1:1/v1",
                                   "--judge_model", "m", "--n_sentences", "10"])
    assert (name, options.out, options.base_url, options.judge_model, options.n_sentences) == (
        "judge", "x", "http://127.0.0.1:1/v1", "m", 10)
    assert parse_options(["judge"])[1].dataset == "eraser_movie"


def test_judge_rejects_unknown_dataset(capsys):
    assert main(["judge", "--dataset", "imdb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clvq judge: error:") and "imdb" in err


@pytest.mark.parametrize("flag, value", [("--n_sentences", "0"), ("--timeout", "-1")])
def test_judge_rejects_bad_numbers_before_any_work(flag, value, capsys, tmp_path):
    assert main(["judge", "--out", str(tmp_path / "o"), flag, value]) == 2
    assert flag.lstrip("-") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_judge_no_llm_as_the_docs_write_it(monkeypatch, tmp_path):
    """`clvq judge --out X --no_llm` (docs/judges.md): a bare boolean option means true."""
    import clvqlearn.cli.judging as judging

    calls = []
    monkeypatch.setattr(judging, "run_judging", lambda out, **kw: calls.append(kw) or {})
    assert main(["judge", "--out", str(tmp_path / "x"), "--no_llm", "--quiet"]) == 0
    assert calls[0]["llm"] is False and calls[0]["log"] is None
    assert parse_options(["judge", "--no_llm", "false"])[1].no_llm is False
    options = parse_options(["judge", "--no_llm", "--out", "y"])[1]
    assert options.no_llm is True and options.out == "y"
    with pytest.raises(argparse.ArgumentError, match="no_llm"):
        parse_options(["judge", "--no_llm", "maybe"])
