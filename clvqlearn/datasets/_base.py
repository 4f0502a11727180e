"""`TextDataset`: the one return type of every loader.

A small, validated container of documents, their integer labels, the label
names and (for ERASER-Movie) human rationales, with stratified sampling
helpers and a pandas view.  It knows nothing about files: the loaders build
it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state


def _proportional_quotas(counts: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` over classes in proportion to ``counts`` (largest remainder).

    Each quota is ``floor(n * p_c)`` or one more, so it differs from the exact
    share ``n * p_c`` by less than one; ties go to the lower class index.
    """
    exact = n * counts / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    remainder = n - int(quotas.sum())
    if remainder:
        # stable sort: among equal fractional parts the lower class wins
        order = np.argsort(-(exact - quotas), kind="stable")
        quotas[order[:remainder]] += 1
    return np.minimum(quotas, counts)


@dataclass(repr=False)
class TextDataset:
    """Documents, labels and rationales of one split of one data set.

    Parameters
    ----------
    texts : list of str
        The documents (sentences, comments, reviews, articles).
    labels : ndarray of shape (n_texts,) of int64, optional
        Class index of each text in ``0 .. len(label_names) - 1``; None for
        unlabelled data (ERASER-Movie ``train`` sentences).
    label_names : list of str
        Name of each class, by index.
    rationales : list of list of str, optional
        Human evidence texts per document (ERASER); None when the data set has
        none.
    rationale_spans : list of list of dict, optional
        Where each rationale lies, parallel to ``rationales``: the ERASER keys
        ``docid``, ``start_token``, ``end_token`` (exclusive),
        ``start_sentence``, ``end_sentence`` as given in the source, plus
        ``start_char`` / ``end_char`` (exclusive) into the text when the
        rationale could be located in it (None otherwise).
    ids : list of str, optional
        A stable identifier per text (Jigsaw comment id, ERASER docid, BBC
        file name, row number in the source file).
    name, split, description, source : str
        Data set name, split, a one-paragraph description with its citation,
        and the file or URL it was read from.

    Attributes
    ----------
    n_classes : int
        ``len(label_names)``.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn.datasets import TextDataset
    >>> ds = TextDataset(texts=["good", "bad", "great", "awful"],
    ...                  labels=np.array([1, 0, 1, 0]), label_names=["neg", "pos"])
    >>> len(ds), ds.class_counts()
    (4, {'neg': 2, 'pos': 2})
    >>> ds.subset(n_per_class=1, random_state=0).class_counts()
    {'neg': 1, 'pos': 1}
    >>> ds.to_frame().columns.tolist()
    ['id', 'text', 'label', 'label_name']
    """

    texts: list[str]
    labels: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    rationales: list[list[str]] | None = None
    rationale_spans: list[list[dict]] | None = None
    ids: list[str] | None = None
    name: str = ""
    split: str = ""
    description: str = ""
    source: str = ""

    def __post_init__(self):
        if isinstance(self.texts, str) or not hasattr(self.texts, "__len__"):
            raise TypeError(
                f"texts must be a list of str, got {type(self.texts).__name__}"
            )
        self.texts = list(self.texts)
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"texts must all be str; item {bad[0]} is "
                f"{type(self.texts[bad[0]]).__name__}"
            )
        n = len(self.texts)
        self.label_names = [str(name) for name in self.label_names]
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,):
                raise ValueError(
                    f"labels must have shape ({n},) to match texts, got {labels.shape}"
                )
            if n and not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be integers (class indices), got dtype {labels.dtype}"
                )
            labels = labels.astype(np.int64)
            if not self.label_names:
                raise ValueError("labelled data needs label_names (one name per class)")
            if n and (labels.min() < 0 or labels.max() >= len(self.label_names)):
                raise ValueError(
                    f"labels must lie in 0..{len(self.label_names) - 1} "
                    f"(one per name in {self.label_names}); got values "
                    f"{sorted(set(labels.tolist()))[:10]}"
                )
            self.labels = labels
        for attr in ("rationales", "rationale_spans", "ids"):
            value = getattr(self, attr)
            if value is not None:
                value = list(value)
                if len(value) != n:
                    raise ValueError(
                        f"{attr} must have one entry per text ({n}), got {len(value)}"
                    )
                setattr(self, attr, value)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        counts = self.class_counts() if self.labels is not None else "unlabelled"
        parts = [f"name={self.name!r}", f"split={self.split!r}", f"n={len(self)}"]
        parts.append(f"classes={counts}" if self.labels is not None else counts)
        if self.rationales is not None:
            parts.append("rationales")
        return f"TextDataset({', '.join(parts)})"

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> dict[str, int]:
        """Number of texts per class name.

        Returns
        -------
        dict of str to int
            Every class in ``label_names``, including empty ones.

        Raises
        ------
        ValueError
            If the data set is unlabelled.

        Examples
        --------
        >>> import numpy as np
        >>> from clvqlearn.datasets import TextDataset
        >>> TextDataset(["a", "b", "c"], np.array([0, 0, 1]), ["x", "y"]).class_counts()
        {'x': 2, 'y': 1}
        """
        self._require_labels("class_counts")
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return {name: int(c) for name, c in zip(self.label_names, counts)}

    def to_frame(self):
        """A pandas DataFrame, one row per text.

        Returns
        -------
        pandas.DataFrame
            Columns ``id``, ``text`` and, where present, ``label``,
            ``label_name``, ``rationales``, ``rationale_spans``.

        Examples
        --------
        >>> from clvqlearn.datasets import TextDataset
        >>> TextDataset(["a", "b"]).to_frame().shape
        (2, 2)
        """
        import pandas as pd

        ids = self.ids if self.ids is not None else [str(i) for i in range(len(self))]
        columns = {"id": ids, "text": self.texts}
        if self.labels is not None:
            columns["label"] = self.labels
            columns["label_name"] = [self.label_names[i] for i in self.labels]
        if self.rationales is not None:
            columns["rationales"] = self.rationales
        if self.rationale_spans is not None:
            columns["rationale_spans"] = self.rationale_spans
        return pd.DataFrame(columns)

    # ------------------------------------------------------------- selection
    def take(self, indices) -> TextDataset:
        """The texts at ``indices``, in that order, as a new data set.

        Parameters
        ----------
        indices : array-like of int or bool mask
            Positions to keep.

        Returns
        -------
        TextDataset

        Examples
        --------
        >>> from clvqlearn.datasets import TextDataset
        >>> TextDataset(["a", "b", "c"]).take([2, 0]).texts
        ['c', 'a']
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(
                    f"a boolean mask must have shape ({len(self)},), got {idx.shape}"
                )
            idx = np.flatnonzero(idx)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers or a boolean mask, got {idx.dtype}")
        idx = idx.astype(np.int64).ravel()
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a data set of {len(self)} texts")

        def pick(values):
            return None if values is None else [values[i] for i in idx]

        return replace(
            self,
            texts=pick(self.texts),
            labels=None if self.labels is None else self.labels[idx],
            rationales=pick(self.rationales),
            rationale_spans=pick(self.rationale_spans),
            ids=pick(self.ids),
        )

    def subset(self, n_per_class: int, *, random_state=None) -> TextDataset:
        """A class-balanced random subset: ``n_per_class`` texts of every class.

        The paper's AG News dev set is such a subset (300 per class).  The
        chosen texts keep their original order.

        Parameters
        ----------
        n_per_class : int
            Texts drawn (without replacement) from each class.
        random_state : int, RandomState instance or None
            Seed of the draw; the same seed gives the same subset.

        Returns
        -------
        TextDataset

        Raises
        ------
        ValueError
            If the data is unlabelled, or a class has fewer than
            ``n_per_class`` texts.

        Examples
        --------
        >>> import numpy as np
        >>> from clvqlearn.datasets import TextDataset
        >>> ds = TextDataset([str(i) for i in range(10)], np.array([0] * 7 + [1] * 3), ["a", "b"])
        >>> ds.subset(n_per_class=2, random_state=0).class_counts()
        {'a': 2, 'b': 2}
        """
        self._require_labels("subset")
        if (not isinstance(n_per_class, Integral) or isinstance(n_per_class, bool)
                or n_per_class < 1):
            raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
        counts = self.class_counts()
        short = {k: v for k, v in counts.items() if v < n_per_class}
        if short:
            raise ValueError(
                f"cannot draw {n_per_class} texts per class from {self.name or 'this data set'}: "
                f"these classes have fewer: {short} (all counts: {counts})"
            )
        rng = check_random_state(random_state)
        chosen = [
            rng.choice(np.flatnonzero(self.labels == c), size=n_per_class, replace=False)
            for c in range(self.n_classes)
        ]
        return self.take(np.sort(np.concatenate(chosen)))

    def sample(self, n: int, *, stratify: bool = True, shuffle: bool = False, random_state=None) -> TextDataset:
        """A random subset of ``n`` texts, stratified by class when labelled.

        With ``stratify=True`` every class gets ``floor(n * p)`` or
        ``floor(n * p) + 1`` texts, ``p`` its share of the data set (largest
        remainder rounding), so class proportions are kept to within one text.
        The chosen texts keep their original order (files are often sorted
        by class, so slicing the result may give one class only) unless
        ``shuffle=True``.

        Parameters
        ----------
        n : int
            Number of texts, ``1 <= n <= len(self)``.
        stratify : bool, default=True
            Keep class proportions (ignored for unlabelled data).
        shuffle : bool, default=False
            Return the chosen texts in random order (the same texts as
            without it, for the same ``random_state``).
        random_state : int, RandomState instance or None
            Seed of the draw.

        Returns
        -------
        TextDataset

        Examples
        --------
        >>> import numpy as np
        >>> from clvqlearn.datasets import TextDataset
        >>> ds = TextDataset([str(i) for i in range(10)], np.array([0] * 8 + [1] * 2), ["a", "b"])
        >>> ds.sample(5, random_state=0).class_counts()
        {'a': 4, 'b': 1}
        """
        if not isinstance(n, Integral) or isinstance(n, bool) or not 1 <= n <= len(self):
            raise ValueError(f"n must be an int in 1..{len(self)}, got {n!r}")
        rng = check_random_state(random_state)
        if not stratify or self.labels is None:
            chosen = np.sort(rng.choice(len(self), size=n, replace=False))
            return self.take(rng.permutation(chosen) if shuffle else chosen)
        counts = np.bincount(self.labels, minlength=self.n_classes)
        quotas = _proportional_quotas(counts, n)
        chosen = [
            rng.choice(np.flatnonzero(self.labels == c), size=int(q), replace=False)
            for c, q in enumerate(quotas)
        ]
        chosen = np.sort(np.concatenate(chosen))
        return self.take(rng.permutation(chosen) if shuffle else chosen)

    def _require_labels(self, what: str):
        if self.labels is None:
            raise ValueError(
                f"{what} needs labels, but {self.name or 'this data set'} "
                f"({self.split or 'no split'}) is unlabelled"
            )
