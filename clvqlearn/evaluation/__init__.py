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
``loss_recovered``     a decoder's next-token loss and KL with a layer replaced by a
                       concept model's reconstruction (the SAE world's faithfulness)
``concept_examples``,  automatic interpretability (delphi's scores): examples of each
``autointerp``,        concept, LLM explanations, detection, fuzzing, intruder and
``autointerp_scores``  embedding scores; per-concept scores, controls and verdicts
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
from .autointerp import AutoInterpReport, SentenceEmbedder, autointerp_report, explain_concepts, score_concepts
from .autointerp_scores import SCORERS, concept_scores, trust_summary
from .concept_examples import (
    ConceptActivity,
    ConceptExample,
    ConceptRecord,
    concept_activity,
    sample_concept_examples,
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
from .loss_recovered import LossRecovered, loss_recovered, loss_recovered_many, recovered_fraction
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
    "AutoInterpReport",
    "BackendAuthError",
    "BackendError",
    "ClassifierResult",
    "ConceptActivity",
    "ConceptExample",
    "ConceptRecord",
    "HFChatBackend",
    "LEXICAL_KINDS",
    "LossRecovered",
    "MLPProbe",
    "OpenAIBackend",
    "PooledAblationReport",
    "SCORERS",
    "SPACY_KINDS",
    "Saliency",
    "SentenceEmbedder",
    "ZERO_SHOT_PRESETS",
    "ZeroShotClassifier",
    "autointerp_report",
    "cached_token_saliency",
    "clear_saliency_cache",
    "cluster_means",
    "concept_ablation_report",
    "concept_ablation_score",
    "concept_activity",
    "concept_agreement",
    "concept_alignment",
    "concept_representations",
    "concept_scores",
    "cross_val_probe",
    "explain_concepts",
    "fine_tune_classifier",
    "judge_agreement",
    "kmeans_seed_agreement",
    "lexical_labels",
    "linear_head_classifier",
    "llm_annotate",
    "load_classifier",
    "loss_recovered",
    "loss_recovered_many",
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
    "recovered_fraction",
    "reference_ladder",
    "resolve_classifier",
    "run_judge",
    "saliency_memory",
    "sample_concept_examples",
    "save_checkpoint",
    "score_concepts",
    "score_study",
    "spacy_labels",
    "splice_logits",
    "splice_projection",
    "token_saliency",
    "token_words",
    "trust_summary",
]
