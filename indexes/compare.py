"""Under a latency budget, the ``auto`` index is chosen by measurement: the best few candidate kinds that fit
the memory budget are built, each calibrated on held-out queries, and the one with the highest recall
within ``max_query_ms`` wins (autofaiss's rule, with the candidates measured instead of modelled).

When the feature source is larger than two training samples, candidates are built on one sample (the
rows a full build would train on, with the same number of IVF lists, so the lists hold fewer vectors):
recall at a given ``nprobe`` carries over, and the measured time of a query is scaled to the full size
by the scan-cost model (:func:`indexes.choose.estimate_query_ms` at ``n`` over the same at the sample
size). The full build then calibrates the winner again on the whole set.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np

from extract.core.arrays import normalize_rows
from indexes.calibrate import Calibration
from indexes.choose import REFINE_CANDIDATES, estimate_query_ms, fitting, n_lists
from indexes.fill import sample_rows, train_rows
from indexes.params import refine_stage, set_search_params, tunable_parameter

log = logging.getLogger(__name__)

MAX_COMPARED = 3
SLACK = 4.0  # candidates whose modelled time is over SLACK x the budget are not built


def pick(results: list[dict], max_query_ms: float) -> dict:
    """The result with the highest ``recall`` among those whose ``query_ms`` is within ``max_query_ms``
    (ties: the faster); when none is, the fastest."""
    within = [r for r in results if r["query_ms"] <= max_query_ms]
    if within:
        return max(within, key=lambda r: (r["recall"], -r["query_ms"]))
    return min(results, key=lambda r: r["query_ms"])


def shortlist(n: int, d: int, index_budget: int, max_query_ms: float, k_lists: int | None = None,
              id_bytes: int = 0) -> list:
    """Up to :data:`MAX_COMPARED` plans that fit ``index_budget`` bytes, best recall first, leaving out those
    the model puts at over ``SLACK * max_query_ms`` (unless that leaves none)."""
    plans = fitting(n, d, index_budget, id_bytes, k_lists)
    near = [p for p in plans if p.query_ms <= SLACK * max_query_ms]
    return (near or sorted(plans, key=lambda p: p.query_ms))[:MAX_COMPARED]


def _time_scale(factory: str, n_small: int, n: int, d: int, k_lists: int):
    """``value -> factor`` that turns a query's time on ``n_small`` rows into one on ``n`` rows."""
    def scale(value: int) -> float:
        frac = value / k_lists if "IVF" in factory else 1 / 32
        return estimate_query_ms(factory, n, d, frac) / max(estimate_query_ms(factory, n_small, d, frac), 1e-9)

    return scale


def compare_candidates(ff, config, index_budget: int, id_bytes: int = 0, make_index=None) -> tuple[str, list[dict]]:
    """``(factory, results)``: the chosen kind for ``ff`` under ``config.max_query_ms``, and one result per
    compared candidate (``factory``, ``bytes``, ``recall``, ``query_ms``, ``parameter``, ...), as measured.
    ``make_index(factory, d, metric)`` makes an empty index (default: the builder's, as :mod:`indexes.build`
    passes it; this module sits below the builder)."""
    import faiss

    if make_index is None:
        def make_index(factory, d, metric):
            from indexes.exact import faiss_metric

            return faiss.index_factory(d, factory, faiss_metric(metric))

    n, d = len(ff), ff.dim
    m = min(config.train_size, train_rows(d, config))
    sampled = n > 2 * m
    rows = sample_rows(n, m, config.seed) if sampled else np.arange(n)
    xb = ff.load(rows)
    if config.normalize:
        normalize_rows(xb)
    k_lists = n_lists(min(n, m))
    plans = shortlist(n, d, index_budget, config.max_query_ms, k_lists, id_bytes)
    queries = sample_rows(len(xb), min(config.calibration_queries, len(xb) - 1), config.seed + 1)
    calib = Calibration(xb[queries], queries, config.metric, len(xb))
    calib.ground_truth([xb])
    results = []
    for p in plans:
        t0 = time.perf_counter()
        index = make_index(p.factory, d, config.metric)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is not None:
                ivf.cp.niter = config.kmeans_iters
            index.train(xb)
        index.add(xb)
        if refine_stage(index) is not None:
            set_search_params(index, {"k_factor": REFINE_CANDIDATES})
        if tunable_parameter(index) is None:
            report = {"parameter": None, "value": None, f"recall@{calib.k}": calib.recall(index),
                      "query_ms": calib.query_ms(index)}
            scale = 1.0 if not sampled else n / len(xb)
            report["query_ms"] *= scale
        else:
            scale_of = _time_scale(p.factory, len(xb), n, d, k_lists) if sampled else (lambda v: 1.0)
            # the highest recall within the budget: aim at 1.0, fall back to the largest value fast enough
            _, report = calib.tune(index, 1.0, config.max_query_ms, ms_scale=scale_of, warn=False)
        results.append({
            "factory": p.factory, "bytes": p.bytes, "modelled_ms": p.query_ms,
            "recall": round(float(report[f"recall@{calib.k}"]), 4), "query_ms": round(float(report["query_ms"]), 3),
            "parameter": None if report["parameter"] is None else f"{report['parameter']}={report['value']}",
            "rows": len(xb), "seconds": round(time.perf_counter() - t0, 2),
        })
        log.info("candidate %s: recall@%d %.3f at %s, %.2f ms a query%s", p.factory, calib.k, results[-1]["recall"],
                 results[-1]["parameter"], results[-1]["query_ms"], f" (projected to {n} rows)" if sampled else "")
        del index
    best = pick(results, config.max_query_ms)
    factory = best["factory"]
    if sampled and "IVF" in factory:  # the full build trains on the same number of rows: keep the list count
        factory = re.sub(r"IVF\d+", f"IVF{k_lists}", factory, count=1)
    for r in results:
        r["chosen"] = r is best
    return factory, results
