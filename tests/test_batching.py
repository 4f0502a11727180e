"""The one length-bucketed batching and padding (clvqlearn._batching) and the one text check."""

import numpy as np
import pytest

from clvqlearn._batching import length_batches, model_inputs, pad_right
from clvqlearn._validation import check_texts


def test_length_batches_cover_every_document_once_in_length_order():
    lengths = np.array([5, 1, 3, 2, 9, 4, 4])
    batches = length_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 3, 2], [5, 6, 0], [4]]
    down = length_batches(lengths, 3, descending=True)
    assert [lengths[b].tolist() for b in down] == [[9, 5, 4], [4, 3, 2], [1]]
    assert sorted(np.concatenate(length_batches(lengths, 2, docs=[0, 2, 4])).tolist()) == [0, 2, 4]


def test_shuffled_batches_are_seeded_and_sorted_inside_pools():
    lengths = np.random.default_rng(0).integers(1, 100, size=500)
    one = length_batches(lengths, 4, rng=np.random.RandomState(3))
    two = length_batches(lengths, 4, rng=np.random.RandomState(3))
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert sorted(np.concatenate(one).tolist()) == list(range(500))
    # a batch holds neighbours in length order: its spread is small against the corpus's
    assert np.median([np.ptp(lengths[b]) for b in one]) < 0.2 * np.ptp(lengths)
    other = length_batches(lengths, 4, rng=np.random.RandomState(4))
    assert not all(np.array_equal(a, b) for a, b in zip(one, other))


def test_padding_is_on_the_right_and_the_mask_marks_real_tokens():
    padded, mask = pad_right([[3, 4, 5], [6], []], -1)
    assert padded.tolist() == [[3, 4, 5], [6, -1, -1], [-1, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    keep, _ = pad_right([[True, False]], False, dtype=bool)
    assert keep.dtype == bool and keep.tolist() == [[True, False]]
    batch = model_inputs([[1, 2], [3]], 0, "cpu")
    assert batch["input_ids"].tolist() == [[1, 2], [3, 0]] and batch["attention_mask"].sum().item() == 3


@pytest.mark.parametrize(
    "texts, error, match",
    [
        ("one string", TypeError, "not a single string"),
        (None, TypeError, "must be a list"),
        ([], ValueError, "is empty"),
        (np.array([["a"], ["b"]]), ValueError, "one-dimensional"),
        (["a", 3], TypeError, r"items at indices \[1\] are int"),
        (["a", " \n"], ValueError, r"whitespace-only document\(s\) at indices \[1\]"),
    ],
)
def test_check_texts_refuses_what_has_no_tokens(texts, error, match):
    with pytest.raises(error, match=match):
        check_texts(texts)


def test_check_texts_accepts_sequences_arrays_and_series():
    import pandas as pd

    assert check_texts(np.array(["a", "b"])) == ["a", "b"] == check_texts(pd.Series(["a", "b"]))
