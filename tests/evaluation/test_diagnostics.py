"""Reference ladder and concept agreement (clvqlearn.evaluation.diagnostics)."""

import numpy as np
import pytest

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairs
from clvqlearn.evaluation.diagnostics import (
    cluster_means,
    concept_agreement,
    kmeans_seed_agreement,
    reference_ladder,
)


def _pairs(n=600, d=4, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.normal(size=(n, d)).astype(np.float32)
    high = (low @ rng.normal(size=(d, d)) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    return LayerPairs(low=low, high=high, offsets=np.arange(n + 1))


def test_ladder_orders_the_references_on_a_linear_pair():
    pairs = _pairs()
    ladder = reference_ladder(pairs[:450], pairs[450:], k=10).set_index("method")["fve"]
    # a linear pair: the ridge map explains nearly everything, k-means only part of it
    assert ladder["ridge low -> high"] > 0.95
    assert 0.2 < ladder["k-means(low) -> mean(high)"] < ladder["ridge low -> high"]
    assert 0.2 < ladder["k-means(high)"] < ladder["ridge low -> high"]


def test_ladder_scores_extra_estimators_on_held_out_tokens():
    pairs = _pairs()
    vq = CrossLayerVQ(k=10, top_k=1, decoder="mlp", decoder_hidden=32, max_epochs=2, random_state=0)
    vq.fit(pairs[:450])
    ladder = reference_ladder(pairs[:450], pairs[450:], k=10, estimators={"vq": vq}).set_index("method")
    assert ladder.loc["vq", "fve"] == pytest.approx(vq.score(pairs[450:]))
    assert np.isnan(ladder.loc["vq", "seconds"])


def test_cluster_means_fill_empty_clusters_with_the_overall_mean():
    values = np.array([[1.0, 0.0], [3.0, 2.0]])
    means = cluster_means(np.array([0, 0]), values, 2)
    np.testing.assert_allclose(means, [[2.0, 1.0], [2.0, 1.0]])


def test_agreement_is_invariant_to_renaming_and_detects_disagreement():
    ids = np.repeat(np.arange(5), 20)
    assert concept_agreement(ids, (ids + 3) % 5) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(ids)
    assert concept_agreement(ids, shuffled) < 0.1


def test_agreement_of_estimators_needs_the_tokens():
    pairs = _pairs()
    km = KMeansConcepts(5, layer="low", random_state=0).fit(pairs)
    assert concept_agreement(km, km, pairs) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="X is required"):
        concept_agreement(km, km)
    with pytest.raises(ValueError, match="equal length"):
        concept_agreement(np.zeros(3), np.zeros(4))


def test_seed_agreement_is_high_but_not_perfect_on_unclustered_data():
    pairs = _pairs(n=800)
    ami = kmeans_seed_agreement(pairs[:600], pairs[600:], 8)
    assert 0.3 < ami < 1.0


@pytest.mark.parametrize("bad", [np.zeros((10, 8)), "texts"])
def test_ladder_rejects_what_is_not_layer_pairs(bad):
    pairs = _pairs()
    with pytest.raises((TypeError, ValueError), match="train"):
        reference_ladder(bad, pairs, k=3)


def test_seed_agreement_rejects_a_bad_layer_name():
    pairs = _pairs()
    with pytest.raises(ValueError, match="layer"):
        kmeans_seed_agreement(pairs, pairs, 3, layer="middle")


def _clustered_pairs(n=900, seed=0):
    """Low vectors in 6 clusters; high is a nonlinear map of low (so the encoder matters)."""
    rng = np.random.default_rng(seed)
    low = (4 * rng.normal(size=(6, 4)))[rng.integers(0, 6, size=n)] + 0.5 * rng.normal(size=(n, 4))
    high = np.tanh(low @ rng.normal(size=(4, 3)) / 2)
    return LayerPairs(low=low.astype(np.float32), high=high.astype(np.float32), offsets=np.arange(n + 1))


def _small_vq(**params):
    base = dict(k=6, decoder="mlp", decoder_hidden=16, max_epochs=2, encoder_hidden=16, random_state=0)
    return CrossLayerVQ(**{**base, **params})


def test_two_stage_rung_is_kmeans_on_the_encoder_output_with_cluster_means():
    pairs = _clustered_pairs()
    train, test = pairs[:700], pairs[700:]
    vq = _small_vq().fit(train)
    ladder = reference_ladder(train, test, k=6, encoder=vq).set_index("method")["fve"]
    clusters = KMeansConcepts(6, random_state=0).fit(vq.encode(train))
    means = cluster_means(clusters.labels_, train.high, 6)
    expected = 1 - ((test.high - means[clusters.predict(vq.encode(test))]) ** 2).sum() / (
        (test.high - test.high.mean(axis=0)) ** 2).sum()
    assert ladder["k-means(encoder z) -> mean(high)"] == pytest.approx(expected, rel=1e-5)
    # six clear clusters that the encoder keeps apart: the two-stage rung finds them
    assert ladder["k-means(encoder z) -> mean(high)"] > 0.8


def test_encoder_seed_agreement_clusters_the_encoder_output():
    pairs = _clustered_pairs()
    vq = _small_vq().fit(pairs[:700])
    assert kmeans_seed_agreement(pairs[:700], pairs[700:], 6, encoder=vq) > 0.9
    with pytest.raises(ValueError, match="'encoder' parameter .* must be None or an object implementing 'encode'"):
        kmeans_seed_agreement(pairs, pairs, 3, encoder=KMeansConcepts(3))
    with pytest.raises(ValueError, match="fitted CrossLayerVQ"):
        reference_ladder(pairs, pairs, k=3, encoder=_small_vq())


def test_two_stage_recipe_keeps_the_kmeans_codes_and_trains_only_the_decoder():
    pairs = _pairs(n=900)  # unclustered, so sampled EMA updates would move the codes
    # no validation split and a high rate, so trained epochs are kept (best_epoch_ > 0)
    settings = dict(k=6, decoder="mlp", decoder_hidden=16, max_epochs=3, encoder_hidden=16, random_state=0,
                    validation_fraction=0.0, learning_rate=1e-2)

    def code_drift(model):
        """Largest distance of a used code from the mean of the training tokens it is nearest to."""
        z, ids = model.encode(pairs[:700]), model.predict(pairs[:700])
        return max(np.abs(model.components_[c] - z[ids == c].mean(axis=0)).max() for c in np.unique(ids))

    two_stage = CrossLayerVQ.from_recipe("two-stage", **settings).fit(pairs[:700])
    joint = CrossLayerVQ(**settings).fit(pairs[:700])
    assert two_stage.best_epoch_ > 0 and joint.best_epoch_ > 0
    assert code_drift(two_stage) < 1e-4  # the k-means centres of z, kept through training
    assert code_drift(joint) > 1e-2  # the default's sampled EMA moves them
    assert (two_stage.top_k, two_stage.ema_decay, two_stage.encoder) == (1, 1.0, joint.encoder)
