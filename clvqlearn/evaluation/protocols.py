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

Both return an :class:`Outcome`: the predictions before, after, with the
random control and with another concept, and how much of the edited
vectors' norm the projections removed (:func:`removed_norm`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .probe import cross_val_probe
from .projection import orthonormalize, project_out_rows
from .splice import splice_logits

__all__ = ["Outcome", "probe_protocol", "removed_norm", "splice_protocol"]


@dataclass
class Outcome:
    """Predictions of one protocol: clean, concept removed, random control, other concept."""

    before: np.ndarray
    after: np.ndarray
    control: np.ndarray
    other: np.ndarray
    truth: np.ndarray
    removed: float
    control_removed: float
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
        "other": project_out_rows(reps, kept.other_dirs),
    }
    preds, folds = cross_val_probe(reps, goal, variants, probe=probe, n_splits=n_splits,
                                   random_state=rng.randint(2**31 - 1), probe_params=probe_params,
                                   return_folds=True)
    extra = {"pooling": pooling_used, "probe": probe if isinstance(probe, str) else type(probe).__name__,
             "n_splits": int(n_splits)}
    return Outcome(preds["clean"], preds["after"], preds["control"], preds["other"], goal,
                    removed_norm(reps, kept.concept_dirs), removed_norm(reps, kept.control_dirs), extra,
                    folds=folds)


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

    def run(dirs):
        logits = splice_logits(model, tokenizer, kept.texts, layer=None if dirs is None else layer,
                               directions=dirs, positions=pos, max_length=max_length, batch_size=batch_size)
        return logits.argmax(axis=1)

    before = run(None)
    after, control, other = run(kept.concept_dirs), run(kept.control_dirs), run(kept.other_dirs)
    if splice_positions == "salient":
        edited = np.asarray(states[kept.rows], dtype=np.float64)
        concept_sets, control_sets = kept.concept_dirs, kept.control_dirs
    else:  # every extracted token of the sentence
        token_rows = [np.arange(pairs.offsets[i], pairs.offsets[i + 1]) for i in kept.idx]
        edited = np.asarray(states[np.concatenate(token_rows)], dtype=np.float64)
        concept_sets = [D for D, r in zip(kept.concept_dirs, token_rows) for _ in r]
        control_sets = [D for D, r in zip(kept.control_dirs, token_rows) for _ in r]
    extra = {"splice_positions": splice_positions, "classifier": str(clf.path)}
    return Outcome(before, after, control, other, truth, removed_norm(edited, concept_sets),
                    removed_norm(edited, control_sets), extra)


def removed_norm(vectors: np.ndarray, direction_sets) -> float:
    """Mean ||x - x'|| / ||x|| over rows."""
    fractions = []
    for x, D in zip(vectors, direction_sets):
        norm = float(np.linalg.norm(x))
        if norm == 0 or np.asarray(D).size == 0:
            fractions.append(0.0)
            continue
        Q = orthonormalize(D)
        fractions.append(float(np.linalg.norm(Q @ x)) / norm)
    return float(np.mean(fractions)) if fractions else float("nan")
