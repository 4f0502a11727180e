"""The LLM-judge protocol (evaluation axis 2 of METHOD.md).

For every evaluation sentence, the concepts that all methods assign to its
salient token are shown together to an LLM, which rates each on a 1-3
rubric (3 = plausibly explains the model's prediction) with guidance written
for the data set.  Method names are hidden (the concepts are "Concept A",
"Concept B", ...) and their order is shuffled per item with a seed.  The
answer is JSON, parsed leniently; an unreadable answer is retried, then
recorded as missing (the run never stops on one bad answer; only a refused
API key stops it at once).  Every result is appended to a JSONL file at
once, so an interrupted run resumes where it stopped, and asks again the
items that are missing because the backend failed.

Outputs: :func:`rating_summary` (mean rating and rank-first share per method,
bootstrap CIs) and :func:`judge_agreement` (Krippendorff's alpha on the
interval scale, mean pairwise Pearson and Spearman, Kendall's W).

Examples
--------
>>> item = JudgeItem("s0", "A dull film.", "Negative review",
...                  {"clvq": {"kind": "words", "data": ["dull", "boring"]},
...                   "kmeans": {"kind": "words", "data": ["film", "movie"]}})
>>> prompt, order = judge_prompt(item, random_state=0)
>>> sorted(order), "clvq" in prompt
(['clvq', 'kmeans'], False)
>>> parse_ratings('{"A": {"rating": 3, "reason": "..."}, "B": {"rating": 1}}', ["A", "B"])
{'A': 3, 'B': 1}
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .._bootstrap import percentile_interval, resample_indices
from ..report.study import check_representation
from ._jsonl import append_record, done_fingerprints, read_lines
from .llm import BackendAuthError, BackendError

__all__ = ["GUIDANCE", "JudgeItem", "concept_representations", "judge_agreement", "judge_prompt",
           "make_judge_items", "parse_ratings", "rating_summary", "read_judgments", "run_judge"]

#: Per-data-set guidance for the judge (our wording of the paper's intent).
GUIDANCE = {
    "eraser_movie": (
        "Movie reviews are often mixed. For a positive prediction, accept concepts that point to liking, "
        "praise or recommendation even if some criticism is present; for a negative prediction, concepts that "
        "point to disappointment or criticism. Judge the dominant direction, not purity."),
    "jigsaw": (
        "Toxicity is hard to judge. Strong emotion or criticism is not toxicity by itself. For a toxic "
        "prediction, accept concepts that suggest insults, threats or abuse; for a non-toxic prediction, concepts "
        "that suggest civil discussion. Be lenient with borderline cases."),
    "ag_news": (
        "News topics overlap (a tech company's earnings is business and technology). Accept concepts that "
        "connect to the predicted topic even if they could fit another: World (countries, politics, conflict), "
        "Sports (teams, games, players), Business (companies, markets, money), Sci/Tech (technology, research)."),
}

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_RETRY_NOTE = "\n\nYour previous answer could not be read. Reply with the JSON object only, nothing else."


@dataclass
class JudgeItem:
    """One evaluation sentence with every method's concept for its salient token.

    Attributes
    ----------
    item_id : str
    sentence : str
    prediction : str
        What the model predicted, in words (e.g. ``"Positive review"``).
    concepts : dict of str -> dict
        Per method ``{"kind": "words" | "sentences", "data": [str, ...]}``;
        ``None`` (or empty data) when the method has no concept to show
        (it is then left out of the item and gets no rating).
    """

    item_id: str
    sentence: str
    prediction: str
    concepts: dict


def concept_representations(table: pd.DataFrame, concept_ids) -> list:
    """What a judge sees for each given concept, from a descriptions table.

    Parameters
    ----------
    table : DataFrame
        From :func:`~clvqlearn.report.descriptions.describe_concepts`.
    concept_ids : sequence of int
        One concept per item (-1 = the item has no salient token).

    Returns
    -------
    list of dict or None
        ``{"kind", "data"}`` per item; None for -1 and for empty concepts.
    """
    out = []
    for concept in np.asarray(concept_ids, dtype=np.int64).tolist():
        if concept < 0 or concept not in table.index or table.loc[concept, "kind"] == "empty":
            out.append(None)
            continue
        row = table.loc[concept]
        out.append({"kind": str(row["kind"]), "data": [str(x) for x in row["representation"]]})
    return out


def make_judge_items(sentences, predictions, concepts: dict, *, item_ids=None) -> list:
    """Build :class:`JudgeItem` objects.

    Parameters
    ----------
    sentences : sequence of str
    predictions : sequence of str
        The model's prediction of each sentence, in words.
    concepts : dict of str -> list
        Per method, one representation per sentence (see
        :func:`concept_representations`).
    item_ids : sequence of str, optional
        Default ``"0"``, ``"1"``, ...

    Returns
    -------
    list of JudgeItem

    Raises
    ------
    TypeError
        When ``concepts`` or a representation has the wrong shape.
    ValueError
        When lengths differ, ids repeat, or no sentence has a concept.
    """
    if not isinstance(concepts, dict) or not concepts:
        raise TypeError(f"concepts must be a non-empty dict {{method: one representation per sentence}}; got "
                        f"{type(concepts).__name__}.")
    n = len(sentences)
    for method, reps in concepts.items():
        if isinstance(reps, (str, dict)) or not hasattr(reps, "__len__"):
            raise TypeError(f"concepts[{method!r}] must be a list with one representation per sentence; "
                            f"got {type(reps).__name__}.")
    if len(predictions) != n or any(len(v) != n for v in concepts.values()):
        raise ValueError("sentences, predictions and every method's concepts must have the same length.")
    ids = [str(i) for i in range(n)] if item_ids is None else [str(i) for i in item_ids]
    if len(set(ids)) != n:
        raise ValueError("item_ids must be unique.")
    items = [JudgeItem(ids[i], str(sentences[i]), str(predictions[i]),
                       {m: reps[i] for m, reps in concepts.items()}) for i in range(n)]
    _check_items(items)
    return items


def _check_items(items: list) -> None:
    """Every item a JudgeItem with well-formed concepts, and at least one concept to show."""
    for item in items:
        if not isinstance(item, JudgeItem):
            raise TypeError(f"items must be JudgeItem objects (see make_judge_items); got {type(item).__name__}.")
        if not isinstance(item.concepts, dict):
            raise TypeError(f"item {item.item_id!r}: concepts must be a dict {{method: representation}}; got "
                            f"{type(item.concepts).__name__}.")
        for method, rep in item.concepts.items():
            check_representation(rep, f"item {item.item_id!r}, method {method!r}: the concept")
    if not any(_shown(item) for item in items):
        raise ValueError("No item has a concept to show (every representation is None or has no data): "
                         "nothing to judge.")


def _shown(item: JudgeItem) -> list:
    return [m for m, c in item.concepts.items() if c and c.get("data")]


def judge_prompt(item: JudgeItem, *, guidance: str = "", random_state=0) -> tuple[str, list]:
    """The judge prompt of one item and the method behind each letter.

    Parameters
    ----------
    item : JudgeItem
    guidance : str
        Data-set guidance (see :data:`GUIDANCE`).
    random_state : int or sequence of int
        Seeds the order of the methods.

    Returns
    -------
    prompt : str
    order : list of str
        ``order[i]`` is the method shown as letter ``"ABC..."[i]``.
    """
    order = _shown(item)
    rng = np.random.default_rng(random_state)
    order = [order[i] for i in rng.permutation(len(order))]
    blocks = []
    for letter, method in zip(_LETTERS, order):
        rep = item.concepts[method]
        if rep["kind"] == "sentences":
            body = "Example sentences (the concept's token in [[ ]]):\n" + "\n".join(f'  - "{s}"' for s in rep["data"])
        else:
            body = "Words: " + ", ".join(rep["data"])
        blocks.append(f"Concept {letter}\n{body}")
    example = ", ".join(f'"{letter}": {{"rating": 2, "reason": "..."}}' for letter in _LETTERS[:len(order)])
    # the fixed instructions come first, so a local model can reuse their cache across items
    prompt = (
        "You evaluate explanations of a text classifier. A concept is a group of words (or sentences) that "
        "the model treats alike. Rate how well each concept gives a plausible reason for the model's "
        "prediction on the sentence.\n"
        "Rubric:\n3 = clearly connected to the prediction; the theme is recognisable and supports it.\n"
        "2 = partly connected: broad, mixed or only somewhat relevant.\n"
        "1 = unrelated to the prediction, or contradicts it.\n"
        "Concepts that overlap a lot should get the same rating.\n"
        + (f"{guidance}\n" if guidance else "")
        + "Answer with one JSON object and nothing else.\n\n"
        f'Sentence: "{item.sentence}"\nModel prediction: {item.prediction}\n\n'
        + "\n\n".join(blocks)
        + f"\n\nFormat:\n{{{example}}}"
    )
    return prompt, order


def _letter(key) -> str | None:
    m = re.fullmatch(r"\s*(?:concept|config(?:uration)?)?[\s_\-:]*([A-Za-z])\s*", str(key), flags=re.IGNORECASE)
    return m.group(1).upper() if m else None


def _rating(value) -> int | None:
    if isinstance(value, dict):
        value = next((v for k, v in value.items() if str(k).lower() in ("rating", "score")), None)
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip() in ("1", "2", "3"):
        value = int(value.strip())
    return value if value in (1, 2, 3) else None


def _json_objects(text: str):
    text = re.sub(r"```(?:json)?", "", text)
    start = text.find("{")
    while start != -1:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                try:
                    yield json.loads(text[start:end + 1])
                except json.JSONDecodeError:
                    pass
                break
        start = text.find("{", start + 1)


def parse_ratings(text: str, letters) -> dict | None:
    """Read ``{letter: rating}`` from a judge's answer, or None if incomplete.

    Accepts a JSON object keyed ``"A"``, ``"Concept A"``, ``"Config_A"``,
    ... with values ``3``, ``"3"`` or ``{"rating": 3, ...}`` (code fences
    and text around it are ignored), and falls back to lines such as
    ``Concept A: 3``.  Every letter must get a rating in 1-3.

    Examples
    --------
    >>> parse_ratings("Sure! ```json\\n{\\"Concept A\\": \\"2\\", \\"Concept B\\": 3}```", "AB")
    {'A': 2, 'B': 3}
    >>> parse_ratings("Concept A: 3\\nConcept B - rating 1", "AB")
    {'A': 3, 'B': 1}
    >>> parse_ratings('{"A": 5, "B": 1}', "AB") is None
    True
    """
    letters = list(letters)
    text = str(text or "")
    for obj in _json_objects(text):
        if isinstance(obj, dict):
            found = {}
            for key, value in obj.items():
                letter = _letter(key)
                if letter in letters and _rating(value) is not None:
                    found[letter] = _rating(value)
            if set(found) == set(letters):
                return {k: found[k] for k in letters}
    found = {}
    pattern = r"(?:concept|config(?:uration)?)[\s_\-\"']*([A-Z])\b[^0-9\n]{0,30}?([1-3])\b"
    for letter, value in re.findall(pattern, text, flags=re.IGNORECASE):
        found.setdefault(letter.upper(), int(value))
    if all(k in found for k in letters):
        return {k: found[k] for k in letters}
    return None


def _parse_for(text: str, *, letters) -> dict | None:
    return parse_ratings(text, letters)


def fingerprint(*parts) -> str:
    """Short hash of what an item asks, so a resumed run redoes items whose content changed."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def ask(backend, prompt: str, parse, *, n_attempts: int, seed: int, schema=None):
    """Ask until ``parse(answer)`` is not None; returns (parsed or None, raw answers, errors).

    With ``schema=(keys, options)`` and a backend whose ``constrained`` is
    true, the backend's ``choose`` writes the JSON (guided decoding).
    A :class:`~clvqlearn.evaluation.llm.BackendAuthError` is raised at once;
    other backend errors are collected and the question asked again.
    """
    raw, errors = [], []
    guided = schema is not None and getattr(backend, "constrained", False)
    for attempt in range(max(1, n_attempts)):
        try:
            text = prompt + (_RETRY_NOTE if attempt else "")
            answer = backend.choose(text, *schema) if guided else backend.complete(text, seed=seed + attempt)
        except BackendAuthError:
            raise  # every further request would be refused too
        except BackendError as exc:
            errors.append(str(exc))
            continue
        raw.append(answer)
        parsed = parse(answer)
        if parsed is not None:
            return parsed, raw, errors
    return None, raw, errors


def run_judge(items, backend, path, *, guidance: str = "", random_state: int = 0, n_attempts: int = 3,
              judge: str | None = None, on_record=None) -> pd.DataFrame:
    """Rate every item with one judge, appending to a JSONL file; resumes.

    Parameters
    ----------
    items : sequence of JudgeItem
    backend : object with ``complete(prompt, *, seed)`` and ``name``
        :class:`~clvqlearn.evaluation.llm.HFChatBackend` or
        :class:`~clvqlearn.evaluation.llm.OpenAIBackend`.
    path : str or Path
        The JSONL file (created, or appended to).  Items this judge already
        has in it, with the same prompt and order, are skipped; an item whose
        content changed, or that is missing because the backend failed
        (timeout, rate limit, server error), is judged again (the newer
        record wins).
    guidance : str
        Data-set guidance (:data:`GUIDANCE`).
    random_state : int
        Seeds each item's method order (item ``i`` uses ``(random_state, i)``).
    n_attempts : int, default=3
        Tries per item before it is recorded as missing.
    judge : str, optional
        Name in the file (default ``backend.name``); use distinct names for
        repeated runs of one model (e.g. another ``random_state``).
    on_record : callable, optional
        Called with every new record (e.g. to show progress).

    Returns
    -------
    pandas.DataFrame
        :func:`read_judgments` of the file, this judge only.

    Raises
    ------
    TypeError, ValueError
        Before any request, when the items or their concepts have the wrong
        shape, or no item has a concept to show.
    BackendAuthError
        At once, when the endpoint refuses the API key; the items judged
        before stay in the file.
    """
    items = list(items)
    if not items:
        raise ValueError("run_judge got no items to judge.")
    _check_items(items)
    path = Path(path)
    judge = judge or backend.name
    done = done_fingerprints(path, judge)
    for index, item in enumerate(items):
        prompt, order = judge_prompt(item, guidance=guidance, random_state=(random_state, index))
        key = fingerprint(prompt, order)
        if done.get(item.item_id) == key:
            continue
        letters = list(_LETTERS[:len(order)])
        ratings, raw, errors = (None, [], []) if not order else ask(
            backend, prompt, functools.partial(_parse_for, letters=letters), n_attempts=n_attempts,
            seed=random_state * 1000 + index, schema=(letters, [1, 2, 3]))
        record = {"item_id": item.item_id, "judge": judge, "fingerprint": key, "seed": random_state, "order": order,
                  "ratings": {m: (ratings or {}).get(letter) for letter, m in zip(letters, order)},
                  "status": "ok" if ratings else "missing", "raw": raw, "errors": errors}
        probs = getattr(backend, "last_probs", None) if ratings else None
        if probs and set(probs) >= set(letters):  # a guided local judge: its probability-weighted rating
            record["expected"] = {m: float(np.dot(probs[letter], [1, 2, 3])) for letter, m in zip(letters, order)}
        append_record(path, record)
        if on_record is not None:
            on_record(record)
    frame = read_judgments(path)
    return frame[frame["judge"] == judge].reset_index(drop=True)


def read_judgments(paths) -> pd.DataFrame:
    """Long table of ratings from one or more judge JSONL files.

    Returns
    -------
    pandas.DataFrame
        Columns ``judge``, ``item_id``, ``method``, ``rating`` (float, NaN when
        missing), ``position`` (0 = shown first) and ``expected`` (a guided
        local judge's probability-weighted rating, else NaN).  A judge that
        rated an item twice keeps its last record.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = []
    for path in paths:
        for rec in read_lines(Path(path)):
            expected = rec.get("expected") or {}
            for pos, method in enumerate(rec.get("order", [])):
                value = rec.get("ratings", {}).get(method)
                rows.append((rec["judge"], str(rec["item_id"]), method, np.nan if value is None else float(value), pos,
                             float(expected.get(method, np.nan))))
    frame = pd.DataFrame(rows, columns=["judge", "item_id", "method", "rating", "position", "expected"])
    return frame.drop_duplicates(["judge", "item_id", "method"], keep="last").reset_index(drop=True)


def _first_share(wide: pd.DataFrame) -> pd.DataFrame:
    """1 where a method has the item's top rating (ties: all tied are first)."""
    complete = wide.dropna()
    return complete.eq(complete.max(axis=1), axis=0).astype(float)


def rating_summary(frame: pd.DataFrame, *, n_boot: int = 2000, ci: float = 0.95, random_state=0) -> pd.DataFrame:
    """Mean rating and rank-first share per method, with bootstrap CIs.

    The bootstrap resamples items (with all their judges' ratings).  The
    rank-first share is the fraction of (judge, item) pairs, among those in
    which every method got a rating, where the method has the top rating;
    tied methods all count as first, so the shares can sum to more than 1.

    Parameters
    ----------
    frame : DataFrame
        :func:`read_judgments` output.
    n_boot : int, default=2000
    ci : float, default=0.95
    random_state : int or None

    Returns
    -------
    pandas.DataFrame
        Indexed by method: ``mean_rating``, ``mean_low``, ``mean_high``,
        ``first_share``, ``first_low``, ``first_high``, ``n_ratings``,
        ``n_missing``.
    """
    if frame.empty:
        raise ValueError("No ratings to summarise (the judge files are empty).")
    wide = frame.pivot_table(index=["judge", "item_id"], columns="method", values="rating", dropna=False)
    first = _first_share(wide)
    items = wide.index.get_level_values("item_id").unique().to_numpy()
    rng = np.random.default_rng(random_state)
    by_item = {i: wide.xs(i, level="item_id") for i in items}
    first_by_item = {i: first.xs(i, level="item_id") if i in first.index.get_level_values("item_id") else None
                     for i in items}
    sums = np.array([by_item[i].sum().to_numpy() for i in items])
    counts = np.array([by_item[i].notna().sum().to_numpy() for i in items])
    fsum = np.array([first_by_item[i].sum().to_numpy() if first_by_item[i] is not None else np.zeros(wide.shape[1])
                     for i in items])
    fcnt = np.array([len(first_by_item[i]) if first_by_item[i] is not None else 0 for i in items])
    boot = resample_indices(len(items), n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_b = sums[boot].sum(1) / counts[boot].sum(1)
        first_b = fsum[boot].sum(1) / fcnt[boot].sum(1)[:, None]
    mean_low, mean_high = percentile_interval(mean_b, ci, axis=0, skip_nan=True)
    first_low, first_high = percentile_interval(first_b, ci, axis=0, skip_nan=True)
    out = pd.DataFrame({
        "mean_rating": sums.sum(0) / np.maximum(counts.sum(0), 1),
        "mean_low": mean_low, "mean_high": mean_high,
        "first_share": fsum.sum(0) / max(fcnt.sum(), 1),
        "first_low": first_low, "first_high": first_high,
        "n_ratings": counts.sum(0), "n_missing": wide.isna().sum().to_numpy(),
    }, index=wide.columns)
    out.index.name = "method"
    return out.sort_values("mean_rating", ascending=False)


def kendall_w(ratings: np.ndarray) -> float:
    """Kendall's coefficient of concordance W, with the correction for ties.

    Parameters
    ----------
    ratings : ndarray of shape (n_raters, n_objects)
        Each rater's scores of the same objects (no missing values).

    Returns
    -------
    float
        0 = no agreement, 1 = identical rankings.

    Examples
    --------
    >>> round(kendall_w(np.array([[1, 2, 3], [1, 2, 3]])), 3)
    1.0
    >>> round(kendall_w(np.array([[1, 2, 3], [3, 2, 1]])), 3)
    0.0
    """
    from scipy.stats import rankdata

    ratings = np.asarray(ratings, dtype=float)
    m, n = ratings.shape
    if m < 2 or n < 2:
        return float("nan")
    ranks = np.vstack([rankdata(r) for r in ratings])
    s = ((ranks.sum(0) - m * (n + 1) / 2) ** 2).sum()
    ties = sum(((c ** 3) - c).sum() for c in (np.unique(r, return_counts=True)[1] for r in ratings))
    denom = m ** 2 * (n ** 3 - n) - m * ties
    return float(12 * s / denom) if denom > 0 else float("nan")


def judge_agreement(frame: pd.DataFrame, *, by: str = "judge", value: str = "rating") -> dict:
    """Agreement between judges (or repeated runs) over (item, method) ratings.

    Parameters
    ----------
    frame : DataFrame
        :func:`read_judgments` output with at least two values of ``by``.
    by : str, default="judge"
        The rater column.
    value : str, default="rating"
        The score column (``"expected"`` for a guided judge's
        probability-weighted ratings).

    Returns
    -------
    dict
        ``krippendorff_alpha`` (interval level, all ratings, missing
        allowed), ``pearson`` and ``spearman`` (mean over rater pairs, on the
        units both rated), ``kendall_w`` (units every rater rated, ties
        corrected), ``kendall_w_methods`` (on each rater's mean rating per
        method, as the paper's script does), ``exact_agreement`` (share of
        unit pairs with equal ratings), ``n_raters``, ``n_units``,
        ``n_complete_units``.
    """
    import krippendorff
    from scipy.stats import pearsonr, spearmanr

    wide = frame.pivot_table(index=by, columns=["item_id", "method"], values=value, dropna=False)
    if wide.shape[0] < 2:
        raise ValueError(f"Agreement needs at least two raters ({by!r}); got {wide.shape[0]}.")
    data = wide.to_numpy(dtype=float)
    complete = data[:, ~np.isnan(data).any(axis=0)]
    pear, spear, exact = [], [], []
    for a, b in itertools.combinations(range(data.shape[0]), 2):
        both = ~np.isnan(data[a]) & ~np.isnan(data[b])
        if both.sum() >= 2:
            exact.append(float((data[a, both] == data[b, both]).mean()))
            if np.std(data[a, both]) > 0 and np.std(data[b, both]) > 0:
                pear.append(pearsonr(data[a, both], data[b, both])[0])
                spear.append(spearmanr(data[a, both], data[b, both])[0])
    by_method = frame.pivot_table(index=by, columns="method", values=value, aggfunc="mean").dropna(axis=1)
    alpha = float("nan")
    if np.isfinite(data).sum() > 1 and np.nanstd(data) > 0:
        alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))
    return {
        "krippendorff_alpha": alpha,
        "pearson": float(np.mean(pear)) if pear else float("nan"),
        "spearman": float(np.mean(spear)) if spear else float("nan"),
        "kendall_w": kendall_w(complete) if complete.shape[1] >= 2 else float("nan"),
        "kendall_w_methods": kendall_w(by_method.to_numpy()) if by_method.shape[1] >= 2 else float("nan"),
        "exact_agreement": float(np.mean(exact)) if exact else float("nan"),
        "n_raters": int(data.shape[0]), "n_units": int(data.shape[1]), "n_complete_units": int(complete.shape[1]),
    }
