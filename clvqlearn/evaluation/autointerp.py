"""Automatic interpretability of concepts: explanations, delphi's scores, and trust checks.

An LLM explains each concept from its strongest examples, and the
explanation is then scored on held-out examples with the definitions of
EleutherAI's delphi (Paulo et al. 2024, "Automatically Interpreting
Millions of Features in Large Language Models"):

- **detection**: the LLM reads the explanation and a batch of examples
  (nothing marked) and says for each whether the concept is in it; scored
  by balanced accuracy (chance 0.5), F1 and, when the backend gives
  probabilities, ROC AUC;
- **fuzzing**: the examples have words marked ``<<like this>>``, rightly
  (the concept's own tokens) or wrongly (random words of a window without
  the concept, or a near miss's own tokens); the LLM says whether each
  marking fits the explanation; the same metrics;
- **intruder**: no explanation; ``n_intruder_examples`` examples of the
  concept (from one activation quantile) and one example of another concept
  (a non-activating window, its own concept's tokens marked); the LLM picks
  the odd one out; accuracy, chance ``1 / (n_intruder_examples + 1)``;
- **embedding**: no LLM; the cosine similarity of sentence embeddings
  (MiniLM by default) of the explanation and of each example ranks the
  activating above the non-activating ones; ROC AUC.

Simulation (Bills et al. 2023, "Language models can explain neurons in
language models": the LLM predicts per-token activations from the
explanation) is not implemented.

**Trust checks.** A score is worth reading only if it beats a null built
the same way with the information removed: detection, fuzzing and embedding
are run again with every concept given another concept's explanation
(a random cyclic shift of the explained concepts), and intruder items again
with the intruder replaced by one more example of the same concept (no real
intruder, so any pick is right with probability ``1 / (n + 1)``).  The
summary gives the paired difference between score and control with a
bootstrap CI over concepts and a verdict: ``"informative"`` only when the
CI's lower end is above 0, else ``"uninformative"``
(:mod:`clvqlearn.evaluation.autointerp_scores`).  Tables should show the
verdict rather than rank methods by an uninformative score.

Every LLM answer is appended to a JSONL file at once (the judge's format,
:mod:`clvqlearn.evaluation.judge`): a rerun skips finished items and asks
again those that failed on a backend error.  Remote backends are asked from
a thread pool (``n_jobs``); a local :class:`~clvqlearn.evaluation.llm.HFChatBackend`
is asked serially, with guided decoding where the answer has a fixed shape
(the class probabilities then give the AUC).

Examples
--------
>>> parse_labels('Sure: {"1": 1, "2": "0", "3": true}', 3)
[1, 0, 1]
>>> parse_labels("[0, 1]", 2)
[0, 1]
>>> parse_choice('{"intruder": 4}', 5), parse_choice("[RESPONSE]: 2", 5)
(4, 2)
>>> parse_explanation("The marked words are nouns.\\n[EXPLANATION]: names of <<football>> clubs")
'names of football clubs'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._sklearn_compat import HasMethods, Interval, validate_params
from ..data import LayerPairs
from ._jsonl import append_record, latest_records
from .autointerp_scores import METRICS, SCORERS, concept_scores, trust_summary
from .concept_examples import (
    _SAMPLING_CONSTRAINTS,
    ConceptActivity,
    ConceptRecord,
    _seed,
    render_marked,
    sample_concept_examples,
)
from .judge import ask, fingerprint
from .llm import HFChatBackend

__all__ = ["SCORERS", "AutoInterpReport", "SentenceEmbedder", "autointerp_report", "concept_scores",
           "detection_prompt", "explain_concepts", "explanation_prompt", "fuzzing_prompt", "intruder_prompt",
           "parse_choice", "parse_explanation", "parse_labels", "score_concepts", "trust_summary"]

_LLM_SCORERS = ("detection", "fuzzing", "intruder")
_COLUMNS = ["scorer", "control", "concept", "explained_by", "item_id", "position", "kind", "label", "prediction",
            "probability", "correct", "chance"]
_MAX_EXPLANATION = 300

# ----------------------------------------------------------------------------- prompts
_EXPLAIN = (
    "You are a meticulous AI researcher studying a pattern that a language model detects in text. You will see "
    "text examples in which the words where the pattern fires are marked between delimiters, <<like this>>; "
    "neighbouring marked words are marked together, <<like this one>>.\n"
    "Look at the marked words and the words around them, and say in a few words what they have in common: a "
    "topic, a kind of word, a grammatical role, a spelling, a position in the sentence.\n"
    "- Be concise: a phrase or one short sentence, at most 15 words.\n"
    "- Describe the pattern itself; do not list the examples and do not mention the delimiters.\n"
    "- The last line of your answer must be: [EXPLANATION]: <your explanation>\n\n")
_RESEARCHER = "You are an intelligent and meticulous linguistics researcher. "
_BINARY_FORMAT = ("Answer with one JSON object and nothing else, mapping every example number to 1 or 0, "
                  'e.g. {"1": 0, "2": 1, "3": 0}.\n\n')
_DETECT = (
    _RESEARCHER + "You will be given an explanation of a text feature, such as \"male pronouns\" or \"text about "
    "sports\", and then several text examples. For each example, decide whether the feature is present anywhere "
    "in it: 1 if it is, 0 if it is not.\n" + _BINARY_FORMAT)
_FUZZ = (
    _RESEARCHER + "You will be given an explanation of a text feature and then several text examples in which "
    "some words are marked between delimiters, <<like this>>. For each example, decide whether the marked words "
    "are correctly marked: 1 if the marked words are instances of the feature, 0 if they are not.\n"
    + _BINARY_FORMAT)
_INTRUDE = (
    _RESEARCHER + "You will see several text examples, each with some words marked between delimiters, "
    "<<like this>>. In all examples but one, the marked words share a common feature; in one example, the "
    "intruder, they do not. Find the intruder.\n"
    'Answer with one JSON object and nothing else: {"intruder": <the number of the intruder example>}.\n\n')


def _numbered(texts) -> str:
    return "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts, 1))


def explanation_prompt(examples) -> str:
    """The explainer's prompt: delphi's instructions, then the examples with the concept's words marked.

    Parameters
    ----------
    examples : sequence of str
        Marked texts (:attr:`ConceptExample.marked_text`), the strongest first.
    """
    return _EXPLAIN + _numbered(examples)


def detection_prompt(explanation: str, texts) -> str:
    """The detection prompt (delphi's): an explanation and unmarked examples, one 0/1 answer per example."""
    return _DETECT + f"Feature explanation: {explanation}\n\n" + _numbered(texts)


def fuzzing_prompt(explanation: str, texts) -> str:
    """The fuzzing prompt (delphi's): an explanation and marked examples; is each marking right (1) or not (0)?"""
    return _FUZZ + f"Feature explanation: {explanation}\n\n" + _numbered(texts)


def intruder_prompt(texts) -> str:
    """The intruder prompt (delphi's): marked examples, one from another concept; which one?"""
    return _INTRUDE + _numbered(texts)


# ----------------------------------------------------------------------------- parsing
def _json_values(text: str):
    """Every JSON object or list that starts somewhere in ``text``, in order."""
    decoder = json.JSONDecoder()
    text = re.sub(r"```(?:json|python)?", "", text)
    for match in re.finditer(r"[\[{]", text):
        try:
            yield decoder.raw_decode(text, match.start())[0]
        except ValueError:
            continue


def _binary(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str):
        return {"0": 0, "1": 1, "no": 0, "yes": 1, "false": 0, "true": 1}.get(value.strip().lower())
    return None


def _number(key) -> int | None:
    match = re.fullmatch(r"\s*(?:example)?[\s_#\-:]*(\d+)\s*", str(key), flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def parse_labels(text: str, n: int) -> list | None:
    """Read one 0/1 answer per example from a detection or fuzzing answer, or None if incomplete.

    Accepts a JSON object keyed by example number (``"1"``, ``"Example 1"``),
    a JSON list of ``n`` values (delphi's ``[1, 0, ...]``), values ``0``/``1``,
    booleans or ``"yes"``/``"no"``, and falls back to lines such as
    ``Example 2: 1``.

    Examples
    --------
    >>> parse_labels("Example 1: yes\\nExample 2: no", 2)
    [1, 0]
    >>> parse_labels('{"1": 1}', 2) is None
    True
    """
    text = str(text or "")
    for obj in _json_values(text):
        if isinstance(obj, list) and len(obj) == n:
            values = [_binary(v) for v in obj]
            if all(v is not None for v in values):
                return values
        if isinstance(obj, dict):
            found = {_number(k): _binary(v) for k, v in obj.items()}
            if all(found.get(i) is not None for i in range(1, n + 1)):
                return [found[i] for i in range(1, n + 1)]
    lines = re.findall(r"example\s*#?\s*(\d+)\s*[:=\-]\s*(yes|no|true|false|1|0)\b", text, flags=re.IGNORECASE)
    found = {}
    for number, value in lines:
        found.setdefault(int(number), _binary(value))
    if all(found.get(i) is not None for i in range(1, n + 1)):
        return [found[i] for i in range(1, n + 1)]
    return None


def parse_choice(text: str, n: int) -> int | None:
    """The example number (1 to ``n``) an intruder answer picks, or None.

    Accepts ``{"intruder": 3}`` (any key), delphi's ``[RESPONSE]: 3``, or the
    first number from 1 to ``n`` in the text.

    Examples
    --------
    >>> parse_choice("I think Example 3 is the odd one.", 5), parse_choice("7", 5)
    (3, None)
    """
    text = str(text or "")
    for obj in _json_values(text):
        if isinstance(obj, dict) and len(obj) >= 1:
            value = next(iter(obj.values())) if len(obj) == 1 else next(
                (v for k, v in obj.items() if "intruder" in str(k).lower()), None)
            number = _number(value) if not isinstance(value, bool) else None
            if number is not None and 1 <= number <= n:
                return number
    match = re.search(r"\[RESPONSE\]\s*:\s*(\d+)", text, flags=re.IGNORECASE)
    candidates = [match.group(1)] if match else re.findall(r"\b(\d+)\b", text)
    for candidate in candidates:
        if 1 <= int(candidate) <= n:
            return int(candidate)
    return None


def parse_explanation(text: str) -> str | None:
    """The explanation in an explainer's answer, or None if there is none.

    The text after the last ``[EXPLANATION]:`` (delphi's format), or the
    ``"explanation"`` of a JSON answer; without either, the first line that
    is not an introduction (ending in ``:``).
    Delimiters, quotes and markdown are removed, and the result is cut to
    300 characters.

    Examples
    --------
    >>> parse_explanation('Here it is:\\n**"Months of the year."**')
    'Months of the year.'
    >>> parse_explanation("   ") is None
    True
    """
    text = str(text or "")
    for obj in _json_values(text):  # a JSON answer (a server in JSON mode): {"explanation": "..."}
        if isinstance(obj, dict):
            value = next((v for k, v in obj.items() if "explanation" in str(k).lower()), None)
            if isinstance(value, str) and value.strip():
                text = "[EXPLANATION]: " + value
                break
    tagged = re.findall(r"\[?EXPLANATION\]?\s*:\s*(.*)", text, flags=re.IGNORECASE)
    tagged = [t for t in tagged if t.strip()]
    if tagged:
        answer = tagged[-1]
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().endswith(":")]
        answer = lines[0] if lines else ""
    answer = answer.replace("<<", "").replace(">>", "")
    answer = re.sub(r"^[\s*_\-#>]+|[\s*_]+$", "", answer).strip().strip("\"'`").strip()
    if len(answer) > _MAX_EXPLANATION:
        answer = answer[:_MAX_EXPLANATION].rsplit(" ", 1)[0]
    return answer if len(answer) >= 2 else None


# ----------------------------------------------------------------------------- running items
@dataclass(frozen=True)
class _Item:
    """One question to the backend and what a right answer is."""

    item_id: str
    scorer: str
    concept: int
    control: bool
    prompt: str
    parse: Callable = field(compare=False)
    schema: tuple | None = None
    truth: Any = None
    kinds: tuple = ()
    explained_by: int = -1


def _thread_safe(backend) -> bool:
    flag = getattr(backend, "thread_safe", None)
    return bool(flag) if flag is not None else not isinstance(backend, HFChatBackend)


def _item_seed(item_id: str, seed: int) -> int:
    return int(fingerprint(item_id, seed), 16) % (2**31)


def _ask_item(item: _Item, key: str, backend, *, judge, n_attempts, seed) -> dict:
    guided = item.schema is not None and getattr(backend, "constrained", False)
    parsed, raw, errors = ask(backend, item.prompt, item.parse, n_attempts=n_attempts,
                              seed=_item_seed(item.item_id, seed), schema=item.schema)
    probs = getattr(backend, "last_probs", None) if guided and parsed is not None else None
    return {"item_id": item.item_id, "judge": judge, "fingerprint": key, "scorer": item.scorer,
            "concept": item.concept, "control": item.control, "status": "ok" if parsed is not None else "missing",
            "answer": parsed, "probs": probs, "raw": raw, "errors": errors}


def _run_items(items, backend, path, *, judge, n_jobs, n_attempts, seed, on_record=None) -> dict:
    """Ask every item not already answered in ``path``; returns item_id -> record.

    A record of the same judge with the same fingerprint (prompt, answer
    shape, truth) is reused; a missing one caused by backend errors is asked
    again.  New records are appended as they come, from the main thread.
    """
    path = None if path is None else Path(path)
    done = latest_records(path, judge) if path is not None else {}
    results, todo = {}, []
    for item in items:
        key = fingerprint(item.prompt, item.schema, item.truth)
        old = done.get(item.item_id)
        if old is not None and old.get("fingerprint") == key:
            results[item.item_id] = old
        else:
            todo.append((item, key))

    def keep(record):
        results[record["item_id"]] = record
        if path is not None:
            append_record(path, record)
        if on_record is not None:
            on_record(record)

    def one(pair):
        return _ask_item(*pair, backend, judge=judge, n_attempts=n_attempts, seed=seed)

    if n_jobs > 1 and len(todo) > 1 and _thread_safe(backend):
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            futures = [pool.submit(one, pair) for pair in todo]
            try:
                for future in as_completed(futures):
                    keep(future.result())
            except BaseException:  # a refused key (or an interrupt): ask nothing more
                for future in futures:
                    future.cancel()
                raise
    else:
        for pair in todo:
            keep(one(pair))
    return results


def _judge_name(backend, judge) -> str:
    return judge or getattr(backend, "name", None) or type(backend).__name__


def _check_backend(backend) -> None:
    if not callable(getattr(backend, "complete", None)):
        raise TypeError("backend must have a complete(prompt, *, seed) method (HFChatBackend, OpenAIBackend); "
                        f"got {type(backend).__name__}.")


# ----------------------------------------------------------------------------- explaining
@validate_params(
    {"records": [list, tuple], "backend": "no_validation", "path": [str, Path, None], "judge": [str, None],
     "n_attempts": [Interval(Integral, 1, None, closed="left")], "n_jobs": [Interval(Integral, 1, None, closed="left")],
     "random_state": ["random_state", np.random.Generator], "on_record": [callable, None]},
    prefer_skip_nested_validation=True,
)
def explain_concepts(records, backend, *, path=None, judge=None, n_attempts=3, n_jobs=1, random_state=0,
                     on_record=None) -> dict:
    """Ask the backend to explain every concept from its explanation examples.

    Parameters
    ----------
    records : list of ConceptRecord
        From :func:`~clvqlearn.evaluation.concept_examples.sample_concept_examples`.
    backend : object with ``complete(prompt, *, seed)``
        :class:`~clvqlearn.evaluation.llm.HFChatBackend` or
        :class:`~clvqlearn.evaluation.llm.OpenAIBackend`.
    path : str or Path, optional
        JSONL file of the answers (appended to; a rerun skips answered items).
    judge : str, optional
        The name in the file (default ``backend.name``).
    n_attempts : int, default=3
        Tries per concept before it is left unexplained.
    n_jobs : int, default=1
        Parallel requests for a remote backend (a local model runs serially).
    random_state : int, Generator or None
    on_record : callable, optional
        Called with every new answer's record (e.g. to show progress).

    Returns
    -------
    dict of int to str or None
        concept -> explanation (None when the backend gave none).

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.evaluation.concept_examples import ConceptActivity, sample_concept_examples
    >>> words = "the cat sat on a mat while my dog ran".split() * 6
    >>> pairs = LayerPairs(low=np.zeros((60, 1)), high=np.zeros((60, 1)), offsets=np.arange(0, 61, 10),
    ...                    tokens=np.array(words, dtype=object))
    >>> animal = np.isin(words, ["cat", "dog"])  # concept 0 holds the animals, concept 1 the other words
    >>> activity = ConceptActivity.from_scores(np.c_[animal, ~animal].astype(float))
    >>> records = sample_concept_examples(activity, pairs, window=4, n_train=2, n_test=4, n_negatives=4,
    ...                                   min_tokens=2, random_state=0)
    >>> records[0].train[0].marked_text  # what the explainer is shown
    'the <<cat>> sat on'
    >>> class Fixed:  # stands in for an LLM: the same answer to every prompt
    ...     def complete(self, prompt, *, seed=None):
    ...         return "The marked words are pets.\\n[EXPLANATION]: animals"
    >>> explain_concepts(records, Fixed())
    {0: 'animals', 1: 'animals'}
    """
    _check_backend(backend)
    records = _check_records(records)
    items = [_Item(f"explanation/{r.concept}", "explanation", r.concept, False,
                   explanation_prompt([ex.marked_text for ex in r.train]), parse_explanation)
             for r in records if r.train]
    answers = _run_items(items, backend, path, judge=_judge_name(backend, judge), n_jobs=n_jobs,
                         n_attempts=n_attempts, seed=_seed(random_state), on_record=on_record)
    return {r.concept: (answers.get(f"explanation/{r.concept}") or {}).get("answer") for r in records}


def _check_records(records) -> list:
    records = list(records)
    if not records:
        raise ValueError("No concept records: sample_concept_examples found no concept to study.")
    for r in records:
        if not isinstance(r, ConceptRecord):
            raise TypeError(f"records must be ConceptRecord objects (sample_concept_examples); got "
                            f"{type(r).__name__}.")
    return records


# ----------------------------------------------------------------------------- building the questions
def _batches(n: int, batch_size: int, rng) -> list:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _classifier_items(scorer, record, texts, labels, kinds, explanations, control_of, batch_size, rng) -> list:
    """Detection or fuzzing questions of one concept, and their shuffled-explanation controls."""
    make = detection_prompt if scorer == "detection" else fuzzing_prompt
    items = []
    for b, idx in enumerate(_batches(len(texts), batch_size, rng)):
        shown = [texts[i] for i in idx]
        truth = [int(labels[i]) for i in idx]
        keys = [str(i) for i in range(1, len(shown) + 1)]
        for control, source in ((False, record.concept), (True, control_of.get(record.concept))):
            if source is None:
                continue
            tag = f"{scorer}-control" if control else scorer
            items.append(_Item(f"{tag}/{record.concept}/{b}", scorer, record.concept, control,
                               make(explanations[source], shown), _LabelParser(len(shown)), (keys, [0, 1]),
                               truth, tuple(kinds[i] for i in idx), int(source)))
    return items


class _LabelParser:
    def __init__(self, n):
        self.n = n

    def __call__(self, text):
        return parse_labels(text, self.n)


class _ChoiceParser(_LabelParser):
    def __call__(self, text):
        return parse_choice(text, self.n)


def _detection_items(record, explanations, control_of, batch_size, rng) -> list:
    examples = list(record.test) + list(record.negatives)
    return _classifier_items("detection", record, [ex.text for ex in examples], [ex.activating for ex in examples],
                             [ex.kind for ex in examples], explanations, control_of, batch_size, rng)


def _fuzzed_text(example, n_marks, rng) -> str:
    """A non-activating example, wrongly marked: a near miss's own tokens, or random words (delphi's fuzzing)."""
    if example.kind == "similar" and example.decoy_marks:
        return render_marked(example.words, example.decoy_marks)
    size = min(max(n_marks, 1), len(example.words))
    return render_marked(example.words, rng.choice(len(example.words), size=size, replace=False).tolist())


def _fuzzing_items(record, explanations, control_of, batch_size, rng) -> list:
    n_marks = int(round(np.mean([len(ex.marks) for ex in record.test]))) if record.test else 1
    texts = [ex.marked_text for ex in record.test] + [_fuzzed_text(ex, n_marks, rng) for ex in record.negatives]
    examples = list(record.test) + list(record.negatives)
    return _classifier_items("fuzzing", record, texts, [ex.activating for ex in examples],
                             [ex.kind for ex in examples], explanations, control_of, batch_size, rng)


def _intruder_items(record, n_shown, rng) -> list:
    """One question per non-activating example: it is the intruder among ``n_shown`` of the concept's examples.

    Each question is paired with its null: the same examples and position,
    the intruder replaced by one more example of the concept (one is always
    kept spare, so ``n_shown`` is at most ``len(record.test) - 1``).
    """
    test = list(record.test)
    n_shown = min(n_shown, len(test) - 1)
    if n_shown < 1:
        return []
    by_bin: dict = {}
    for i, ex in enumerate(test):
        by_bin.setdefault(ex.quantile, []).append(i)
    bins = sorted(by_bin)
    n = n_shown + 1
    schema = (["intruder"], list(range(1, n + 1)))
    items = []
    for j, intruder in enumerate(record.negatives):
        pool = by_bin[bins[j % len(bins)]]  # the concept's examples come from one quantile, in turn
        if len(pool) < n_shown:
            pool = list(range(len(test)))
        shown = [pool[i] for i in rng.choice(len(pool), size=n_shown, replace=False)]
        spare = [i for i in range(len(test)) if i not in shown]
        spare_pick = spare[int(rng.integers(len(spare)))]
        position = int(rng.integers(n))
        texts = [test[i].marked_text for i in shown]
        kinds = tuple(test[i].kind for i in shown)
        real = texts[:position] + [render_marked(intruder.words, intruder.decoy_marks)] + texts[position:]
        null = texts[:position] + [test[spare_pick].marked_text] + texts[position:]
        for control, shown_texts, kind in ((False, real, intruder.kind), (True, null, "test")):
            tag = "intruder-control" if control else "intruder"
            items.append(_Item(f"{tag}/{record.concept}/{j}", "intruder", record.concept, control,
                               intruder_prompt(shown_texts), _ChoiceParser(n), schema, position + 1,
                               kinds[:position] + (kind,) + kinds[position:]))
    return items


def _control_map(concepts, rng) -> dict:
    """concept -> the concept whose explanation its control uses (a random cycle: never its own)."""
    concepts = list(concepts)
    if len(concepts) < 2:
        return {}
    order = [concepts[i] for i in rng.permutation(len(concepts))]
    return {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


# ----------------------------------------------------------------------------- scoring
def _rows_of(item: _Item, record: dict | None) -> list:
    answer = None if record is None else record.get("answer")
    probs = None if record is None else record.get("probs")
    if item.scorer == "intruder":
        n = len(item.schema[1]) if item.schema is not None else 0
        pred = float(answer) if answer is not None else np.nan
        return [(item.scorer, item.control, item.concept, item.explained_by, item.item_id, 0, "intruder",
                 int(item.truth), pred, np.nan, float(answer == item.truth) if answer is not None else np.nan, 1 / n)]
    rows = []
    for j, (label, kind) in enumerate(zip(item.truth, item.kinds)):
        pred = float(answer[j]) if answer is not None else np.nan
        prob = np.nan
        if probs and str(j + 1) in probs:
            prob = float(probs[str(j + 1)][1])
        correct = float(pred == label) if answer is not None else np.nan
        rows.append((item.scorer, item.control, item.concept, item.explained_by, item.item_id, j, kind, int(label),
                     pred, prob, correct, 0.5))
    return rows


class SentenceEmbedder:
    """Sentence embeddings: the mean of a model's last hidden states over the tokens, L2-normalised.

    With the packaged MiniLM (``"minilm"``, all-MiniLM-L6-v2) this is the
    model's own sentence embedding (sentence-transformers' mean pooling and
    normalisation), loaded offline through :mod:`clvqlearn.models`.

    Parameters
    ----------
    model : str, default="minilm"
        Packaged short name, local folder or HF id of an encoder.
    batch_size : int, default=32
    max_length : int, default=128
        Tokens per text (longer texts are cut).
    device : str, default="cpu"

    Examples
    --------
    >>> embed = SentenceEmbedder()  # doctest: +SKIP
    >>> embed(["a cat", "a dog"]).shape  # doctest: +SKIP
    (2, 384)
    """

    def __init__(self, model: str = "minilm", *, batch_size: int = 32, max_length: int = 128, device: str = "cpu"):
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self._cache = None

    def _load(self):
        if self._cache is None:
            from .. import models as _models

            self._cache = (_models.load_model(self.model, device=self.device), _models.load_tokenizer(self.model))
        return self._cache

    def __call__(self, texts) -> np.ndarray:
        """``(n_texts, d)`` unit-norm embeddings."""
        import torch

        net, tokenizer = self._load()
        texts = [str(t) for t in texts]
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                            return_tensors="pt").to(net.device)
            with torch.inference_mode():
                hidden = net(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


def _embedding_rows(records, explanations, control_of, embedder) -> list:
    """Cosine similarity of each scoring example to the concept's explanation, and to its control's."""
    explained = [r for r in records if explanations.get(r.concept) and (r.test or r.negatives)]
    if not explained:
        return []
    texts = sorted({ex.text for r in explained for ex in list(r.test) + list(r.negatives)})
    queries = sorted({explanations[r.concept] for r in explained})
    vectors = np.asarray(embedder(texts + queries), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    index = {t: i for i, t in enumerate(texts)}
    query = {q: vectors[len(texts) + i] for i, q in enumerate(queries)}
    rows: list = []
    for r in explained:
        examples = list(r.test) + list(r.negatives)
        sims = vectors[[index[ex.text] for ex in examples]]
        for control, source in ((False, r.concept), (True, control_of.get(r.concept))):
            if source is None:
                continue
            scores = sims @ query[explanations[source]]
            tag = "embedding-control" if control else "embedding"
            rows.extend(("embedding", control, r.concept, int(source), f"{tag}/{r.concept}", j, ex.kind,
                         int(ex.activating), np.nan, float(s), np.nan, 0.5)
                        for j, (ex, s) in enumerate(zip(examples, scores)))
    return rows


def _check_scorers(scorers) -> tuple:
    scorers = (scorers,) if isinstance(scorers, str) else tuple(scorers)
    bad = [s for s in scorers if s not in SCORERS]
    if not scorers or bad:
        raise ValueError(f"scorers must be a non-empty subset of {SCORERS}; got {list(scorers)}.")
    return tuple(s for s in SCORERS if s in scorers)


_SCORING_CONSTRAINTS = {
    "scorers": [list, tuple, str], "path": [str, Path, None], "judge": [str, None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "n_intruder_examples": [Interval(Integral, 1, None, closed="left")],
    "embedder": [callable, None], "n_attempts": [Interval(Integral, 1, None, closed="left")],
    "n_jobs": [Interval(Integral, 1, None, closed="left")], "random_state": ["random_state", np.random.Generator],
    "on_record": [callable, None],
}


@validate_params({"records": [list, tuple], "explanations": [dict], "backend": "no_validation",
                  **_SCORING_CONSTRAINTS}, prefer_skip_nested_validation=True)
def score_concepts(records, explanations, backend=None, *, scorers=SCORERS, path=None, judge=None, batch_size=5,
                   n_intruder_examples=4, embedder=None, n_attempts=3, n_jobs=1, random_state=0,
                   on_record=None) -> pd.DataFrame:
    """Score explanations (and the intruder test) on the records' scoring examples, with the controls.

    Parameters
    ----------
    records : list of ConceptRecord
    explanations : dict of int to str or None
        concept -> explanation (:func:`explain_concepts`, or written by hand).
        Concepts without one get no detection, fuzzing or embedding score.
    backend : object with ``complete(prompt, *, seed)``, optional
        Needed for detection, fuzzing and intruder.
    scorers : sequence of {"detection", "fuzzing", "intruder", "embedding"}
    path : str or Path, optional
        JSONL file of the answers (resumable; see :func:`explain_concepts`).
    judge : str, optional
    batch_size : int, default=5
        Examples per detection or fuzzing question (delphi's ``n_examples_shown``).
    n_intruder_examples : int, default=4
        The concept's examples per intruder question (one intruder is added).
    embedder : callable, optional
        ``texts -> (n, d)`` array; default :class:`SentenceEmbedder` (MiniLM).
    n_attempts : int, default=3
    n_jobs : int, default=1
        Parallel requests for a remote backend.
    random_state : int, Generator or None
        Seeds the batches, the wrong markings, the intruder positions and
        the control's explanation shift.
    on_record : callable, optional
        Called with every new answer's record.

    Returns
    -------
    pandas.DataFrame
        One row per scored example (per question for intruder): ``scorer``,
        ``control`` (bool), ``concept``, ``explained_by`` (whose explanation
        was shown; -1 for intruder), ``item_id``, ``position``, ``kind``
        (the example's kind), ``label`` (1 = activating; intruder: the
        intruder's number), ``prediction`` (NaN when missing), ``probability``
        (the backend's probability of 1, or the embedding similarity),
        ``correct``, ``chance``.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import LayerPairs
    >>> from clvqlearn.evaluation.concept_examples import ConceptActivity, sample_concept_examples
    >>> words = "the cat sat on a mat while my dog ran".split() * 6
    >>> pairs = LayerPairs(low=np.zeros((60, 1)), high=np.zeros((60, 1)), offsets=np.arange(0, 61, 10),
    ...                    tokens=np.array(words, dtype=object))
    >>> animal = np.isin(words, ["cat", "dog"])  # concept 0 holds the animals, concept 1 the other words
    >>> activity = ConceptActivity.from_scores(np.c_[animal, ~animal].astype(float))
    >>> records = sample_concept_examples(activity, pairs, window=4, n_train=2, n_test=4, n_negatives=4,
    ...                                   min_tokens=2, random_state=0)
    >>> class Fixed:  # stands in for an LLM: "yes" to every example, example 1 as the intruder
    ...     def complete(self, prompt, *, seed=None):
    ...         return '{"1": 1, "2": 1, "3": 1, "4": 1, "intruder": 1}'
    >>> scored = score_concepts(records, {0: "animals", 1: "other words"}, Fixed(),
    ...                         scorers=("detection", "intruder"), batch_size=4, n_intruder_examples=3)
    >>> scored.groupby(["scorer", "control"]).size().to_dict()
    {('detection', False): 16, ('detection', True): 16, ('intruder', False): 8, ('intruder', True): 8}
    >>> float(scored.loc[scored["scorer"] == "detection", "correct"].mean())  # "yes" to all: half right
    0.5
    """
    records = _check_records(records)
    scorers = _check_scorers(scorers)
    explanations = {int(c): e for c, e in explanations.items()}
    if backend is None and any(s in _LLM_SCORERS for s in scorers):
        raise ValueError(f"The scorers {[s for s in scorers if s in _LLM_SCORERS]} need a backend (HFChatBackend, "
                         "OpenAIBackend); pass one, or scorers=('embedding',).")
    seed = _seed(random_state)
    explained = sorted(r.concept for r in records if explanations.get(r.concept))
    control_of = _control_map(explained, np.random.default_rng([seed, 0]))
    items: list = []
    for r in records:
        def rng(tag, concept=r.concept):  # one stream per concept and scorer
            return np.random.default_rng([seed, concept, tag])

        if "detection" in scorers and r.concept in explained:
            items += _detection_items(r, explanations, control_of, batch_size, rng(1))
        if "fuzzing" in scorers and r.concept in explained:
            items += _fuzzing_items(r, explanations, control_of, batch_size, rng(2))
        if "intruder" in scorers:
            items += _intruder_items(r, n_intruder_examples, rng(3))
    rows: list = []
    if items:
        _check_backend(backend)
        answers = _run_items(items, backend, path, judge=_judge_name(backend, judge), n_jobs=n_jobs,
                             n_attempts=n_attempts, seed=seed, on_record=on_record)
        for item in items:
            rows += _rows_of(item, answers.get(item.item_id))
    if "embedding" in scorers:
        rows += _embedding_rows(records, explanations, control_of, embedder or SentenceEmbedder())
    return pd.DataFrame(rows, columns=_COLUMNS)


# ----------------------------------------------------------------------------- the report
@dataclass
class AutoInterpReport:
    """Everything an auto-interpretability run produced.

    Attributes
    ----------
    concepts : DataFrame
        Per concept (:func:`concept_scores`).
    summary : DataFrame
        Per scorer and metric, with the control and the verdict (:func:`trust_summary`).
    scored : DataFrame
        Every scored example (:func:`score_concepts`).
    explanations : dict of int to str or None
    records : list of ConceptRecord
        The examples drawn (:func:`~clvqlearn.evaluation.concept_examples.sample_concept_examples`).
    """

    concepts: pd.DataFrame
    summary: pd.DataFrame
    scored: pd.DataFrame
    explanations: dict
    records: list

    @property
    def verdicts(self) -> dict:
        """scorer -> the verdict of its headline score."""
        return {scorer: str(self.summary.loc[(scorer, METRICS[scorer][0]), "verdict"])
                for scorer in SCORERS if (scorer, METRICS[scorer][0]) in self.summary.index}


@validate_params(
    {"estimator": [HasMethods(["decision_function"]), ConceptActivity], "pairs": [LayerPairs],
     "backend": "no_validation", "n_concepts": [Interval(Integral, 1, None, closed="left"), None],
     "concepts": ["array-like", None], "explanations": [dict, None],
     "n_boot": [Interval(Integral, 1, None, closed="left")], "ci": [Interval(Real, 0, 1, closed="neither")],
     **_SCORING_CONSTRAINTS, **_SAMPLING_CONSTRAINTS},
    prefer_skip_nested_validation=True,
)
def autointerp_report(estimator, pairs, backend=None, *, scorers=SCORERS, n_concepts=20, concepts=None,
                      explanations=None, path=None, judge=None, random_state=0, n_jobs=1, n_attempts=3,
                      batch_size=5, n_intruder_examples=4, embedder=None, n_boot=2000, ci=0.95, window=32,
                      n_train=20, n_test=20, n_quantiles=5, n_negatives=20, negatives="mixed", min_tokens=10,
                      min_window=None, on_record=None) -> AutoInterpReport:
    """Explain concepts with an LLM and score the explanations as delphi does, with trust checks.

    Samples examples (:func:`~clvqlearn.evaluation.concept_examples.sample_concept_examples`),
    explains each concept (:func:`explain_concepts`), scores
    (:func:`score_concepts`) and summarises against the controls
    (:func:`concept_scores`, :func:`trust_summary`).

    Parameters
    ----------
    estimator : fitted concept estimator or ConceptActivity
        CrossLayerVQ, SingleLayerVQ, KMeansConcepts, SparseAutoencoder (anything
        with ``decision_function``).
    pairs : LayerPairs
        The corpus the examples come from (with token strings).
    backend : object with ``complete(prompt, *, seed)``, optional
        :class:`~clvqlearn.evaluation.llm.HFChatBackend` or
        :class:`~clvqlearn.evaluation.llm.OpenAIBackend`; optional only for
        ``scorers=("embedding",)`` with ``explanations`` given.
    scorers : sequence of str, default=SCORERS
    n_concepts : int or None, default=20
        Concepts drawn at random among those with ``min_tokens`` tokens
        (None: all of them).
    concepts : sequence of int, optional
        Explicit concept ids instead.
    explanations : dict of int to str, optional
        Use these instead of asking the backend (e.g. human labels).
    path : str or Path, optional
        JSONL file of every answer: a rerun resumes.
    judge : str, optional
        The backend's name in the file (default ``backend.name``).
    random_state : int, Generator or None, default=0
    n_jobs : int, default=1
        Parallel requests to a remote backend.
    n_attempts : int, default=3
    batch_size, n_intruder_examples, embedder
        See :func:`score_concepts`.
    n_boot, ci
        See :func:`trust_summary`.
    window, n_train, n_test, n_quantiles, n_negatives, negatives, min_tokens, min_window
        See :func:`~clvqlearn.evaluation.concept_examples.sample_concept_examples`.
    on_record : callable, optional
        Called with every new answer's record (e.g. to show progress).

    Returns
    -------
    AutoInterpReport
        ``.concepts`` (per concept), ``.summary`` (per scorer and metric, with
        the verdict), ``.scored``, ``.explanations``, ``.records``.

    Raises
    ------
    ValueError
        Before any request: unknown scorers, no backend where one is needed,
        no concept with ``min_tokens`` tokens.
    BackendAuthError
        At once when the endpoint refuses the API key (answers so far stay in ``path``).

    Examples
    --------
    >>> from clvqlearn.evaluation import OpenAIBackend
    >>> backend = OpenAIBackend("gpt-4o-mini")  # doctest: +SKIP
    >>> report = autointerp_report(estimator, pairs, backend, n_concepts=50, path="autointerp.jsonl",
    ...                            n_jobs=8)  # doctest: +SKIP
    >>> report.summary[["mean", "control", "diff_low", "verdict"]]  # doctest: +SKIP
    """
    scorers = _check_scorers(scorers)
    needs_backend = explanations is None or any(s in _LLM_SCORERS for s in scorers)
    if needs_backend:
        if backend is None:
            raise ValueError("autointerp_report needs a backend (HFChatBackend, OpenAIBackend) to explain or score "
                             "concepts; only scorers=('embedding',) with explanations= given can do without.")
        _check_backend(backend)
    seed = _seed(random_state)
    records = sample_concept_examples(estimator, pairs, concepts=concepts, n_concepts=n_concepts, window=window,
                                      n_train=n_train, n_test=n_test, n_quantiles=n_quantiles,
                                      n_negatives=n_negatives, negatives=negatives, min_tokens=min_tokens,
                                      min_window=min_window, random_state=seed)
    if explanations is None:
        explanations = explain_concepts(records, backend, path=path, judge=judge, n_attempts=n_attempts,
                                        n_jobs=n_jobs, random_state=seed, on_record=on_record)
    scored = score_concepts(records, explanations, backend, scorers=scorers, path=path, judge=judge,
                            batch_size=batch_size, n_intruder_examples=n_intruder_examples, embedder=embedder,
                            n_attempts=n_attempts, n_jobs=n_jobs, random_state=seed, on_record=on_record)
    per_concept = concept_scores(scored, records, explanations)
    summary = trust_summary(per_concept, scored, n_boot=n_boot, ci=ci, random_state=seed)
    return AutoInterpReport(per_concept, summary, scored, dict(explanations), records)
