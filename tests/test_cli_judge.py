import pytest

from clvqlearn.cli import build_parser, main


def test_judge_subcommand_options():
    args = build_parser().parse_args(["judge", "--out", "x", "--base-url", "http://127.0.0.1:1/v1",
                                      "--judge-model", "m", "--n-sentences", "10"])
    assert (args.command, args.out, args.base_url, args.judge_model, args.n_sentences) == (
        "judge", "x", "http://127.0.0.1:1/v1", "m", 10)
    assert build_parser().parse_args(["judge"]).dataset == "eraser_movie"


def test_judge_rejects_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["judge", "--dataset", "imdb"])
    assert "invalid choice" in capsys.readouterr().err
