"""Issue 15, class 1: tokenizer settings that were silently ignored."""

import pytest

from clvqlearn import extraction
from clvqlearn.extraction import LayerPairExtractor

TEXTS = ["The cat sat on the mat and looked at the dog. " * 4, "Stocks fell sharply on Monday."]


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.mark.parametrize("max_length", [1, 2])
@pytest.mark.parametrize("special_tokens", ["drop", "keep"])
def test_max_length_without_room_for_text_is_refused_before_loading(
    tiny_bert_dir, monkeypatch, max_length, special_tokens
):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=max_length,
                             special_tokens=special_tokens, device="cpu")
    with pytest.raises(ValueError, match=r"max_length=\d+ .*special token.*at least 3"):
        ext.fit(TEXTS)


def test_max_length_changed_after_fit_is_checked_in_transform(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(TEXTS)
    ext.set_params(max_length=1)
    with pytest.raises(ValueError, match="at least 3"):
        ext.transform(TEXTS)


def test_smallest_max_length_truncates(tiny_bert_dir):
    pairs = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=3, device="cpu").fit_transform(TEXTS)
    assert pairs.lengths.tolist() == [1, 1]


def test_layers_changed_after_fit_are_not_ignored(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(TEXTS)
    ext.set_params(layers=(2, 3))
    with pytest.raises(ValueError, match="changed since fit"):
        ext.transform(TEXTS)


@pytest.mark.parametrize("layers, error, match", [
    ((1.5, 2), TypeError, "layers must be integers"),
    (("1", 2), TypeError, "layers must be integers"),
    ((1, 2, 3), ValueError, "layers must be a"),
    (5, ValueError, "layers"),
])
def test_bad_layers_refused_before_loading(tiny_bert_dir, monkeypatch, layers, error, match):
    monkeypatch.setattr(extraction, "load_model", _no_model)
    with pytest.raises(error, match=match):
        LayerPairExtractor(str(tiny_bert_dir), layers=layers, device="cpu").fit(TEXTS)


def test_zero_rows_is_a_clear_error(tiny_bert_dir):
    ext = LayerPairExtractor(str(tiny_bert_dir), layers=(1, 2), max_length=8, device="cpu").fit(TEXTS)
    with pytest.raises(ValueError, match="no token rows"):
        ext.transform(["\x00\x01", "\x02"])  # control characters: tokenised to nothing
