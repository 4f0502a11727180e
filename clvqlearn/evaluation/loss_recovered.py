"""Loss recovered: a decoder's next-token loss with one layer replaced by a concept model's reconstruction.

The faithfulness figure of the sparse-autoencoder literature (SAELens'
``ce_loss_score`` and ``kl_div_score``, EleutherAI/sparsify's "CE loss
recovered"): run the language model three ways over the same texts and
compare its next-token cross-entropy (CE, nats per token):

* **clean**: unedited, ``CE_clean``;
* **ablated**: layer ``t``'s hidden state replaced by zeros
  (``CE_zero``, SAELens' zero ablation) or by the layer's mean vector
  (``CE_mean``, mean ablation);
* **spliced**: layer ``t``'s hidden state replaced by the concept model's
  reconstruction of it (``CE_spliced``), inside the forward pass, so the
  blocks above read the reconstruction.

``recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)`` is 1 when the
reconstruction loses nothing the model uses and 0 when it is as bad as
erasing the layer; ``recovered_mean`` is the same against mean ablation.
``KL(clean || spliced)``, averaged over tokens, measures how far the whole
next-token distribution moved (0 for a perfect reconstruction).

Which layer is replaced, and from what:

* a single-layer estimator (``SingleLayerVQ``, ``KMeansConcepts``,
  ``SparseAutoencoder(layer=...)``) replaces its own layer by its
  reconstruction of it;
* a cross-layer estimator (``CrossLayerVQ`` ``l -> h``, ``SparseAutoencoder(layer=None)``)
  replaces layer ``h`` by its prediction of ``h`` from layer ``l`` of the
  same forward pass.  Layer ``l`` is below ``h`` and not edited, so it is
  the clean run's layer ``l``.

Positions (as SAELens does with its ``ignore_tokens``, BOS, EOS and padding):

* **edited**: the rows the extractor returns, i.e. real (non-padding)
  tokens, minus the tokenizer's special tokens unless the extractor keeps
  them (``special_tokens``), minus the massive-activation outliers unless
  the extractor keeps them (``outliers``, the extractor's rule: a norm above
  ``outlier_threshold`` times the batch median at layer ``l`` or ``h``;
  SmolLM2 adds no BOS, and its first token, the attention sink, is such an
  outlier).  The estimators never saw the other rows in training, so those
  keep their clean value in every run, the ablations included (SAELens
  zero-ablates BOS too; here the ablations and the splice edit the same
  positions, so the ratio compares like with like);
* **scored**: every real position whose token is not a special token,
  whose next token is real (the CE of position ``t`` predicts token
  ``t + 1``) and which is not before the text's first edited row (those
  predictions are the same in every run: the model is causal).  Padding
  never counts.  For SmolLM2 the first token is neither edited nor scored,
  as BOS is in SAELens.

Intervals are percentile bootstraps over texts (each draw resamples whole
texts and recomputes every ratio from the resampled token sums); the
estimators of one :func:`loss_recovered_many` call share the draws, so two
estimators with the same reconstructions get the same intervals.

Models: any Hugging Face causal language model, named by a string as
everywhere in clvqlearn (the packaged ``"smollm2"``, a local folder or a
cached hub id), run in float32 with right padding and an attention mask.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._batching import length_batches, model_inputs
from .._bootstrap import resample_weights
from .._sklearn_compat import Interval, validate_params
from .._validation import check_texts
from ..data import LayerPairs
from ..extraction import LayerPairExtractor
from ..metrics import fraction_of_variance_explained
from ..models import capture_layers, layer_hook, load_model, load_tokenizer, num_layers, resolve_layers, resolve_model

__all__ = ["LossRecovered", "loss_recovered", "loss_recovered_many", "recovered_fraction"]

#: The runs every estimator is compared with: unedited and the two ablations.
BASELINES = ("clean", "zero", "mean")
#: VQ decoders that read the whole text (no causal mask): their reconstruction at
#: a position sees later tokens, which the language model has not seen there.
_SEQUENCE_DECODERS = ("transformer", "transformer-codes")
#: Numbers of a result that get a bootstrap interval.
_WITH_INTERVAL = ("ce_clean", "ce_zero", "ce_mean", "ce_spliced", "kl_zero", "kl_mean", "kl_spliced",
                  "recovered", "recovered_mean", "kl_recovered")


def recovered_fraction(ce_clean, ce_ablated, ce_spliced):
    """``(CE_ablated - CE_spliced) / (CE_ablated - CE_clean)``: the share of the ablation's loss the splice recovers.

    Parameters
    ----------
    ce_clean, ce_ablated, ce_spliced : float or ndarray
        Mean next-token cross-entropies of the clean, ablated and spliced
        runs (broadcast together).

    Returns
    -------
    float or ndarray
        1 when the splice costs nothing, 0 when it costs as much as the
        ablation, below 0 when it costs more; NaN where the ablation costs
        nothing (``CE_ablated == CE_clean``).

    Examples
    --------
    >>> round(float(recovered_fraction(3.0, 7.0, 4.0)), 3)
    0.75
    >>> bool(np.isnan(recovered_fraction(3.0, 3.0, 4.0)))
    True
    """
    clean, ablated, spliced = (np.asarray(v, dtype=np.float64) for v in (ce_clean, ce_ablated, ce_spliced))
    gap = ablated - clean
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap != 0, (ablated - spliced) / np.where(gap != 0, gap, 1.0), np.nan)
    return out[()] if out.ndim == 0 else out


@dataclass(frozen=True)
class LossRecovered:
    """Loss recovered by one concept estimator (see the module docstring).

    Attributes
    ----------
    estimator : str
        The estimator's class name.
    model : str
        The language model.
    layer : int
        The layer replaced (the extractor's convention: 0 = embeddings
        output, ``n_layers`` = the final norm's output).
    source_layer : int
        The layer the reconstruction reads (``layer`` for a single-layer
        estimator, ``l`` for a cross-layer one).
    ce_clean, ce_zero, ce_mean, ce_spliced : float
        Mean next-token cross-entropy (nats per scored token) of the clean,
        zero-ablated, mean-ablated and spliced runs.
    kl_zero, kl_mean, kl_spliced : float
        Mean ``KL(clean || run)`` per scored token (nats).
    recovered : float
        ``(ce_zero - ce_spliced) / (ce_zero - ce_clean)`` (SAELens' ``ce_loss_score``).
    recovered_mean : float
        The same against mean ablation.
    kl_recovered : float
        ``1 - kl_spliced / kl_zero`` (SAELens' ``kl_div_score``).
    fve : float
        Fraction of the replaced layer's variance the reconstruction
        explains on the edited rows of these texts.
    intervals : dict of str to (float, float)
        Percentile bootstrap intervals over texts of the numbers above
        (NaN with ``n_bootstrap=0``).
    confidence : float
    n_bootstrap : int
    n_texts, n_scored, n_edited, n_kept : int
        Texts; scored positions; edited positions; real positions left at
        their clean value (special tokens and outliers).
    max_length : int
    causal : bool
        False when the reconstruction at a position reads later tokens (a
        VQ model with a sequence decoder): the spliced run then sees the
        future, and ``recovered`` is optimistic.

    Examples
    --------
    >>> result = loss_recovered(km, "smollm2", texts)  # doctest: +SKIP
    >>> result.summary()["recovered"]  # doctest: +SKIP
    """

    estimator: str
    model: str
    layer: int
    source_layer: int
    ce_clean: float
    ce_zero: float
    ce_mean: float
    ce_spliced: float
    kl_zero: float
    kl_mean: float
    kl_spliced: float
    recovered: float
    recovered_mean: float
    kl_recovered: float
    fve: float
    n_texts: int
    n_scored: int
    n_edited: int
    n_kept: int
    max_length: int
    causal: bool
    confidence: float
    n_bootstrap: int
    intervals: dict = field(default_factory=dict, repr=False)

    def summary(self) -> dict:
        """Every number as a flat dict, each interval as ``<name>_ci_low`` / ``<name>_ci_high``."""
        out = {k: v for k, v in asdict(self).items() if k != "intervals"}
        for name, (low, high) in self.intervals.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
        return out


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class _Setup:
    """What the runs read: the model and the extractor's row rules."""

    model: str
    layers: tuple
    max_length: int
    special_tokens: str
    outliers: str
    outlier_threshold: float
    device: str
    trust_remote_code: bool


def _setup(extractor, estimators: dict, layers, max_length, device) -> _Setup:
    """The settings of an extractor, or of a model name with ``layers`` (default: the estimators' fitted layers)."""
    if isinstance(extractor, (str, os.PathLike)):
        if layers is None:
            fitted = {tuple(getattr(e, "pairs_layers_", None) or ()) for e in estimators.values()}
            if len(fitted) != 1 or fitted == {()}:
                raise ValueError("give layers=(l, h) with a model name: the estimators do not all record the "
                                 "layers they were fitted on (fitted on plain arrays, or on different layers).")
            layers = fitted.pop()
        extractor = LayerPairExtractor(os.fspath(extractor), layers=layers)
    elif not isinstance(extractor, LayerPairExtractor):
        raise TypeError(f"extractor must be a LayerPairExtractor or a model name (str); got "
                        f"{type(extractor).__name__}.")
    elif layers is not None and tuple(layers) != tuple(extractor.layers):
        raise ValueError(f"layers={tuple(layers)} differs from the extractor's layers={tuple(extractor.layers)}; "
                         "give one of them.")
    return _Setup(model=os.fspath(extractor.model), layers=tuple(extractor.layers),
                  max_length=int(extractor.max_length if max_length is None else max_length),
                  special_tokens=extractor.special_tokens, outliers=extractor.outliers,
                  outlier_threshold=float(extractor.outlier_threshold),
                  device=str(extractor.device if device is None else device),
                  trust_remote_code=bool(extractor.trust_remote_code))


def _check_estimators(estimators) -> dict:
    if not isinstance(estimators, Mapping) or not estimators:
        raise TypeError("estimators must be a non-empty mapping of names to fitted concept estimators.")
    for name, est in estimators.items():
        if not hasattr(est, "reconstruct") or not hasattr(est, "_layer_roles"):
            raise TypeError(f"estimator {name!r} is a {type(est).__name__}, not a clvqlearn concept estimator "
                            "(CrossLayerVQ, SingleLayerVQ, KMeansConcepts, SparseAutoencoder).")
        check_is_fitted(est, "components_", msg=f"estimator {name!r} ({type(est).__name__}) is not fitted yet: "
                                                 "call fit before measuring the loss it recovers.")
    return dict(estimators)


def _replaced_layer(estimators: dict) -> str:
    """The role ("low" / "high") every estimator replaces; they must agree (one set of ablation runs)."""
    targets = {name: est._layer_roles()[1] for name, est in estimators.items()}
    if len(set(targets.values())) != 1:
        raise ValueError(f"the estimators replace different layers ({targets}); measure them in separate calls, "
                         "one per replaced layer.")
    return next(iter(targets.values()))


def _is_causal(estimator) -> bool:
    return getattr(estimator, "decoder", None) not in _SEQUENCE_DECODERS


# ------------------------------------------------------------------------------------ runs
@dataclass
class _Batch:
    """One batch's inputs and its row masks (B, T)."""

    docs: np.ndarray
    inputs: dict
    edit: object  # torch bool tensor: rows replaced
    score: object  # torch bool tensor: positions whose next-token CE counts
    targets: object  # torch long tensor: the next tokens of the scored positions
    captured: dict  # layer -> (B, T, d) clean hidden state


def _capture(lm, layers, inputs, *, stop_after=None):
    """Clean hidden states of ``layers`` (and the logits, unless the pass stops after ``stop_after``)."""
    import torch

    logits = None
    with capture_layers(lm, layers, stop_after=stop_after) as captured, torch.no_grad():
        logits = lm(**inputs, use_cache=False).logits
    return captured, logits


def _row_masks(attention, special, captured, setup: _Setup, layers):
    """``edit`` (the extractor's rows) and ``score`` (the positions whose next-token CE counts)."""
    import torch

    real = attention.bool()
    keep = real & ~special if setup.special_tokens == "drop" else real.clone()
    if setup.outliers == "drop" and bool(keep.any()):
        bad = torch.zeros_like(keep)
        for layer in dict.fromkeys(layers):
            norms = torch.linalg.vector_norm(captured[layer].float(), dim=-1)
            bad |= norms > setup.outlier_threshold * norms[keep].median()
        keep &= ~bad
    score = torch.zeros_like(real)
    score[:, :-1] = real[:, 1:] & ~special[:, :-1]
    score &= keep.cumsum(dim=1) > 0  # predictions before the first edited row are the same in every run
    return keep, score


class _Encoded:
    """The texts tokenised once: ids, special-token masks, and batch inputs on the model's device."""

    def __init__(self, tokenizer, lm, texts: list, setup: _Setup, batch_size: int):
        enc = tokenizer(texts, truncation=True, max_length=setup.max_length, add_special_tokens=True,
                        return_special_tokens_mask=True, return_attention_mask=False, return_token_type_ids=False)
        self.ids, self.specials = enc["input_ids"], enc["special_tokens_mask"]
        self.pad = next((v for v in (tokenizer.pad_token_id, tokenizer.eos_token_id) if isinstance(v, int)), 0)
        self.device = next(lm.parameters()).device
        self.batches = length_batches([len(i) for i in self.ids], batch_size, descending=True)

    def inputs(self, docs) -> tuple[dict, object]:
        """``(model inputs, special-token mask (B, T), padding marked special)`` of documents ``docs``."""
        inputs = model_inputs([self.ids[d] for d in docs], self.pad, self.device)
        special = model_inputs([self.specials[d] for d in docs], 1, self.device)["input_ids"].bool()
        return inputs, special


def _batches(lm, encoded: _Encoded, setup: _Setup, layers):
    """Length-bucketed, right-padded batches with their clean hidden states and logits."""
    for docs in encoded.batches:
        inputs, special = encoded.inputs(docs)
        captured, logits = _capture(lm, layers, inputs)
        edit, score = _row_masks(inputs["attention_mask"], special, captured, setup, layers)
        targets = inputs["input_ids"][:, 1:][score[:, :-1]]
        yield _Batch(docs, inputs, edit, score, targets, captured), logits


def _log_probs(logits, score):
    import torch

    return torch.log_softmax(logits[score].float(), dim=-1)


def _spliced_run(lm, batch: _Batch, layer: int, values):
    """Logits with layer ``layer`` replaced by ``values`` at the batch's edited rows."""
    import torch

    calls = []

    def replace(hidden):
        calls.append(1)
        out = hidden.clone()
        out[batch.edit] = values.to(dtype=hidden.dtype, device=hidden.device)
        return out

    with layer_hook(lm, layer, replace), torch.no_grad():
        logits = lm(**batch.inputs, use_cache=False).logits
    if not calls:  # pragma: no cover - a model that skips its own blocks
        raise RuntimeError(f"the splice hook on layer {layer} never ran.")
    return logits


def _reconstruction(estimator, batch: _Batch, setup: _Setup, layers: tuple):
    """The estimator's reconstruction (n_edited, d) of the replaced layer from the clean rows."""
    low, high = (batch.captured[layer][batch.edit].float().cpu().numpy() for layer in layers)
    counts = batch.edit.sum(dim=1).cpu().numpy()
    pairs = LayerPairs(low=low, high=high, offsets=np.concatenate([[0], np.cumsum(counts)]),
                       layers=tuple(int(v) for v in layers), model_name=setup.model)
    target = high if estimator._layer_roles()[1] == "high" else low
    return np.asarray(estimator.reconstruct(pairs), dtype=np.float32), target


class _Sums:
    """Per-text sums of CE and KL of every run, and the scored-token counts."""

    def __init__(self, n_texts: int, runs):
        self.count = np.zeros(n_texts)
        self.ce = {run: np.zeros(n_texts) for run in runs}
        self.kl = {run: np.zeros(n_texts) for run in runs}

    def add(self, run, doc_of_row, ce, kl=None):
        np.add.at(self.ce[run], doc_of_row, ce)
        if kl is not None:
            np.add.at(self.kl[run], doc_of_row, kl)


def _mean_activation(lm, encoded: _Encoded, setup: _Setup, layers, layer) -> np.ndarray:
    """Mean of layer ``layer`` over the edited rows of the texts (passes that stop at the top layer)."""
    total, n = 0.0, 0
    for docs in encoded.batches:
        inputs, special = encoded.inputs(docs)
        captured, _ = _capture(lm, layers, inputs, stop_after=max(layers))
        edit, _ = _row_masks(inputs["attention_mask"], special, captured, setup, layers)
        rows = captured[layer][edit].double()
        total = total + rows.sum(dim=0)
        n += int(rows.shape[0])
    if not n:
        raise ValueError("no token rows to edit in these texts (all special tokens or outliers); give longer texts.")
    return (total / n).float().cpu().numpy()


def _measure(estimators: dict, setup: _Setup, texts: list, *, batch_size, mean_activation, verbose):
    """Run clean, zero, mean and every splice; per-text sums and edit statistics."""
    import torch

    if not resolve_model(setup.model, trust_remote_code=setup.trust_remote_code).is_decoder:
        raise ValueError(f"loss recovered needs a causal language model (a decoder such as 'smollm2'); "
                         f"{setup.model!r} is an encoder, whose next-token loss is not defined.")
    lm = load_model(setup.model, head="causal-lm", device=setup.device, trust_remote_code=setup.trust_remote_code)
    tokenizer = load_tokenizer(setup.model, trust_remote_code=setup.trust_remote_code)
    layers = resolve_layers(setup.layers, num_layers(lm))
    if len(layers) != 2 or layers[0] > layers[1]:
        raise ValueError(f"layers must be (low, high) with low <= high; got {setup.layers} -> {layers}.")
    encoded = _Encoded(tokenizer, lm, texts, setup, batch_size)
    role = _replaced_layer(estimators)
    layer = layers[0] if role == "low" else layers[1]
    if mean_activation is None:
        mean_activation = _mean_activation(lm, encoded, setup, layers, layer)
    mean = np.asarray(mean_activation, dtype=np.float32)
    width = int(lm.config.hidden_size)
    if mean.shape != (width,):
        raise ValueError(f"mean_activation must have shape ({width},), the width of layer {layer}; got {mean.shape}.")
    runs = (*BASELINES, *estimators)
    sums = _Sums(len(texts), runs)
    rows: dict = {name: ([], []) for name in estimators}  # reconstructions and targets, for the FVE
    n_edited = n_kept = 0
    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(texts), desc=f"loss recovered, layer {layer}", unit="text")
    try:
        for batch, logits in _batches(lm, encoded, setup, layers):
            doc_of_row = np.asarray(batch.docs)[torch.nonzero(batch.score)[:, 0].cpu().numpy()]
            clean = _log_probs(logits, batch.score)
            del logits
            p_clean = clean.exp()
            sums.count += np.bincount(doc_of_row, minlength=len(texts))
            sums.add("clean", doc_of_row, _ce(clean, batch.targets))
            n_edited += int(batch.edit.sum())
            n_kept += int(batch.inputs["attention_mask"].sum()) - int(batch.edit.sum())
            values = {"zero": torch.zeros(width), "mean": torch.from_numpy(mean)}
            for name, est in estimators.items():
                rec, target = _reconstruction(est, batch, setup, layers) if bool(batch.edit.any()) else (None, None)
                if rec is not None:
                    rows[name][0].append(rec)
                    rows[name][1].append(target)
                values[name] = torch.from_numpy(rec) if rec is not None else torch.zeros((0, width))
            for run, value in values.items():
                edited = _log_probs(_spliced_run(lm, batch, layer, value), batch.score)
                kl = (p_clean * (clean - edited)).sum(dim=-1)
                sums.add(run, doc_of_row, _ce(edited, batch.targets), kl.double().cpu().numpy())
            if progress is not None:
                progress.update(len(batch.docs))
    finally:
        if progress is not None:
            progress.close()
    if not sums.count.sum():
        raise ValueError("no scored positions: every text has fewer than two non-special tokens after truncation "
                         f"to max_length={setup.max_length}; give longer texts.")
    fve = {name: (fraction_of_variance_explained(np.concatenate(t), np.concatenate(r)) if r else float("nan"))
           for name, (r, t) in rows.items()}
    return sums, fve, layers, layer, n_edited, n_kept


def _ce(log_probs, targets) -> np.ndarray:
    return (-log_probs.gather(1, targets[:, None])[:, 0]).double().cpu().numpy()


# ------------------------------------------------------------------------------------ numbers
def _numbers(ce: dict, kl: dict, count, run: str) -> dict:
    """The figures of one estimator from token sums (arrays: one entry per bootstrap draw)."""
    mean_ce = {r: ce[r] / count for r in (*BASELINES, run)}
    mean_kl = {r: kl[r] / count for r in ("zero", "mean", run)}
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_recovered = np.where(mean_kl["zero"] > 0, 1.0 - mean_kl[run] / mean_kl["zero"], np.nan)
    return {
        "ce_clean": mean_ce["clean"], "ce_zero": mean_ce["zero"], "ce_mean": mean_ce["mean"],
        "ce_spliced": mean_ce[run], "kl_zero": mean_kl["zero"], "kl_mean": mean_kl["mean"],
        "kl_spliced": mean_kl[run],
        "recovered": recovered_fraction(mean_ce["clean"], mean_ce["zero"], mean_ce[run]),
        "recovered_mean": recovered_fraction(mean_ce["clean"], mean_ce["mean"], mean_ce[run]),
        "kl_recovered": kl_recovered,
    }


def _intervals(sums: _Sums, run: str, weights: np.ndarray, confidence: float) -> dict:
    if weights.shape[0] == 0:
        return {name: (float("nan"), float("nan")) for name in _WITH_INTERVAL}
    count = weights @ sums.count
    ok = count > 0
    draws = _numbers({r: weights @ v for r, v in sums.ce.items()}, {r: weights @ v for r, v in sums.kl.items()},
                     np.where(ok, count, 1.0), run)
    tail = 100 * (1 - confidence) / 2
    out = {}
    for name in _WITH_INTERVAL:
        values = np.asarray(draws[name], dtype=np.float64)[ok]
        values = values[np.isfinite(values)]
        out[name] = ((float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
                     if values.size else (float("nan"), float("nan")))
    return out


_PARAMS = {
    "layers": ["array-like", None],
    "max_length": [Interval(Integral, 2, None, closed="left"), None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "device": [str, None],
    "mean_activation": ["array-like", None],
    "n_bootstrap": [Interval(Integral, 0, None, closed="left")],
    "confidence": [Interval(Real, 0, 1, closed="neither")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}


@validate_params({"estimators": [Mapping], "extractor": [LayerPairExtractor, str, os.PathLike],
                  "texts": "no_validation", **_PARAMS}, prefer_skip_nested_validation=True)
def loss_recovered_many(estimators, extractor, texts, *, layers=None, max_length=None, batch_size=8, device=None,
                        mean_activation=None, n_bootstrap=1000, confidence=0.95, random_state=0,
                        verbose=False) -> dict:
    """:func:`loss_recovered` of several estimators, sharing the clean and ablated runs.

    Parameters
    ----------
    estimators : mapping of str to fitted concept estimator
        They must replace the same layer (all single-layer at ``h`` and/or
        cross-layer ``l -> h``, or all at ``l``).
    extractor, texts, layers, max_length, batch_size, device, mean_activation, n_bootstrap, confidence, \
random_state, verbose
        As in :func:`loss_recovered`.

    Returns
    -------
    dict of str to LossRecovered
        In the order of ``estimators``.

    Examples
    --------
    >>> results = loss_recovered_many({"k-means": km, "CLVQ": vq}, extractor, texts)  # doctest: +SKIP
    >>> {name: r.recovered for name, r in results.items()}  # doctest: +SKIP
    """
    estimators = _check_estimators(estimators)
    texts = check_texts(texts)
    setup = _setup(extractor, estimators, layers, max_length, device)
    rng = check_random_state(random_state)
    for name, est in estimators.items():
        if not _is_causal(est):
            warnings.warn(f"estimator {name!r} has decoder={est.decoder!r}, which reads the whole text: its "
                          "reconstruction at a position sees later tokens, so the spliced run sees the future "
                          "and the loss recovered is optimistic. Use decoder='mlp' for a causal reconstruction.",
                          UserWarning, stacklevel=2)
    sums, fve, resolved, layer, n_edited, n_kept = _measure(estimators, setup, texts, batch_size=batch_size,
                                                            mean_activation=mean_activation, verbose=verbose)
    weights = resample_weights(len(texts), n_bootstrap, rng)  # the same draws for every estimator: paired intervals
    results = {}
    for name, est in estimators.items():
        point = _numbers({r: v.sum() for r, v in sums.ce.items()}, {r: v.sum() for r, v in sums.kl.items()},
                         sums.count.sum(), name)
        source = resolved[0] if est._layer_roles()[0] == "low" else resolved[1]
        results[name] = LossRecovered(
            estimator=type(est).__name__, model=setup.model, layer=int(layer), source_layer=int(source),
            **{k: float(v) for k, v in point.items()}, fve=float(fve[name]), n_texts=len(texts),
            n_scored=int(sums.count.sum()), n_edited=n_edited, n_kept=n_kept, max_length=setup.max_length,
            causal=_is_causal(est), confidence=float(confidence), n_bootstrap=int(n_bootstrap),
            intervals=_intervals(sums, name, weights, confidence),
        )
    return results


@validate_params({"estimator": "no_validation", "extractor": [LayerPairExtractor, str, os.PathLike],
                  "texts": "no_validation", **_PARAMS}, prefer_skip_nested_validation=True)
def loss_recovered(estimator, extractor, texts, *, layers=None, max_length=None, batch_size=8, device=None,
                   mean_activation=None, n_bootstrap=1000, confidence=0.95, random_state=0,
                   verbose=False) -> LossRecovered:
    """The language model's next-token loss and KL with a layer replaced by the estimator's reconstruction.

    See the module docstring for the runs, the positions edited and scored
    and the intervals.

    Parameters
    ----------
    estimator : fitted CrossLayerVQ, SingleLayerVQ, KMeansConcepts or SparseAutoencoder
        Fitted on hidden states of this model and layer pair.
    extractor : LayerPairExtractor or str
        The extractor the estimator's training rows came from (fitted or
        not: its model, layers, ``max_length``, special-token and outlier
        rules are used), or a model name, with ``layers`` (default: the
        layers the estimator was fitted on).  It must be a causal
        (decoder-only) language model.
    texts : list of str
        Evaluation texts, best not the ones the estimator was fitted on.
    layers : (int, int), optional
        ``(l, h)``, with a model name only.
    max_length : int, optional
        Truncation in tokens (default: the extractor's).
    batch_size : int, default=8
        Texts per forward pass (the logits of a batch take
        ``batch_size * max_length * vocabulary * 4`` bytes).
    device : str, optional
        Where the language model runs (default: the extractor's).  The
        estimator runs on its own ``device``.
    mean_activation : array-like of shape (d,), optional
        The replaced layer's mean vector for mean ablation, e.g. the mean of
        the training rows (``pairs.high.mean(axis=0)``); default: the mean
        over the edited rows of ``texts`` (one more pass up to layer ``h``).
    n_bootstrap : int, default=1000
        Bootstrap draws over texts (0: no intervals).
    confidence : float, default=0.95
    random_state : int, RandomState instance or None, default=0
        Seeds the bootstrap.
    verbose : bool, default=False
        A progress bar.

    Returns
    -------
    LossRecovered

    Raises
    ------
    ValueError
        For an encoder model, layers out of range, an estimator fitted on
        another model or layer pair, or texts too short to score.

    Examples
    --------
    >>> from clvqlearn import KMeansConcepts, LayerPairExtractor
    >>> extractor = LayerPairExtractor("smollm2", layers=(20, 30), max_length=64)  # doctest: +SKIP
    >>> km = KMeansConcepts(k=50, layer="high").fit(extractor.fit_transform(train_texts))  # doctest: +SKIP
    >>> result = loss_recovered(km, extractor, test_texts)  # doctest: +SKIP
    >>> result.ce_clean < result.ce_spliced < result.ce_zero  # doctest: +SKIP
    True
    """
    results = loss_recovered_many({"estimator": estimator}, extractor, texts, layers=layers, max_length=max_length,
                                  batch_size=batch_size, device=device, mean_activation=mean_activation,
                                  n_bootstrap=n_bootstrap, confidence=confidence, random_state=random_state,
                                  verbose=verbose)
    return results["estimator"]
