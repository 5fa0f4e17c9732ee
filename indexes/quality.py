"""Text -> image retrieval quality measured through an index, per split, with the evaluation's metric code.

For each caption the rank of its ground-truth image comes from the index's answer list: the number of
returned images scoring at least as well as the ground truth (ties count against it, as in
:func:`retrieval.metrics.ranks`). With a ``Flat`` index and ``k`` = all images these ranks are exactly the
brute-force ones; an approximate index that does not return the ground truth gives it the worst rank, N.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from extract.errors import UserError
from indexes.build import ArrayFeatures, IndexConfig, build_index, normalize_rows
from indexes.search import search

log = logging.getLogger(__name__)


def ranks_via_index(index, xq: np.ndarray, gt: np.ndarray, metric: str, k: int | None = None) -> np.ndarray:
    """1-based rank of row ``gt[i]`` for query ``i`` from the index's top-``k`` (default all): ``(nq,) int64``.

    ``xq`` is ``(nq, d) float32``, already normalised for a cosine index.
    """
    n = index.ntotal
    D, I = search(index, xq, k or n)
    gt = np.asarray(gt, dtype=np.int64)
    found = I == gt[:, None]
    has = found.any(axis=1)
    pos = found.argmax(axis=1)
    target = D[np.arange(len(gt)), pos][:, None]
    better = (D <= target) if metric == "l2" else (D >= target)
    better &= I >= 0
    return np.where(has, better.sum(axis=1), n).astype(np.int64)


def split_quality(encoder, xb: np.ndarray, texts: Sequence[str], gt: np.ndarray, factory: str = "Flat",
                  k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks through an index of ``factory`` over ``xb`` ((m, D) float32) and exact ranks: two ``(n,) int64``."""
    from retrieval.metrics import ranks

    metric = encoder.metric
    built = build_index(ArrayFeatures(xb), IndexConfig(factory=factory, metric=metric), quiet=True)
    xq = encoder.encode(list(texts))
    xq_index = normalize_rows(xq.copy()) if metric == "cosine" else xq
    return ranks_via_index(built.index, xq_index, gt, metric, k), ranks(xq, xb, gt, metric)


def quality_benchmark(
    features: str | os.PathLike,
    captions: Sequence[str | os.PathLike],
    model: str | os.PathLike,
    factory: str = "Flat",
    k: int | None = None,
) -> dict:
    """Per split and averaged: recall@1/5/10, MRR, mean/median rank through the index, plus the exact figures.

    ``captions`` are caption folders or ``<split>_captions.txt`` files (as ``cli.py evaluate`` takes them).
    Returns ``{"splits": {name: {"index": metrics, "exact": metrics, "agree": bool, "ranks": [...]}},
    "average": metrics, "factory": ..., "metric": ...}``.
    """
    from extract.store import open_features
    from retrieval.datasets import load_splits
    from retrieval.metrics import rank_metrics
    from retrieval.query import load_text_encoder

    ff = open_features(features)
    encoder = load_text_encoder(model)
    encoder.check_features(ff)
    splits = load_splits(list(captions), ff.ids)
    out: dict = {"factory": factory, "metric": encoder.metric, "splits": {}}
    for name, data in splits.items():
        if not data.texts:
            log.warning("split %s has no captions with images in %s; skipped", name, ff.path)
            continue
        xb = ff.load(data.gallery_rows)
        r_index, r_exact = split_quality(encoder, xb, data.texts, data.gt, factory, k)
        out["splits"][name] = {
            "index": rank_metrics(r_index),
            "exact": rank_metrics(r_exact),
            "agree": bool(np.array_equal(r_index, r_exact)),
            "images": len(xb),
            "ranks": r_index.tolist(),
        }
    if not out["splits"]:
        raise UserError("no split has captions whose images are in the feature file; nothing to measure")
    keys = list(next(iter(out["splits"].values()))["index"])
    out["average"] = {key: float(np.mean([s["index"][key] for s in out["splits"].values()])) for key in keys if key != "n"}
    out["average"]["n"] = int(sum(s["index"]["n"] for s in out["splits"].values()))
    return out
