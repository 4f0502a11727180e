"""Shared fixtures of the evaluation tests: classifiers fine-tuned on the tiny movie corpus.

``tiny_clf``         the tiny random BERT (``tiny_bert_dir``) fine-tuned on
                     :mod:`movie_corpus` (16 sentences, 2 classes)
``tiny_llama_clf``   the tiny random Llama (``tiny_llama_dir``) fine-tuned on it

The corpus itself (``TEXTS``, ``LABELS``, ``FAST``) is :mod:`movie_corpus`.
"""

from __future__ import annotations

import pytest
from movie_corpus import FAST, LABELS, TEXTS


@pytest.fixture(scope="session")
def tiny_clf(tiny_bert_dir, tmp_path_factory):
    from clvqlearn.evaluation import fine_tune_classifier

    out = tmp_path_factory.mktemp("bert_clf") / "clf"
    return fine_tune_classifier(TEXTS, LABELS, model=str(tiny_bert_dir), output_dir=out, **FAST)


@pytest.fixture(scope="session")
def tiny_llama_clf(tiny_llama_dir, tmp_path_factory):
    from clvqlearn.evaluation import fine_tune_classifier

    out = tmp_path_factory.mktemp("llama_clf") / "clf"
    return fine_tune_classifier(TEXTS, LABELS, model=str(tiny_llama_dir), output_dir=out, **FAST)

