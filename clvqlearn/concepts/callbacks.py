"""Training callbacks of the torch estimators: loggers for TensorBoard and Weights & Biases.

``CrossLayerVQ``, ``SingleLayerVQ`` and ``SparseAutoencoder`` take a list
of callbacks (``callbacks=[...]``).  A callback is any object with some of
these methods, called by the training loop of ``fit`` (on rank 0 only in a
distributed fit):

``on_train_begin(info)``
    Before the first epoch; ``info`` holds ``description`` (the
    estimator's class), ``max_epochs``, ``n_steps`` (where a resumed fit
    starts) and ``resumed``.
``on_step_end(step, metrics)``
    After optimiser steps that are multiples of the callback's
    ``log_every_n_steps`` (an attribute; None: never).  ``metrics``:
    ``loss`` and its parts for that step (``mse`` and ``commitment`` for the
    VQ models; ``mse``, ``l1`` and ``l0`` for the SAE), ``lr``, and the
    model's own (``perplexity`` and ``active_codes`` of the codebook's EMA
    usage; the SAE's ``dead_latents``).
``on_epoch_end(epoch, metrics)``
    After each epoch (counted from 1), with the epoch's means, ``val_loss``
    when documents were held out, the same model metrics, and ``n_steps``:
    the optimiser steps so far (the x-axis of the step metrics; the loggers
    use it as the step, not as a metric).
``on_train_end(info)``
    Always, also when training fails: ``n_epochs``, ``n_steps``,
    ``best_epoch``, ``stopped_early``, ``diverged``.

Reading a step's metrics copies them from the device, so step logging
costs a synchronisation every ``log_every_n_steps`` steps; epoch metrics
are read once per epoch.  Callbacks keep only their settings until a fit
starts (writers open in ``on_train_begin`` and close in ``on_train_end``),
so an estimator holding them clones and pickles.

Examples
--------
>>> import numpy as np
>>> from clvqlearn import SparseAutoencoder
>>> class Record(TrainingCallback):
...     log_every_n_steps = 2
...     def __init__(self):
...         self.steps, self.epochs = [], []
...     def on_step_end(self, step, metrics):
...         self.steps.append(step)
...     def on_epoch_end(self, epoch, metrics):
...         self.epochs.append((epoch, sorted(metrics)))
>>> record = Record()
>>> X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
>>> _ = SparseAutoencoder(k=4, batch_size=40, max_epochs=2, validation_fraction=0.0,
...                       callbacks=[record], random_state=0).fit(X)
>>> record.steps
[2, 4, 6]
>>> record.epochs[0]
(1, ['dead_latents', 'l0', 'l1', 'loss', 'lr', 'mse', 'n_steps'])
"""

from __future__ import annotations

__all__ = ["TensorBoardLogger", "TrainingCallback", "WandbLogger"]


class TrainingCallback:
    """A base for training callbacks: every hook does nothing (override the ones you need).

    Attributes
    ----------
    log_every_n_steps : int or None
        ``on_step_end`` runs after every this many optimiser steps (None: never).
    """

    log_every_n_steps: int | None = None

    def on_train_begin(self, info: dict) -> None:
        """Before the first epoch."""

    def on_step_end(self, step: int, metrics: dict) -> None:
        """After optimiser step ``step`` (a multiple of ``log_every_n_steps``)."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """After epoch ``epoch`` (from 1)."""

    def on_train_end(self, info: dict) -> None:
        """After training, also when it failed."""


class TensorBoardLogger(TrainingCallback):
    """Write the training metrics as TensorBoard scalars (``torch.utils.tensorboard``).

    Needs the ``tensorboard`` package (``pip install clvqlearn[tensorboard]``).

    Parameters
    ----------
    log_dir : str or path-like
        The folder TensorBoard reads (``tensorboard --logdir log_dir``).
    log_every_n_steps : int or None, default=50
        Step scalars (tag ``step/<metric>``) every this many optimiser
        steps; None: epoch scalars only (tag ``epoch/<metric>``, x-axis the
        epoch).
    prefix : str or None, default=None
        Put before every tag (e.g. a run name when several fits share a folder).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from clvqlearn import SparseAutoencoder
    >>> folder = tempfile.mkdtemp()
    >>> X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    >>> sae = SparseAutoencoder(k=4, max_epochs=2, callbacks=[TensorBoardLogger(folder)]).fit(X)
    >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    >>> sorted(EventAccumulator(folder).Reload().Tags()["scalars"])[:3]
    ['epoch/dead_latents', 'epoch/l0', 'epoch/l1']
    """

    def __init__(self, log_dir, log_every_n_steps: int | None = 50, prefix: str | None = None):
        self.log_dir = log_dir
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix
        self._writer = None

    def on_train_begin(self, info: dict) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch imports tensorboard inside
            raise ImportError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard "
                "(or clvqlearn[tensorboard])."
            ) from exc
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def _write(self, kind: str, metrics: dict, step: int) -> None:
        if self._writer is None:
            return
        head = f"{self.prefix}/" if self.prefix else ""
        for name, value in metrics.items():
            if name != "n_steps":  # the step axis, not a metric
                self._writer.add_scalar(f"{head}{kind}/{name}", float(value), step)

    def on_step_end(self, step: int, metrics: dict) -> None:
        self._write("step", metrics, step)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._write("epoch", metrics, epoch)
        if self._writer is not None:
            self._writer.flush()

    def on_train_end(self, info: dict) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __getstate__(self):  # an open writer never travels (clone, pickle)
        return {**self.__dict__, "_writer": None}


class WandbLogger(TrainingCallback):
    """Log the training metrics to a Weights & Biases run.

    Needs the ``wandb`` package (``pip install clvqlearn[wandb]``).  Each
    ``fit`` opens a run in ``on_train_begin`` (``wandb.init``) and finishes
    it in ``on_train_end``.  Step metrics are logged as ``step/<metric>``
    at their optimiser step; epoch metrics as ``epoch/<metric>`` at the
    epoch's last optimiser step, plotted against ``epoch``
    (``define_metric``).  Every ``log`` names its step, and steps never go
    back: wandb drops a row logged at an earlier step than the last.

    Parameters
    ----------
    project : str or None, default=None
    name : str or None, default=None
        The run's name.
    mode : {"online", "offline", "disabled"} or None, default=None
        wandb's mode (None: its default, which the ``WANDB_MODE``
        environment variable sets); ``"offline"`` writes the run locally
        for a later ``wandb sync``.
    log_every_n_steps : int or None, default=50
    config : dict or None, default=None
        Logged as the run's config.
    **init_kwargs
        Passed on to ``wandb.init`` (e.g. ``dir``, ``tags``).

    Examples
    --------
    A real run needs ``wandb`` (``mode="offline"`` writes it locally for a
    later ``wandb sync``); here a stand-in module records the calls
    (``tests/concepts/test_checkpoints.py`` does the same):

    >>> import sys, types
    >>> import numpy as np
    >>> from clvqlearn import SparseAutoencoder
    >>> logged = []
    >>> class Run:
    ...     def define_metric(self, name, **kwargs): pass
    ...     def log(self, values, step): logged.append((step, min(values)))
    ...     def finish(self): pass
    >>> sys.modules["wandb"] = types.SimpleNamespace(init=lambda **kwargs: Run())
    >>> X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    >>> sae = SparseAutoencoder(k=4, batch_size=40, max_epochs=2, validation_fraction=0.0, random_state=0,
    ...                         callbacks=[WandbLogger(project="clvq", mode="offline", log_every_n_steps=2)])
    >>> _ = sae.fit(X)
    >>> logged  # (step, first metric): epoch rows at the epoch's last step (3 steps an epoch)
    [(2, 'step/dead_latents'), (3, 'epoch'), (4, 'step/dead_latents'), (6, 'step/dead_latents'), (6, 'epoch')]
    >>> del sys.modules["wandb"]
    """

    def __init__(self, project=None, name=None, mode=None, log_every_n_steps: int | None = 50, config=None,
                 **init_kwargs):
        self.project = project
        self.name = name
        self.mode = mode
        self.log_every_n_steps = log_every_n_steps
        self.config = config
        self.init_kwargs = init_kwargs
        self._run = None
        self._last_step = 0

    def on_train_begin(self, info: dict) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(
                "WandbLogger needs the wandb package: pip install wandb (or clvqlearn[wandb])."
            ) from exc
        settings = {k: v for k, v in {"project": self.project, "name": self.name, "mode": self.mode}.items()
                    if v is not None}
        config = {**(self.config or {}), "description": info.get("description"), "resumed": info.get("resumed")}
        self._run = wandb.init(config=config, **settings, **self.init_kwargs)
        self._last_step = int(info.get("n_steps") or 0)
        self._run.define_metric("epoch")
        self._run.define_metric("epoch/*", step_metric="epoch")

    def on_step_end(self, step: int, metrics: dict) -> None:
        if self._run is not None:
            self._last_step = max(int(step), self._last_step)
            self._run.log({f"step/{k}": v for k, v in metrics.items()}, step=int(step))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        if self._run is not None:
            values = {f"epoch/{k}": v for k, v in metrics.items() if k != "n_steps"}
            step = metrics.get("n_steps", self._last_step)
            self._last_step = max(int(step), self._last_step)
            self._run.log({"epoch": epoch, **values}, step=self._last_step)

    def on_train_end(self, info: dict) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

    def __getstate__(self):  # an open run never travels (clone, pickle)
        return {**self.__dict__, "_run": None}
