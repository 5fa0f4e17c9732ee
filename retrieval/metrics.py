"""Retrieval metrics: the rank of each query's ground-truth item, and recall@k / MRR / mean and median rank.

Ranks are 1-based. Ties are broken pessimistically: an item whose score equals the ground truth's
score counts as ranked before it, so ``rank = #{j : score(q, j) >= score(q, gt)}``. The rule does not
depend on row order, and a degenerate model that gives every item the same score gets rank N, never 1.

Scores are computed block by block over the queries (``block`` query rows against all items at a
time), so a 25,000 x 5,000 evaluation holds at most ``block x N`` scores in memory.
Only numpy is needed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError

METRICS = ("cosine", "l2")
_BLOCK_BYTES = 64 << 20  # scores held at once: 64 MiB


def scores(xq: np.ndarray, xb: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Similarity ``(nq, nb) float32``, higher is better: cosine, or ``-||q - b||^2`` for ``"l2"``.

    Zero vectors have cosine 0 with everything.
    """
    xq = np.asarray(xq, np.float32)
    xb = np.asarray(xb, np.float32)
    if metric == "cosine":
        return normalize_rows(xq, copy=True) @ normalize_rows(xb, copy=True).T
    if metric == "l2":
        q2 = np.einsum("ij,ij->i", xq, xq)[:, None]
        b2 = np.einsum("ij,ij->i", xb, xb)[None, :]
        return -(q2 + b2 - 2.0 * (xq @ xb.T))
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def ranks(
    xq: np.ndarray,
    xb: np.ndarray,
    gt: Sequence[int] | np.ndarray,
    metric: str = "cosine",
    block: int | None = None,
) -> np.ndarray:
    """1-based rank of item ``gt[i]`` (a row of ``xb``) for query ``i``: ``(nq,) int64``.

    ``xq`` is ``(nq, d)``, ``xb`` is ``(nb, d)``; ``metric`` is ``"cosine"`` or ``"l2"``. Ties count
    against the ground truth (see the module docstring). ``block`` is the number of query rows scored
    at once (default: as many as fit in 64 MiB of scores).
    """
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    xq = np.asarray(xq, np.float32)
    xb = np.asarray(xb, np.float32)
    gt = np.asarray(gt, np.int64)
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise UserError(f"query vectors {xq.shape} and item vectors {xb.shape} must be 2-D with the same dimension")
    if gt.shape != (xq.shape[0],):
        raise ValueError(f"gt has shape {gt.shape}, expected ({xq.shape[0]},)")
    if xq.shape[0] == 0:
        return np.zeros(0, np.int64)
    if xb.shape[0] == 0:
        raise UserError("no items to rank against: the split has no images")
    if gt.min() < 0 or gt.max() >= xb.shape[0]:
        raise ValueError(f"gt holds row numbers outside 0..{xb.shape[0] - 1}")
    if not (np.isfinite(xq).all() and np.isfinite(xb).all()):
        raise UserError("vectors contain NaN or infinity; cannot rank them")
    if block is None:
        block = max(1, _BLOCK_BYTES // (4 * xb.shape[0]))
    if metric == "cosine":
        xq, xb = normalize_rows(xq, copy=True), normalize_rows(xb, copy=True)
        b2 = None
    else:
        b2 = np.einsum("ij,ij->i", xb, xb)
    out = np.empty(xq.shape[0], np.int64)
    for start in range(0, xq.shape[0], block):
        q = xq[start : start + block]
        s = q @ xb.T  # (b, nb)
        if b2 is not None:  # -||q-b||^2 up to the per-query constant ||q||^2, which cannot change a rank
            s *= 2.0
            s -= b2[None, :]
        g = gt[start : start + block]
        target = s[np.arange(len(g)), g][:, None]
        out[start : start + len(g)] = (s >= target).sum(axis=1)
    return out


def rank_metrics(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Summary of 1-based ranks: ``recall@k`` for each k, ``mrr``, ``mean_rank``, ``median_rank``, ``n``.

    An empty array is a :class:`UserError` (an empty split has no metrics; nothing here returns NaN).
    """
    r = np.asarray(ranks, np.int64)
    if r.size == 0:
        raise UserError("no captions to evaluate: the split is empty (or none of its images are in the feature file)")
    if r.min() < 1:
        raise ValueError("ranks are 1-based; found a rank below 1")
    out = {f"recall@{k}": float(np.mean(r <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / r))
    out["mean_rank"] = float(np.mean(r))
    out["median_rank"] = float(np.median(r))
    out["n"] = int(r.size)
    return out


def rank_histogram(ranks: Sequence[int] | np.ndarray, n_items: int, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ranks over ``[1, n_items]``: ``(counts (bins,) int64, edges (bins + 1,) float64)``."""
    r = np.asarray(ranks, np.int64)
    bins = max(1, min(bins, n_items))
    counts, edges = np.histogram(r, bins=bins, range=(0.5, n_items + 0.5))
    return counts.astype(np.int64), edges


def format_table(results: dict[str, dict], ks: Sequence[int] = (1, 5, 10)) -> str:
    """Plain-text table of :func:`rank_metrics` results, one row per split."""
    cols = [f"recall@{k}" for k in ks] + ["mrr", "mean_rank", "median_rank", "n"]
    heads = ["split"] + [c.replace("recall@", "R@") for c in cols]
    rows = [heads]
    for split, m in results.items():
        rows.append([split] + [_fmt(m.get(c)) for c in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(heads))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
