"""Exact (brute-force) nearest neighbours over vectors that arrive block by block, and recall against them.

One function for every exact answer the index layer needs (calibration during a build, benchmark ground
truth): faiss contrib's :func:`knn_ground_truth`, which searches each block with ``IndexFlat`` and keeps
the best ``k`` in a ``ResultHeap``, so the database never has to sit in memory whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METRICS = ("cosine", "ip", "l2")
_EMPTY = 3e38  # faiss marks an empty result slot with +-FLT_MAX


def faiss_metric(metric: str) -> int:
    """The faiss metric constant for ``cosine``/``ip`` (inner product) or ``l2``."""
    import faiss

    from extract.core.errors import UserError

    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def exact_knn(xq: np.ndarray, blocks: Iterable[np.ndarray], k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``xq`` ((nq, d) float32) over the concatenation of ``blocks`` ((b, d) float32 each).

    Returns ``D`` (nq, k) float32 and ``I`` (nq, k) int64 global row numbers (-1 where fewer than ``k``
    rows exist). Vectors are compared as given: normalise both sides first for cosine.
    """
    import logging

    from faiss.contrib.exhaustive_search import knn_ground_truth

    contrib_log = logging.getLogger("faiss.contrib.exhaustive_search")
    level = contrib_log.level
    contrib_log.setLevel(max(level, logging.WARNING))  # it logs every block at INFO
    try:
        D, I = knn_ground_truth(np.ascontiguousarray(xq, dtype=np.float32), blocks, k, faiss_metric(metric), ngpu=0)
    finally:
        contrib_log.setLevel(level)
    I[np.abs(D) >= _EMPTY] = -1  # a slot no row filled (fewer than k rows in all): its id was shifted off -1
    return D, I


def leave_one_out(I: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Drop each query's own row from its result list ``I`` ((nq, >= k+1) int64): ``(nq, k)``.

    A stored vector searched against an index that holds it finds itself first; leaving that row out
    turns stored vectors into held-out queries (the question a fresh query asks of the other rows).
    """
    out = np.full((len(I), k), -1, dtype=np.int64)
    for qi, (found, own) in enumerate(zip(I, rows)):
        kept = found[found != own][:k]
        out[qi, : len(kept)] = kept
    return out


def recall_at(I: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-``k`` (``gt``, (nq, >=k) int64) found in the approximate top-``k`` ``I``."""
    hits = [len(set(a[:k].tolist()) & (set(b[:k].tolist()) - {-1})) for a, b in zip(I, gt)]
    sizes = [max(1, len(set(b[:k].tolist()) - {-1})) for b in gt]
    return float(np.mean(np.asarray(hits) / np.asarray(sizes)))
