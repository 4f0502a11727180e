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
