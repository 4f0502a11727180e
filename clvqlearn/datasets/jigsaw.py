"""Jigsaw toxic comments: binary toxicity of Wikipedia talk-page comments."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import TextDataset
from ._io import data_file, drop_empty, parse_labels, read_csv, read_json, resolve

LABEL_NAMES = ["non-toxic", "toxic"]
KAGGLE_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
SOURCE = (
    "the CLVQ-VAE paper's reference implementation (its balanced Jigsaw subset: "
    "jigsaw/train.json 9,000 rows and jigsaw/dev.json 784 rows, JSON lists of "
    "{idx, original_idx, id, sentence, label}); or Kaggle's 'Toxic Comment "
    "Classification Challenge' train.csv "
    "(https://www.kaggle.com/c/jigsaw-toxic-comment-classification-challenge), "
    "passed as path="
)
DESCRIPTION = (
    "Jigsaw toxic comment classification: Wikipedia talk-page comments labelled "
    "toxic / non-toxic (Kaggle 'Toxic Comment Classification Challenge', Jigsaw & "
    "Google, 2018). The shared files are the balanced subset used by the CLVQ-VAE "
    "paper. Text CC-BY-SA (Wikipedia), labels CC0."
)


def load_jigsaw(split: str = "train", *, data_home=None, path=None, label: str = "toxic",
                n_per_class: int | None = None, random_state=None) -> TextDataset:
    """Load Jigsaw toxic comments: binary labels non-toxic (0) / toxic (1).

    Reads ``<data home>/jigsaw/<split>.json`` (the paper's balanced subset:
    JSON list of ``{idx, original_idx, id, sentence, label}`` with label
    ``"0"`` / ``"1"``), or ``path``: such a JSON file, a folder holding
    ``<split>.json``, or Kaggle's ``train.csv``
    (``id,comment_text,toxic,severe_toxic,obscene,threat,insult,identity_hate``;
    a folder holding only ``train.csv`` works for ``split="train"``).

    Parameters
    ----------
    split : {"train", "dev"}, default="train"
        The split (9,000 rows, 4,500/4,500; or 784 rows, 391/393).
    data_home : str or path-like, optional
        Data home; default ``$CLVQLEARN_DATA`` or ``~/clvqlearn_data``.
    path : str or path-like, optional
        A JSON or Kaggle CSV file, or a folder; overrides the data home.
    label : str, default="toxic"
        Kaggle CSV only: the column that gives the label, or ``"any"`` for
        "any of the six toxicity columns is 1".
    n_per_class : int, optional
        Return a class-balanced random subset with this many comments per
        class (:meth:`TextDataset.subset`), e.g. to build the paper's 4,500 +
        4,500 subset from Kaggle's 159,571 comments.
    random_state : int, RandomState instance or None
        Seed of that subset.

    Returns
    -------
    TextDataset
        ``ids`` are the Jigsaw comment ids.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If the file has the wrong fields or a label other than 0 / 1.

    Examples
    --------
    >>> from clvqlearn.datasets import load_jigsaw
    >>> ds = load_jigsaw("dev")  # doctest: +SKIP
    >>> ds.class_counts()  # doctest: +SKIP
    {'non-toxic': 391, 'toxic': 393}
    """
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    if label != "any" and label not in KAGGLE_LABELS:
        raise ValueError(f"label must be 'any' or one of {KAGGLE_LABELS}, got {label!r}")
    filename = f"{split}.json"
    if path is not None and Path(path).is_dir() and not (Path(path) / filename).exists() \
            and split == "train" and (Path(path) / "train.csv").is_file():
        filename = "train.csv"
    file = resolve(path, data_file(data_home, "jigsaw", f"{split}.json"), filename,
                   what=f"Jigsaw {split} split", get=SOURCE, data_home=data_home)
    if file.suffix.lower() == ".csv":
        ds = _read_kaggle_csv(file, label=label, split=split)
    else:
        ds = _read_paper_json(file, split=split)
    if n_per_class is not None:
        ds = ds.subset(n_per_class=n_per_class, random_state=random_state)
    return ds


def _read_paper_json(file: Path, *, split: str) -> TextDataset:
    rows = read_json(file)
    if not isinstance(rows, list):
        raise ValueError(f"{file}: expected a JSON list of objects, got {type(rows).__name__}")
    texts, raw_labels, ids = [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "sentence" not in row or "label" not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(
                f"{file}: item {i} must be an object with 'sentence' and 'label' "
                f"(and 'id'); got {keys}"
            )
        if not isinstance(row["sentence"], str):
            raise ValueError(f"{file}: item {i} has a non-string sentence")
        texts.append(row["sentence"])
        raw_labels.append(row["label"])
        ids.append(str(row.get("id", row.get("idx", i))))
    labels = parse_labels(raw_labels, {0: 0, 1: 1}, file, row_offset=0)
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=file)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES), ids=ids,
                       name="jigsaw", split=split, description=DESCRIPTION, source=str(file))


def _read_kaggle_csv(file: Path, *, label: str, split: str) -> TextDataset:
    frame = read_csv(file)
    header = [v.strip() for v in frame.iloc[0]]
    needed = ["comment_text"] + (list(KAGGLE_LABELS) if label == "any" else [label])
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"{file}: not Kaggle's Jigsaw train.csv layout; missing columns {missing} "
            f"(header: {header[:8]})"
        )
    frame.columns = header
    frame = frame.iloc[1:]
    columns = list(KAGGLE_LABELS) if label == "any" else [label]
    parsed = np.stack([
        parse_labels(frame[c].tolist(), {0: 0, 1: 1}, file, what=f"{c!r} value", row_offset=2,
                     lines=frame.index.tolist())
        for c in columns
    ])
    labels = parsed.max(axis=0)
    texts = frame["comment_text"].tolist()
    ids = frame["id"].tolist() if "id" in header else [str(i) for i in range(len(texts))]
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=file)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES), ids=ids,
                       name="jigsaw", split=split, description=DESCRIPTION, source=str(file))
