"""`SparseAutoencoder`: the sparse-autoencoder baseline of the CLVQ-VAE paper.

A ReLU (or TopK) sparse autoencoder that encodes a token's LOWER-layer
vector into ``k`` non-negative latents and decodes its HIGHER-layer
vector from them (cross-layer, the paper's baseline), or encodes and
decodes one layer (``layer="low"`` / ``"high"``).  A token's concept is
its most active latent.  Training uses the shared loop of
``clvqlearn.concepts._training`` (document-level validation split, Adam,
ReduceLROnPlateau, early stopping, gradient clipping).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch

from .._linalg import orthonormalize
from .._sklearn_compat import Interval, StrOptions
from .._torch_utils import make_generator, seeded, to_numpy_state, torch_seed
from ..nn.sae import SparseAutoencoderNet, auxk_loss, resample_dead_, sae_loss
from ._base import ConceptEstimator
from ._data import StreamData, _Data
from ._distributed import SINGLE, Comm, sum_arrays
from ._network import TRAINING_CONSTRAINTS, _data_widths, _NetworkEstimator
from ._persistence import _STATISTIC_DTYPES
from ._stream import initial_sample, training_source
from ._training import TrainConfig, as_float_tensor, estimator_config, rows_through, train_module

#: A latent is dead after this many training tokens without firing (or one
#: epoch's worth of training tokens, when that is fewer).
DEAD_AFTER_TOKENS = 1_000_000

# Fitted arrays <-> network parameters.
_STATE = {
    "encoder_weights_": "encoder_weight",
    "encoder_bias_": "encoder_bias",
    "components_": "decoder_weight",
    "decoder_bias_": "decoder_bias",
    "tokens_since_fired_": "tokens_since_fired",
}


class SparseAutoencoder(_NetworkEstimator):
    """Sparse autoencoder concepts: ReLU (or TopK) latents, lower -> higher layer.

    ``latents = act(W_enc x_source + b_enc)`` and
    ``x_target ~ latents @ components_ + decoder_bias_``.  Objective, per
    token and averaged over tokens::

        ||x_target - prediction||^2 + l1 * ||latents||_1  (+ AuxK term)

    (squared error summed over features, the SAELens convention).  The
    defaults are the CLVQ-VAE paper's baseline: ReLU, lower -> higher layer,
    untied weights, L1 weight 0.01, Xavier-uniform initialisation, encoder
    bias 0.1.  The decoder bias starts at the mean target vector (a better
    starting point that does not change the model).

    Parameters
    ----------
    k : int, default=400
        Number of latents (concepts).
    l1 : float, default=0.01
        Weight of the L1 penalty on the latents (also applied with TopK; set
        0 for a pure TopK SAE as in Gao et al.).
    activation : {"relu", "topk"}, default="relu"
        ReLU, or TopK: only the ``top_k`` largest pre-activations of each
        token survive (then ReLU).
    top_k : int or None, default=None
        Active latents per token; required (1 <= top_k <= k) for
        ``activation="topk"``, ignored otherwise.
    layer : {None, "low", "high"}, default=None
        None: cross-layer, encode the low layer and reconstruct the high
        one.  "low" / "high": a single-layer SAE on that layer (a plain 2-D
        array is then the layer itself).
    normalize_decoder : bool, default=False
        Keep every decoder row (``components_``) at unit L2 norm, re-projected
        after each optimiser step, so the L1 penalty cannot be dodged by
        shrinking latents and growing decoder rows.
    dead_latents : {None, "auxk", "resample"}, default=None
        Dead-latent handling.  A latent is dead when it has not fired for
        one epoch of training tokens (at most ``DEAD_AFTER_TOKENS``).
        "auxk": the AuxK loss of Gao et al. (2024), dead latents learn to
        reconstruct the residual (TopK only).  "resample": dead latents are
        re-initialised on badly reconstructed tokens, checked once per
        dead window (Bricken et al. 2023).
    ablation : {"encoder_subspace", "decoder_row"}, default="encoder_subspace"
        What :meth:`concept_directions` returns: the orthonormalised span of
        the ``ablation_rank`` encoder rows most aligned with the concept's
        (SOURCE-layer space; the paper's revised protocol), or the concept's
        single decoder row (TARGET-layer space; the paper's earlier one).
    ablation_rank : int, default=5
        Encoder rows in the ablation subspace (the concept's own row plus
        the ``ablation_rank - 1`` rows of highest cosine similarity to it).
    learning_rate : float, default=1e-3
        Adam learning rate.
    batch_size : int, default=1024
        Tokens per minibatch.
    max_epochs : int, default=100
    early_stopping_patience : int, default=15
        Epochs without validation improvement before stopping.
    validation_fraction : float, default=0.1
        Share of DOCUMENTS held out for early stopping.
    weight_decay : float, default=1e-4
        Adam weight decay on the weight matrices (not on biases).
    gradient_clip : float or None, default=2.0
    compute_dtype : {"float32", "bfloat16"}, default="float32"
        bfloat16 autocast is opt-in.
    n_low_features : int or None, default=None
        For a plain 2-D array ``[low | high]`` (cross-layer only): how many
        leading columns are the low layer (None = half).
    checkpoint_dir : str, path-like or None, default=None
        A folder where ``fit`` writes a checkpoint at the end of every epoch
        (and every ``checkpoint_every`` steps), in a subfolder named after
        the fit's settings and data (clones in a grid search or a
        cross-validation never share one); the same ``fit`` run again
        resumes it exactly (with a ``UserWarning``) (docs/scale.md).
    checkpoint_every : int or None, default=None
        Optimiser steps between checkpoints (None: at epoch ends only).
    callbacks : list or None, default=None
        Training callbacks, e.g.
        :class:`~clvqlearn.concepts.callbacks.TensorBoardLogger`; they
        receive the loss, its parts (``mse``, ``l1``, ``l0``), the learning
        rate and the number of dead latents.
    distributed : bool or "auto", default=False
        Data-parallel training over the initialised ``torch.distributed``
        group (``torchrun``): each rank computes a share of every token
        batch (``batch_size`` is the global batch), equal to a one-process
        fit except for ``dead_latents="resample"`` (rank 0 resamples and
        broadcasts).  Every rank must then call ``fit`` with the same data
        and settings.  ``True``: the group must exist; ``"auto"``: when a
        group is initialised; ``False``: never (each process fits on its
        own).
    random_state : int, RandomState instance or None, default=None
    device : str, default="auto"
        "auto", "cpu", "cuda" or "cuda:N".  Fitted state is numpy, so a
        model trained on a GPU predicts on a CPU.
    verbose : int, default=0
        Progress bar over epochs when > 0.

    Attributes
    ----------
    components_ : ndarray of shape (k, d_target)
        Decoder rows: the concept vectors in the target layer.
    decoder_bias_ : ndarray of shape (d_target,)
        Added by :meth:`inverse_transform` and :meth:`reconstruct`.
    encoder_weights_ : ndarray of shape (k, d_source)
        Encoder rows, in the source layer's space.
    encoder_bias_ : ndarray of shape (k,)
    usage_ : ndarray of shape (k,)
        Share of training tokens whose most active latent is each latent.
    firing_rate_ : ndarray of shape (k,)
        Share of training tokens on which each latent is active (> 0).
    l0_ : float
        Mean number of active latents per training token.
    n_dead_latents_ : int
        Latents that never fire on the training data.
    tokens_since_fired_ : ndarray of shape (k,)
        Training tokens since each latent last fired (dead-latent clock).
    n_resampled_ : int
        Latents re-initialised by ``dead_latents="resample"`` (cumulative).
    loss_curve_, validation_curve_ : list of float
        Per-epoch training and validation loss.
    n_iter_ : int
        Epochs run (summed over :meth:`partial_fit` calls).
    n_steps_ : int
        Optimiser steps.
    best_epoch_ : int
        Epoch whose weights were kept by early stopping.
    n_features_in_ : int
    n_docs_seen_, n_tokens_seen_ : int
        Documents and token rows given to :meth:`fit` (held-out validation
        documents included), summed over :meth:`partial_fit` calls; what the
        model card of :meth:`save` reports as training data.

    See Also
    --------
    clvqlearn.concepts.kmeans.KMeansConcepts : the clustering baseline.

    Notes
    -----
    :meth:`transform` returns the latents (non-negative; with TopK at most
    ``top_k`` non-zero per token).  :meth:`predict` is the most active
    latent: ``transform(X).argmax(1)`` wherever a token has an active
    latent; a token with none gets the latent of highest pre-activation
    (rather than an arbitrary 0).  :meth:`partial_fit` runs one epoch over
    its input, without a validation split (the first call initialises).

    References
    ----------
    .. [1] Bricken et al., "Towards Monosemanticity", Transformer Circuits 2023.
    .. [2] Gao et al., "Scaling and evaluating sparse autoencoders", 2024.
    .. [3] Garg et al., "Cross-Layer Discrete Concept Discovery for
       Interpreting Language Models", arXiv 2506.20040.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn.concepts.sae import SparseAutoencoder
    >>> rng = np.random.default_rng(0)
    >>> low = rng.normal(size=(400, 6)).astype(np.float32)
    >>> X = np.hstack([low, low @ rng.normal(size=(6, 6)).astype(np.float32)])
    >>> sae = SparseAutoencoder(k=16, l1=0.001, batch_size=64, learning_rate=1e-2,
    ...                         max_epochs=20, random_state=0).fit(X)
    >>> codes = sae.transform(X)
    >>> codes.shape, bool((codes >= 0).all()), sae.components_.shape
    ((400, 16), True, (16, 6))
    >>> bool(sae.score(X) > 0.9)
    True
    """

    _parameter_constraints: dict = {
        **ConceptEstimator._parameter_constraints,
        "l1": [Interval(Real, 0, None, closed="left")],
        "activation": [StrOptions({"relu", "topk"})],
        "top_k": [Interval(Integral, 1, None, closed="left"), None],
        "layer": [StrOptions({"low", "high"}), None],
        "normalize_decoder": ["boolean"],
        "dead_latents": [StrOptions({"auxk", "resample"}), None],
        "ablation": [StrOptions({"encoder_subspace", "decoder_row"})],
        "ablation_rank": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping_patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "gradient_clip": [Interval(Real, 0, None, closed="neither"), None],
        "compute_dtype": [StrOptions({"float32", "bfloat16"})],
        "n_low_features": [Interval(Integral, 1, None, closed="left"), None],
        **TRAINING_CONSTRAINTS,
    }

    def __init__(
        self,
        k=400,
        *,
        l1=0.01,
        activation="relu",
        top_k=None,
        layer=None,
        normalize_decoder=False,
        dead_latents=None,
        ablation="encoder_subspace",
        ablation_rank=5,
        learning_rate=1e-3,
        batch_size=1024,
        max_epochs=100,
        early_stopping_patience=15,
        validation_fraction=0.1,
        weight_decay=1e-4,
        gradient_clip=2.0,
        compute_dtype="float32",
        n_low_features=None,
        checkpoint_dir=None,
        checkpoint_every=None,
        callbacks=None,
        distributed=False,
        random_state=None,
        device="auto",
        verbose=0,
    ):
        self.k = k
        self.l1 = l1
        self.activation = activation
        self.top_k = top_k
        self.layer = layer
        self.normalize_decoder = normalize_decoder
        self.dead_latents = dead_latents
        self.ablation = ablation
        self.ablation_rank = ablation_rank
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping_patience = early_stopping_patience
        self.validation_fraction = validation_fraction
        self.weight_decay = weight_decay
        self.gradient_clip = gradient_clip
        self.compute_dtype = compute_dtype
        self.n_low_features = n_low_features
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.callbacks = callbacks
        self.distributed = distributed
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    _saved_dtypes = {**ConceptEstimator._saved_dtypes, "firing_rate_": _STATISTIC_DTYPES,
                     "tokens_since_fired_": _STATISTIC_DTYPES}

    # ------------------------------------------------------------ hooks
    def _layer_roles(self):
        if self.layer is None:
            return ("low", "high")
        return (self.layer, self.layer)

    def _structure(self) -> dict:
        return {"k": self.k, "layer": self.layer}

    def _components_width(self) -> int | None:
        """Decoder rows live in the target layer."""
        return self._layer_width(self._layer_roles()[1])

    def _network_settings(self) -> tuple:
        """What the torch network is built with besides its shapes (the cache is rebuilt when it changes)."""
        return (self.activation, self.top_k if self.activation == "topk" else None)

    @property
    def concept_space_(self) -> str:
        """Layer of :meth:`concept_directions`: source for encoder rows, target for decoder rows."""
        source, target = self._layer_roles()
        return source if self.ablation == "encoder_subspace" else target

    def _inverse_bias(self):
        return self.decoder_bias_

    def _check_hyperparameters(self) -> None:
        if self.activation == "topk":
            if self.top_k is None:
                raise ValueError("activation='topk' needs top_k (the number of active latents per token); got None.")
            if self.top_k > self.k:
                raise ValueError(f"top_k={self.top_k} cannot exceed k={self.k} latents.")
        if self.dead_latents == "auxk" and self.activation != "topk":
            raise ValueError(
                "dead_latents='auxk' (Gao et al. 2024) is defined for TopK autoencoders: a dead ReLU "
                "latent has no positive pre-activation to learn from. Use activation='topk' or "
                "dead_latents='resample'."
            )

    def _train_config(self, partial: bool) -> TrainConfig:
        """One epoch without a validation split for a ``partial_fit`` call."""
        return estimator_config(self, partial, batch_unit="tokens")

    def _new_network(self, data: _Data, seed: int, device) -> SparseAutoencoderNet:
        with seeded(seed, device):
            network = SparseAutoencoderNet(
                data.source.shape[1], data.target.shape[1], self.k, activation=self.activation,
                top_k=self.top_k if self.activation == "topk" else None,
            )
        network.reset_parameters(generator=make_generator(seed, torch.device("cpu")))
        with torch.no_grad():
            network.decoder_bias.copy_(torch.as_tensor(np.asarray(data.target, dtype=np.float64).mean(axis=0)))
        if self.normalize_decoder:
            network.normalize_decoder_()
        return network.to(device)

    def _start_network(self, data, rng, device) -> SparseAutoencoderNet:
        self.n_resampled_ = 0
        return self._new_network(initial_sample(data, rng), torch_seed(rng), device)

    def _blank_network(self, data, device) -> SparseAutoencoderNet:
        """A network of the data's widths, its weights to be overwritten (a resumed checkpoint)."""
        self.n_resampled_ = 0
        source, target = _data_widths(data)
        with seeded(0, device):
            network = SparseAutoencoderNet(source, target, self.k, activation=self.activation,
                                           top_k=self.top_k if self.activation == "topk" else None)
        return network.to(device)

    def _fit_data(self, data: _Data, partial: bool) -> None:
        self._check_hyperparameters()
        run = self._begin_fit(data, partial)
        network, device, comm = run.network, run.device, run.comm
        seed = torch_seed(run.rng)
        config = self._train_config(partial)
        n_train = data.n_tokens if partial else int(round(data.n_tokens * (1 - config.validation_fraction)))
        dead_after = float(max(1, min(n_train, DEAD_AFTER_TOKENS)))
        l1, aux_k = float(self.l1), 2 * (self.top_k or 1)
        use_auxk = self.dead_latents == "auxk"
        resample_generator = make_generator(seed, torch.device("cpu"))
        clock = {"tokens": 0.0, "resampled": 0}
        report = bool(run.callbacks)

        def loss_fn(net, batch):
            out = net(batch.source)
            loss = sae_loss(out, batch.target, l1)
            if net.training:
                if use_auxk:
                    loss = loss + auxk_loss(net, out, batch.target, net.dead_mask(dead_after), aux_k)
                net.update_fired(out.latents, batch.total_rows, comm.active)
            return (loss, _loss_parts(out, batch.target)) if report else loss

        def idle_step(net, batch):
            net.update_fired(torch.zeros(0, self.k, device=device), batch.total_rows, True)

        after_step = self._after_step(dead_after, resample_generator, clock, comm)
        with seeded(run.dropout_seed(seed), device):
            result, self._train_state = train_module(
                network, loss_fn, *training_source(data),
                config=config, rng=run.rng, device=device, after_step=after_step,
                state=getattr(self, "_train_state", None),
                **run.train_kwargs(loss_parts=("mse", "l1", "l0") if report else (),
                                   monitor=lambda net: {"dead_latents": int(net.dead_mask(dead_after).sum())},
                                   idle_step=idle_step,
                                   random_states={"resample": resample_generator, "clock": clock}),
            )
        self._keep_network(network, device)
        for attr, value in to_numpy_state(network).items():
            setattr(self, _attribute_of(attr), value)
        self.tokens_since_fired_ = np.asarray(self.tokens_since_fired_, dtype=np.float64)
        self.n_iter_ += result.n_epochs
        self.n_steps_ += result.n_steps
        self.n_resampled_ += clock["resampled"]
        self.loss_curve_ = list(self.loss_curve_) + result.loss_curve
        self.validation_curve_ = list(self.validation_curve_) + result.validation_curve
        self.best_epoch_ = result.best_epoch
        self._record_usage(data, comm)

    def _after_step(self, dead_after: float, generator, clock: dict, comm: Comm):
        """What runs after each optimiser step: decoder normalisation, dead-latent resampling.

        Resampling draws tokens of the batch; in a distributed fit rank 0
        resamples from its share and gives every rank the result.
        """
        use_resample = self.dead_latents == "resample"

        def after_step(net, batch):
            if self.normalize_decoder:
                net.normalize_decoder_()
            if not use_resample:
                return
            clock["tokens"] += batch.total_rows
            if clock["tokens"] < dead_after:
                return
            clock["tokens"] = 0.0
            dead = net.dead_mask(dead_after)
            resampled = 0
            if comm.is_main and batch.n_tokens:
                resampled = resample_dead_(net, batch.source, batch.target, dead, generator)
            if comm.active:
                comm.broadcast_module(net)
                resampled = comm.broadcast_object(resampled)
            clock["resampled"] += resampled

        return after_step

    def _record_usage(self, data: _Data, comm: Comm = SINGLE) -> None:
        """Usage, firing rates and L0, accumulated chunk by chunk (one chunk in memory, a store's blocks).

        The ranks of a distributed fit split a store's chunks and sum their
        counts; in memory every rank counts all of it.
        """
        streamed = isinstance(data, StreamData)
        chunks = data.chunks(share=(comm.rank, comm.world_size)) if streamed else [data]
        top, fired, totals = np.zeros(self.k), np.zeros(self.k), np.zeros(2)  # totals: active, tokens
        for chunk in chunks:
            latents, pre = self._forward(chunk.source)
            top += np.bincount(_most_active(latents, pre), minlength=self.k)
            fired += (latents > 0).sum(axis=0)
            totals += (float((latents > 0).sum()), latents.shape[0])
        if streamed:
            top, fired, totals = sum_arrays(comm, [top, fired, totals])
        active, n = float(totals[0]), int(totals[1])
        self.usage_ = top / max(n, 1)
        self.firing_rate_ = fired / max(n, 1)
        self.l0_ = active / n if n else 0.0
        self.n_dead_latents_ = int((self.firing_rate_ == 0).sum())

    # ------------------------------------------------------------ inference
    def _empty_network(self) -> SparseAutoencoderNet:
        k, d_in = self.encoder_weights_.shape
        return SparseAutoencoderNet(d_in, self.components_.shape[1], k, activation=self.activation,
                                    top_k=self.top_k if self.activation == "topk" else None)

    def _network_arrays(self) -> dict:
        return {param: getattr(self, attr) for attr, param in _STATE.items()}

    @torch.no_grad()
    def _forward(self, source: np.ndarray):
        """Latents and pre-activations (CPU float32 numpy) of source rows."""
        device = self._resolve_device()
        network = self._network(device)
        network.eval()
        source_t = as_float_tensor(source)
        if source_t.shape[0] == 0:
            empty = np.zeros((0, self.k), dtype=np.float32)
            return empty, empty

        def latents_and_pre(rows):
            pre = network.pre_activations(rows)
            return network.activate(pre), pre

        latents, pre = rows_through(latents_and_pre, source_t, device)
        return latents.numpy(), pre.numpy()

    def _activations(self, data: _Data) -> np.ndarray:
        return self._forward(data.source)[0]

    def _predict_ids(self, data: _Data) -> np.ndarray:
        return _most_active(*self._forward(data.source))

    @torch.no_grad()
    def _reconstruct_data(self, data: _Data) -> np.ndarray:
        device = self._resolve_device()
        network = self._network(device)
        source_t = as_float_tensor(data.source)
        if source_t.shape[0] == 0:
            return np.zeros((0, self.components_.shape[1]), dtype=np.float32)
        return rows_through(lambda rows: network(rows).prediction.float(), source_t, device).numpy()

    # ------------------------------------------------------------ concepts
    def concept_directions(self, concept: int) -> np.ndarray:
        """Orthonormal directions of one concept, for ablation.

        ``ablation="encoder_subspace"`` (default, the paper's revised
        protocol): the encoder rows of the concept and of the
        ``ablation_rank - 1`` latents whose encoder rows have the highest
        cosine similarity to it, orthonormalised by Gram-Schmidt (so the
        first row is the concept's own encoder direction).  They live
        in the SOURCE layer (``concept_space_``; "low" for the cross-layer
        model).  ``ablation="decoder_row"``: the concept's unit decoder row,
        in the TARGET layer.

        Parameters
        ----------
        concept : int
            Latent id in ``[0, k)``.

        Returns
        -------
        ndarray of shape (n_directions, d)
            Orthonormal rows; fewer than ``ablation_rank`` when the chosen
            rows are linearly dependent.
        """
        self._check_fitted()
        concept = self._check_concept(concept)
        if self.ablation == "decoder_row":
            return super().concept_directions(concept)
        return encoder_subspace(self.encoder_weights_, concept, self.ablation_rank)


def encoder_subspace(encoder_weights: np.ndarray, concept: int, rank: int) -> np.ndarray:
    """Orthonormal basis of a concept's encoder row and its ``rank - 1`` nearest rows.

    Parameters
    ----------
    encoder_weights : ndarray of shape (k, d)
    concept : int
    rank : int
        Rows to span (capped at ``min(k, d)``).

    Returns
    -------
    ndarray of shape (r, d), r <= rank
        Orthonormal rows (``clvqlearn._linalg.orthonormalize`` of the
        chosen rows, the concept's own row first); rows with no new
        direction (less than ``1e-8`` of their norm) are dropped.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [-1, 0, 0]])
    >>> Q = encoder_subspace(W, 0, 2)
    >>> np.round(Q @ Q.T, 6).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    >>> np.round(np.abs(Q[1]), 6).tolist()  # row 1 is the most similar to row 0
    [0.0, 1.0, 0.0]
    """
    W = np.asarray(encoder_weights, dtype=np.float64)
    k, d = W.shape
    rank = int(min(rank, k, d))
    norms = np.linalg.norm(W, axis=1)
    if norms[concept] == 0:
        return np.zeros((0, d))
    unit = W / np.maximum(norms, 1e-300)[:, None]
    similarity = unit @ unit[concept]
    similarity[concept] = np.inf  # the concept's own row always comes first
    chosen = np.argsort(-similarity, kind="stable")[:rank]
    # unit rows: a row is dropped when less than 1e-8 of its own norm is new
    return orthonormalize(unit[chosen])


def _most_active(latents: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """Arg-max of the latents; tokens with no active latent use the pre-activations."""
    ids = latents.argmax(axis=1).astype(np.int64)
    silent = ~(latents > 0).any(axis=1)
    if silent.any():
        ids[silent] = pre[silent].argmax(axis=1)
    return ids


def _loss_parts(out, target) -> tuple:
    """The reported parts of the SAE loss (per token): squared error, L1 of the latents, active latents."""
    latents = out.latents.detach().float()
    mse = (out.prediction.detach().float() - target).pow(2).sum(dim=-1).mean()
    return mse, latents.abs().sum(dim=-1).mean(), (latents > 0).sum(dim=-1).float().mean()


def _attribute_of(parameter: str) -> str:
    for attr, param in _STATE.items():
        if param == parameter:
            return attr
    raise KeyError(parameter)  # pragma: no cover - the network has exactly these tensors
