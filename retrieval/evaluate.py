"""Text -> image retrieval evaluation of a trained encoder on caption splits (the path search uses: numpy only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from extract.store import open_features
from retrieval.datasets import SplitData, load_splits
from retrieval.metrics import rank_metrics, ranks
from retrieval.query import load_text_encoder

log = logging.getLogger(__name__)


def split_ranks(pred: np.ndarray, xb: np.ndarray, split: SplitData, metric: str) -> np.ndarray:
    """Ranks ``(n,) int64`` of each caption's image among the split's gallery, from predictions ``(n, D)``
    in the raw feature space and the feature matrix ``xb`` (all rows of the feature file)."""
    return ranks(pred, xb[split.gallery_rows], split.gt, metric=metric)


def evaluate(
    ckpt: str | os.PathLike,
    features: str | os.PathLike,
    captions: Sequence[str | os.PathLike],
    vectors: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
) -> dict[str, dict]:
    """Metrics per split (:func:`~retrieval.metrics.rank_metrics` plus ``gallery`` and ``missing``).

    An empty split is reported as ``{"n": 0, "gallery": ..., "error": ...}`` rather than NaN.
    """
    encoder = load_text_encoder(ckpt, vectors=vectors)
    ff = open_features(features)
    encoder.check_features(ff)
    data = load_splits(captions, ff.ids)
    if splits:
        data = {k: v for k, v in data.items() if k in set(splits)}
    xb = ff.load_verified()  # finite, and the values the file records
    out: dict[str, dict] = {}
    for name, split in data.items():
        extra = {"gallery": len(split.gallery_rows), "missing": split.missing}
        if not split.texts:
            out[name] = {"n": 0, **extra, "error": "no captions with images in the feature file"}
            continue
        r = split_ranks(encoder.encode(split.texts), xb, split, encoder.metric)
        out[name] = {**rank_metrics(r), **extra}
    return out
