"""
Concept removal on a fine-tuned MiniLM
======================================

Concept removal (evaluation axis 1) on a packaged model and a packaged data set.

Fine-tunes MiniLM on BBC News topics, learns CrossLayerVQ concepts from the
fine-tuned model's own layers 4 -> 6, then removes each test sentence's
salient concept and reports the accuracy drop against a random-direction
control, with both protocols. A few minutes on a laptop CPU (3.5 min on 2 busy cores).

    python examples/concept_removal.py
"""

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from clvqlearn import CrossLayerVQ, LayerPairExtractor, concept_ablation_report
from clvqlearn.datasets import load_bbc_news
from clvqlearn.evaluation import fine_tune_classifier

news = load_bbc_news()  # 2,225 articles, 5 topics
rest, test_idx = train_test_split(np.arange(len(news)), test_size=100, stratify=news.labels, random_state=0)
train_idx, fit_idx = train_test_split(rest, train_size=300, test_size=300, stratify=news.labels[rest],
                                      random_state=0)
train, fit, test = news.take(train_idx), news.take(fit_idx), news.take(test_idx)

# 1. the task model: MiniLM + a classification head (cached after the first run)
clf = fine_tune_classifier(train.texts, train.labels, model="minilm", label_names=news.label_names,
                           validation_data=(test.texts, test.labels), epochs=2, max_length=64,
                           random_state=0, verbose=False)
print(f"classifier accuracy on the test texts: {clf.accuracy:.3f}")

# 2. concepts of the fine-tuned model itself (the paper's setting)
pipe = Pipeline([
    ("extract", LayerPairExtractor(str(clf.path), layers=(4, 6), max_length=64, verbose=False)),
    ("concepts", CrossLayerVQ(k=100, decoder="mlp", max_epochs=20, random_state=0)),
]).fit(fit.texts)

# 3. remove each test text's salient concept: the paper's probe, then the splice
reports = {}
for protocol in ("probe", "splice"):
    reports[protocol] = concept_ablation_report(pipe, test.texts, test.labels, protocol=protocol,
                                                probe="logistic", n_steps=16, splice_positions="all",
                                                random_state=0)
    print(reports[protocol])
