"""Describe concepts by the tokens and sentences assigned to them.

This is what a person (or an LLM judge) reads: for each concept, its most
frequent tokens and a few example sentences with the token marked.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> from clvqlearn.report.descriptions import describe_concepts
>>> pairs = LayerPairs(low=np.zeros((3, 1)), high=np.zeros((3, 1)), offsets=[0, 2, 3],
...                    tokens=np.array(["good", "film", "good"], dtype=object))
>>> table = describe_concepts(np.array([1, 0, 1]), pairs, k=2)
>>> table.loc[1, "top_tokens"]
'good (2)'
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from ..pairs import LayerPairs


def describe_concepts(concept_ids, pairs: LayerPairs, *, k: int | None = None, top_tokens: int = 10,
                      n_examples: int = 3, window: int = 6, random_state=None) -> pd.DataFrame:
    """One row per concept: size, share, top tokens and example contexts.

    Parameters
    ----------
    concept_ids : array-like of shape (n_tokens,)
        Concept of every token (``estimator.predict(pairs)``).
    pairs : LayerPairs
        Must carry token strings.
    k : int, optional
        Number of concepts (default: ``max(concept_ids) + 1``).
    top_tokens : int, default=10
        Most frequent tokens listed per concept (the paper shows 10).
    n_examples : int, default=3
        Example contexts per concept.
    window : int, default=6
        Tokens of context on each side of an example token.
    random_state : int or None
        Which examples are picked.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``concept``; columns ``n_tokens``, ``share``,
        ``n_distinct``, ``top_tokens`` (``"word (count), ..."``),
        ``examples`` (contexts with the token in ``[[ ]]``), sorted by
        concept id.
    """
    ids = np.asarray(concept_ids, dtype=np.int64)
    if pairs.tokens is None:
        raise ValueError("describe_concepts needs LayerPairs with token strings (pairs.tokens is None).")
    if ids.shape != (pairs.n_tokens,):
        raise ValueError(f"concept_ids must have shape ({pairs.n_tokens},); got {ids.shape}.")
    k = int(ids.max()) + 1 if k is None else int(k)
    rng = np.random.default_rng(random_state)
    tokens = np.asarray(pairs.tokens, dtype=object)
    doc_of = pairs.doc_index
    rows = []
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(k + 1))
    for concept in range(k):
        members = order[bounds[concept]:bounds[concept + 1]]
        counts = Counter(str(t) for t in tokens[members])
        picks = rng.choice(members, size=min(n_examples, members.size), replace=False) if members.size else []
        examples = [_context(tokens, pairs.offsets, doc_of[i], i, window) for i in picks]
        rows.append({
            "concept": concept,
            "n_tokens": int(members.size),
            "share": members.size / max(ids.size, 1),
            "n_distinct": len(counts),
            "top_tokens": ", ".join(f"{t} ({c})" for t, c in counts.most_common(top_tokens)),
            "examples": " | ".join(examples),
        })
    return pd.DataFrame(rows).set_index("concept")


def _context(tokens, offsets, doc, row, window) -> str:
    start, stop = offsets[doc], offsets[doc + 1]
    left = [str(t) for t in tokens[max(start, row - window):row]]
    right = [str(t) for t in tokens[row + 1:min(stop, row + 1 + window)]]
    return " ".join(left + [f"[[{tokens[row]}]]"] + right)
