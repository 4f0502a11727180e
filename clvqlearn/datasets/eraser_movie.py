"""ERASER-Movie: movie-review sentiment with human rationales (evidence spans)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._base import TextDataset
from ._io import (
    data_file,
    drop_empty,
    fallback_hint,
    hf_load_dataset,
    missing_file_error,
    parse_labels,
    read_json,
    read_jsonl,
    read_text,
)

LABEL_NAMES = ["neg", "pos"]
HF_ID = "eraser-benchmark/movie_rationales"
SOURCE_SENTENCES = (
    "the CLVQ-VAE paper's reference implementation (eraser_movie/dev.json: 856 "
    "sentences with rationales, JSON list of {idx, original_idx, sentence, label, "
    "evidence}; eraser_movie/train.txt: 13,878 unlabelled sentences, one per line)"
)
SOURCE_FOLDER = (
    "the ERASER benchmark (https://www.eraserbenchmark.com, data/movies.tar.gz: a "
    "movies/ folder with docs/ and train.jsonl, val.jsonl, test.jsonl)"
)
DESCRIPTION = (
    "ERASER-Movie: sentiment (neg/pos) of Pang & Lee movie reviews with human "
    "rationales from Zaidan, Eisner & Piatko (2007), as packaged by the ERASER "
    "benchmark (DeYoung et al., ACL 2020). Sentence level: the CLVQ-VAE paper's "
    "evidence sentences (dev, labelled) and training sentences (train, unlabelled)."
)
_SPLIT_FILES = {"train": "train.jsonl", "dev": "val.jsonl", "test": "test.jsonl"}
_LABEL_MAP = {0: 0, 1: 1, "NEG": 0, "POS": 1, "neg": 0, "pos": 1}
_SPAN_KEYS = ("docid", "start_token", "end_token", "start_sentence", "end_sentence")


def _normalise_split(split: str) -> str:
    aliases = {"val": "dev", "validation": "dev", "dev": "dev", "train": "train",
               "test": "test"}
    if split not in aliases:
        raise ValueError(f"split must be 'dev' (or 'val'), 'train' or 'test', got {split!r}")
    return aliases[split]


def is_eraser_folder(folder: Path) -> bool:
    """True if ``folder`` looks like ERASER's ``movies/`` (docs + jsonl splits)."""
    return folder.is_dir() and ((folder / "docs").is_dir() or (folder / "docs.jsonl").is_file()) \
        and any((folder / f).is_file() for f in _SPLIT_FILES.values())


def load_eraser_movie(split: str = "dev", *, level: str = "sentence", data_home=None,
                      path=None, download_if_missing: bool = False) -> TextDataset:
    """Load ERASER-Movie sentiment data with human rationales.

    Sentence level (the paper's data, the default):

    * ``split="dev"``: ``<data home>/eraser_movie/dev.json``, 856 labelled
      sentences (428 neg / 428 pos), each with its human rationale
      (``rationales`` and ``rationale_spans``, including the character span
      of the rationale inside the sentence).
    * ``split="train"``: ``<data home>/eraser_movie/train.txt``, 13,878
      unlabelled training sentences (``labels`` is None), one per line.

    ERASER's original ``movies/`` folder (``docs/`` + ``train.jsonl`` /
    ``val.jsonl`` / ``test.jsonl``, each line ``{annotation_id,
    classification: "NEG"|"POS", evidences: [[{text, docid, start_token,
    end_token, start_sentence, end_sentence}]], ...}``) is read when ``path``
    points at it, or from ``<data home>/eraser_movie/movies/``.  From it,
    ``level="document"`` gives whole reviews (1,600 / 200 / 199) with all their
    rationales, and ``level="sentence"`` gives one labelled row per evidence:
    the sentences it covers, like the paper's ``dev.json``.

    Parameters
    ----------
    split : {"dev", "train", "test"}, default="dev"
        ``"val"`` and ``"validation"`` mean ``"dev"``.
    level : {"sentence", "document"}, default="sentence"
        Rows are sentences (the paper's setting) or whole reviews.
    data_home : str or path-like, optional
        Data home; default ``$CLVQLEARN_DATA`` or ``~/clvqlearn_data``.
    path : str or path-like, optional
        ``dev.json``-style file, a ``.txt`` file of sentences, a folder
        holding ``dev.json`` / ``train.txt``, or ERASER's ``movies/`` folder.
    download_if_missing : bool, default=False
        Document level only: when no ``movies/`` folder is found, load
        ``eraser-benchmark/movie_rationales`` with Hugging Face ``datasets``
        (if installed and no ``HF_*_OFFLINE`` variable is set).

    Returns
    -------
    TextDataset

    Raises
    ------
    FileNotFoundError
        If the file or folder is missing.
    ValueError
        If a file has the wrong fields or labels, or an evidence points
        outside its document.

    Examples
    --------
    >>> from clvqlearn.datasets import load_eraser_movie
    >>> ds = load_eraser_movie("dev")  # doctest: +SKIP
    >>> len(ds), ds.rationales[0]  # doctest: +SKIP
    (856, ['plot holes you could drive a winnebago through'])
    """
    split = _normalise_split(split)
    if level not in ("sentence", "document"):
        raise ValueError(f"level must be 'sentence' or 'document', got {level!r}")
    if path is not None:
        target = Path(path).expanduser()
        if is_eraser_folder(target):
            return _read_folder(target, split, level)
        if level == "document":
            raise missing_file_error(target / "docs", what="ERASER-Movie documents",
                                     get=SOURCE_FOLDER, from_path=True)
        if target.is_dir():
            target = target / ("train.txt" if split == "train" else f"{split}.json")
        if not target.is_file():
            raise missing_file_error(target, what=f"ERASER-Movie {split} sentences",
                                     get=SOURCE_SENTENCES, from_path=True)
        return _read_sentence_file(target, split)

    home = data_file(data_home, "eraser_movie")
    folder = home / "movies"
    if level == "sentence":
        file = home / ("train.txt" if split == "train" else f"{split}.json")
        if file.is_file():
            return _read_sentence_file(file, split)
        if is_eraser_folder(folder):
            return _read_folder(folder, split, level)
        source = SOURCE_SENTENCES if split != "test" else SOURCE_FOLDER
        raise missing_file_error(
            file, what=f"ERASER-Movie {split} sentences", get=source, from_path=False,
            data_home=data_home,
            extra=f"ERASER's movies/ folder at {folder} also works.")
    if is_eraser_folder(folder):
        return _read_folder(folder, split, level)
    if download_if_missing:
        return _from_hub(split, expected=folder)
    raise missing_file_error(folder, what="ERASER-Movie documents (movies/ folder)",
                             get=SOURCE_FOLDER, from_path=False, data_home=data_home,
                             extra=fallback_hint(HF_ID))


# ------------------------------------------------------------ sentence files
def _read_sentence_file(file: Path, split: str) -> TextDataset:
    if file.suffix.lower() == ".json":
        return _read_sentence_json(file, split)
    lines = read_text(file).splitlines()
    ids = [str(i) for i in range(len(lines))]
    texts, (ids,) = drop_empty(lines, ids, source=file)
    return TextDataset(texts=texts, labels=None, label_names=list(LABEL_NAMES), ids=ids,
                       name="eraser_movie", split=split, description=DESCRIPTION,
                       source=str(file))


def _read_sentence_json(file: Path, split: str) -> TextDataset:
    rows = read_json(file)
    if not isinstance(rows, list):
        raise ValueError(f"{file}: expected a JSON list of objects, got {type(rows).__name__}")
    texts, raw_labels, rationales, spans, ids = [], [], [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not {"sentence", "label"} <= set(row):
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{file}: item {i} must be an object with 'sentence', 'label' "
                             f"and 'evidence'; got {keys}")
        sentence = row["sentence"]
        if not isinstance(sentence, str):
            raise ValueError(f"{file}: item {i} has a non-string sentence")
        evidence = row.get("evidence") or []
        evidence = [evidence] if isinstance(evidence, dict) else list(evidence)
        texts.append(sentence)
        raw_labels.append(row["label"])
        ids.append(str(row.get("idx", i)))
        rationales.append([])
        spans.append([])
        for ev in evidence:
            if not isinstance(ev, dict) or not isinstance(ev.get("text"), str):
                raise ValueError(f"{file}: item {i} has an evidence without a 'text' string")
            start = sentence.find(ev["text"])
            rationales[-1].append(ev["text"])
            spans[-1].append({**{k: ev.get(k) for k in _SPAN_KEYS},
                              "start_char": start if start >= 0 else None,
                              "end_char": start + len(ev["text"]) if start >= 0 else None})
    labels = parse_labels(raw_labels, _LABEL_MAP, file, row_offset=0)
    texts, (labels, rationales, spans, ids) = drop_empty(texts, labels, rationales, spans, ids,
                                                        source=file)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES),
                       rationales=rationales, rationale_spans=spans, ids=ids,
                       name="eraser_movie", split=split, description=DESCRIPTION,
                       source=str(file))


# ------------------------------------------------------------ ERASER folder
@dataclass
class _Doc:
    """A tokenised ERASER document: sentences of tokens and token char offsets.

    ``text`` joins tokens with spaces and sentences with newlines, so
    ``text.split()`` is the ERASER token list and token spans index it.
    """

    sentences: list[list[str]]
    sentence_start: np.ndarray
    text: str
    char_start: list[int]
    char_end: list[int]

    @classmethod
    def parse(cls, raw: str) -> _Doc:
        sentences = [line.split() for line in raw.strip().split("\n")]
        sentences = [s for s in sentences if s] or [[]]
        char_start, char_end, pos = [], [], 0
        for sentence in sentences:
            for token in sentence:
                char_start.append(pos)
                char_end.append(pos + len(token))
                pos += len(token) + 1
        return cls(sentences=sentences,
                   sentence_start=np.cumsum([0] + [len(s) for s in sentences]),
                   text="\n".join(" ".join(s) for s in sentences),
                   char_start=char_start, char_end=char_end)

    @property
    def n_tokens(self) -> int:
        return len(self.char_start)

    def sentence_of(self, token: int) -> int:
        return int(np.searchsorted(self.sentence_start, token, side="right") - 1)


def _load_docs(folder: Path, needed: set[str]) -> dict[str, _Doc]:
    docs = {}
    if (folder / "docs").is_dir():
        for docid in sorted(needed):
            file = folder / "docs" / docid
            if not file.is_file():
                raise ValueError(f"{folder}: annotation refers to document {docid!r} but "
                                 f"{file} does not exist")
            docs[docid] = _Doc.parse(read_text(file))
    else:
        for row in read_jsonl(folder / "docs.jsonl"):
            if row.get("docid") in needed:
                docs[row["docid"]] = _Doc.parse(str(row.get("document", "")))
        absent = sorted(needed - set(docs))
        if absent:
            raise ValueError(f"{folder / 'docs.jsonl'}: no document for docids {absent[:5]}")
    return docs


def _flatten_evidences(value, file: Path, lineno: int) -> list[dict]:
    out = []
    for item in value or []:
        group = item if isinstance(item, list) else [item]
        for ev in group:
            if not isinstance(ev, dict) or not isinstance(ev.get("text"), str):
                raise ValueError(f"{file}, annotation {lineno}: every evidence must be an "
                                 "object with a 'text' string")
            out.append(ev)
    return out


def _read_folder(folder: Path, split: str, level: str) -> TextDataset:
    file = folder / _SPLIT_FILES[split]
    if not file.is_file():
        raise missing_file_error(file, what=f"ERASER-Movie {split} annotations",
                                 get=SOURCE_FOLDER, from_path=True)
    annotations = read_jsonl(file)
    parsed = []
    for lineno, ann in enumerate(annotations, start=1):
        if "annotation_id" not in ann or "classification" not in ann:
            raise ValueError(f"{file}, line {lineno}: expected 'annotation_id' and "
                             f"'classification'; got {sorted(ann)}")
        evidences = _flatten_evidences(ann.get("evidences"), file, lineno)
        docids = ann.get("docids") or [ann["annotation_id"]]
        parsed.append((ann, evidences, [ev.get("docid") or docids[0] for ev in evidences],
                       docids[0]))
    needed = {docid for _, _, ev_docids, main in parsed for docid in ev_docids + [main]}
    docs = _load_docs(folder, needed)
    labels = parse_labels([a["classification"] for a, *_ in parsed], _LABEL_MAP, file,
                          what="classification")
    texts, out_labels, rationales, spans, ids = [], [], [], [], []
    for (ann, evidences, ev_docids, main), label in zip(parsed, labels):
        if level == "document":
            doc = docs[main]
            texts.append(doc.text)
            out_labels.append(label)
            ids.append(str(ann["annotation_id"]))
            rationales.append([ev["text"] for ev in evidences])
            spans.append([_span(doc, ev, docid, file, offset=0)
                          for ev, docid in zip(evidences, ev_docids)])
            continue
        for k, (ev, docid) in enumerate(zip(evidences, ev_docids)):
            doc = docs[docid]
            first, last = _sentence_range(doc, ev, file)
            words = [w for s in doc.sentences[first:last] for w in s]
            texts.append(" ".join(words))
            out_labels.append(label)
            ids.append(f"{ann['annotation_id']}#{k}")
            rationales.append([ev["text"]])
            offset = int(doc.sentence_start[first])
            spans.append([_span(doc, ev, docid, file, offset=offset, words=words)])
    if not texts:
        raise ValueError(f"{file}: no {'documents' if level == 'document' else 'evidences'}")
    texts, (out_labels, rationales, spans, ids) = drop_empty(
        texts, np.asarray(out_labels, dtype=np.int64), rationales, spans, ids, source=file)
    return TextDataset(texts=texts, labels=out_labels, label_names=list(LABEL_NAMES),
                       rationales=rationales, rationale_spans=spans, ids=ids,
                       name="eraser_movie", split=split, description=DESCRIPTION,
                       source=str(file))


def _token_range(doc: _Doc, ev: dict, file: Path) -> tuple[int, int]:
    start, end = ev.get("start_token", -1), ev.get("end_token", -1)
    if not (isinstance(start, int) and isinstance(end, int)) or start < 0:
        raise ValueError(f"{file}: evidence {ev.get('text')!r} has no token span "
                         "(start_token / end_token)")
    if not start < end <= doc.n_tokens:
        raise ValueError(f"{file}: evidence {ev.get('text')!r} spans tokens {start}:{end}, "
                         f"outside its document of {doc.n_tokens} tokens")
    return start, end


def _sentence_range(doc: _Doc, ev: dict, file: Path) -> tuple[int, int]:
    start, end = _token_range(doc, ev, file)
    first = ev.get("start_sentence", -1)
    last = ev.get("end_sentence", -1)
    if not (isinstance(first, int) and isinstance(last, int)) or first < 0 or last <= first:
        first, last = doc.sentence_of(start), doc.sentence_of(end - 1) + 1
    # the span must lie inside the sentences
    first = min(first, doc.sentence_of(start))
    last = max(last, doc.sentence_of(end - 1) + 1)
    return first, min(last, len(doc.sentences))


def _span(doc: _Doc, ev: dict, docid: str, file: Path, *, offset: int,
          words: list[str] | None = None) -> dict:
    start, end = _token_range(doc, ev, file)
    span = {k: ev.get(k) for k in _SPAN_KEYS}
    span["docid"] = docid
    if words is None:
        span["start_char"], span["end_char"] = doc.char_start[start], doc.char_end[end - 1]
    else:
        lengths = [len(w) + 1 for w in words]
        rel_start, rel_end = start - offset, end - offset
        span["start_char"] = sum(lengths[:rel_start])
        span["end_char"] = sum(lengths[:rel_end]) - 1
    return span


def _from_hub(split: str, *, expected: Path) -> TextDataset:
    hub_split = {"dev": "validation"}.get(split, split)
    what = f"ERASER-Movie {split} documents"
    hub = hf_load_dataset(HF_ID, hub_split, what=what, expected=expected)
    texts = list(hub["review"])
    labels = np.asarray([int(v) for v in hub["label"]], dtype=np.int64)
    rationales = [list(ev) for ev in hub["evidences"]]
    spans = []
    for text, evs in zip(texts, rationales):
        found = [text.find(ev) for ev in evs]
        spans.append([{**dict.fromkeys(_SPAN_KEYS), "start_char": s if s >= 0 else None,
                       "end_char": s + len(ev) if s >= 0 else None}
                      for s, ev in zip(found, evs)])
    ids = [str(i) for i in range(len(texts))]
    texts, (labels, rationales, spans, ids) = drop_empty(texts, labels, rationales, spans, ids,
                                                        source=HF_ID)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES),
                       rationales=rationales, rationale_spans=spans, ids=ids,
                       name="eraser_movie", split=split, description=DESCRIPTION,
                       source=f"hf://{HF_ID}")
