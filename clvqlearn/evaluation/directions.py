"""Concept directions: which concept each sentence's salient token belongs to, and what is removed.

Step 2 of the concept-removal evaluation (METHOD.md, "Evaluation axis 1"):
the salient token's row in the extracted :class:`~clvqlearn.LayerPairs`
(:func:`salient_rows`), its concept, and per sentence the directions the
removal protocols project out (:func:`sentence_directions`): the concept's
own, random Gaussian ones of the same rank (the rank-matched control),
another concept's (the other-concept control), and the Gaussian draw from
which the norm-matched control builds, per edited vector, a random
direction that removes as much of its norm as the concept does
(:func:`~clvqlearn.evaluation.projection.norm_matched_removal`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .projection import random_directions
from .saliency import Saliency

__all__ = ["Kept", "salient_rows", "sentence_directions"]


@dataclass
class Kept:
    """The evaluated sentences and what is removed from each."""

    idx: np.ndarray  # indices into the given texts
    texts: list
    rows: np.ndarray  # salient token's row in the LayerPairs
    positions: np.ndarray  # salient token's position in the tokenised input
    concept_dirs: list
    control_dirs: list
    other_dirs: list
    matched_noise: np.ndarray  # (n, d) Gaussian draws of the norm-matched control, one per sentence


def salient_rows(sal: Saliency, pairs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per document: the row and position of the best-ranked salient token present in ``pairs``.

    Parameters
    ----------
    sal : Saliency
        With ``top_n`` ranked positions per document.
    pairs : LayerPairs
        Of the same documents.

    Returns
    -------
    rows, positions, ranks : ndarray of int64, shape (n_docs,)
        The token's row in ``pairs``, its position in the input, and which
        of the top tokens it was (-1 everywhere for a document none of whose
        top tokens was extracted).
    """
    n = len(sal)
    rows = np.full(n, -1, dtype=np.int64)
    positions = np.full(n, -1, dtype=np.int64)
    ranks = np.full(n, -1, dtype=np.int64)
    for rank in range(sal.top_positions.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = sal.rows(pairs, rank=rank)
        take = (rows < 0) & (found >= 0)
        rows[take] = found[take]
        positions[take] = sal.top_positions[take, rank]
        ranks[take] = rank
    return rows, positions, ranks


def sentence_directions(concepts, token_concepts, chosen, idx, texts, rows, positions, width, space, rng) -> Kept:
    """The concept, random-control and other-concept directions of every evaluated sentence.

    The concept's directions come from ``concepts.concept_directions`` (in
    the layer named by ``space``); the rank-matched control is as many
    random Gaussian directions; the other-concept control is the directions
    of another concept, drawn among the concepts of the evaluation tokens;
    the norm-matched control gets one standard Gaussian vector per sentence
    (drawn last, so the other draws are those of a run without it).
    """
    cache: dict = {}

    def directions(c: int) -> np.ndarray:
        if c not in cache:
            D = np.asarray(concepts.concept_directions(int(c)), dtype=np.float64)
            if D.ndim != 2 or D.shape[1] != width:
                raise ValueError(
                    f"{type(concepts).__name__}.concept_directions({c}) has shape {D.shape}; expected "
                    f"(r, {width}) in the {space} layer."
                )
            cache[c] = D
        return cache[c]

    concept_dirs = [directions(c) for c in chosen]
    control_dirs = [random_directions(D.shape[0], width, rng) for D in concept_dirs]
    pool = np.unique(token_concepts)
    other_dirs = []
    for c in chosen:
        candidates = pool[pool != c]
        other = int(rng.choice(candidates)) if candidates.size else int(c)
        other_dirs.append(directions(other))
    matched_noise = rng.standard_normal((len(concept_dirs), width))
    return Kept(idx=idx, texts=[texts[i] for i in idx], rows=rows[idx], positions=positions[idx],
                 concept_dirs=concept_dirs, control_dirs=control_dirs, other_dirs=other_dirs,
                 matched_noise=matched_noise)
