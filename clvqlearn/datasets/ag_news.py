"""AG News (Zhang, Zhao & LeCun, 2015): four-class news topic classification."""

from __future__ import annotations

import html
import re

from ._base import TextDataset
from ._io import data_file, drop_empty, fallback_hint, hf_load_dataset, parse_labels, read_csv, resolve

LABEL_NAMES = ["World", "Sports", "Business", "Sci/Tech"]
HF_ID = "fancyzhx/ag_news"
SOURCE = (
    "the AG News release by Xiang Zhang (ag_news_csv: train.csv 120,000 rows, "
    "test.csv 7,600 rows; CSV `class index,title,description`, no header), mirrored "
    "e.g. at https://github.com/mhjabreel/CharCnn_Keras/tree/master/data/ag_news_csv "
    f"and on the Hugging Face hub as {HF_ID}"
)
DESCRIPTION = (
    "AG News topic classification: news titles and descriptions from the AG corpus, "
    "four balanced classes (World, Sports, Business, Sci/Tech). Text is "
    "title + ' ' + description. Zhang, Zhao & LeCun, 'Character-level Convolutional "
    "Networks for Text Classification', NeurIPS 2015."
)
_HEADERS = ({"label", "title", "description"}, {"class index", "title", "description"},
            {"class", "title", "description"})

# The release replaced "&" by " " in HTML entities ("doesn #39;t", " quot;") and
# line breaks by a backslash ("a second\team"); "\$" is an escaped dollar sign.
_ENTITY = re.compile(r"(?:^| )(#\d{1,5};|quot;|amp;|lt;|gt;|nbsp;)")
_BACKSLASHES = re.compile(r"[ \t]*\\+[ \t]*")
_SPACES = re.compile(r"[ \t]{2,}")


def clean_ag_news_text(text: str) -> str:
    """Undo the AG News release's escapes.

    * ``\\$`` becomes ``$``;
    * every other run of backslashes (the release's stand-in for line and
      paragraph breaks) becomes one newline;
    * entities whose ``&`` was turned into a space (``doesn #39;t``,
      `` quot;``, `` #36;``) and regular ones (``&lt;``) are decoded;
    * runs of spaces collapse to one, and the ends are stripped.

    Parameters
    ----------
    text : str
        Raw title or description.

    Returns
    -------
    str

    Examples
    --------
    >>> from clvqlearn.datasets.ag_news import clean_ag_news_text
    >>> clean_ag_news_text(r"It doesn #39;t cost \\$10\\Really  quot;ok quot;")
    'It doesn\\'t cost $10\\nReally "ok"'
    """
    text = html.unescape(_ENTITY.sub(r"&\1", text))
    text = _BACKSLASHES.sub("\n", text.replace("\\$", "$"))
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


def _join(title: str, description: str) -> str:
    title, description = title.strip(), description.strip()
    if title and description:
        return f"{title} {description}"
    return title or description


def load_ag_news(split: str = "test", *, data_home=None, path=None, clean: bool = True,
                 download_if_missing: bool = False) -> TextDataset:
    """Load AG News: 4-class topic classification (World, Sports, Business, Sci/Tech).

    Reads ``<data home>/ag_news/<split>.csv`` or ``path``.  Two CSV layouts
    are accepted: with a header ``label,title,description`` (the shared
    ``test.csv``) or without one (the original release's ``train.csv`` /
    ``test.csv``: ``class index,title,description``).  Labels 1..4 become
    0..3.  The text is ``title + " " + description``.

    Parameters
    ----------
    split : {"test", "train"}, default="test"
        The split file to read.  Only ``test`` (7,600 rows, 1,900 per class)
        ships with the shared data; ``train`` (120,000 rows) is the user's copy.
    data_home : str or path-like, optional
        Data home; default ``$CLVQLEARN_DATA`` or ``~/clvqlearn_data``.
    path : str or path-like, optional
        A CSV file, or a folder holding ``<split>.csv``; overrides the data home.
    clean : bool, default=True
        Undo the release's backslash and entity escapes
        (:func:`clean_ag_news_text`).  False keeps the raw release text.
    download_if_missing : bool, default=False
        When the file is missing, load ``fancyzhx/ag_news`` with Hugging Face
        ``datasets`` (if installed and no ``HF_*_OFFLINE`` variable is set).
        The network is never used otherwise.

    Returns
    -------
    TextDataset

    Raises
    ------
    FileNotFoundError
        If the file is missing (and no download was requested or possible).
    ValueError
        If the file does not have three columns or a label is not 1..4.

    Examples
    --------
    >>> from clvqlearn.datasets import load_ag_news
    >>> ds = load_ag_news()  # doctest: +SKIP
    >>> len(ds), ds.class_counts()["Sports"]  # doctest: +SKIP
    (7600, 1900)
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    default = data_file(data_home, "ag_news", f"{split}.csv")
    what = f"AG News {split} split"
    try:
        file = resolve(path, default, f"{split}.csv", what=what, get=SOURCE,
                       data_home=data_home, extra=fallback_hint(HF_ID))
    except FileNotFoundError:
        if not download_if_missing or path is not None:
            raise
        return _from_hub(split, clean=clean, expected=default, what=what)
    frame = read_csv(file, n_columns=3)
    first = [v.strip().lower() for v in frame.iloc[0]]
    if set(first) in _HEADERS:
        frame.columns = first
        frame = frame.iloc[1:]
        label_col = next(c for c in first if c not in ("title", "description"))
        labels_raw, titles, descriptions = (frame[label_col], frame["title"],
                                            frame["description"])
        row_offset = 2
    else:
        if not first[0].lstrip("-").isdigit():
            raise ValueError(
                f"{file}: unrecognised header {frame.iloc[0].tolist()}; expected "
                "`label,title,description` or no header (class index first)"
            )
        labels_raw, titles, descriptions = frame[0], frame[1], frame[2]
        row_offset = 1
    labels = parse_labels(labels_raw.tolist(), {i + 1: i for i in range(4)}, file,
                          what="class index", row_offset=row_offset, lines=labels_raw.index.tolist())
    fix = clean_ag_news_text if clean else (lambda s: s)
    texts = [fix(_join(t, d)) for t, d in zip(titles, descriptions)]
    ids = [str(i) for i in range(len(texts))]
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=file)
    return TextDataset(texts=texts, labels=labels, label_names=list(LABEL_NAMES), ids=ids,
                       name="ag_news", split=split, description=DESCRIPTION,
                       source=str(file))


def _from_hub(split: str, *, clean: bool, expected, what: str) -> TextDataset:
    hub = hf_load_dataset(HF_ID, split, what=what, expected=expected)
    names = list(getattr(hub.features["label"], "names", LABEL_NAMES))
    if len(names) != 4:
        raise ValueError(f"{HF_ID}: expected 4 classes, the hub dataset has {names}")
    fix = clean_ag_news_text if clean else (lambda s: s)
    texts = [fix(t) for t in hub["text"]]
    labels = [int(v) for v in hub["label"]]
    ids = [str(i) for i in range(len(texts))]
    texts, (labels, ids) = drop_empty(texts, labels, ids, source=HF_ID)
    import numpy as np

    return TextDataset(texts=texts, labels=np.asarray(labels, dtype=np.int64),
                       label_names=list(LABEL_NAMES), ids=ids, name="ag_news",
                       split=split, description=DESCRIPTION, source=f"hf://{HF_ID}")
