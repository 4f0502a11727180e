import numpy as np
import pandas as pd
import pytest

from clvqlearn.cli.judging import _judge_stats, _markdown, _report


def _frame():
    rng = np.random.default_rng(0)
    rows = []
    for judge in ("hf:x/order-0", "hf:x/order-1", "hf:x/flipped"):
        for item in range(10):
            for pos, method in enumerate(rng.permutation(["a", "b"])):
                good = method == "a" and not judge.endswith("flipped")
                rows.append((judge, str(item), method, 3.0 if good else 1.0, pos, 2.5 if good else 1.5))
    return pd.DataFrame(rows, columns=["judge", "item_id", "method", "rating", "position", "expected"])


def test_trust_checks_and_report():
    summary, stats = _judge_stats(_frame(), "hf:x")
    assert summary.loc["a", "mean_rating"] == 3 and summary.loc["b", "mean_rating"] == 1
    assert summary.loc["a", "first_share"] == 1 and summary.loc["b", "first_share"] == 0
    checks = stats["ratings"]
    assert checks["self_agreement_shuffled_order"]["krippendorff_alpha"] == pytest.approx(1.0)
    assert checks["mean_true_prediction"] == 2 and checks["mean_flipped_prediction"] == 1
    assert checks["share_lower_when_flipped"] == 0.5 and checks["share_higher_when_flipped"] == 0
    assert stats["expected_ratings"]["mean_flipped_prediction"] == 1.5
    text = _report(summary, stats, summary[["mean_rating"]], {}, {"dataset": "d", "n_sentences": 10, "command": "c"})
    assert "| a | 3.0 |" in text and "Judge trust checks" in text


def test_markdown_table():
    frame = pd.DataFrame({"x": [1, 2]}, index=pd.Index(["p", "q"], name="m"))
    assert _markdown(frame).splitlines() == ["| m | x |", "|---|---|", "| p | 1 |", "| q | 2 |"]
