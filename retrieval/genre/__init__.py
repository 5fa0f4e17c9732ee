"""Movie genre classification (multi-label) on cached poster features and overview text.

Importing this package is cheap: torch, gensim and scikit-learn load only inside the functions that use them.
"""

from retrieval.genre.data import LabelSet, encode_genres, load_labels, read_label_set
from retrieval.genre.join import join_features, joined
from retrieval.genre.metrics import (
    apply_thresholds,
    multilabel_report,
    top_k,
    tune_thresholds,
)
from retrieval.genre.split import stratified_split

__all__ = [
    "LabelSet",
    "apply_thresholds",
    "encode_genres",
    "join_features",
    "joined",
    "load_labels",
    "multilabel_report",
    "read_label_set",
    "stratified_split",
    "top_k",
    "tune_thresholds",
]
