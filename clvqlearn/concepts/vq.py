"""CrossLayerVQ (the paper's CLVQ-VAE) and SingleLayerVQ (its baseline)."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from .._sklearn_compat import Interval, StrOptions
from .._torch_utils import frozen, make_generator, seeded, to_numpy_state, torch_seed
from ..metrics import usage_perplexity
from ..nn.clvq import CLVQNetwork
from ..nn.codebook import squared_distances
from ..nn.decoders import DECODERS, fit_output_layer
from ..nn.encoders import ENCODERS, MLPEncoder
from ._base import ConceptEstimator, softmax_of_distances
from ._data import StreamData, _Data
from ._distributed import SINGLE, Comm, sum_arrays
from ._init import INIT_MAX_SAMPLES, INITS, initial_codes
from ._network import TRAINING_CONSTRAINTS, _data_widths, _NetworkEstimator
from ._persistence import _STATISTIC_DTYPES
from ._stream import initial_sample, training_source
from ._training import (
    TOKEN_BATCH,
    TrainConfig,
    as_float_tensor,
    estimator_config,
    predict_batches,
    rows_of_documents,
    rows_through,
    sample_documents,
    train_module,
)

#: How the ``"mlp"`` encoder is fitted to the target layer before the codes
#: are placed (:meth:`_VQEstimator._fit_encoder`): tokens of whole documents
#: it reads at most, token batches of at most ``batch_size`` (about 50 per
#: epoch on small samples), at least ``min_epochs`` epochs and at least
#: ``min_steps`` steps (at most ``max_epochs``), and the other
#: :class:`TrainConfig` settings.  No weight decay: the squared error of a
#: good start is so small that a decay term would dominate Adam's steps.
ENCODER_FIT = dict(max_tokens=100_000, batch_size=1024, min_epochs=4, min_steps=300, max_epochs=100,
                   learning_rate=3e-3, weight_decay=0.0, early_stopping_patience=2, validation_fraction=0.1,
                   warmup_steps=20)


class _VQEstimator(_NetworkEstimator):
    """Shared machinery of CrossLayerVQ and SingleLayerVQ (not public).

    The two estimators are siblings under this base, as scikit-learn's
    ``KMeans`` and ``MiniBatchKMeans`` are under ``_BaseKMeans``: the base
    holds the parameters both take (constraints and ``__init__``) and all
    of the training and inference; each subclass adds its own parameters
    (``n_low_features`` / ``layer``) and its layer roles.
    """

    _parameter_constraints: dict = {
        **ConceptEstimator._parameter_constraints,
        "top_k": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "ema_decay": [Interval(Real, 0, 1, closed="both")],
        "ema_update": [StrOptions({"sampled", "nearest"})],
        "init": [StrOptions(set(INITS))],
        "encoder": [StrOptions(set(ENCODERS))],
        "alpha": [Real],
        "encoder_init": [StrOptions({"regression", "identity", "random"})],
        "decoder_init": [StrOptions({"least-squares", "random"})],
        "warmup_steps": [Interval(Integral, 0, None, closed="left")],
        "encoder_learning_rate": [Interval(Real, 0, None, closed="left"), None],
        "encoder_hidden": [Interval(Integral, 1, None, closed="left")],
        "decoder": [StrOptions(set(DECODERS))],
        "decoder_layers": [Interval(Integral, 1, None, closed="left")],
        "decoder_heads": [Interval(Integral, 1, None, closed="left")],
        "decoder_ff": [Interval(Integral, 1, None, closed="left")],
        "decoder_hidden": [Interval(Integral, 1, None, closed="left")],
        "decoder_norm_first": ["boolean"],
        "decoder_skip": ["boolean", StrOptions({"auto"})],
        "decoder_positions": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "commitment": [Interval(Real, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping_patience": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "gradient_clip": [Interval(Real, 0, None, closed="neither"), None],
        "dead_code_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "compute_dtype": [StrOptions({"float32", "bfloat16"})],
        **TRAINING_CONSTRAINTS,
    }
    _saved_dtypes = {**ConceptEstimator._saved_dtypes, "source_counts_": _STATISTIC_DTYPES,
                     "network_state_.codebook.n_replaced": ("int64",)}
    #: ``alpha=inf`` is the adaptive encoder's fixed ``m = 0.5`` (one reference version).
    _saved_nonfinite = frozenset({"network_state_.encoder.alpha"})

    def __init__(self, k=400, *, top_k=5, temperature=1.0, ema_decay=0.99, ema_update="sampled",
                 init="k-means++", encoder="linear", alpha=0.2, encoder_init="regression",
                 encoder_learning_rate=0.0, encoder_hidden=512, decoder="transformer-codes", decoder_layers=2,
                 decoder_heads=8,
                 decoder_ff=1024, decoder_hidden=1024, decoder_norm_first=True, decoder_skip="auto",
                 decoder_positions=0.3,
                 decoder_init="least-squares", dropout=0.1, commitment=0.1, max_epochs=10, batch_size=32,
                 learning_rate=1e-3,
                 weight_decay=1e-4, warmup_steps=200, early_stopping_patience=3, validation_fraction=0.1,
                 gradient_clip=2.0, dead_code_threshold=None, compute_dtype="float32", checkpoint_dir=None,
                 checkpoint_every=None, callbacks=None, distributed=False, device="auto",
                 random_state=None, verbose=0):
        self.k = k
        self.top_k = top_k
        self.temperature = temperature
        self.ema_decay = ema_decay
        self.ema_update = ema_update
        self.init = init
        self.encoder = encoder
        self.alpha = alpha
        self.encoder_init = encoder_init
        self.encoder_learning_rate = encoder_learning_rate
        self.encoder_hidden = encoder_hidden
        self.decoder = decoder
        self.decoder_layers = decoder_layers
        self.decoder_heads = decoder_heads
        self.decoder_ff = decoder_ff
        self.decoder_hidden = decoder_hidden
        self.decoder_norm_first = decoder_norm_first
        self.decoder_skip = decoder_skip
        self.decoder_positions = decoder_positions
        self.decoder_init = decoder_init
        self.dropout = dropout
        self.commitment = commitment
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.early_stopping_patience = early_stopping_patience
        self.validation_fraction = validation_fraction
        self.gradient_clip = gradient_clip
        self.dead_code_threshold = dead_code_threshold
        self.compute_dtype = compute_dtype
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.callbacks = callbacks
        self.distributed = distributed
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------- training
    def _network_kwargs(self) -> dict:
        return dict(
            encoder=self.encoder, alpha=self.alpha, encoder_hidden=self.encoder_hidden, decoder=self.decoder,
            decoder_layers=self.decoder_layers, decoder_heads=self.decoder_heads,
            decoder_ff=self.decoder_ff, decoder_hidden=self.decoder_hidden,
            decoder_norm_first=self.decoder_norm_first, decoder_skip=self._decoder_skip(),
            decoder_positions=self.decoder_positions,
            dropout=self.dropout,
            top_k=self.top_k, temperature=self.temperature, ema_decay=self.ema_decay,
            ema_update=self.ema_update, dead_code_threshold=self.dead_code_threshold,
        )

    def _structure(self) -> dict:
        """k, the encoder and the decoder architecture (each size only where that kind reads it)."""
        structure = {"k": self.k, "encoder": self.encoder, "decoder": self.decoder,
                     "decoder_skip": self._decoder_skip()}
        if self.encoder == "mlp":
            structure["encoder_hidden"] = self.encoder_hidden
        if self.decoder == "mlp":
            structure["decoder_hidden"] = self.decoder_hidden
        else:
            structure.update(decoder_layers=self.decoder_layers, decoder_heads=self.decoder_heads,
                             decoder_ff=self.decoder_ff, decoder_norm_first=self.decoder_norm_first,
                             decoder_positions=self.decoder_positions)
        return structure

    def _decoder_skip(self) -> bool:
        """``decoder_skip="auto"``: a skip read-out for the bypass transformer only."""
        return self.decoder == "transformer" if self.decoder_skip == "auto" else bool(self.decoder_skip)

    def _train_config(self, partial: bool) -> TrainConfig:
        """One epoch without a validation split for a ``partial_fit`` call."""
        return estimator_config(self, partial, batch_unit="documents", warmup_steps=self.warmup_steps,
                                lr_scales=self._lr_scales())

    def _lr_scales(self) -> dict:
        if self.encoder_learning_rate is None:
            return {}
        return {"encoder.": self.encoder_learning_rate / self.learning_rate}

    def _check_hyperparameters(self) -> None:
        if self.top_k > self.k:
            raise ValueError(f"top_k={self.top_k} cannot exceed k={self.k} "
                             "(it samples among the top_k nearest of k codes).")

    def _fit_data(self, data, partial: bool) -> None:
        self._check_hyperparameters()
        run = self._begin_fit(data, partial)
        network, device, comm = run.network, run.device, run.comm
        seed = torch_seed(run.rng)
        codebook = network.codebook
        codebook.generator, codebook.data_parallel = make_generator(seed, device), comm.active
        report = bool(run.callbacks)

        def loss_fn(net, batch):
            net.codebook.shard = (batch.row_start, batch.total_rows)
            out = net(batch.source, batch.lengths, batch.max_length)
            mse = torch.nn.functional.mse_loss(out.prediction.float(), batch.target)
            loss = mse + self.commitment * out.commitment
            return (loss, (mse, out.commitment)) if report else loss

        with seeded(run.dropout_seed(seed), device), frozen(network.encoder, self.encoder_learning_rate == 0):
            result, self._train_state = train_module(
                network, loss_fn, *training_source(data),
                config=self._train_config(partial), rng=run.rng, device=device,
                state=getattr(self, "_train_state", None),
                **run.train_kwargs(loss_parts=("mse", "commitment") if report else (),
                                   monitor=_codebook_metrics if report else None,
                                   idle_step=lambda net, batch: net.codebook.idle_step(batch.total_rows),
                                   random_states={"codebook": codebook.generator}),
            )
        codebook.generator, codebook.data_parallel, codebook.shard = None, False, None
        self._store_fitted(network, result, data, device, comm)

    def _blank_network(self, data, device) -> CLVQNetwork:
        """A network of the data's widths, its weights to be overwritten (a resumed checkpoint)."""
        source, target = _data_widths(data)
        with seeded(0, device):
            network = CLVQNetwork(source, target, self.k, encoder_init="identity", **self._network_kwargs())
        return network.to(device)

    def _start_network(self, data, rng, device) -> CLVQNetwork:
        return self._initial_network(initial_sample(data, rng, self._init_tokens()), rng, device)

    def _init_tokens(self) -> int:
        """Tokens of a streamed store that the start reads (more when an MLP encoder is fitted)."""
        return max(INIT_MAX_SAMPLES, ENCODER_FIT["max_tokens"]) if self.encoder == "mlp" else INIT_MAX_SAMPLES

    def _initial_network(self, data, rng, device) -> CLVQNetwork:
        """A new network with its encoder, codebook and read-out started from the data."""
        start = self.encoder_init if self.encoder_init in ("identity", "random") else "identity"
        with seeded(torch_seed(rng), device):
            network = CLVQNetwork(data.source.shape[1], data.target.shape[1], self.k, encoder_init=start,
                                  **self._network_kwargs()).to(device)
        sample = _document_sample(data, INIT_MAX_SAMPLES, rng)
        if self.encoder_init == "regression" and hasattr(network.encoder, "init_regression"):
            network.encoder.init_regression(as_float_tensor(sample.source), as_float_tensor(sample.target))
            network.encoder.to(device)
            if isinstance(network.encoder, MLPEncoder):
                with seeded(0, device):  # only the read-out's construction draws, and is overwritten
                    self._fit_encoder(network.encoder, data, sample, rng, device)
        with torch.no_grad():
            z = self._encode(network, data.source, device)
        network.codebook.initialize(torch.as_tensor(initial_codes(z, self.k, self.init, rng), device=device))
        if self.decoder_init == "least-squares":
            features = self._decoder_features(network, sample, device)
            fit_output_layer(network.decoder.out, torch.as_tensor(features), as_float_tensor(sample.target))
        return network

    def _fit_encoder(self, encoder: MLPEncoder, data, init_sample, rng, device) -> None:
        """Fit a regression-started MLP encoder to the target layer, then rescale it.

        Mean squared error through a frozen linear read-out (the
        least-squares map from the encoder's start to the target: the
        inverse of the start's rescaling when both layers have one width),
        so the code space stays the space of the predicted target.  Up to
        ``ENCODER_FIT["max_tokens"]`` tokens of whole documents, a tenth held
        out for early stopping; the ridge start competes, so the fitted map
        is never worse than it on the held-out part.  A fit whose loss
        explodes also ends at the best state seen (at worst the ridge
        start, which is the linear encoder); no ConvergenceWarning is
        raised for it, since on data the ridge map already fits almost
        exactly (loss ~1e-8) the first steps look like an explosion.
        """
        readout = torch.nn.Linear(encoder.linear.out_features, init_sample.target.shape[1])
        with torch.no_grad():
            start = rows_through(encoder, as_float_tensor(init_sample.source), device).float()
        fit_output_layer(readout, start, as_float_tensor(init_sample.target))
        readout.requires_grad_(False)
        sample = _document_sample(data, ENCODER_FIT["max_tokens"], rng)
        module = torch.nn.Sequential(encoder, readout).to(device)
        config = _encoder_fit_config(sample.n_tokens, verbose=self.verbose,
                                     description=f"{type(self).__name__} encoder")

        def loss_fn(net, batch):
            return torch.nn.functional.mse_loss(net(batch.source).float(), batch.target)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            train_module(module, loss_fn, sample.source, sample.target, sample.offsets, config=config, rng=rng,
                         device=device)
        encoder.rescale(as_float_tensor(init_sample.source).to(device))

    def _decoder_features(self, network, sample, device) -> np.ndarray:
        return self._over_documents(network, lambda b: network.decoder_features(b.source, b.lengths, b.max_length),
                                    sample, device)

    def _over_documents(self, network, function, data, device, compute_dtype="float32") -> np.ndarray:
        """``function(batch)`` over all tokens in eval mode: token batches for a per-token
        decoder, length-bucketed document batches for a sequence decoder."""
        network.eval()
        unit = "tokens" if network.per_token else "documents"
        batch = TOKEN_BATCH if network.per_token else self.batch_size
        return predict_batches(function, data.source, data.source, data.offsets, batch_size=batch, unit=unit,
                               device=device, compute_dtype=compute_dtype)

    def _store_fitted(self, network, result, data, device, comm: Comm = SINGLE) -> None:
        self._keep_network(network, device)
        self.network_state_ = to_numpy_state(network)
        self.n_target_features_ = network.out_features
        self.components_ = network.codebook.codes.detach().cpu().numpy().astype(np.float32)
        self.n_iter_ += result.n_epochs
        self.n_steps_ += result.n_steps
        self.loss_curve_ = list(self.loss_curve_) + result.loss_curve
        self.validation_curve_ = list(self.validation_curve_) + result.validation_curve
        self.best_epoch_ = result.best_epoch
        self.diverged_ = result.diverged is not None
        self.encoder_mix_ = float(network.encoder.mix.detach()) if hasattr(network.encoder, "mix") else 0.0
        self._record_statistics(data, comm)

    def _record_source_means(self, counts: np.ndarray, sums: np.ndarray) -> None:
        """Per-code mean of the source layer from per-code token counts and sums, accumulated over calls."""
        previous = getattr(self, "source_counts_", None)
        if previous is not None:  # partial_fit: add this batch to the earlier ones
            sums = sums + self.source_means_.astype(np.float64) * previous[:, None]
            counts = counts + previous
        self.source_counts_ = counts
        self.source_means_ = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)

    def _concept_vector(self, concept: int) -> np.ndarray:
        # The adaptive and identity encoders keep codes in the source layer's
        # space (the paper: the codebook vector is the concept).  A linear or
        # MLP encoder's codes live in the space of the predicted target layer,
        # so the concept's direction in the source layer is its tokens' mean.
        if self.encoder in ("linear", "mlp"):
            return self.source_means_[concept]
        return self.components_[concept]

    def _record_statistics(self, data, comm: Comm = SINGLE) -> None:
        """Usage and per-code source means, chunk by chunk (one chunk in memory, a store's blocks).

        The ranks of a distributed fit split a store's chunks and sum
        their counts; in memory every rank counts all of it.
        """
        streamed = isinstance(data, StreamData)
        counts, sums = np.zeros(self.k), np.zeros((self.k, _data_widths(data)[0]))
        for chunk in data.chunks(share=(comm.rank, comm.world_size)) if streamed else [data]:
            ids = self._assign(chunk)
            counts += np.bincount(ids, minlength=self.k)
            np.add.at(sums, ids, np.asarray(chunk.source, dtype=np.float64))
        if streamed:
            counts, sums = sum_arrays(comm, [counts, sums])
        self._record_source_means(counts, sums)
        self._record_counts(counts)

    def _record_counts(self, counts: np.ndarray) -> None:
        self.usage_ = counts / max(counts.sum(), 1.0)
        self.perplexity_ = usage_perplexity(self.usage_)
        self.n_active_codes_ = int((counts > 0).sum())

    def _upgrade_loaded_state(self) -> None:
        """A format-1 save has no ``n_target_features_``: read it off the output layer's bias."""
        if not hasattr(self, "n_target_features_"):
            biases = [v for k, v in self.network_state_.items() if k in ("decoder.out.bias", "decoder.net.2.bias")]
            if not biases:
                raise ValueError("the saved network_state_ has no decoder output layer ('decoder.out.bias' or "
                                 "'decoder.net.2.bias'); the save is damaged or not a CrossLayerVQ/SingleLayerVQ.")
            self.n_target_features_ = int(biases[0].shape[0])

    # ------------------------------------------------------------ inference
    def _network_settings(self) -> dict:
        return self._network_kwargs()

    def _empty_network(self) -> CLVQNetwork:
        return CLVQNetwork(self.components_.shape[1], self.n_target_features_, self.k, **self._network_kwargs())

    def _network_arrays(self) -> dict:
        return self.network_state_

    @staticmethod
    def _encode(network, source, device) -> np.ndarray:
        network.eval()
        if source.shape[0] == 0:
            return np.zeros((0, source.shape[1]), np.float32)
        return rows_through(network.encode, as_float_tensor(source), device).float().numpy()

    @torch.no_grad()
    def _assign(self, data) -> np.ndarray:
        device = self._resolve_device()
        network = self._network(device)
        network.eval()
        ids = rows_through(lambda rows: network.quantize(rows)[1].indices, as_float_tensor(data.source), device)
        return ids.numpy().astype(np.int64)

    def _predict_ids(self, data) -> np.ndarray:
        return self._assign(data)

    def _activations(self, data) -> np.ndarray:
        ids = self._assign(data)
        onehot = np.zeros((ids.size, self.k), dtype=data.dtype)
        onehot[np.arange(ids.size), ids] = 1
        return onehot

    @torch.no_grad()
    def _graded(self, data) -> np.ndarray:
        """Softmax over the negative squared distances of ``z`` to all codes, at ``temperature``."""
        device = self._resolve_device()
        network = self._network(device)
        network.eval()
        if data.source.shape[0] == 0:
            return np.zeros((0, self.k))

        def distances(rows):  # as the codebook's nearest-code search computes them
            return squared_distances(network.encode(rows), network.codebook.codes)

        found = rows_through(distances, as_float_tensor(data.source), device).numpy()
        return softmax_of_distances(found, float(self.temperature))

    @torch.no_grad()
    def _reconstruct_data(self, data) -> np.ndarray:
        device = self._resolve_device()
        network = self._network(device)
        return self._over_documents(network, lambda b: network(b.source, b.lengths, b.max_length).prediction, data,
                                    device, self.compute_dtype)

    def encode(self, X) -> np.ndarray:
        """Codebook-space vectors ``z`` (the encoder output) of every token.

        Parameters
        ----------
        X : LayerPairs or array-like of shape (n_tokens, n_features)

        Returns
        -------
        ndarray of shape (n_tokens, d_source)
        """
        self._check_fitted()
        data = self._validate_input(X, reset=False)
        device = self._resolve_device()
        with torch.no_grad():
            return self._encode(self._network(device), data.source, device).astype(data.dtype)


#: Named configurations of :class:`CrossLayerVQ` (see :meth:`CrossLayerVQ.from_recipe`).
#: ``"paper"`` is the reference implementation's encoder-model recipe (METHOD.md):
#: the 6-layer post-LayerNorm transformer decoder that cross-attends to the
#: continuous encoder output, the adaptive encoder started at the identity, a
#: randomly initialised read-out, 128 sentences per batch, Adam 5e-3, up to 100
#: epochs with patience 15.  ``"paper-decoder-lm"`` is its decoder-LM variant
#: (Adam 1e-3, 64 sentences per batch).
RECIPES = {
    "paper": dict(
        top_k=5, temperature=1.0, ema_decay=0.99, ema_update="sampled", init="spherical",
        encoder="adaptive", alpha=0.2, encoder_init="identity", encoder_learning_rate=None, decoder="transformer",
        decoder_layers=6, decoder_heads=8, decoder_ff=2048, decoder_norm_first=False, decoder_skip=False,
        decoder_positions=0.0,
        decoder_init="random", dropout=0.1, commitment=0.1, max_epochs=100, batch_size=128,
        learning_rate=5e-3, weight_decay=1e-4, warmup_steps=0, early_stopping_patience=15,
        validation_fraction=0.1, gradient_clip=2.0, dead_code_threshold=None,
    ),
}
RECIPES["paper-decoder-lm"] = {**RECIPES["paper"], "learning_rate": 1e-3, "batch_size": 64}
#: ``"two-stage"`` is the default with the VQ training switched off, the
#: baseline joint training must beat (issue 22): the same fitted regression
#: encoder, codes placed by k-means on its output (``init="k-means++"``: up
#: to 20k tokens, one k-means run) and then frozen (``ema_decay=1.0``: the EMA
#: keeps them), the nearest code in training as at inference (``top_k=1``),
#: and the same decoder trained on these fixed codes.
RECIPES["two-stage"] = dict(init="k-means++", ema_decay=1.0, top_k=1, encoder_learning_rate=0.0,
                            dead_code_threshold=None)


def _codebook_metrics(network) -> dict:
    """What the training callbacks see of the codebook: its EMA usage's perplexity, and its active codes.

    A code is active while its EMA count is at least 1 % of the average
    code's (a code the EMA has all but forgotten is not).
    """
    sizes = network.codebook.cluster_size.detach().double().cpu().numpy()
    return {"perplexity": usage_perplexity(sizes / max(sizes.sum(), 1e-12)),
            "active_codes": int((sizes >= 0.01 * sizes.mean()).sum())}


def _encoder_fit_config(n_tokens: int, **settings) -> TrainConfig:
    """The :class:`TrainConfig` of an MLP encoder's fit on ``n_tokens`` tokens (see ``ENCODER_FIT``)."""
    fit = ENCODER_FIT
    batch = int(min(fit["batch_size"], max(32, n_tokens // 50)))
    steps_per_epoch = max(1, math.ceil(n_tokens * (1 - fit["validation_fraction"]) / batch))
    epochs = min(fit["max_epochs"], max(fit["min_epochs"], math.ceil(fit["min_steps"] / steps_per_epoch)))
    return TrainConfig(max_epochs=epochs, batch_size=batch, batch_unit="tokens", learning_rate=fit["learning_rate"],
                       weight_decay=fit["weight_decay"], early_stopping_patience=fit["early_stopping_patience"],
                       validation_fraction=fit["validation_fraction"], warmup_steps=fit["warmup_steps"], **settings)


def _document_sample(data: _Data, max_tokens: int, rng) -> _Data:
    """Whole documents drawn at random until about ``max_tokens`` tokens.

    Returns ``data`` itself when it has no more than ``max_tokens`` tokens.
    """
    if data.n_tokens <= max_tokens:
        return data
    lengths = np.diff(data.offsets)
    docs = sample_documents(lengths, max_tokens, rng)
    rows = rows_of_documents(data.offsets, docs)
    offsets = np.concatenate([[0], np.cumsum(lengths[docs])]).astype(np.int64)
    return _Data(source=data.source[rows], target=data.target[rows], offsets=offsets, dtype=data.dtype)


class CrossLayerVQ(_VQEstimator):
    """Cross-layer vector quantisation (CLVQ-VAE): low layer -> codes -> high layer.

    Each token's lower-layer vector is encoded, assigned to one of ``k``
    codebook vectors (the concepts), and a decoder reconstructs the token's
    higher-layer vector from the codes.  Training samples among the
    ``top_k`` nearest codes with temperature ``temperature``; the codebook
    follows exponential moving averages of the sampled assignments;
    inference takes the nearest code.

    Objective: ``MSE(decoder(q), x_high) + commitment * ||z - sg(q)||^2``
    over real (non-padding) tokens.

    By default the encoder is a per-token regression of the higher layer on
    the lower one (a linear map started at the ridge regression plus an MLP
    branch, fitted before the codes are placed and then kept), so the codes
    group tokens by what they become in the higher layer rather than by
    where they are in the lower one, and the decoder's read-out starts at
    its least-squares solution.
    ``CrossLayerVQ.from_recipe("paper")`` gives the reference configuration;
    docs/crosslayervq.md lists every difference and its measurement.

    Parameters
    ----------
    k : int, default=400
        Number of concepts (codebook size).
    top_k : int, default=5
        Nearest codes sampled among during training (1 = nearest).
    temperature : float, default=1.0
        Softmax temperature of the sampling, over negative squared distances.
    ema_decay : float, default=0.99
        EMA decay of the codebook.
    ema_update : {"sampled", "nearest"}, default="sampled"
        Which assignment updates the codebook.
    init : {"k-means++", "spherical", "random"}, default="k-means++"
        Codebook initialisation on the encoded training vectors (the paper:
        "spherical").
    encoder : {"mlp", "linear", "adaptive", "adaptive-fixed", "identity"}, default="mlp"
        ``"mlp"``: ``z = W x + b + V GELU(U x + c) + e``, fitted to the
        higher layer by mean squared error before the codes are placed
        (with ``encoder_init="regression"``; up to 100k tokens, a few
        epochs, early-stopped on held-out documents); ``"linear"``:
        ``z = W x + b``; ``"adaptive"``: the paper's
        ``z = (1 - m) x + m LayerNorm(W x + b)`` with ``m = 0.5 sigmoid(alpha)``
        (``"adaptive-fixed"``: alpha not learned); ``"identity"``: ``z = x``.
        On 100k MiniLM tokens the MLP encoder's codes explained more of
        layer 6 than the linear encoder's (docs/crosslayervq.md).
    alpha : float, default=0.2
        Initial alpha of the adaptive encoder (``m = 0.5 sigmoid(0.2) = 0.275``;
        ``alpha=inf`` gives the fixed ``m = 0.5`` of one reference version).
    encoder_init : {"regression", "identity", "random"}, default="regression"
        Start of ``W``: the ridge regression of the higher layer on the
        lower one (a linear or MLP encoder is then rescaled to the lower
        layer's mean norm, so ``temperature`` keeps its meaning), the identity
        (METHOD.md), or PyTorch's random initialisation (the latest reference).
    encoder_learning_rate : float or None, default=0.0
        Adam learning rate of the encoder; None = ``learning_rate`` (the
        paper), 0 = the encoder keeps its start.  The straight-through
        gradient moved a regression-started encoder without improving
        held-out reconstruction (docs/crosslayervq.md), so by default it
        does not.
    encoder_hidden : int, default=512
        Hidden width of the ``"mlp"`` encoder.
    decoder : {"transformer-codes", "transformer", "mlp"}, default="transformer-codes"
        ``"transformer-codes"`` reads the codes of the whole sentence (self-
        and cross-attention to the codes only); ``"transformer"`` is the
        reference (cross-attention to the continuous encoder output, which
        bypasses the bottleneck); ``"mlp"`` decodes each token from its code
        alone.
    decoder_layers, decoder_heads, decoder_ff : int, default=2, 8, 1024
        Transformer decoder shape (the paper: 6, 8, 2048).
    decoder_hidden : int, default=1024
        Hidden width of the MLP decoder.
    decoder_norm_first : bool, default=True
        Pre-LayerNorm transformer blocks (the reference: post-LayerNorm).
    decoder_skip : bool or "auto", default="auto"
        The decoder's output layer also reads the decoder's input (the
        code; for ``"transformer"`` also the continuous encoder output), a
        linear skip read-out next to the hidden states.  With the
        least-squares start the bypass transformer then begins at the
        linear map of the encoder output (the ridge regression).
        ``"auto"`` turns it on for ``decoder="transformer"`` only: on the
        codes-only decoders it measured no better (``mlp``) or worse
        (``transformer-codes``), see ``docs/crosslayervq.md``.  The
        reference has no skip.
    decoder_positions : float, default=0.3
        Scale of the fixed sinusoidal position encodings added to the
        transformer decoders' quantised input (unit-amplitude sines and
        cosines times this; 0 = none, as in the reference).  Without them
        self-attention over the codes sees a bag of codes and cannot tell a
        neighbour from a distant token.  Ignored by ``decoder="mlp"``.
    decoder_init : {"least-squares", "random"}, default="least-squares"
        ``"least-squares"`` starts the decoder's output layer at the ridge
        read-out of its initial features on a sample of training tokens, so
        a codes-only decoder starts at the per-code mean of the target;
        ``"random"`` is PyTorch's initialisation (the paper).
    dropout : float, default=0.1
    commitment : float, default=0.1
        Weight ``beta`` of the commitment loss.
    max_epochs : int, default=10
        (The paper: 100.  Ten epochs of the default decoder take under four
        minutes for 100k tokens on two CPU cores (docs/results.md); raise
        it on a GPU.)
    batch_size : int, default=32
        Documents (sentences) per batch; rows of a plain array each count as
        a document.  (The paper: 128 for encoder models.)
    learning_rate : float, default=1e-3
        Adam learning rate (the paper: 5e-3 for encoder models, 1e-3 for
        decoder LMs).
    weight_decay : float, default=1e-4
        Not applied to the codebook, biases or LayerNorm.
    warmup_steps : int, default=200
        Linear learning-rate warm-up over the first optimiser steps (the
        paper: none).
    early_stopping_patience : int, default=3
        Epochs without validation improvement before stopping (the paper: 15).
    validation_fraction : float, default=0.1
        Share of DOCUMENTS held out for early stopping.
    gradient_clip : float or None, default=2.0
    dead_code_threshold : float or None, default=None
        Replace codes whose EMA count drops below this (None = off, as in
        the paper).
    compute_dtype : {"float32", "bfloat16"}, default="float32"
        bfloat16 autocast of the decoder (opt-in).  The encoder, distances,
        sampling and EMA update always run in float32.
    n_low_features : int or None, default=None
        For a plain 2-D array ``[low | high]``: how many leading columns are
        the low layer (None = half; the width must then be even).  Ignored
        for LayerPairs.
    checkpoint_dir : str, path-like or None, default=None
        A folder where ``fit`` writes a checkpoint at the end of every epoch
        (and every ``checkpoint_every`` steps), in a subfolder named after
        the fit's settings and data (clones in a grid search or a
        cross-validation never share one); the same ``fit`` run again
        resumes it exactly (with a ``UserWarning``).  Rank 0
        writes in a distributed fit; ``partial_fit`` ignores it
        (docs/scale.md).
    checkpoint_every : int or None, default=None
        Optimiser steps between checkpoints (None: at epoch ends only).
    callbacks : list or None, default=None
        Training callbacks (``on_train_begin``, ``on_step_end``,
        ``on_epoch_end``, ``on_train_end``), e.g.
        :class:`~clvqlearn.concepts.callbacks.TensorBoardLogger`; they
        receive the loss, its parts (``mse``, ``commitment``), the learning
        rate, the codebook's perplexity and its active codes.
    distributed : bool or "auto", default=False
        Data-parallel training over the initialised ``torch.distributed``
        group (``torchrun --nproc_per_node=N``): each rank computes a share
        of every batch (``batch_size`` is the global batch) and all ranks
        hold the same model, equal to a one-process fit with ``dropout=0``.
        Every rank must then call ``fit`` with the same data and settings.
        ``True``: the group must exist; ``"auto"``: when a group is
        initialised; ``False``: never (each process fits on its own, also
        inside a group).
    device : str, default="auto"
        "auto", "cpu", "cuda" or "cuda:N".  In a distributed fit "auto" and
        "cuda" take the GPU of the rank's ``LOCAL_RANK``.
    random_state : int, RandomState or None, default=None
    verbose : int, default=0

    Attributes
    ----------
    components_ : ndarray of shape (k, d_low)
        The codebook (concept vectors, in the encoder's output space).
    usage_ : ndarray of shape (k,)
        Share of training tokens assigned to each code (nearest code).
    perplexity_ : float
        ``exp(entropy(usage_))``: the effective number of codes used.
    n_active_codes_ : int
        Codes used by at least one training token.
    loss_curve_, validation_curve_ : list of float
        Per-epoch training and validation loss.
    n_iter_ : int
        Epochs run (summed over ``partial_fit`` calls).
    network_state_ : dict of str to ndarray
        The network's weights (CPU numpy, device independent).
    n_target_features_ : int
        Width of the reconstructed (high) layer: the network's output width.
    source_means_ : ndarray of shape (k, d_low)
        Mean lower-layer vector of each concept's training tokens; with the
        MLP or linear encoder, the concept's direction in the lower layer (what
        ``concept_directions`` returns).
    diverged_ : bool
        True when training stopped on a diverging loss (a
        ``ConvergenceWarning`` was issued and the best state restored).
    n_features_in_ : int
    n_docs_seen_, n_tokens_seen_ : int
        Documents and token rows given to :meth:`fit` (held-out validation
        documents included), summed over :meth:`partial_fit` calls; what the
        model card of :meth:`save` reports as training data.

    See Also
    --------
    SingleLayerVQ : the same model with source layer = target layer.
    KMeansConcepts : clustering baseline.
    SparseAutoencoder : sparse dictionary baseline.

    References
    ----------
    Garg, Yu, Sajjad, Ebrahimi Kahou. "Cross-Layer Discrete Concept
    Discovery for Interpreting Language Models", arXiv 2506.20040.

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import CrossLayerVQ
    >>> rng = np.random.default_rng(0)
    >>> low = rng.normal(size=(300, 4)).astype(np.float32)
    >>> X = np.hstack([low, 2 * low])
    >>> vq = CrossLayerVQ(k=8, top_k=2, decoder="mlp", decoder_hidden=32,
    ...                   max_epochs=20, random_state=0).fit(X)
    >>> vq.predict(X).shape, vq.components_.shape
    ((300,), (8, 4))
    >>> bool(vq.score(X) > 0.3)
    True
    """

    _parameter_constraints: dict = {
        **_VQEstimator._parameter_constraints,
        "n_low_features": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, k=400, *, top_k=5, temperature=1.0, ema_decay=0.99, ema_update="sampled",
                 init="k-means++", encoder="mlp", alpha=0.2, encoder_init="regression",
                 encoder_learning_rate=0.0, encoder_hidden=512, decoder="transformer-codes", decoder_layers=2,
                 decoder_heads=8,
                 decoder_ff=1024, decoder_hidden=1024, decoder_norm_first=True, decoder_skip="auto",
                 decoder_positions=0.3,
                 decoder_init="least-squares",
                 dropout=0.1, commitment=0.1, max_epochs=10, batch_size=32, learning_rate=1e-3,
                 weight_decay=1e-4, warmup_steps=200, early_stopping_patience=3, validation_fraction=0.1,
                 gradient_clip=2.0, dead_code_threshold=None, compute_dtype="float32", n_low_features=None,
                 checkpoint_dir=None, checkpoint_every=None, callbacks=None, distributed=False,
                 device="auto", random_state=None, verbose=0):
        super().__init__(
            k, top_k=top_k, temperature=temperature, ema_decay=ema_decay, ema_update=ema_update, init=init,
            encoder=encoder, alpha=alpha, encoder_init=encoder_init, encoder_learning_rate=encoder_learning_rate,
            encoder_hidden=encoder_hidden,
            decoder=decoder, decoder_layers=decoder_layers, decoder_heads=decoder_heads, decoder_ff=decoder_ff,
            decoder_hidden=decoder_hidden, decoder_norm_first=decoder_norm_first, decoder_skip=decoder_skip,
            decoder_positions=decoder_positions,
            decoder_init=decoder_init,
            dropout=dropout, commitment=commitment, max_epochs=max_epochs, batch_size=batch_size,
            learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
            early_stopping_patience=early_stopping_patience, validation_fraction=validation_fraction,
            gradient_clip=gradient_clip, dead_code_threshold=dead_code_threshold, compute_dtype=compute_dtype,
            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, callbacks=callbacks,
            distributed=distributed, device=device, random_state=random_state, verbose=verbose,
        )
        self.n_low_features = n_low_features

    def _layer_roles(self):
        return ("low", "high")

    @classmethod
    def from_recipe(cls, recipe: str, **params):
        """An estimator configured by a named recipe, with ``params`` overriding it.

        Parameters
        ----------
        recipe : {"paper", "paper-decoder-lm", "two-stage"}
            See :data:`RECIPES`; ``"two-stage"`` is the default without VQ
            training (k-means on its regression encoder's output, frozen).
        **params
            Any constructor parameter (e.g. ``k``, ``device``, ``random_state``).

        Returns
        -------
        estimator
            A plain, unfitted instance: it clones, pickles and grid-searches
            like any other.

        Examples
        --------
        >>> from clvqlearn import CrossLayerVQ
        >>> vq = CrossLayerVQ.from_recipe("paper", k=50)
        >>> vq.decoder, vq.decoder_norm_first, vq.batch_size, vq.k
        ('transformer', False, 128, 50)
        """
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {sorted(RECIPES)}; got {recipe!r}.")
        allowed = set(cls().get_params())
        config = {k: v for k, v in RECIPES[recipe].items() if k in allowed}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise TypeError(f"{cls.__name__} has no parameter(s) {unknown}; it takes {sorted(allowed)}.")
        return cls(**{**config, **params})


class SingleLayerVQ(_VQEstimator):
    """The single-layer VQ-VAE baseline: one layer -> codes -> the same layer.

    The model of :class:`CrossLayerVQ` with the source layer equal to the
    target layer: the same network, training and fitted attributes, and the
    same parameters except ``n_low_features`` (a single-layer model never
    splits an array) plus ``layer``.  The two are siblings: neither is an
    instance of the other.  With a plain 2-D array the whole array is the
    layer.

    Parameters
    ----------
    k : int, default=400
        Number of concepts (codebook size).
    layer : {"high", "low"}, default="high"
        Which layer of the LayerPairs is both encoded and reconstructed.
    **params
        Every other parameter of :class:`CrossLayerVQ` but ``n_low_features``,
        with the same default and meaning, except ``encoder="linear"``: the
        regression of a layer on itself is the identity, which a linear map
        already holds, so an MLP branch would only add cost.

    See Also
    --------
    CrossLayerVQ : the cross-layer model (its Attributes section lists the
        fitted attributes, which this estimator shares).

    Examples
    --------
    >>> import numpy as np
    >>> from clvqlearn import SingleLayerVQ
    >>> X = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    >>> vq = SingleLayerVQ(k=6, top_k=1, decoder="mlp", decoder_hidden=16, max_epochs=5,
    ...                    random_state=0).fit(X)
    >>> vq.transform(X).sum(axis=1).tolist()[:3]
    [1.0, 1.0, 1.0]
    """

    _parameter_constraints: dict = {
        **_VQEstimator._parameter_constraints,
        "layer": [StrOptions({"low", "high"})],
    }

    def __init__(self, k=400, *, layer="high", top_k=5, temperature=1.0, ema_decay=0.99,
                 ema_update="sampled", init="k-means++", encoder="linear", alpha=0.2,
                 encoder_init="regression", encoder_learning_rate=0.0, encoder_hidden=512,
                 decoder="transformer-codes",
                 decoder_layers=2, decoder_heads=8, decoder_ff=1024, decoder_hidden=1024,
                 decoder_norm_first=True, decoder_skip="auto", decoder_positions=0.3, decoder_init="least-squares",
                 dropout=0.1,
                 commitment=0.1,
                 max_epochs=10, batch_size=32, learning_rate=1e-3, weight_decay=1e-4, warmup_steps=200,
                 early_stopping_patience=3, validation_fraction=0.1, gradient_clip=2.0, dead_code_threshold=None,
                 compute_dtype="float32", checkpoint_dir=None, checkpoint_every=None, callbacks=None,
                 distributed=False, device="auto", random_state=None, verbose=0):
        super().__init__(
            k, top_k=top_k, temperature=temperature, ema_decay=ema_decay, ema_update=ema_update, init=init,
            encoder=encoder, alpha=alpha, encoder_init=encoder_init, encoder_learning_rate=encoder_learning_rate,
            encoder_hidden=encoder_hidden,
            decoder=decoder, decoder_layers=decoder_layers, decoder_heads=decoder_heads, decoder_ff=decoder_ff,
            decoder_hidden=decoder_hidden, decoder_norm_first=decoder_norm_first, decoder_skip=decoder_skip,
            decoder_positions=decoder_positions,
            decoder_init=decoder_init,
            dropout=dropout, commitment=commitment, max_epochs=max_epochs, batch_size=batch_size,
            learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
            early_stopping_patience=early_stopping_patience, validation_fraction=validation_fraction,
            gradient_clip=gradient_clip, dead_code_threshold=dead_code_threshold, compute_dtype=compute_dtype,
            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, callbacks=callbacks,
            distributed=distributed, device=device, random_state=random_state, verbose=verbose,
        )
        self.layer = layer

    def _layer_roles(self):
        return (self.layer, self.layer)

    def _structure(self) -> dict:
        return {**super()._structure(), "layer": self.layer}
