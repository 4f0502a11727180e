"""Input checks shared by the extractor and the evaluation: the one ``check_texts``."""

from __future__ import annotations

__all__ = ["check_texts"]


def check_texts(texts, name: str = "texts") -> list[str]:
    """Validate a corpus: a non-empty sequence of non-blank strings, returned as a list.

    Parameters
    ----------
    texts : sequence of str (list, tuple, 1-D array or pandas Series)
        The documents.  A bare string is refused (it would be read as a
        sequence of characters).
    name : str, default="texts"
        Name used in error messages.

    Returns
    -------
    list of str

    Raises
    ------
    TypeError
        When ``texts`` is a string, not a sequence, or holds non-strings.
    ValueError
        When ``texts`` is empty or not one-dimensional, or a document is
        empty or blank.

    Examples
    --------
    >>> check_texts(("a film", "a plot"))
    ['a film', 'a plot']
    >>> check_texts(["a film", " "])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: texts contains 1 empty or whitespace-only document(s) at indices [1]; ...
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of strings (one per document), not a single string; wrap it: [text]."
        )
    if texts is None or not hasattr(texts, "__len__") or not hasattr(texts, "__iter__"):
        raise TypeError(f"{name} must be a list (or array / Series) of strings; got {type(texts).__name__}.")
    if hasattr(texts, "ndim") and getattr(texts, "ndim", 1) != 1:
        raise ValueError(f"{name} must be one-dimensional (one string per document); got ndim={texts.ndim}.")
    items = list(texts.tolist() if hasattr(texts, "tolist") else texts)
    if not items:
        raise ValueError(f"{name} is empty: expected at least one document.")
    bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if bad:
        kinds = sorted({type(items[i]).__name__ for i in bad})
        raise TypeError(
            f"{name} must contain only strings; items at indices {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''} are {', '.join(kinds)}."
        )
    blank = [i for i, t in enumerate(items) if not t.strip()]
    if blank:
        raise ValueError(
            f"{name} contains {len(blank)} empty or whitespace-only document(s) at indices {blank[:10]}"
            f"{' ...' if len(blank) > 10 else ''}; they have no tokens. Remove them first, "
            "e.g. texts = [t for t in texts if t.strip()]."
        )
    return items
