"""All four concept estimators are interchangeable Pipeline steps on a packaged model."""

import numpy as np
import pytest
from joblib import Memory
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairExtractor, LayerPairs, SingleLayerVQ, SparseAutoencoder

ESTIMATORS = [
    CrossLayerVQ(top_k=2, decoder="transformer", decoder_layers=1, decoder_ff=64, max_epochs=1, random_state=0),
    SingleLayerVQ(top_k=2, decoder="mlp", decoder_hidden=64, max_epochs=1, random_state=0),
    KMeansConcepts(random_state=0),
    SparseAutoencoder(max_epochs=1, random_state=0),
]


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_pipeline_and_grid_search_over_k(estimator, ag_news_texts, tmp_path):
    texts = ag_news_texts[:40]
    pipe = Pipeline(
        [("extract", LayerPairExtractor("minilm", layers=(4, 6), max_length=32)), ("concepts", estimator)],
        memory=Memory(tmp_path, verbose=0),
    )
    fitted = pipe.set_params(concepts__k=4).fit(texts)
    ids = fitted.predict(texts[:3])
    pairs = fitted.named_steps["extract"].transform(texts[:3])
    assert isinstance(pairs, LayerPairs)
    assert ids.shape == (pairs.n_tokens,) and ids.min() >= 0 and ids.max() < 4
    assert fitted.transform(texts[:3]).shape == (pairs.n_tokens, 4)
    assert np.isfinite(fitted.score(texts[:3]))
    search = GridSearchCV(pipe, {"concepts__k": [2, 4]}, cv=2).fit(texts)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    # the estimator's own score (held-out FVE) ranks the grid: the best k is the best mean score's
    best = int(np.argmax(scores))
    assert search.best_params_ == search.cv_results_["params"][best] and search.best_score_ == scores[best]
    assert search.best_estimator_.named_steps["concepts"].k == search.best_params_["concepts__k"]
    assert search.best_estimator_.named_steps["concepts"].components_.shape[0] == search.best_params_["concepts__k"]
