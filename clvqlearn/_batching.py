"""Length-bucketed batches and right padding: the one implementation.

Every forward pass over documents (the extractor, the task classifiers,
Integrated Gradients, the splice protocol) and the concept models' document
batches group documents of similar length, so that little padding is
computed, and pad each batch to its longest member on the right.
"""

from __future__ import annotations

import numpy as np

__all__ = ["length_batches", "model_inputs", "pad_right"]

#: With shuffling, documents are sorted by length inside pools of this many batches.
POOL_BATCHES = 50


def length_batches(lengths, batch_size: int, *, rng=None, descending: bool = False, docs=None,
                   max_tokens: int | None = None) -> list:
    """Index batches of documents of similar length.

    Without ``rng`` the documents are sorted by length (stable) and cut into
    batches (of at most ``max_tokens`` padded tokens when it is given).
    With ``rng`` (training) they are shuffled, sorted by length inside
    pools of 50 batches and cut, and the batch order is shuffled again,
    as transformers' ``group_by_length`` does.

    Parameters
    ----------
    lengths : array-like of int
        Length of every document (indexed by document id).
    batch_size : int
    rng : numpy.random.RandomState, optional
        Shuffles (see above); None keeps length order.
    descending : bool, default=False
        Longest documents first (inside each pool when shuffling).
    docs : array-like of int, optional
        The document ids to batch (default all).
    max_tokens : int, optional
        Also cap each batch's padded size (documents times its longest
        length) at this many tokens; a longer document still gets a batch of
        its own.  Not with ``rng``.

    Returns
    -------
    list of ndarray of int
        Document ids, batch after batch.

    Examples
    --------
    >>> [b.tolist() for b in length_batches([5, 1, 3, 2], 2)]
    [[1, 3], [2, 0]]
    >>> [b.tolist() for b in length_batches([5, 1, 3, 2], 3, descending=True)]
    [[0, 2, 3], [1]]
    >>> [b.tolist() for b in length_batches([5, 1, 3, 2], 3, descending=True, max_tokens=6)]
    [[0], [2, 3], [1]]
    >>> rng = np.random.RandomState(0)
    >>> sorted(int(i) for b in length_batches([5, 1, 3, 2], 2, rng=rng) for i in b)
    [0, 1, 2, 3]
    """
    lengths = np.asarray(lengths)
    if max_tokens is not None and rng is not None:
        raise ValueError("length_batches: max_tokens caps length-ordered batches only; it cannot be combined with rng.")
    docs = np.arange(lengths.size) if docs is None else np.asarray(docs)
    sign = -1 if descending else 1
    if rng is None:
        ordered = docs[np.argsort(sign * lengths[docs], kind="stable")]
        if max_tokens is None:
            return [ordered[i : i + batch_size] for i in range(0, ordered.size, batch_size)]
        return _token_capped(ordered, lengths, batch_size, max_tokens)
    docs = docs[rng.permutation(docs.size)]
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, docs.size, pool):
        chunk = docs[start : start + pool]
        chunk = chunk[np.argsort(sign * lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, chunk.size, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _token_capped(ordered: np.ndarray, lengths: np.ndarray, batch_size: int, max_tokens: int) -> list:
    """Cut length-ordered documents into batches of at most ``batch_size`` documents and ``max_tokens`` tokens."""
    batches, start = [], 0
    while start < ordered.size:
        stop = start + 1
        width = int(lengths[ordered[start]])
        while stop < ordered.size and stop - start < batch_size:
            width = max(width, int(lengths[ordered[stop]]))
            if (stop - start + 1) * width > max_tokens:
                break
            stop += 1
        batches.append(ordered[start:stop])
        start = stop
    return batches


def pad_right(sequences, pad_value, *, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Stack sequences of different lengths into one array, padded on the right.

    Parameters
    ----------
    sequences : sequence of array-like
        One 1-D sequence per row (token ids, masks, ...).
    pad_value : scalar
        Fills the positions past each sequence's end.
    dtype : numpy dtype, default=int64

    Returns
    -------
    padded : ndarray of shape (n, longest)
    mask : ndarray of shape (n, longest), int64
        1 on real positions, 0 on padding (an attention mask).

    Examples
    --------
    >>> padded, mask = pad_right([[7, 8, 9], [5]], 0)
    >>> padded.tolist(), mask.tolist()
    ([[7, 8, 9], [5, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    width = int(lengths.max()) if lengths.size else 0
    padded = np.full((lengths.size, width), pad_value, dtype=dtype)
    for row, seq in enumerate(sequences):
        padded[row, : lengths[row]] = np.asarray(seq, dtype=dtype)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return padded, mask


def model_inputs(sequences, pad_id: int, device) -> dict:
    """``input_ids`` and ``attention_mask`` tensors of token-id sequences, right-padded with ``pad_id``.

    Parameters
    ----------
    sequences : sequence of sequence of int
    pad_id : int
    device : torch.device or str

    Returns
    -------
    dict of torch.Tensor
        ``{"input_ids": (n, longest), "attention_mask": (n, longest)}``, int64.

    Examples
    --------
    >>> batch = model_inputs([[101, 7, 102], [101, 102]], 0, "cpu")
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[101, 7, 102], [101, 102, 0]], [[1, 1, 1], [1, 1, 0]])
    """
    import torch

    ids, mask = pad_right(sequences, pad_id)
    return {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
