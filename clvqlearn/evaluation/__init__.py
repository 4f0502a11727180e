"""Evaluation of concept sets: concept removal (axis 1), diagnostics, LLM judges and human studies.

The public API is the names below; import them from ``clvqlearn.evaluation``.
Each submodule has one job:

=====================  ===========================================================
``tasks``              task classifiers and their checkpoints (fine-tuned, frozen
                       with a linear head; loading, resolving)
``zero_shot``          zero-shot prompting of a chat model (the paper's decoders)
``saliency``           the salient token of each sentence (Integrated Gradients,
                       rationales) and its cache (``joblib.Memory``)
``directions``         the salient token's concept and the directions removed
``projection``         orthogonal projection (the linear algebra of removal)
``probe``, ``splice``  the two ways to remove: a probe on edited sentence vectors,
                       an edit inside the forward pass
``protocols``          both removal protocols with their controls
``ablation``           scoring: the report, the scikit-learn scorer
``pooling``            reports of several seeds pooled (Rubin's rules)
``diagnostics``        the reference ladder and concept agreement
``alignment``          alignment with human-defined concepts (ConceptX): lexical
                       and spaCy labels of the token rows, purity, coverage
``judge``, ``llm``,    evaluation axes 2 and 3: LLM judges, backends, the human
``study``              study's scoring
=====================  ===========================================================

Examples
--------
>>> from clvqlearn.evaluation import concept_ablation_score, make_ablation_scorer
>>> make_ablation_scorer(protocol="splice").keywords
{'protocol': 'splice'}
"""

from .ablation import AblationReport, concept_ablation_report, concept_ablation_score, make_ablation_scorer
from .alignment import (
    LEXICAL_KINDS,
    SPACY_KINDS,
    AlignmentReport,
    concept_alignment,
    lexical_labels,
    spacy_labels,
    token_words,
)
from .diagnostics import cluster_means, concept_agreement, kmeans_seed_agreement, reference_ladder
from .judge import (
    concept_representations,
    judge_agreement,
    make_judge_items,
    rating_summary,
    read_judgments,
    run_judge,
)
from .llm import BackendAuthError, BackendError, HFChatBackend, OpenAIBackend
from .pooling import PooledAblationReport, pool_ablation_reports
from .probe import MLPProbe, cross_val_probe, make_probe
from .projection import norm_matched_removal, orthonormalize, project_out, project_out_rows, random_directions
from .saliency import (
    Saliency,
    cached_token_saliency,
    clear_saliency_cache,
    rank_words,
    saliency_memory,
    token_saliency,
)
from .splice import splice_logits, splice_projection
from .study import llm_annotate, score_study
from .tasks import (
    ClassifierResult,
    fine_tune_classifier,
    linear_head_classifier,
    load_classifier,
    resolve_classifier,
    save_checkpoint,
)
from .zero_shot import ZERO_SHOT_PRESETS, ZeroShotClassifier

__all__ = [
    "AblationReport",
    "AlignmentReport",
    "BackendAuthError",
    "BackendError",
    "ClassifierResult",
    "HFChatBackend",
    "LEXICAL_KINDS",
    "MLPProbe",
    "OpenAIBackend",
    "PooledAblationReport",
    "SPACY_KINDS",
    "Saliency",
    "ZERO_SHOT_PRESETS",
    "ZeroShotClassifier",
    "cached_token_saliency",
    "clear_saliency_cache",
    "cluster_means",
    "concept_ablation_report",
    "concept_ablation_score",
    "concept_agreement",
    "concept_alignment",
    "concept_representations",
    "cross_val_probe",
    "fine_tune_classifier",
    "judge_agreement",
    "lexical_labels",
    "kmeans_seed_agreement",
    "linear_head_classifier",
    "llm_annotate",
    "load_classifier",
    "make_ablation_scorer",
    "make_judge_items",
    "make_probe",
    "norm_matched_removal",
    "orthonormalize",
    "pool_ablation_reports",
    "project_out",
    "project_out_rows",
    "random_directions",
    "rank_words",
    "rating_summary",
    "read_judgments",
    "reference_ladder",
    "resolve_classifier",
    "run_judge",
    "saliency_memory",
    "save_checkpoint",
    "score_study",
    "spacy_labels",
    "splice_logits",
    "splice_projection",
    "token_saliency",
    "token_words",
]
