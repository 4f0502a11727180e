"""The ``clvq`` command: the main job end to end on the packaged defaults."""

import json

import pytest

from clvqlearn.cli import build_parser, main


def test_parser_defaults_are_the_embedded_default():
    args = build_parser().parse_args(["demo"])
    assert (args.model, args.dataset, tuple(args.layers)) == ("minilm", "bbc_news", (4, 6))


def test_unknown_dataset_is_a_clear_error(capsys, tmp_path):
    code = main(["demo", "--dataset", "no_such_data", "--output", str(tmp_path)])
    assert code == 2
    assert "no_such_data" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end_on_packaged_model_and_data(tmp_path):
    out = tmp_path / "out"
    code = main(["demo", "--n-texts", "40", "--k", "8", "--max-epochs", "2", "--max-length", "48",
                 "--output", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "bbc_news" and summary["k"] == 8
    assert summary["train_tokens"] > 8 * 32
    assert 1 <= summary["active_codes"] <= 8
    assert (out / "concepts.csv").read_text().count("\n") == 9  # header + 8 concepts
    assert (out / "crosslayervq" / "model.safetensors").is_file()


# ------------------------------------------------------------------ issue 15: fail early, clearly
def _no_work(*args, **kwargs):
    raise AssertionError("work started before the output folder was checked")


@pytest.mark.parametrize("command", [["demo", "--output"], ["table", "--out"]])
def test_unwritable_output_fails_before_any_work(capsys, tmp_path, monkeypatch, command):
    import clvqlearn.demo
    import clvqlearn.evaluation.comparison

    monkeypatch.setattr(clvqlearn.demo, "load_dataset", _no_work)
    monkeypatch.setattr(clvqlearn.evaluation.comparison, "main", _no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main([*command, str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "not writable" in err and str(blocker / "out") in err


@pytest.mark.parametrize("args, match", [
    (["--k", "0"], "--k: must be at least 1"),
    (["--k", "3", "--top-k", "4"], "--top-k 4 cannot exceed --k 3"),
    (["--max-epochs", "x"], "expected an integer"),
])
def test_bad_numbers_are_refused_by_the_parser(capsys, args, match):
    with pytest.raises(SystemExit) as info:
        main(["demo", *args])
    assert info.value.code == 2 and match in capsys.readouterr().err


def test_small_k_works(tmp_path):
    out = tmp_path / "out"
    code = main(["demo", "--n-texts", "12", "--k", "3", "--max-epochs", "1", "--max-length", "16",
                 "--output", str(out), "--quiet"])
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["k"] == 3


def test_table_with_k_below_5_is_refused_first(capsys, tmp_path, monkeypatch):
    import clvqlearn.evaluation.comparison

    monkeypatch.setattr(clvqlearn.evaluation.comparison, "main", _no_work)
    assert main(["table", "--k", "3", "--out", str(tmp_path)]) == 2
    assert "--k >= 5" in capsys.readouterr().err
