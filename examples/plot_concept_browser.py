"""
A concept browser for two methods
=================================

Fit CrossLayerVQ and k-means on MiniLM layer 4 -> 6 of 40 BBC News articles
and write the offline HTML concept browser: every sentence with its tokens
coloured by concept, a click on a token opens the concept's card (top words,
examples, size), a searchable concept list, both methods side by side. The
file opens from disk with no network and no server. About 15 seconds on a
laptop CPU.
"""

import tempfile
from pathlib import Path

from clvqlearn import CrossLayerVQ, KMeansConcepts, LayerPairExtractor
from clvqlearn.datasets import load_bbc_news
from clvqlearn.report.browser import write_concept_browser

texts = load_bbc_news().sample(40, shuffle=True, random_state=0).texts
pairs = LayerPairExtractor("minilm", layers=(4, 6), max_length=48).fit_transform(texts)

k = 12
methods = {
    "CLVQ-VAE": CrossLayerVQ(k=k, decoder="mlp", max_epochs=5, random_state=0).fit(pairs).predict(pairs),
    "k-means (layer 4)": KMeansConcepts(k, layer="low", random_state=0).fit(pairs).predict(pairs),
}
path = write_concept_browser(Path(tempfile.mkdtemp()) / "browser.html", methods, pairs,
                             title="BBC News, MiniLM 4 -> 6")
html = path.read_text(encoding="utf-8")
print(f"wrote {path.name}: {len(html) / 1024:.0f} KiB, {len(pairs)} sentences, {k} concepts per method")
# self-contained: the data and the code are inline, nothing is fetched
assert "CLVQ-VAE" in html and 'src="http' not in html and 'href="http' not in html
