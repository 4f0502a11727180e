"""
Choosing k with GridSearchCV
============================

Choose the codebook size with GridSearchCV (the extractor runs once per fold,
thanks to ``Pipeline(memory=...)``), or extract once and sweep the extracted
pairs: samples are documents, so an integer ``cv`` splits documents.

    python examples/grid_search.py
"""

import tempfile

from joblib import Memory
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairExtractor
from clvqlearn.datasets import load_bbc_news

texts = load_bbc_news().sample(90, random_state=0).texts

with tempfile.TemporaryDirectory() as cache:
    pipe = Pipeline(
        [
            ("extract", LayerPairExtractor("minilm", layers=(4, 6), max_length=48)),
            ("concepts", CrossLayerVQ(decoder="mlp", decoder_hidden=256, max_epochs=3, top_k=2,
                                      random_state=0)),
        ],
        memory=Memory(cache, verbose=0),
    )
    # score = held-out fraction of variance of layer 6 explained (higher is better)
    search = GridSearchCV(pipe, {"concepts__k": [8, 32]}, cv=2).fit(texts)
    best_k = search.best_params_["concepts__k"]
    print("best k:", best_k)
    print("mean held-out FVE per k:", dict(zip([8, 32], search.cv_results_["mean_test_score"].round(3))))

# Extract once, sweep many times: len(pairs) and pairs.shape[0] count documents,
# so cv=5 gives five folds of documents (never the tokens of one document apart).
pairs = LayerPairExtractor("minilm", layers=(4, 6), max_length=48).fit_transform(texts)
pairs_search = GridSearchCV(KMeansConcepts(random_state=0), {"k": [8, 32]}, cv=5).fit(pairs)
print(f"{len(pairs)} documents, {pairs.n_tokens} tokens; k-means best k:", pairs_search.best_params_["k"])
