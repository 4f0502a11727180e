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
