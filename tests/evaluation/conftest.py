"""Shared fixtures of the evaluation tests: classifiers fine-tuned on the tiny movie corpus.

``tiny_clf``         the tiny random BERT (``tiny_bert_dir``) fine-tuned on
                     :mod:`movie_corpus` (16 sentences, 2 classes)
``tiny_llama_clf``   the tiny random Llama (``tiny_llama_dir``) fine-tuned on it
``tiny_chat_llama``  a copy of the tiny Llama whose tokenizer has a minimal chat template

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



#: A minimal chat template for the tiny test tokenizer, which has none.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </{{ m['role'] }}> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_llama(tiny_llama_dir, tmp_path_factory):
    """The shared tiny Llama (random weights, BOS-adding BPE) plus a chat template."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_chat_llama")
    LlamaForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return str(path)
