"""Default search parameters from held-out queries, under a recall target and a latency budget.

The queries are stored vectors with their own row left out of both answers (exact and approximate), so
they ask what a fresh query asks: which *other* images are nearest. Ground truth is exact search over
the same blocks the index is filled with (:func:`indexes.exact.exact_knn`, one pass).

The rule, after autofaiss: the smallest ``nprobe``/``efSearch`` whose recall@10 reaches the target; with a
latency budget, if that value's single-query median time is over the budget, the largest value under it
(binary search over the ascending values; time grows with the value), reporting the recall it reaches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from extract.core.arrays import normalize_rows
from indexes.exact import exact_knn, leave_one_out, recall_at
from indexes.params import coupled_params, set_search_params, tunable_parameter

log = logging.getLogger(__name__)

TIMED_QUERIES = 50


class Calibration:
    """Held-out queries (``rows`` of the feature source) and their exact top-``k`` among the other rows."""

    def __init__(self, xq: np.ndarray, rows: np.ndarray, metric: str, n: int, k: int = 10):
        self.xq = np.ascontiguousarray(xq, dtype=np.float32)
        if metric == "cosine":
            normalize_rows(self.xq)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.metric = metric
        self.k = max(1, min(k, n - 1))
        self.gt: np.ndarray | None = None

    def ground_truth(self, blocks: Iterable[np.ndarray]) -> None:
        """Exact answers over ``blocks`` (the whole database, in row order; normalised as the index's)."""
        _, I = exact_knn(self.xq, blocks, self.k + 1, self.metric)
        self.gt = leave_one_out(I, self.rows, self.k)

    def recall(self, index) -> float:
        """Recall@k of ``index`` at its current search parameters, own rows left out."""
        _, I = index.search(self.xq, self.k + 1)
        return recall_at(leave_one_out(I, self.rows, self.k), self.gt, self.k)

    def query_ms(self, index) -> float:
        """Median single-thread ms of one query (the way one interactive search runs)."""
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            times = []
            for i in range(min(TIMED_QUERIES, len(self.xq))):
                t0 = time.perf_counter()
                index.search(self.xq[i : i + 1], self.k + 1)
                times.append(time.perf_counter() - t0)
        finally:
            faiss.omp_set_num_threads(before)
        return float(np.median(times)) * 1e3

    def tune(self, index, target: float, max_query_ms: float | None = None, ms_scale=None,
             warn: bool = True) -> tuple[dict, dict]:
        """``(search_params, report)``: the chosen parameter (applied to ``index``) and what it reaches.

        ``ms_scale(value)``, when given, multiplies the measured time of a query at that value (e.g. to
        project a sample index's time to the full size, see :mod:`indexes.compare`)."""
        name, values = tunable_parameter(index)
        recalls: dict[int, float] = {}

        def timed(value: int) -> float:
            return self.query_ms(index) * (ms_scale(value) if ms_scale else 1.0)

        def at(value: int) -> float:
            set_search_params(index, coupled_params(name, value, index))
            if value not in recalls:
                recalls[value] = self.recall(index)
            return recalls[value]

        chosen = next((v for v in values if at(v) >= target), values[-1])
        at(chosen)
        ms = timed(chosen)
        within = True
        if max_query_ms is not None and ms > max_query_ms:
            lo, hi = 0, values.index(chosen) - 1  # largest value under the budget, by bisection
            best = None
            while lo <= hi:
                mid = (lo + hi) // 2
                at(values[mid])
                t = timed(values[mid])
                if t <= max_query_ms:
                    best, lo = (values[mid], t), mid + 1
                else:
                    hi = mid - 1
            wanted, wanted_ms = chosen, ms
            within = best is not None
            if best is not None:
                chosen, ms = best
            else:  # nothing is fast enough: the fastest value
                chosen = values[0]
                at(chosen)
                ms = timed(chosen)
            (log.warning if warn else log.debug)("recall@%d %.2f needs %s=%d (%.1f ms a query) but --max-query-ms is %g; using %s=%d (%.1f ms)",
                        self.k, target, name, wanted, wanted_ms, max_query_ms, name, chosen, ms)
        params = coupled_params(name, chosen, index)
        set_search_params(index, params)
        reached = at(chosen)
        log.info("calibrated %s=%d: recall@%d %.3f on %d held-out queries, %.2f ms a query", name, chosen, self.k,
                 reached, len(self.xq), ms)
        report = {"parameter": name, "value": chosen, f"recall@{self.k}": round(reached, 4), "queries": len(self.xq),
                  "held_out": True, "target": target, "query_ms": round(ms, 3), "max_query_ms": max_query_ms,
                  "within_latency": within}
        return params, report
