"""Probes for the paper's concept-removal protocol.

A probe is a small classifier trained on CLEAN sentence representations and
tested on representations from which a concept was projected out
(:func:`cross_val_probe`).  The paper's probe is an MLP (64 hidden units,
ReLU, dropout 0.2, Adam with learning rate 1e-3, early stopping):
:class:`MLPProbe`, built on skorch's ``NeuralNetClassifier``.  A
standardised logistic regression is the fast option (:func:`make_probe`).

Randomness: the MLP's initialisation and dropout read the global torch RNG,
so training runs inside :func:`clvqlearn._torch_utils.seeded` (the global
state is restored afterwards); the batch order comes from an explicit
``torch.Generator`` and the early-stopping split from ``random_state``.
"""

from __future__ import annotations

import contextlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, check_X_y
from torch import nn

from .._sklearn_compat import Interval, validate_data, validate_params
from .._torch_utils import seeded, torch_seed
from ..nn.probe import ProbeMLP

__all__ = ["MLPProbe", "cross_val_probe", "make_probe"]


@contextlib.contextmanager
def _one_thread():
    """Run tiny torch ops on one thread (restored afterwards).

    A 64-unit MLP gains nothing from intra-op parallelism, and on a busy
    machine the thread hand-offs made training about 10x slower (measured:
    26 s with 2 threads vs 1.9 s with one, 200 epochs of a 60-row problem).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MLPProbe(ClassifierMixin, BaseEstimator):
    """The paper's MLP probe: 64 hidden units, ReLU, dropout 0.2, Adam, early stopping.

    A scikit-learn classifier around skorch's ``NeuralNetClassifier``.
    Inputs are used raw, as in the paper (``standardize=True`` scales them
    with statistics of the training data first; beware that scaling
    magnifies low-variance dimensions, so a projection that barely moves a
    vector can then move it far in the probe's eyes).  Training stops when the loss on
    a stratified ``validation_fraction`` of the training data has not
    improved for ``patience`` epochs, and the best epoch's weights are kept.

    Parameters
    ----------
    hidden : int, default=64
    dropout : float, default=0.2
    learning_rate : float, default=1e-3
        Adam learning rate.
    max_epochs : int, default=200
    patience : int, default=5
        Early-stopping patience (epochs).
    batch_size : int, default=32
    validation_fraction : float, default=0.1
        Share of the training rows held out for early stopping.
    standardize : bool, default=False
    random_state : int, RandomState instance or None, default=None

    Attributes
    ----------
    classes_ : ndarray
    net_ : skorch.NeuralNetClassifier
    n_epochs_ : int
        Epochs run before early stopping.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)).astype(np.float32)
    >>> y = (X[:, 0] > 0).astype(int)
    >>> probe = MLPProbe(random_state=0).fit(X, y)
    >>> bool(probe.score(X, y) > 0.9)
    True
    """

    _parameter_constraints: dict = {
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, hidden=64, dropout=0.2, learning_rate=1e-3, max_epochs=200, patience=5,
                 batch_size=32, validation_fraction=0.1, standardize=False, random_state=None):
        self.hidden = hidden
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y):
        """Train the MLP on ``X`` (n, d) and labels ``y``.

        Returns
        -------
        self
        """
        from skorch import NeuralNetClassifier
        from skorch.callbacks import EarlyStopping
        from skorch.dataset import ValidSplit

        self._validate_params()
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if self.classes_.size < 2:
            raise ValueError(f"y holds a single class ({self.classes_.tolist()}); a probe needs at least 2.")
        target = encoder.transform(y).astype(np.int64)
        self.scaler_ = StandardScaler(with_mean=self.standardize, with_std=self.standardize).fit(X)
        Xs = self.scaler_.transform(X).astype(np.float32)
        rng = check_random_state(self.random_state)
        seed = torch_seed(rng)
        counts = np.bincount(target)
        n_valid = int(np.ceil(self.validation_fraction * len(target)))
        stratified = counts.min() >= 2 and n_valid >= counts.size
        generator = torch.Generator().manual_seed(seed % (2**63))
        net = NeuralNetClassifier(
            ProbeMLP,
            module__n_features=Xs.shape[1],
            module__n_classes=int(self.classes_.size),
            module__hidden=self.hidden,
            module__dropout=self.dropout,
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.learning_rate,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            train_split=ValidSplit(self.validation_fraction, stratified=stratified,
                                   random_state=int(rng.randint(2**31 - 1))),
            callbacks=[EarlyStopping(patience=self.patience, load_best=True)],
            iterator_train__shuffle=True,
            iterator_train__generator=generator,
            # DataLoader draws a base seed even without shuffling; give it its own generator
            iterator_valid__generator=torch.Generator().manual_seed(seed % (2**63)),
            device="cpu",
            verbose=0,
        )
        with seeded(seed, torch.device("cpu")), _one_thread():
            net.fit(Xs, target)
        self.net_ = net
        self.n_epochs_ = len(net.history)
        return self

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes)."""
        check_is_fitted(self, "net_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        Xs = self.scaler_.transform(X).astype(np.float32)
        with torch.no_grad(), _one_thread():
            return self.net_.predict_proba(Xs)

    def predict(self, X):
        """Predicted classes, shape (n,)."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def make_probe(kind="mlp", *, random_state=None, **params):
    """The probe of the concept-removal protocol.

    Parameters
    ----------
    kind : {"mlp", "logistic"} or a scikit-learn classifier, default="mlp"
        ``"mlp"``: :class:`MLPProbe` (the paper's).  ``"logistic"``:
        ``LogisticRegression(max_iter=5000)`` on the raw vectors, the fast
        option.  An estimator instance is cloned and used as is.
    random_state : int, RandomState instance or None
        Seed of the MLP (ignored by the deterministic logistic regression).
    **params
        Extra parameters of :class:`MLPProbe` or ``LogisticRegression``.

    Returns
    -------
    sklearn classifier (unfitted)

    Examples
    --------
    >>> type(make_probe("logistic")).__name__
    'LogisticRegression'
    """
    if kind == "mlp":
        return MLPProbe(random_state=random_state, **params)
    if kind == "logistic":
        return LogisticRegression(**{"max_iter": 5000, **params})
    if isinstance(kind, str) or not hasattr(kind, "fit") or not hasattr(kind, "predict"):
        raise ValueError(f"probe must be 'mlp', 'logistic' or a scikit-learn classifier; got {kind!r}.")
    if params:
        raise ValueError("extra probe parameters are only accepted with probe='mlp' or 'logistic'.")
    return clone(kind)


@validate_params(
    {
        "variants": [dict],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
        "probe_params": [dict, None],
        "return_folds": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def cross_val_probe(clean, y, variants: dict, *, probe="mlp", n_splits: int = 5, random_state=None,
                    probe_params: dict | None = None, return_folds: bool = False):
    """Train on clean representations, test on clean and perturbed ones, out of fold.

    Stratified ``n_splits``-fold cross-validation over the sentences: in
    each fold a probe is trained on the clean vectors of the training
    sentences and predicts the held-out sentences' clean vectors and each of
    their perturbed versions.

    Parameters
    ----------
    clean : array-like of shape (n, d)
        Unperturbed sentence representations.
    y : array-like of shape (n,)
        Labels.
    variants : dict of str to array-like of shape (n, d)
        Perturbed representations, e.g. ``{"ablated": ..., "control": ...}``.
    probe : {"mlp", "logistic"} or classifier, default="mlp"
        See :func:`make_probe`.
    n_splits : int, default=5
    random_state : int, RandomState instance or None
        Seeds the folds and the probes.
    probe_params : dict, optional
        Passed to :func:`make_probe`.
    return_folds : bool, default=False
        Also return the test fold of every row, so that per-fold
        accuracies can be averaged (the paper's number: the mean of the 20
        fold accuracies) as well as pooled.

    Returns
    -------
    predictions : dict of str to ndarray of shape (n,)
        Out-of-fold predictions: key ``"clean"`` plus one per variant.
    folds : ndarray of shape (n,) of int
        Only with ``return_folds=True``: the fold in which each row was
        tested.

    Raises
    ------
    ValueError
        When a class has fewer than ``n_splits`` sentences, or shapes differ.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3)); y = (X[:, 0] > 0).astype(int)
    >>> flipped = X * np.array([-1.0, 1.0, 1.0])
    >>> out = cross_val_probe(X, y, {"flipped": flipped}, probe="logistic", random_state=0)
    >>> bool((out["clean"] == y).mean() > 0.9), bool((out["flipped"] == y).mean() < 0.1)
    (True, True)
    >>> out, folds = cross_val_probe(X, y, {}, probe="logistic", n_splits=3, random_state=0, return_folds=True)
    >>> np.bincount(folds).tolist()
    [20, 20, 20]
    """
    X, y = check_X_y(clean, y, dtype=[np.float64, np.float32])
    perturbed = {}
    for name, value in variants.items():
        arr = np.asarray(value, dtype=X.dtype)
        if arr.shape != X.shape:
            raise ValueError(f"variant {name!r} has shape {arr.shape}; expected {X.shape} like the clean data.")
        perturbed[name] = arr
    if "clean" in perturbed:
        raise ValueError("'clean' is reserved for the unperturbed predictions; rename that variant.")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"labels hold a single class ({classes.tolist()}); the probe needs at least 2.")
    if counts.min() < n_splits:
        raise ValueError(
            f"stratified {n_splits}-fold cross-validation needs at least {n_splits} sentences per class; "
            f"class {classes[counts.argmin()]!r} has {counts.min()}. Use more sentences or fewer splits."
        )
    rng = check_random_state(random_state)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=rng.randint(2**31 - 1))
    out = {"clean": np.empty(y.shape, dtype=y.dtype)}
    out.update({name: np.empty(y.shape, dtype=y.dtype) for name in perturbed})
    fold_of = np.empty(y.shape, dtype=np.int64)
    for fold, (train, test) in enumerate(folds.split(X, y)):
        model = make_probe(probe, random_state=rng.randint(2**31 - 1), **(probe_params or {}))
        model.fit(X[train], y[train])
        fold_of[test] = fold
        out["clean"][test] = model.predict(X[test])
        for name, arr in perturbed.items():
            out[name][test] = model.predict(arr[test])
    return (out, fold_of) if return_folds else out
