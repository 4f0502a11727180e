"""
Concepts against the reference ladder
=====================================

Fit CrossLayerVQ and a sparse autoencoder on MiniLM layers 4 -> 6 of 60 BBC News
articles, then read their held-out reconstruction against the references
that need no training: k-means on layer 4 predicting each cluster's mean
layer-6 vector (a per-token, codes-only decoder must beat it), k-means on
layer 6 itself (only a decoder that reads context can beat it) and a ridge
map. About 20 seconds on a laptop CPU.
"""

import matplotlib.pyplot as plt

from clvqlearn import CrossLayerVQ, LayerPairExtractor, SparseAutoencoder
from clvqlearn.datasets import load_bbc_news
from clvqlearn.evaluation.diagnostics import reference_ladder

texts = load_bbc_news().sample(60, shuffle=True, random_state=0).texts
extractor = LayerPairExtractor("minilm", layers=(4, 6), max_length=48).fit(texts)
train, test = extractor.transform(texts[:48]), extractor.transform(texts[48:])

k = 16
fitted = {
    "CrossLayerVQ (mlp decoder)": CrossLayerVQ(k=k, decoder="mlp", max_epochs=10, random_state=0).fit(train),
    "SparseAutoencoder": SparseAutoencoder(k=k, max_epochs=10, random_state=0).fit(train),
}
ladder = reference_ladder(train, test, k, estimators=fitted)
print(ladder[["method", "fve"]].round(3).to_string(index=False))

# %%
# The held-out fraction of layer 6's variance explained, references in grey.
colors = ["tab:gray"] * 3 + ["tab:blue"] * len(fitted)
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(ladder["method"], ladder["fve"], color=colors)
ax.invert_yaxis()
ax.set_xlabel("held-out FVE of layer 6")
fig.tight_layout()
plt.show()
