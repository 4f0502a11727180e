"""A self-contained, offline HTML concept browser.

:func:`concept_browser_html` returns one HTML page (inline CSS and
JavaScript, the data as embedded JSON, no network, no server) that shows the
documents of a :class:`~clvqlearn.LayerPairs` with every token coloured by
its concept, for several concept methods side by side; the salient token of
each document is outlined.  Clicking a token opens its concept card (size,
top words, example sentences, label distribution where the concept is
salient, and any per-concept annotations given, such as the best human
label and its purity of :func:`clvqlearn.evaluation.concept_alignment`);
the concept list is searchable and sortable.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import LayerPairs
>>> from clvqlearn.report.browser import concept_browser_html
>>> pairs = LayerPairs(low=np.zeros((3, 1)), high=np.zeros((3, 1)), offsets=[0, 2, 3],
...                    tokens=np.array(["good", "film", "bad"], dtype=object))
>>> page = concept_browser_html({"kmeans": np.array([0, 1, 0])}, pairs)
>>> page.startswith("<!DOCTYPE html>") and "http" not in page.split("<body>")[0]
True
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import LayerPairs
from ..data.words import _piece, _scheme
from ._browser_assets import PAGE
from ._html import fill_page
from .descriptions import (
    _tokens_of,
    describe_concepts,
)

__all__ = ["concept_browser_html", "write_concept_browser"]


def _display_tokens(pairs: LayerPairs):
    """Vocabulary, per-row vocabulary index and 'space before' flag."""
    tokens = _tokens_of(pairs)
    scheme = _scheme(tokens)
    starts = {int(o) for o in pairs.offsets[:-1]}
    shown = []
    space = np.zeros(len(tokens), dtype=np.int8)
    for row, tok in enumerate(tokens):
        text, marked = _piece(str(tok), scheme)  # byte-level tokens decoded (clvqlearn.data.words)
        space[row] = 1 if marked or row in starts else 0
        shown.append(text)
    vocab, index = np.unique(np.array(shown, dtype=object).astype(str), return_inverse=True)
    return vocab.tolist(), index.astype(np.int64), space


def _method_json(name, ids, table, label_cols, annotation=None):
    concepts = []
    for concept, row in table.iterrows():
        if row["n_tokens"] == 0:
            continue
        item = {"id": int(concept), "n": int(row["n_tokens"]), "kind": row["kind"],
                "words": [[w, int(c)] for w, c in zip(row["words"], row["word_counts"])],
                "sentences": list(row["sentences"])}
        if label_cols:
            item["labels"] = [int(row[c]) for c in label_cols]
            item["ns"] = int(row["n_salient"])
        if annotation is not None and int(concept) in annotation["rows"]:
            item["ann"] = annotation["rows"][int(concept)]
        concepts.append(item)
    out = {"name": str(name), "ids": ids.tolist(), "concepts": concepts}
    if annotation is not None:
        out["ann"] = {"columns": annotation["columns"], "types": annotation["types"]}
    return out


def _json_value(value):
    """One annotation cell as a JSON value: bool, int, finite float, string, or None (missing, NaN, inf)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if np.isfinite(value) else None
    return str(value)


def _column_type(column: pd.Series) -> str:
    """How the page shows a column: ``"bool"`` (yes/no), ``"int"``, ``"float"`` (3 decimals) or ``"text"``."""
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int"
    return "float" if pd.api.types.is_numeric_dtype(column) else "text"


def _annotation_json(name, frame) -> dict:
    """A method's annotations: column names, their types, and each concept's cells in column order.

    Raises
    ------
    TypeError
        ``frame`` is not a DataFrame.
    ValueError
        Its index is not unique non-negative integer concept ids.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"annotations[{name!r}] must be a pandas DataFrame indexed by concept id; got "
                        f"{type(frame).__name__}.")
    index = frame.index
    if len(index) and (not pd.api.types.is_integer_dtype(index) or index.min() < 0 or not index.is_unique):
        raise ValueError(f"annotations[{name!r}] must be indexed by unique non-negative integer concept ids; got "
                         f"an index of dtype {index.dtype} ({len(index)} rows, {index.nunique()} distinct).")
    types = [_column_type(frame.iloc[:, j]) for j in range(frame.shape[1])]
    rows = {int(concept): [_json_value(v) for v in values]
            for concept, values in zip(index, frame.itertuples(index=False, name=None))}
    return {"columns": [str(c) for c in frame.columns], "types": types, "rows": rows}


def _annotations_json(annotations, methods) -> dict:
    if annotations is None:
        return {}
    if not isinstance(annotations, dict):
        raise TypeError("annotations must be a dict {method name: DataFrame indexed by concept id}; got "
                        f"{type(annotations).__name__}.")
    unknown = [name for name in annotations if name not in methods]
    if unknown:
        raise ValueError(f"annotations name methods that are not shown: {unknown!r}; the methods are "
                         f"{list(methods)!r}.")
    return {name: _annotation_json(name, frame) for name, frame in annotations.items()}


def _label_list(values, n_docs, what):
    if values is None:
        return None
    values = np.asarray(values)
    if values.shape != (n_docs,):
        raise ValueError(f"{what} must have one entry per document ({n_docs}); got shape {values.shape}.")
    return [v.item() if hasattr(v, "item") else v for v in values]


def browser_data(methods: dict, pairs: LayerPairs, *, salient_rows=None, labels=None, predictions=None,
                 label_names=None, descriptions: dict | None = None, annotations: dict | None = None,
                 title: str = "Concept browser", random_state=0, **describe_kwargs) -> dict:
    """The JSON-able data behind :func:`concept_browser_html` (same parameters)."""
    if not isinstance(methods, dict) or not methods:
        raise ValueError("methods must be a non-empty dict {method name: concept ids of every token row}.")
    if not isinstance(title, str):
        raise TypeError(f"title must be a string (shown as text); got {type(title).__name__}.")
    notes = _annotations_json(annotations, methods)
    vocab, tok, space = _display_tokens(pairs)
    n_docs = pairs.n_docs
    salient = None if salient_rows is None else np.asarray(salient_rows, dtype=np.int64)
    if salient is not None and salient.shape != (n_docs,):
        raise ValueError(f"salient_rows must have one entry per document ({n_docs}); got shape {salient.shape}.")
    described_by = predictions if predictions is not None else labels
    out_methods = []
    for name, ids in methods.items():
        ids = np.asarray(ids)
        table = (descriptions or {}).get(name)
        if table is None:
            kwargs = dict(describe_kwargs)
            if salient is not None and described_by is not None:
                kwargs.update(salient_rows=salient, labels=described_by, label_names=label_names)
            table = describe_concepts(ids, pairs, random_state=random_state, **kwargs)
        label_cols = [c for c in table.columns if str(c).startswith("label:")]
        out_methods.append(_method_json(name, ids.astype(np.int64), table, label_cols, notes.get(name)))
    names = list(label_names) if label_names is not None else None
    return {
        "title": title, "label_names": names, "methods": out_methods,
        "docs": {"offsets": pairs.offsets.tolist(), "vocab": vocab, "tok": tok.tolist(), "space": space.tolist(),
                 "salient": None if salient is None else salient.tolist(),
                 "labels": _label_list(labels, n_docs, "labels"),
                 "preds": _label_list(predictions, n_docs, "predictions")},
    }


def concept_browser_html(methods: dict, pairs: LayerPairs, *, salient_rows=None, labels=None, predictions=None,
                         label_names=None, descriptions: dict | None = None, annotations: dict | None = None,
                         title: str = "Concept browser", random_state=0, **describe_kwargs) -> str:
    """One self-contained HTML page that browses concepts of several methods.

    Parameters
    ----------
    methods : dict of str -> array-like of shape (n_tokens,)
        Concept id of every token row of ``pairs``, per method (e.g.
        ``{"CLVQ-VAE": clvq.predict(pairs), "k-means": km.predict(pairs)}``).
    pairs : LayerPairs
        The documents, with token strings.
    salient_rows : array-like of shape (n_docs,), optional
        Row of each document's salient token (-1 = none); outlined in red.
    labels, predictions : array-like of shape (n_docs,), optional
        Gold labels and model predictions, shown per document; the concept
        cards' label distributions use the predictions (else the labels).
    label_names : sequence of str, optional
        Names of integer labels.
    descriptions : dict of str -> DataFrame, optional
        Precomputed :func:`~clvqlearn.report.descriptions.describe_concepts`
        tables per method (computed when missing).
    annotations : dict of str -> DataFrame, optional
        Per-concept annotations of some methods, each a DataFrame indexed
        by concept id with any columns (e.g. the ``best_label`` and
        ``purity`` of :func:`~clvqlearn.evaluation.concept_alignment`'s
        ``report.concepts.set_index("concept")``, or interpretability
        scores).  Each concept card lists its row, column by column:
        floats to three decimals, integers whole, booleans as yes/no, text
        as text;
        missing values (None, NaN) are left out.  Numeric columns become
        sort keys of the concept list, and text cells match its search.
        Rows of concepts that hold no token are not shown.
    title : str
        Shown as text, like every token, sentence and name on the page
        (nothing the caller passes is read as HTML).
    random_state : int or None
        Which example sentences the cards show.
    **describe_kwargs
        Passed to :func:`~clvqlearn.report.descriptions.describe_concepts`
        (``stop_words``, ``top_tokens``, ...).

    Returns
    -------
    str
        The HTML page; it loads from disk in any browser without network.
    """
    data = browser_data(methods, pairs, salient_rows=salient_rows, labels=labels, predictions=predictions,
                        label_names=label_names, descriptions=descriptions, annotations=annotations, title=title,
                        random_state=random_state, **describe_kwargs)
    return fill_page(PAGE, title=title, data=data)


def write_concept_browser(path, methods: dict, pairs: LayerPairs, **kwargs) -> Path:
    """Write :func:`concept_browser_html` to ``path`` (UTF-8) and return the path.

    Examples
    --------
    >>> write_concept_browser("browser.html", {"CLVQ-VAE": ids}, pairs)  # doctest: +SKIP
    PosixPath('browser.html')
    """
    path = Path(path)
    path.write_text(concept_browser_html(methods, pairs, **kwargs), encoding="utf-8")
    return path
