"""Score the human study (evaluation axis 3) and run an LLM annotator on it.

:func:`score_study` reads one or more annotators' exported answer files
(JSON or CSV from the study page of :mod:`clvqlearn.report.study`) and
computes, per method, the prediction-recovery accuracy (the share of answers
equal to the model's prediction) with a bootstrap CI, plus agreement between
annotators.  :func:`llm_annotate` answers the same items with an LLM through
either backend of :mod:`clvqlearn.evaluation.llm` and returns an answer file
in the same format, scored by the same scorer.

Examples
--------
>>> from clvqlearn.report.study import make_study
>>> study = make_study(["s0", "s1"], [0, 1], {"m": [{"kind": "words", "data": ["bad"]},
...                                                 {"kind": "words", "data": ["good"]}]},
...                    label_names=["neg", "pos"], seed=0)
>>> answers = {"format": "concept-study-answers", "study_id": study.study_id, "annotator": "ann",
...            "answers": [{"item_id": i, "answer": study.key[i]["prediction"]} for i in study.key]}
>>> float(score_study(study, [answers]).per_method.loc["m", "accuracy"])
1.0
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._bootstrap import percentile_interval, resample_indices
from ..report.study import Study
from ._jsonl import append_record, done_fingerprints, read_lines
from .judge import ask, fingerprint

__all__ = ["StudyScore", "annotator_prompt", "llm_annotate", "parse_answer", "read_answers", "score_study"]

_ANSWERS = "concept-study-answers"


def _from_csv(text: str, source: str) -> dict:
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"study_id", "item_id", "answer"} <= set(rows[0]):
        raise ValueError(f"{source}: a CSV answer file needs the columns study_id, annotator, item_id, answer.")
    if not rows:
        raise ValueError(f"{source}: the answer file holds no answers.")
    ids = {r["study_id"] for r in rows}
    if len(ids) > 1:
        raise ValueError(f"{source}: answers from several studies ({sorted(ids)}) in one file.")
    return {"format": _ANSWERS, "study_id": rows[0]["study_id"], "annotator": rows[0].get("annotator") or "anonymous",
            "answers": [{"item_id": r["item_id"], "answer": r["answer"]} for r in rows]}


def _load_one(source) -> tuple[dict, str]:
    if isinstance(source, dict):
        return source, f"answers of {source.get('annotator', '?')}"
    path = Path(source)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return _from_csv(text, str(path)), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON answer file ({exc}).") from exc
    return data, str(path)


def read_answers(sources, study: Study) -> pd.DataFrame:
    """Answers of one or more annotators, checked against ``study``.

    Parameters
    ----------
    sources : path, dict, or a list of them
        Exported answer files (``.json`` or ``.csv``) or their parsed dicts.
    study : Study

    Returns
    -------
    pandas.DataFrame
        Columns ``annotator``, ``item_id``, ``answer``, ``method``,
        ``prediction``, ``label``.  An annotator name seen twice gets a
        suffix (``"ann#2"``).

    Raises
    ------
    ValueError
        For a file from another study (another seed or other items), item
        ids the study does not have, answers that are not a label, or no
        answers at all.
    """
    sources = [sources] if isinstance(sources, (str, Path, dict)) else list(sources)
    if not sources:
        raise ValueError("No answer files given.")
    rows, seen = [], {}
    for source in sources:
        data, where = _load_one(source)
        if not isinstance(data, dict) or data.get("format") != _ANSWERS:
            raise ValueError(f"{where}: not a clvqlearn study answer file.")
        if data.get("study_id") != study.study_id:
            raise ValueError(f"{where} answers study {data.get('study_id')!r}, not {study.study_id!r}: it comes from "
                             "another study (another seed or other items); score it with that study's key.")
        name = str(data.get("annotator") or "anonymous")
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        for ans in data.get("answers", []):
            item_id, answer = str(ans.get("item_id")), ans.get("answer")
            if item_id not in study.key:
                raise ValueError(f"{where}: item {item_id!r} is not in study {study.study_id!r}.")
            if answer not in study.label_names:
                raise ValueError(f"{where}: answer {answer!r} to item {item_id} is not one of {study.label_names}.")
            key = study.key[item_id]
            rows.append((name, item_id, answer, key["method"], key["prediction"], key["label"]))
    frame = pd.DataFrame(rows, columns=["annotator", "item_id", "answer", "method", "prediction", "label"])
    if frame.empty:
        raise ValueError("The answer files hold no answers.")
    return frame.drop_duplicates(["annotator", "item_id"], keep="last").reset_index(drop=True)


@dataclass
class StudyScore:
    """What :func:`score_study` returns.

    Attributes
    ----------
    per_method : DataFrame
        Indexed by method: ``accuracy`` (answers equal to the model's
        prediction), ``low``, ``high`` (bootstrap CI over items),
        ``label_accuracy`` (answers equal to the gold label, when known),
        ``n_answers``, ``n_items``, ``coverage`` (answered share of
        item x annotator).
    per_annotator : DataFrame
        Accuracy and number of answers per (annotator, method).
    agreement : dict
        ``krippendorff_alpha`` (nominal), ``cohen_kappa`` (mean over
        annotator pairs), ``percent_agreement``, ``n_annotators``,
        ``n_shared_items``; NaN with fewer than two annotators.
    answers : DataFrame
        The :func:`read_answers` table.
    """

    per_method: pd.DataFrame
    per_annotator: pd.DataFrame
    agreement: dict
    answers: pd.DataFrame


def _boot_accuracy(frame: pd.DataFrame, n_boot: int, ci: float, rng) -> tuple[float, float]:
    by_item = frame.groupby("item_id")["correct"].agg(["sum", "count"]).to_numpy(dtype=float)
    if len(by_item) == 0:
        return float("nan"), float("nan")
    idx = resample_indices(len(by_item), n_boot, rng)
    low, high = percentile_interval(by_item[idx, 0].sum(1) / by_item[idx, 1].sum(1), ci)
    return float(low), float(high)


def _agreement(answers: pd.DataFrame, label_names) -> dict:
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    wide = answers.pivot(index="annotator", columns="item_id", values="answer")
    out = {"n_annotators": int(wide.shape[0]), "krippendorff_alpha": float("nan"), "cohen_kappa": float("nan"),
           "percent_agreement": float("nan"), "n_shared_items": 0}
    if wide.shape[0] < 2:
        return out
    codes = wide.apply(lambda col: col.map({n: i for i, n in enumerate(label_names)})).to_numpy(dtype=float)
    shared = ~np.isnan(codes).any(axis=0)
    out["n_shared_items"] = int(shared.sum())
    if (~np.isnan(codes)).sum(axis=0).max() >= 2 and len(np.unique(codes[~np.isnan(codes)])) > 1:
        out["krippendorff_alpha"] = float(krippendorff.alpha(reliability_data=codes, level_of_measurement="nominal"))
    kappas, agree = [], []
    for a, b in itertools.combinations(range(codes.shape[0]), 2):
        both = ~np.isnan(codes[a]) & ~np.isnan(codes[b])
        if both.sum():
            agree.append(float((codes[a, both] == codes[b, both]).mean()))
            kappas.append(cohen_kappa_score(codes[a, both], codes[b, both], labels=list(range(len(label_names)))))
    out["percent_agreement"] = float(np.mean(agree)) if agree else float("nan")
    out["cohen_kappa"] = float(np.nanmean(kappas)) if kappas and not np.all(np.isnan(kappas)) else float("nan")
    return out


def score_study(study: Study, sources, *, n_boot: int = 2000, ci: float = 0.95, random_state=0) -> StudyScore:
    """Prediction-recovery accuracy per method, with CIs, and annotator agreement.

    Parameters
    ----------
    study : Study or path
        The study (or its key file).
    sources : path, dict or list of them
        Answer files (see :func:`read_answers`).
    n_boot : int, default=2000
    ci : float, default=0.95
    random_state : int or None
        Seeds the bootstrap.

    Returns
    -------
    StudyScore
    """
    study = study if isinstance(study, Study) else Study.load(study)
    answers = read_answers(sources, study)
    answers["correct"] = (answers["answer"] == answers["prediction"]).astype(float)
    has_label = answers["label"].notna()
    answers["label_correct"] = np.where(has_label, answers["answer"] == answers["label"], np.nan)
    rng = np.random.default_rng(random_state)
    items_per_method = pd.Series([k["method"] for k in study.key.values()]).value_counts()
    n_annot = answers["annotator"].nunique()
    rows = {}
    for method in sorted(items_per_method.index):
        part = answers[answers["method"] == method]
        low, high = _boot_accuracy(part, n_boot, ci, rng)
        rows[method] = {"accuracy": part["correct"].mean() if len(part) else float("nan"), "low": low, "high": high,
                        "label_accuracy": part["label_correct"].mean() if part["label_correct"].notna().any()
                        else float("nan"),
                        "n_answers": len(part), "n_items": int(items_per_method[method]),
                        "coverage": len(part) / (items_per_method[method] * n_annot)}
    per_method = pd.DataFrame.from_dict(rows, orient="index")
    per_method.index.name = "method"
    per_annotator = answers.groupby(["annotator", "method"])["correct"].agg(accuracy="mean", n_answers="count")
    return StudyScore(per_method.sort_values("accuracy", ascending=False), per_annotator,
                      _agreement(answers, study.label_names), answers)


def annotator_prompt(item: dict, label_names, *, task: str = "") -> str:
    """The LLM annotator's question for one study item (same content as the page)."""
    if item["kind"] == "sentences":
        shown = "Example sentences in which the concept occurs (its token in [[ ]]):\n" + "\n".join(
            f'- "{s}"' for s in item["data"])
    else:
        shown = "The concept's most frequent words: " + ", ".join(item["data"])
    sentence = f'\nThe sentence: "{item["sentence"]}"' if item.get("sentence") else ""
    # the fixed question comes first, so a local model can reuse its cache across items
    return (f"A text classifier{(' for ' + task) if task else ''} read a sentence and made a prediction. For the most "
            "important word of that sentence it used a concept: a group of words it treats alike. Guess which "
            "label the classifier predicted. Possible answers: " + ", ".join(label_names)
            + '\nReply with JSON only: {"answer": "<one of the possible answers>"}\n\n'
            f"{shown}{sentence}")


def parse_answer(text: str, label_names) -> str | None:
    """The label named in an annotator's answer, or None.

    Reads ``{"answer": ...}`` first, then the first label name in the text.

    Examples
    --------
    >>> parse_answer('{"answer": "Positive"}', ["negative", "positive"])
    'positive'
    >>> parse_answer("I would say negative, not positive.", ["negative", "positive"])
    'negative'
    >>> parse_answer("no idea", ["negative", "positive"]) is None
    True
    """
    text = str(text or "")
    lower = {n.lower(): n for n in label_names}
    m = re.search(r'"answer"\s*:\s*"([^"]*)"', text, flags=re.IGNORECASE)
    if m and m.group(1).strip().lower() in lower:
        return lower[m.group(1).strip().lower()]
    hits = [(m.start(), name) for key, name in lower.items()
            for m in [re.search(r"(?<![\w-])" + re.escape(key) + r"(?![\w-])", text, flags=re.IGNORECASE)] if m]
    return min(hits)[1] if hits else None


def llm_annotate(study: Study, backend, path, *, annotator: str | None = None, task: str = "",
                 n_attempts: int = 3, random_state: int = 0) -> dict:
    """Answer every study item with an LLM; resumable JSONL log; returns an answer file.

    Parameters
    ----------
    study : Study
    backend : HFChatBackend or OpenAIBackend
    path : str or Path
        JSONL log of every item (raw answers, errors); items already in it
        for this annotator are not asked again.
    annotator : str, optional
        Default ``"llm:" + backend.name``.
    task : str
        A few words on the task for the prompt (e.g. ``"movie-review sentiment"``).
    n_attempts : int, default=3
        Tries per item before it is left unanswered.
    random_state : int

    Returns
    -------
    dict
        In the study page's export format; pass it (or its JSON file) to
        :func:`score_study`.  Items without a readable answer are absent.
    """
    if not study.items:
        raise ValueError("The study has no items.")
    path = Path(path)
    annotator = annotator or f"llm:{backend.name}"
    done = done_fingerprints(path, annotator)
    for index, item in enumerate(study.items):
        prompt = annotator_prompt(item, study.label_names, task=task)
        key = fingerprint(study.study_id, prompt)
        if done.get(item["id"]) == key:
            continue
        answer, raw, errors = ask(backend, prompt,
                                  lambda text: parse_answer(text, study.label_names), n_attempts=n_attempts,
                                  seed=random_state * 1000 + index, schema=(["answer"], list(study.label_names)))
        append_record(path, {"item_id": item["id"], "judge": annotator, "fingerprint": key,
                             "study_id": study.study_id, "answer": answer,
                             "status": "ok" if answer else "missing", "raw": raw, "errors": errors})
    answers = {}
    for rec in read_lines(path):
        if rec.get("judge") == annotator and rec.get("study_id") == study.study_id:
            answers[rec["item_id"]] = rec.get("answer")  # the latest record of an item wins
    return {"format": _ANSWERS, "study_id": study.study_id, "annotator": annotator, "n_items": len(study.items),
            "answers": [{"item_id": i, "answer": a} for i, a in answers.items() if a]}
