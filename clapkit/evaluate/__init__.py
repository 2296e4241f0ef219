"""Evaluation suite: zero-shot classification, text↔audio retrieval, compositional reasoning (CompA).

Each task has a pure metric function over embeddings or similarities (tested on hand-built matrices)
and an ``evaluate_*`` function that embeds a data set with a ``ClapModel`` first.
"""

from clapkit.evaluate.compositional import (
    CompositionalItem,
    compositional_scores,
    evaluate_compositional,
    load_compa_csv,
    random_baseline,
    winoground_scores,
)
from clapkit.evaluate.retrieval import (
    RetrievalSet,
    evaluate_retrieval,
    load_retrieval_set,
    retrieval_metrics,
    retrieval_ranks,
)
from clapkit.evaluate.zeroshot import (
    LabelledAudio,
    classification_metrics,
    evaluate_zeroshot,
    load_labelled_audio,
    save_confusion_matrix,
)

__all__ = [
    "CompositionalItem",
    "LabelledAudio",
    "RetrievalSet",
    "classification_metrics",
    "compositional_scores",
    "evaluate_compositional",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "load_compa_csv",
    "load_labelled_audio",
    "load_retrieval_set",
    "random_baseline",
    "retrieval_metrics",
    "retrieval_ranks",
    "save_confusion_matrix",
    "winoground_scores",
]
