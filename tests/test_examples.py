"""The scripts in examples/ run as they are and show what they say (docs are part of the product).

Each example is run with ``runpy.run_path``; its module-level names (the
fitted estimators, the reports, the search) are then checked against what
the example's text claims.
"""

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))


def _run(name: str, capsys) -> tuple[dict, str]:
    import matplotlib

    matplotlib.use("Agg")
    names = runpy.run_path(str(EXAMPLES_DIR / name), run_name="__main__")
    return names, capsys.readouterr().out


def test_every_example_has_a_check():
    assert {p.name for p in EXAMPLES} == set(CHECKS)


def _quickstart(names, out):
    vq, table = names["vq"], names["table"]
    fve = vq.score(names["held_out"])
    # a held-out FVE, printed, above predicting the mean (3 epochs on 400 texts: about 0.06; on the
    # 100 texts it used before, the decoder's least-squares start overfitted to about -0.04)
    assert 0 < fve < 1
    assert f"{fve:.3f}" in out
    assert 1 < vq.n_active_codes_ <= vq.k == 32 and len(table) == 32
    assert table["n_tokens"].sum() == names["held_out"].n_tokens


def _grid_search(names, out):
    search = names["search"]
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and scores.shape == (2,)
    assert names["best_k"] == [8, 32][int(np.argmax(scores))]  # the best k is the best-scoring one
    assert search.best_estimator_.named_steps["concepts"].k == names["best_k"]
    assert f"best k: {names['best_k']}" in out
    # the sweep on extracted pairs: 5 folds of the 90 documents
    pairs, pairs_search = names["pairs"], names["pairs_search"]
    assert len(pairs) == 90 and pairs.n_tokens > 90
    assert pairs_search.n_splits_ == 5 and np.isfinite(pairs_search.cv_results_["mean_test_score"]).all()
    assert pairs_search.best_params_["k"] == [8, 32][int(np.argmax(pairs_search.cv_results_["mean_test_score"]))]


def _concept_removal(names, out):
    reports = names["reports"]
    assert set(reports) == {"probe", "splice"}
    for report in reports.values():
        assert 0 < report.n_sentences <= 100 and report.accuracy_before > report.chance_accuracy
        # removing the salient concept hurts more than removing random directions of the same rank
        assert report.drop > report.control_drop
        assert str(report) in out


def _concept_browser(names, out):
    pairs, methods = names["pairs"], names["methods"]
    assert set(methods) == {"CLVQ-VAE", "k-means (layer 4)"}
    for ids in methods.values():
        assert ids.shape == (pairs.n_tokens,) and 1 < np.unique(ids).size <= names["k"]
    assert names["path"].is_file() and "CLVQ-VAE" in names["html"]


def _decoder_model(names, out):
    train, vq, table = names["train"], names["vq"], names["table"]
    assert train.low.shape[1] == 576 and train.layers == (20, 30)
    assert train.extra["n_outliers"] > 0  # the attention-sink rows the text says are dropped
    assert np.isfinite(vq.score(names["test"]))
    assert names["share"].sum() == pytest.approx(1.0)
    assert len(table) == 16


def _reference_ladder(names, out):
    ladder = names["ladder"]
    assert len(ladder) == 3 + len(names["fitted"])
    assert set(names["fitted"]) <= set(ladder["method"])
    assert np.isfinite(ladder["fve"]).all() and (ladder["fve"] < 1).all()


CHECKS = {
    "quickstart.py": _quickstart,
    "grid_search.py": _grid_search,
    "concept_removal.py": _concept_removal,
    "plot_concept_browser.py": _concept_browser,
    "plot_decoder_model.py": _decoder_model,
    "plot_reference_ladder.py": _reference_ladder,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_shows_what_it_says(script, capsys):
    names, out = _run(script.name, capsys)
    assert out.strip(), f"{script.name} printed nothing"
    CHECKS[script.name](names, out)
