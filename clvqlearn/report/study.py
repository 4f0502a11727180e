"""A human study kit: can a person recover the model's prediction from a concept?

:func:`make_study` builds a :class:`Study` (evaluation axis 3 of METHOD.md):
every (sentence, method) pair becomes one item showing only the method's
concept for the sentence's salient token (its top words, or example
sentences for special-token concepts); the annotator guesses which label
the model predicted.  Items are shuffled with a seed and their ids are
opaque, so the page does not reveal the method (blind).  The page
(:meth:`Study.html`) is one self-contained HTML file: answers are kept in the
browser's ``localStorage`` (a reload loses nothing) and exported as JSON or
CSV, with no server.  The answer key (:meth:`Study.to_dict`) stays with the
experimenter; :func:`clvqlearn.evaluation.study.score_study` scores the
exported files against it.

Examples
--------
>>> study = make_study(["a dull film"], ["negative"],
...                    {"clvq": [{"kind": "words", "data": ["dull", "boring"]}],
...                     "kmeans": [{"kind": "words", "data": ["film", "movie"]}]},
...                    label_names=["negative", "positive"], seed=0)
>>> len(study.items), "clvq" in study.html()
(2, False)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._html import fill_page
from ._study_assets import PAGE

__all__ = ["Study", "check_representation", "make_study"]

_FORMAT = "clvqlearn.study"
DEFAULT_INSTRUCTIONS = (
    "A text classifier read a sentence and made a prediction. Below is one **concept** the classifier "
    "used for the most important word of that sentence: a group of words (or sentences) that it treats "
    "alike. You do not see the sentence itself. **Guess the label the classifier predicted** from the "
    "concept alone. Go with your first impression; there is no time limit. Your answers stay in this "
    "browser (you can close it and come back); when you are done, export them and send the file.")

#: The earlier default, written for pages that read instructions as HTML; key files holding it get the new one.
_LEGACY_INSTRUCTIONS = (
    "A text classifier read a sentence and made a prediction. Below is one <b>concept</b> the classifier "
    "used for the most important word of that sentence: a group of words (or sentences) that it treats "
    "alike. You do not see the sentence itself. <b>Guess the label the classifier predicted</b> from the "
    "concept alone. Go with your first impression; there is no time limit. Your answers stay in this "
    "browser (you can close it and come back); when you are done, export them and send the file.")


@dataclass
class Study:
    """A blind prediction-recovery study and its answer key.

    Attributes
    ----------
    study_id : str
        Fingerprint of the seed and the items; answer files carry it.
    seed : int
    label_names : list of str
    items : list of dict
        What the page shows, in order: ``id``, ``kind``, ``data`` and, with
        ``show_sentence``, ``sentence``.
    key : dict of str -> dict
        Per item id: ``method``, ``prediction`` (the model's label),
        ``label`` (gold, or None), ``doc`` (sentence index).
    title, instructions : str
    """

    study_id: str
    seed: int
    label_names: list
    items: list
    key: dict
    title: str = "Concept study"
    instructions: str = DEFAULT_INSTRUCTIONS
    meta: dict = field(default_factory=dict)

    def html(self) -> str:
        """The self-contained study page (no method names, no answers in it)."""
        data = {"study_id": self.study_id, "label_names": self.label_names, "items": self.items,
                "instructions": self.instructions}
        return fill_page(PAGE, title=self.title, data=data)

    def write_html(self, path) -> Path:
        """Write :meth:`html` to ``path``."""
        path = Path(path)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def to_dict(self) -> dict:
        """Everything, answer key included (JSON-able; keep it from annotators)."""
        return {"format": _FORMAT, "study_id": self.study_id, "seed": self.seed, "label_names": self.label_names,
                "items": self.items, "key": self.key, "title": self.title, "instructions": self.instructions,
                "meta": self.meta}

    def write_key(self, path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> Study:
        """Rebuild a study from :meth:`to_dict` output."""
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("Not a clvqlearn study key (expected a dict with format 'clvqlearn.study').")
        instructions = data.get("instructions", DEFAULT_INSTRUCTIONS)
        if instructions == _LEGACY_INSTRUCTIONS:
            instructions = DEFAULT_INSTRUCTIONS
        return cls(study_id=data["study_id"], seed=int(data["seed"]), label_names=list(data["label_names"]),
                   items=list(data["items"]), key=dict(data["key"]), title=data.get("title", "Concept study"),
                   instructions=instructions, meta=data.get("meta", {}))

    @classmethod
    def load(cls, path) -> Study:
        """Read a key file written by :meth:`write_key`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


_KINDS = ("words", "sentences")


def check_representation(rep, where: str) -> None:
    """Check that a concept representation is None or ``{"kind": "words" | "sentences", "data": [str, ...]}``.

    The shape :func:`~clvqlearn.evaluation.judge.concept_representations`
    returns, read by :func:`make_study` and the LLM judge.

    Parameters
    ----------
    rep : object
    where : str
        Names the representation in the message.

    Raises
    ------
    TypeError, ValueError
        Saying what was expected.
    """
    if rep is None:
        return
    expected = '{"kind": "words" or "sentences", "data": [str, ...]} or None'
    if not isinstance(rep, dict) or not {"kind", "data"} <= set(rep):
        shown = sorted(map(str, rep)) if isinstance(rep, dict) else type(rep).__name__
        raise TypeError(f"{where} must be {expected} (see concept_representations); got {shown}.")
    if rep["kind"] not in _KINDS:
        raise ValueError(f"{where}['kind'] must be 'words' or 'sentences'; got {rep['kind']!r}.")
    data = rep["data"]
    if isinstance(data, (str, bytes)) or not isinstance(data, (list, tuple, np.ndarray)) or not all(
            isinstance(x, str) for x in data):
        raise TypeError(f"{where}['data'] must be a list of strings (words or sentences); got {data!r:.80}.")


def _label(value, names, what):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if not 0 <= int(value) < len(names):
            raise ValueError(f"{what} {value} is not a valid index into label_names {names}.")
        return names[int(value)]
    if str(value) not in names:
        raise ValueError(f"{what} {value!r} is not among label_names {names}.")
    return str(value)


def make_study(sentences, predictions, concepts: dict, *, label_names, labels=None, seed: int = 0,
               show_sentence: bool = False, title: str = "Concept study",
               instructions: str = DEFAULT_INSTRUCTIONS) -> Study:
    """Build a blind, shuffled prediction-recovery study.

    Parameters
    ----------
    sentences : sequence of str
        The evaluation sentences (shown only with ``show_sentence``; with
        the sentence the label is usually obvious, so the default hides it).
    predictions : sequence of int or str
        The model's prediction per sentence (index into, or name in,
        ``label_names``).
    concepts : dict of str -> list
        Per method, one representation per sentence, ``{"kind", "data"}``
        or None (see
        :func:`~clvqlearn.evaluation.judge.concept_representations`).
    label_names : sequence of str
        The answer options.
    labels : sequence of int or str, optional
        Gold labels (kept in the key, to score against them too).
    seed : int, default=0
        Shuffles the items.
    show_sentence : bool, default=False
    title : str
        Shown as text.
    instructions : str
        Plain text shown above every item (line breaks kept); ``**...**``
        marks a bold part.  HTML is not interpreted: ``<b>`` shows as is.

    Returns
    -------
    Study

    Raises
    ------
    TypeError
        When ``title`` or ``instructions`` is not a string, or ``concepts``
        or a representation has the wrong shape.
    ValueError
        When no item has a concept to show (an empty study), or lengths or
        labels do not match.
    """
    for what, text in (("title", title), ("instructions", instructions)):
        if not isinstance(text, str):
            raise TypeError(f"make_study: {what} must be a string (plain text); got {type(text).__name__}.")
    if not isinstance(concepts, dict) or not concepts:
        raise TypeError(f"concepts must be a non-empty dict {{method: one representation per sentence}}; got "
                        f"{type(concepts).__name__}.")
    names = [str(n) for n in label_names]
    n = len(sentences)
    if len(predictions) != n or any(len(v) != n for v in concepts.values()):
        raise ValueError("sentences, predictions and every method's concepts must have the same length.")
    if labels is not None and len(labels) != n:
        raise ValueError("labels must have one entry per sentence.")
    if len(set(names)) < 2:
        raise ValueError(f"label_names needs at least two distinct labels; got {names}.")
    for method, reps in concepts.items():
        for doc in range(n):
            check_representation(reps[doc], f"concepts[{method!r}][{doc}]")
    raw = [(doc, method, rep) for doc in range(n) for method, reps in concepts.items()
           if (rep := reps[doc]) and rep.get("data")]
    if not raw:
        raise ValueError("The study is empty: no sentence has a concept to show (no salient token, or all "
                         "concepts empty).")
    rng = np.random.default_rng(seed)
    raw = [raw[i] for i in rng.permutation(len(raw))]
    fingerprint = hashlib.sha1(json.dumps([seed, names, [(d, m, r) for d, m, r in raw]], sort_keys=True,
                                          default=str).encode()).hexdigest()[:12]
    items, key = [], {}
    for index, (doc, method, rep) in enumerate(raw):
        item_id = f"{fingerprint[:4]}-{index:04d}"
        item = {"id": item_id, "kind": str(rep["kind"]), "data": [str(x) for x in rep["data"]]}
        if show_sentence:
            item["sentence"] = str(sentences[doc])
        items.append(item)
        key[item_id] = {"method": method, "doc": int(doc), "prediction": _label(predictions[doc], names, "prediction"),
                        "label": None if labels is None else _label(labels[doc], names, "label")}
    return Study(study_id=fingerprint, seed=int(seed), label_names=names, items=items, key=key, title=title,
                 instructions=instructions, meta={"n_sentences": n, "methods": list(concepts)})
