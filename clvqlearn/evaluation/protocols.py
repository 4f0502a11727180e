"""Removal protocols: predictions with a sentence's concept projected out, and the two controls.

Step 3 of the concept-removal evaluation (METHOD.md, "Evaluation axis 1"):

* :func:`probe_protocol` (the paper's): project the directions out of the
  sentence representation at the concept's layer ([CLS] for encoders, the
  mean of the token vectors for decoders); a probe trained on clean
  representations (:mod:`clvqlearn.evaluation.probe`) is tested on the
  edited ones, with stratified cross-validation;
* :func:`splice_protocol`: project them out of the hidden state INSIDE the
  classifier's forward pass (:mod:`clvqlearn.evaluation.splice`) and read
  its own head.

Both return an :class:`Outcome`: the predictions before, after (the
concept removed) and under the three controls (random directions of the
same rank, a random direction that removes the same share of each edited
vector's norm, another concept), and how much of the edited vectors' norm
each edit removed (:func:`edit_shares`: measured on the edited vectors, so
a reader can check that the norm-matched control matches).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .probe import cross_val_probe
from .projection import norm_matched_removal, orthonormalize, project_out, project_out_rows, removed_norms
from .splice import splice_logits

__all__ = ["VARIANTS", "Outcome", "edit_shares", "probe_protocol", "removed_norm", "splice_protocol"]

#: The edits of every protocol: the concept removed, and the three controls.
VARIANTS = ("after", "control", "norm_matched", "other")


@dataclass
class Outcome:
    """Predictions of one protocol: clean (``"before"``) and one per edit in :data:`VARIANTS`.

    ``removed[name]`` is the mean of ``||x - x'|| / ||x||`` over the edited
    vectors (the sentence vectors, or the hidden states of the splice);
    ``sentence_removed[name]`` the same per sentence (the mean over the
    sentence's edited vectors).
    """

    predictions: dict
    truth: np.ndarray
    removed: dict
    sentence_removed: dict
    extra: dict
    folds: np.ndarray | None = None  # probe protocol: the test fold of every sentence


def probe_protocol(extractor, pairs, states, layer, kept, goal, *, pooling, probe, probe_params, n_splits,
                    rng) -> Outcome:
    """The paper's protocol: project out of the sentence vector, probe trained on clean vectors."""
    pooling_used = ("mean" if extractor.is_decoder_ else "cls") if pooling == "auto" else pooling
    if pooling_used == "cls":
        reps = extractor.sentence_vectors(kept.texts, layer=layer, pooling="first").astype(np.float64)
    else:
        off = pairs.offsets
        reps = np.stack([np.asarray(states[off[i] : off[i + 1]], dtype=np.float64).mean(axis=0) for i in kept.idx])
    variants = {
        "after": project_out_rows(reps, kept.concept_dirs),
        "control": project_out_rows(reps, kept.control_dirs),
        "norm_matched": norm_matched_removal(reps, removed_norms(reps, kept.concept_dirs), kept.matched_noise),
        "other": project_out_rows(reps, kept.other_dirs),
    }
    preds, folds = cross_val_probe(reps, goal, variants, probe=probe, n_splits=n_splits,
                                   random_state=rng.randint(2**31 - 1), probe_params=probe_params,
                                   return_folds=True)
    extra = {"pooling": pooling_used, "probe": probe if isinstance(probe, str) else type(probe).__name__,
             "n_splits": int(n_splits)}
    shares = {name: edit_shares(reps, edited) for name, edited in variants.items()}
    return Outcome({"before": preds["clean"], **{name: preds[name] for name in VARIANTS}}, goal,
                    {name: float(v.mean()) for name, v in shares.items()}, shares, extra, folds=folds)


def splice_protocol(extractor, clf, pairs, states, layer, kept, truth, *, device, splice_positions, max_length,
                     batch_size) -> Outcome:
    """Edit the hidden state inside the classifier's forward pass and read its own head."""
    model, tokenizer = clf.load(device)
    width = states.shape[1]
    hidden = int(model.config.get_text_config().hidden_size)
    if hidden != width:
        raise ValueError(
            f"the classifier's hidden size ({hidden}) differs from the extracted layer's ({width}); "
            "the concepts must come from the classifier's own hidden states."
        )
    if Path(os.fspath(extractor.model)).expanduser().resolve() != Path(clf.path).resolve():
        warnings.warn(
            f"The concepts were learned on hidden states of {extractor.model!r} but the splice edits the "
            f"classifier at {clf.path}; extract from the classifier (LayerPairExtractor(model=str(clf.path))) "
            "so the directions refer to the network that is edited.",
            UserWarning,
            stacklevel=3,
        )
    pos = kept.positions if splice_positions == "salient" else None

    def run(dirs, noise=None):
        logits = splice_logits(model, tokenizer, kept.texts, layer=None if dirs is None else layer,
                               directions=dirs, positions=pos, norm_matched_noise=noise, max_length=max_length,
                               batch_size=batch_size)
        return logits.argmax(axis=1)

    preds = {"before": run(None), "after": run(kept.concept_dirs), "control": run(kept.control_dirs),
             "norm_matched": run(kept.concept_dirs, kept.matched_noise), "other": run(kept.other_dirs)}
    if splice_positions == "salient":
        token_rows = [np.array([r]) for r in kept.rows]
    else:  # every extracted token of the sentence
        token_rows = [np.arange(pairs.offsets[i], pairs.offsets[i + 1]) for i in kept.idx]
    per_token = _splice_shares(states, token_rows, kept)
    extra = {"splice_positions": splice_positions, "classifier": str(clf.path)}
    return Outcome(preds, truth, {name: float(np.concatenate(v).mean()) for name, v in per_token.items()},
                    {name: np.array([x.mean() for x in v]) for name, v in per_token.items()}, extra)


def _splice_shares(states, token_rows, kept) -> dict:
    """Per variant and sentence: the share of the norm each edit removes from the sentence's edited vectors.

    Measured on the extracted hidden states (those the concepts were read
    from), with the splice's own edits: per sentence, one direction set
    for all its edited vectors, and one Gaussian draw for the norm-matched
    control.
    """
    out = {name: [] for name in VARIANTS}
    for j, rows in enumerate(token_rows):
        X = np.asarray(states[rows], dtype=np.float64)
        edits = {"after": _project(X, kept.concept_dirs[j]), "control": _project(X, kept.control_dirs[j]),
                 "other": _project(X, kept.other_dirs[j])}
        removed = np.linalg.norm(X - edits["after"], axis=1)
        edits["norm_matched"] = norm_matched_removal(X, removed, kept.matched_noise[j])
        for name in VARIANTS:
            out[name].append(edit_shares(X, edits[name]))
    return out


def _project(X: np.ndarray, D) -> np.ndarray:
    return X if np.asarray(D).size == 0 else project_out(X, D)


def edit_shares(X, X_edited) -> np.ndarray:
    """Per row, the share of its norm an edit removed: ``||x - x'|| / ||x||`` (0 for a zero row).

    Examples
    --------
    >>> edit_shares([[3.0, 4.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]).tolist()
    [0.6, 0.0]
    """
    X = np.asarray(X, dtype=np.float64)
    norm = np.linalg.norm(X, axis=1)
    moved = np.linalg.norm(X - np.asarray(X_edited, dtype=np.float64), axis=1)
    return np.divide(moved, norm, out=np.zeros_like(norm), where=norm > 0)


def removed_norm(vectors: np.ndarray, direction_sets) -> float:
    """Mean ||x - x'|| / ||x|| over rows when each row's directions are projected out."""
    fractions = []
    for x, D in zip(vectors, direction_sets):
        norm = float(np.linalg.norm(x))
        if norm == 0 or np.asarray(D).size == 0:
            fractions.append(0.0)
            continue
        Q = orthonormalize(D)
        fractions.append(float(np.linalg.norm(Q @ x)) / norm)
    return float(np.mean(fractions)) if fractions else float("nan")
