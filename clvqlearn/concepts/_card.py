"""The model card of a saved estimator: ``README.md`` in Hugging Face's format.

``ConceptEstimator.save`` writes it next to ``model.safetensors`` and
``config.json``; ``_persistence.write_model_card`` (re)writes it for a folder
already saved, for instance once held-out figures are known, and
:func:`read_model_card` reads its metadata back.  ``load`` never reads the
card: it describes the model, it does not define it.

The card is a Markdown file that starts with a YAML block (Hugging Face's
model-card metadata: ``library_name``, ``tags``, ``base_model``) holding a
``clvqlearn`` block: the estimator's class, ``k``, the language model and
layer pair it was fitted on, its parameters, the training data (its size as
recorded at fit, ``n_docs_seen_`` and ``n_tokens_seen_``, unless the caller
describes it) and the held-out figures the caller gives.  The YAML is written and parsed
with ``huggingface_hub`` (installed with transformers), offline.

Examples
--------
>>> import tempfile
>>> import numpy as np
>>> from clvqlearn import KMeansConcepts, LayerPairs
>>> from clvqlearn.concepts._card import read_model_card
>>> rng = np.random.default_rng(0)
>>> pairs = LayerPairs(low=rng.normal(size=(60, 4)), high=rng.normal(size=(60, 4)),
...                    offsets=np.arange(0, 61, 6), layers=(4, 6), model_name="minilm")
>>> est = KMeansConcepts(k=3, random_state=0).fit(pairs)
>>> folder = est.save(tempfile.mkdtemp() + "/concepts",
...                   card={"data": pairs, "metrics": {"held-out FVE": 0.25}})
>>> card = read_model_card(folder)
>>> card["base_model"], card["clvqlearn"]["layers"], card["clvqlearn"]["data"]["n_docs"]
('sentence-transformers/all-MiniLM-L6-v2', [4, 6], 10)
>>> card["clvqlearn"]["metrics"]
{'held-out FVE': 0.25}
"""

from __future__ import annotations

import json
import math
import os
import re
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from ..data import LayerPairs
from ..models import PACKAGED_MODELS

__all__ = ["CARD_FILE", "CARD_KEYS", "base_model_id", "card_text", "check_card_argument", "read_model_card"]

#: The model card's file name in a saved folder (the name the Hugging Face hub shows).
CARD_FILE = "README.md"
#: What a caller may tell the card (``save(card={...})``, :func:`write_model_card`).
CARD_KEYS = ("data", "metrics", "model", "layers")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+\Z")
_TAGS = {
    "CrossLayerVQ": ["vector-quantization", "cross-layer"],
    "SingleLayerVQ": ["vector-quantization"],
    "KMeansConcepts": ["k-means"],
    "SparseAutoencoder": ["sparse-autoencoder"],
}
_LAYER_ROLES = ("low", "high")


def base_model_id(model: str | None) -> str | None:
    """The Hugging Face id of a model name, where there is one.

    A packaged short name gives the id of its weights, a name of the form
    ``org/name`` that is not a local path is taken as an id, anything else
    (a local folder, an empty name) gives None.

    Examples
    --------
    >>> base_model_id("minilm"), base_model_id("org/model"), base_model_id("./my-model")
    ('sentence-transformers/all-MiniLM-L6-v2', 'org/model', None)
    """
    if not model:
        return None
    packaged = PACKAGED_MODELS.get(model)
    if packaged is not None:
        return packaged.hub_id or None
    if _HUB_ID.match(model) and not os.path.exists(model):
        return model
    return None


def read_model_card(path) -> dict:
    """The metadata of a saved estimator's model card.

    Parameters
    ----------
    path : str or path-like
        A folder written by ``save`` (or its ``README.md``).

    Returns
    -------
    dict
        The card's YAML metadata: ``library_name``, ``tags``, ``base_model``
        (when known) and the ``clvqlearn`` block (``estimator``, ``k``,
        ``model``, ``layers``, ``params``, ``data``, ``metrics``, ...).

    Raises
    ------
    FileNotFoundError
        When there is no card.
    ValueError
        When the file's metadata cannot be parsed or is not a clvqlearn card.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from clvqlearn import KMeansConcepts, LayerPairs
    >>> from clvqlearn.sharing import read_model_card
    >>> rng = np.random.default_rng(0)
    >>> pairs = LayerPairs(low=rng.normal(size=(40, 3)), high=rng.normal(size=(40, 3)),
    ...                    offsets=np.arange(0, 41, 8), layers=(2, 4), model_name="smollm2")
    >>> folder = KMeansConcepts(k=2, random_state=0).fit(pairs).save(tempfile.mkdtemp() + "/km")
    >>> card = read_model_card(folder)
    >>> card["library_name"], card["base_model"]
    ('clvqlearn', 'HuggingFaceTB/SmolLM2-135M-Instruct')
    >>> block = card["clvqlearn"]
    >>> block["estimator"], block["k"], block["model"], block["layers"]
    ('KMeansConcepts', 2, 'smollm2', [2, 4])
    """
    from huggingface_hub import ModelCard

    file = Path(path)
    if file.is_dir():
        file = file / CARD_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: the folder holds no model card (save() writes one).")
    try:
        metadata = ModelCard(file.read_text(encoding="utf-8")).data.to_dict()
    except Exception as exc:  # yaml and huggingface_hub raise their own types
        raise ValueError(f"{file}: the model card's metadata cannot be read ({type(exc).__name__}: {exc}).") from None
    if not isinstance(metadata.get("clvqlearn"), dict):
        raise ValueError(f"{file} is not a clvqlearn model card (its metadata has no 'clvqlearn' block).")
    return metadata


# ------------------------------------------------------------------ content
def card_text(estimator, *, data=None, metrics=None, model=None, layers=None) -> str:
    """The full ``README.md`` (YAML metadata, then Markdown) for a fitted estimator."""
    import yaml
    from huggingface_hub import ModelCard

    block = card_block(estimator, data=data, metrics=metrics, model=model, layers=layers)
    name = type(estimator).__name__
    hub_id = base_model_id(block["model"])
    metadata = {"library_name": "clvqlearn", "tags": ["clvqlearn", "interpretability", "concepts",
                                                      *_TAGS.get(name, [])]}
    if hub_id:
        metadata["base_model"] = hub_id
    metadata["clvqlearn"] = block
    # non-ASCII escaped: PyYAML writes some line-break characters (U+0085) raw with allow_unicode,
    # and they read back as spaces
    # (and huggingface_hub re-dumps them so when a ModelCard is turned into text: the text is ours)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=False).strip()
    text = f"---\n{front}\n---\n{_markdown(block, hub_id)}"
    ModelCard(text)  # parsed once, as the hub parses it
    return text


def card_block(estimator, *, data=None, metrics=None, model=None, layers=None) -> dict:
    """The ``clvqlearn`` metadata block (checked, JSON-able)."""
    recorded_model = getattr(estimator, "pairs_model_name_", None)
    recorded_layers = getattr(estimator, "pairs_layers_", None)
    model = _check_model(model if model is not None else recorded_model)
    # pairs built by hand may hold any order: what the estimator recorded is written as it is
    layers = _check_layers(layers) if layers is not None else _check_layers(recorded_layers, ordered=False)
    usage = np.asarray(getattr(estimator, "usage_", []), dtype=np.float64)
    cross = estimator._is_cross_layer()
    return {
        "estimator": type(estimator).__name__,
        "k": int(estimator.k),
        "model": model,
        "layers": layers,
        "reads": "low -> high" if cross else estimator._source_layer(),
        "layer_widths": _plain(getattr(estimator, "layer_widths_", None)),
        "concepts_used": int((usage > 0).sum()),
        "n_iter": _plain(getattr(estimator, "n_iter_", None)),
        "params": _card_params(estimator),
        "data": _check_data(data, estimator, model, layers) if data is not None else _fitted_data(estimator),
        "metrics": _check_metrics(metrics),
        "clvqlearn_version": _version(),
    }


def _markdown(block: dict, hub_id: str | None) -> str:
    name, k, model, layers = block["estimator"], block["k"], block["model"], block["layers"]
    where = _where(block)
    shown_model = f"`{model}`" + (f" ([{hub_id}](https://huggingface.co/{hub_id}))" if hub_id and hub_id != model
                                  else "")
    lines = [f"# {name}: {k} concepts{where}", ""]
    lines += [f"{k} concepts learned by clvqlearn's `{name}`"
              + (f" on {_layer_words(block)} of {shown_model}." if model else " (language model not recorded)."),
              f"{block['concepts_used']} of them are in use on the training data.", ""]
    lines += ["## Use", "", "```python", f"from clvqlearn import {name}"]
    if model and layers:
        lines += ["from clvqlearn import LayerPairExtractor", "",
                  f"concepts = {name}.load(\"path/to/this/folder\")",
                  f"pairs = LayerPairExtractor({model!r}, layers={tuple(layers)!r}).fit_transform(texts)",
                  "concept_ids = concepts.predict(pairs)  # one concept id per token"]
    else:
        lines += ["", f"concepts = {name}.load(\"path/to/this/folder\")"]
    lines += ["```", ""]
    lines += _data_section(block["data"]) + _metrics_section(block["metrics"])
    lines += ["## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| `{key}` | `{json.dumps(value)}` |" for key, value in block["params"].items()]
    return "\n".join(lines) + "\n"


def _where(block: dict) -> str:
    if not block["model"]:
        return ""
    return f" of {block['model']}" + (f", {_layer_words(block)}" if block["layers"] else "")


def _layer_words(block: dict) -> str:
    layers = block["layers"]
    if not layers:
        return "its layers"
    if block["reads"] == "low -> high":
        return f"layer {layers[0]} -> layer {layers[1]}"
    return f"layer {layers[_LAYER_ROLES.index(block['reads'])]}"


def _data_section(data: dict | None) -> list:
    if not data:
        return []
    lines = ["## Training data", ""]
    if data.get("description"):
        lines.append(str(data["description"]))
    counts = [f"{data[key]:,} {word}" for key, word in (("n_docs", "documents"), ("n_tokens", "tokens"))
              if isinstance(data.get(key), int)]
    if counts:
        lines.append(", ".join(counts) + ".")
    rest = {key: value for key, value in data.items() if key not in ("description", "n_docs", "n_tokens")}
    lines += [f"- {key}: `{json.dumps(value)}`" for key, value in rest.items()]
    return lines + [""]


def _metrics_section(metrics: dict | None) -> list:
    if not metrics:
        return []
    lines = ["## Held-out figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
              for key, value in metrics.items()]
    return lines + [""]


# ------------------------------------------------------------------ checks
def check_card_argument(card) -> dict:
    """``save(card=...)``: None or a dict with keys among :data:`CARD_KEYS`."""
    if card is None:
        return {}
    if not isinstance(card, dict):
        raise TypeError(f"card must be a dict with keys among {list(CARD_KEYS)} or None; got {type(card).__name__}.")
    unknown = sorted(str(key) for key in card if key not in CARD_KEYS)
    if unknown:
        raise ValueError(f"card has unknown key(s) {unknown}; expected some of {list(CARD_KEYS)}.")
    return dict(card)


def _check_model(model) -> str | None:
    if model is None or model == "":
        return None
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be the language model's name (a string); got {type(model).__name__}.")
    return os.fspath(model)


def _check_layers(layers, *, ordered: bool = True) -> list | None:
    """The card's layer pair as a list; ``ordered``: refuse ``low > high`` (a pair the caller gives)."""
    if layers is None:
        return None
    try:
        values = [v for v in layers]
    except TypeError:
        values = []
    if len(values) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        raise ValueError(f"layers must be the (low, high) layer pair, two integers; got {layers!r}.")
    if ordered and values[0] > values[1]:
        raise ValueError(f"layers must be the (low, high) layer pair, low <= high; got {layers!r}.")
    return [int(v) for v in values]


def _check_data(data, estimator, model, layers) -> dict | None:
    if data is None:
        return None
    if isinstance(data, str):
        return {"description": data}
    if isinstance(data, LayerPairs):
        return _pairs_data(data, estimator, model, layers)
    if isinstance(data, dict):
        bad = [key for key in data if not isinstance(key, str)]
        if bad:
            raise TypeError(f"card data: keys must be strings; got {bad[:3]!r}.")
        for key in ("n_docs", "n_tokens"):
            value = data.get(key)
            if value is not None and (not isinstance(value, Integral) or isinstance(value, bool) or value < 0):
                raise ValueError(f"card data: {key!r} must be a non-negative integer; got {value!r}.")
        return {key: _plain(value, f"data[{key!r}]") for key, value in data.items()}
    raise TypeError("card data must be a description (str), a dict or the training LayerPairs; got "
                    f"{type(data).__name__}.")


def _fitted_data(estimator) -> dict | None:
    """The training data's size recorded at fit (``n_docs_seen_``, ``n_tokens_seen_``), where known."""
    record = {key: getattr(estimator, name, None) for key, name in (("n_docs", "n_docs_seen_"),
                                                                    ("n_tokens", "n_tokens_seen_"))}
    record = {key: int(value) for key, value in record.items()
              if isinstance(value, Integral) and not isinstance(value, bool) and value >= 0}
    return record or None


def _pairs_data(pairs: LayerPairs, estimator, model, layers) -> dict:
    """Counts and provenance of the training pairs; refuse pairs of another model or layer pair."""
    if pairs.model_name and model and (pairs.model_name != model or list(pairs.layers) != layers):
        raise ValueError(
            f"card data holds layers {tuple(pairs.layers)} of model {pairs.model_name!r}, but the card "
            f"describes layers {tuple(layers or ())} of model {model!r}: pass the pairs the estimator was fitted on."
        )
    record = {"n_docs": int(pairs.n_docs), "n_tokens": int(pairs.n_tokens)}
    if pairs.model_name:
        record.update(model=pairs.model_name, layers=[int(v) for v in pairs.layers])
    return record


def _check_metrics(metrics) -> dict | None:
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise TypeError(f"card metrics must be a dict of name -> number; got {type(metrics).__name__}.")
    checked = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"card metrics: names must be strings; got {key!r}.")
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (Real, str)):
            raise TypeError(f"card metrics: {key!r} must be a number or a string; got {type(value).__name__}.")
        if isinstance(value, Real) and not isinstance(value, Integral) and not math.isfinite(value):
            raise ValueError(f"card metrics: {key!r} is {value}; a held-out figure must be finite.")
        checked[key] = value if isinstance(value, (str, Integral)) else float(value)
    return checked or None


def _plain(value, name: str = "value"):
    """A JSON/YAML-safe copy: numpy scalars and arrays to Python, tuples to lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, name) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.random.RandomState):
        return None  # as save() stores it
    raise TypeError(f"card {name}: {type(value).__name__} cannot be written to the card (use JSON values).")


def _card_params(estimator) -> dict:
    """The parameters the card shows: all but the run-only ones (``checkpoint_dir``, ``device``, ...)."""
    run_only = getattr(estimator, "_run_params", frozenset())
    return {key: _param_value(value) for key, value in estimator.get_params(deep=False).items()
            if key not in run_only}


def _param_value(value):
    """A parameter as the card shows it: its JSON value, or its repr (callbacks and other objects)."""
    try:
        return _plain(value)
    except TypeError:
        return repr(value)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clvqlearn")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "unknown"
