"""Index speed benchmarks: recall and latency of index kinds, and scaling with N.

Speed figures come with their baselines from the same run: recall@10 is against exact (brute-force)
search over the same vectors, and the search layer's single-query latency is compared with calling
``index.search`` directly on the same index and queries (``layer_ratio`` = raw time / layer time, 1.0 means
no overhead). Data is synthetic and clustered (:mod:`indexes.bench.synthetic`), generated in blocks, so 1M x 2048
never sits in memory as float32.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from extract.core.errors import UserError
from indexes import exact
from indexes.bench.synthetic import SyntheticFeatures, lower_priority
from indexes.build import (
    IndexConfig,
    build_index,
    normalize_rows,
    recall_at,
)
from indexes.params import coupled_params, set_search_params, tunable_parameter
from indexes.search import search, single_threaded_for

log = logging.getLogger(__name__)


def index_bytes(index) -> int:
    """Size of the index as written to disk, which is what it takes in memory once loaded."""
    import tempfile

    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def exact_knn(src, xq: np.ndarray, k: int = 10, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray, float]:
    """Brute-force top-``k`` of ``xq`` over every block of ``src``: ``(D, I, seconds)`` (block generation excluded)."""
    gen0 = getattr(src, "gen_seconds", 0.0)

    def blocks():
        for _, xb in src.iter_blocks(65536):
            yield normalize_rows(xb) if metric == "cosine" else xb

    t0 = time.perf_counter()
    D, I = exact.exact_knn(xq, blocks(), k, metric)
    seconds = time.perf_counter() - t0 - (getattr(src, "gen_seconds", 0.0) - gen0)
    return D, I, seconds


def _paired_latencies(index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Single-query seconds of raw ``index.search`` and of :func:`search`, interleaved query by query
    (alternating which goes first), single-threaded as a one-query CLI search runs."""
    raw, ours = np.empty(len(xq)), np.empty(len(xq))
    with single_threaded_for(1):
        for i in range(len(xq)):
            q = xq[i : i + 1]
            for which in ((0, 1) if i % 2 else (1, 0)):
                t0 = time.perf_counter()
                if which == 0:
                    index.search(q, k)
                else:
                    search(index, q, k)
                (raw if which == 0 else ours)[i] = time.perf_counter() - t0
    return raw, ours


def _operating_point(index, xq, gt, k, n_single) -> dict:
    """Recall@k, batch QPS (all threads), single-query p50/p99 in ms at the index's current search parameters."""
    t0 = time.perf_counter()
    _, I = search(index, xq, k)
    batch = time.perf_counter() - t0
    raw, ours = _paired_latencies(index, xq[:n_single], k)
    return {
        "recall@10": round(recall_at(I, gt, k), 4),
        "qps": round(len(xq) / batch, 1),
        "p50_ms": round(float(np.median(ours)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(ours, 99)) * 1e3, 3),
        "raw_p50_ms": round(float(np.median(raw)) * 1e3, 3),
        "layer_ratio": round(float(np.median(raw) / np.median(ours)), 3),
    }


def bench_kind(src, factory: str, xq: np.ndarray, gt: np.ndarray, k: int = 10, target: float = 0.95,
               n_single: int = 200, train_size: int = 65536, quiet: bool = True, memory_budget: int | None = None,
               max_query_ms: float | None = None) -> dict:
    """Build ``factory`` over ``src``, sweep its search parameter, report the cheapest point reaching ``target``.

    With ``factory="auto"`` the build chooses under ``memory_budget`` and ``max_query_ms`` (comparing
    candidates by measurement under a latency budget); the row then carries the compared ``candidates``."""
    gen0 = getattr(src, "gen_seconds", 0.0)
    budgets = {"memory_budget": memory_budget} if memory_budget else {}
    built = build_index(src, IndexConfig(factory=factory, train_size=train_size, target_recall=target,
                                         calibration_queries=100, max_query_ms=max_query_ms, **budgets), quiet=quiet)
    row = {"factory": built.meta["factory"], "n": len(src), "d": src.dim, "build_s": round(built.meta["build_seconds"] - (getattr(src, "gen_seconds", 0.0) - gen0), 2),
           "index_mib": round(index_bytes(built.index) / 2**20, 1),
           "ids_mib": round(built.meta["estimated_memory"]["ids"] / 2**20, 1),
           "train_s": built.meta["train_seconds"], "train_rows": built.meta["train_size"],
           "build_threads": _threads()}
    if built.meta.get("candidates"):
        row["candidates"] = built.meta["candidates"]
    knob = tunable_parameter(built.index)
    sweep = []
    if knob is None:
        sweep.append({"param": None, **_operating_point(built.index, xq, gt, k, n_single)})
    else:
        name, values = knob
        for value in values:
            set_search_params(built.index, coupled_params(name, value, built.index))
            point = _operating_point(built.index, xq, gt, k, min(n_single, 50))
            sweep.append({"param": f"{name}={value}", **point})
            plateau = len(sweep) >= 3 and sweep[-1]["recall@10"] - sweep[-3]["recall@10"] < 0.002
            if point["recall@10"] >= 0.999 or plateau:  # exact enough, or a lossy code has hit its ceiling
                break
    ok = [p for p in sweep if p["recall@10"] >= target] or sweep[-1:]
    best = min(ok, key=lambda p: p["p50_ms"])
    if knob is not None:  # re-measure the chosen point with the full number of single queries
        set_search_params(built.index, coupled_params(knob[0], int(best["param"].split("=")[1]), built.index))
        best = {"param": best["param"], **_operating_point(built.index, xq, gt, k, n_single)}
    row.update(best)
    log.info("result: %s", json.dumps(row))
    row["sweep"] = sweep
    return row


def _threads() -> int:
    import faiss

    return int(faiss.omp_get_max_threads())


def default_kinds(n: int, d: int) -> list[str]:
    """The kinds compared by default: exact Flat, HNSW32, and IVF with Flat, SQ8 and PQ (d/8 bytes) lists."""
    from indexes.build import n_lists

    k = n_lists(n)
    kinds = ["Flat", "HNSW32", f"IVF{k},Flat", f"IVF{k},SQ8"]
    if d % 8 == 0 and d // 8 <= 256:
        kinds.append(f"IVF{k},PQ{d // 8}")
    return kinds


def speed_benchmark(n: int, d: int, factories: Sequence[str], nq: int = 1000, seed: int = 0, target: float = 0.95,
                    n_single: int = 200, train_size: int = 65536, quiet: bool = True) -> dict:
    """Every index kind over the same ``n x d`` clustered vectors and queries; exact search is the baseline."""
    src = SyntheticFeatures(n, d, seed)
    xq = normalize_rows(src.queries(nq))
    _, gt, exact_s = exact_knn(src, xq, 10)
    rows = []
    for factory in factories:
        log.info("benchmarking %s on %d x %d", factory, n, d)
        rows.append(bench_kind(src, factory, xq, gt, 10, target, n_single, train_size, quiet))
    return {"n": n, "d": d, "nq": nq, "exact_batch_qps": round(nq / exact_s, 1), "rows": rows}


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB): ``VmHWM``, since the last :func:`reset_peak_rss`."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def reset_peak_rss() -> None:
    """Start the peak over from the current RSS (Linux ``/proc/self/clear_refs``), e.g. in a forked child."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        log.debug("cannot reset the peak RSS; the figure includes the parent's memory at fork")


def _in_child(fn, *args):
    """Run ``fn(*args)`` in a forked process and return ``(result, its peak RSS in MiB)``, so each
    measurement's peak memory is its own."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def work():
        reset_peak_rss()
        try:
            child.send((fn(*args), peak_rss_mib(), None))
        except (UserError, RuntimeError, MemoryError, ValueError) as exc:  # reported to the parent
            child.send((None, peak_rss_mib(), f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=work)
    proc.start()
    result, rss, error = parent.recv()
    proc.join()
    if error:
        raise RuntimeError(error)
    return result, rss


def _scaling_row(n, d, nq, seed, target, memory_budget, train_size, kind, max_query_ms, quiet, cache_dir) -> dict:
    from indexes.build import n_lists
    from indexes.choose import estimate_bytes

    src = SyntheticFeatures(n, d, seed, cache_dir=cache_dir)
    xq = normalize_rows(src.queries(nq))
    with lower_priority():
        _, gt, exact_s = exact_knn(src, xq, 10)
    factory = "auto" if kind == "auto" else kind.format(nlist=n_lists(n))
    log.info("scaling: %s on %d x %d", factory, n, d)
    row = bench_kind(src, factory, xq, gt, 10, target, min(nq, 200), train_size, quiet, memory_budget, max_query_ms)
    row["exact_batch_qps"] = round(nq / exact_s, 1)
    row["estimated_mib"] = round(estimate_bytes(row["factory"], n, d)["total"] / 2**20, 1)
    row["budget_mib"] = round(memory_budget / 2**20, 1)
    return row


def scaling_benchmark(sizes: Sequence[int], d: int, nq: int = 200, seed: int = 0, target: float = 0.95,
                      memory_budget: int = 2 << 30, train_size: int = 65536, kind: str = "auto",
                      max_query_ms: float | None = None, quiet: bool = True,
                      cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """For each N (each in its own process, for its peak RSS): the ``auto`` index under ``memory_budget`` and
    ``max_query_ms``, or ``kind``, a factory string where ``{nlist}`` stands for the guideline's list count.
    Recall is on fresh queries (not stored vectors) against exact search. With ``cache_dir`` the vectors
    are generated once into a ``.npy`` file there and read back as a feature file is (reads count as build time)."""
    rows = []
    for n in sizes:
        row, rss = _in_child(_scaling_row, n, d, nq, seed, target, memory_budget, train_size, kind, max_query_ms, quiet,
                             cache_dir)
        row["peak_rss_mib"] = round(rss, 1)
        rows.append(row)
    return rows
