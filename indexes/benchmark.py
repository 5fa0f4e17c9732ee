"""Search benchmarks: speed and recall of index kinds, scaling with N, and a cold ``cli.py search``.

Speed figures come with their baselines from the same run: recall@10 is against exact (brute-force)
search over the same vectors, and the search layer's single-query latency is compared with calling
``index.search`` directly on the same index and queries (``layer_ratio`` = raw time / layer time, 1.0 means
no overhead). Data is synthetic and clustered (:mod:`indexes.synthetic`), generated in blocks, so 1M x 2048
never sits in memory as float32.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexes.build import (
    IndexConfig,
    build_index,
    normalize_rows,
    recall_at,
    set_search_params,
    tunable_parameter,
)
from indexes.search import search, single_threaded_for
from indexes.synthetic import SyntheticFeatures

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
    import faiss

    from indexes.build import faiss_metric

    heap = faiss.ResultHeap(len(xq), k, keep_max=metric != "l2")
    seconds = 0.0
    for start, xb in src.iter_blocks(65536):
        if metric == "cosine":
            normalize_rows(xb)
        t0 = time.perf_counter()
        D, I = faiss.knn(xq, xb, min(k, len(xb)), metric=faiss_metric(metric))
        heap.add_result(D, np.where(I >= 0, I + start, -1))
        seconds += time.perf_counter() - t0
    heap.finalize()
    return heap.D, heap.I, seconds


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
               n_single: int = 200, train_size: int = 65536, quiet: bool = True) -> dict:
    """Build ``factory`` over ``src``, sweep its search parameter, report the cheapest point reaching ``target``."""
    gen0 = getattr(src, "gen_seconds", 0.0)
    built = build_index(src, IndexConfig(factory=factory, train_size=train_size, target_recall=target,
                                         calibration_queries=100), quiet=quiet)
    row = {"factory": built.meta["factory"], "n": len(src), "d": src.dim, "build_s": round(built.meta["build_seconds"] - (getattr(src, "gen_seconds", 0.0) - gen0), 2),
           "index_mib": round(index_bytes(built.index) / 2**20, 1)}
    knob = tunable_parameter(built.index)
    sweep = []
    if knob is None:
        sweep.append({"param": None, **_operating_point(built.index, xq, gt, k, n_single)})
    else:
        name, values = knob
        for value in values:
            set_search_params(built.index, {name: value})
            point = _operating_point(built.index, xq, gt, k, min(n_single, 50))
            sweep.append({"param": f"{name}={value}", **point})
            plateau = len(sweep) >= 3 and sweep[-1]["recall@10"] - sweep[-3]["recall@10"] < 0.002
            if point["recall@10"] >= 0.999 or plateau:  # exact enough, or a lossy code has hit its ceiling
                break
    ok = [p for p in sweep if p["recall@10"] >= target] or sweep[-1:]
    best = min(ok, key=lambda p: p["p50_ms"])
    if knob is not None:  # re-measure the chosen point with the full number of single queries
        set_search_params(built.index, {knob[0]: int(best["param"].split("=")[1])})
        best = {"param": best["param"], **_operating_point(built.index, xq, gt, k, n_single)}
    row.update(best)
    log.info("result: %s", json.dumps(row))
    row["sweep"] = sweep
    return row


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


def scaling_benchmark(sizes: Sequence[int], d: int, nq: int = 200, seed: int = 0, target: float = 0.95,
                      memory_budget: int = 2 << 30, train_size: int = 65536, kind: str = "auto",
                      quiet: bool = True) -> list[dict]:
    """For each N: the ``auto`` index under ``memory_budget`` (so large N gets a compressed kind), or ``kind``,
    a factory string where ``{nlist}`` stands for the guideline's number of lists for that N."""
    from indexes.build import auto_factory, n_lists

    rows = []
    for n in sizes:
        src = SyntheticFeatures(n, d, seed)
        xq = normalize_rows(src.queries(nq))
        _, gt, exact_s = exact_knn(src, xq, 10)
        factory = auto_factory(n, d, memory_budget) if kind == "auto" else kind.format(nlist=n_lists(n))
        log.info("scaling: %s on %d x %d", factory, n, d)
        row = bench_kind(src, factory, xq, gt, 10, target, min(nq, 200), train_size, quiet)
        row["exact_batch_qps"] = round(nq / exact_s, 1)
        rows.append(row)
    return rows


def cold_search(query: str, index_dir: str | os.PathLike, model: str | os.PathLike, runs: int = 3) -> dict:
    """Wall time of fresh ``cli.py search`` processes, with the per-stage timings each one reports."""
    import importlib.util

    cli_path = importlib.util.find_spec("cli").origin
    walls, stages = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, cli_path, "search", query, "--index", str(index_dir), "--model", str(model),
                               "--json", "--timings"], capture_output=True, text=True, check=False)
        walls.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            from extract.errors import UserError

            raise UserError(f"cold search failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        stages.append(json.loads(proc.stdout)["timings"])
    keys = stages[0].keys()
    med = {k: round(float(np.median([s.get(k, 0.0) for s in stages])), 4) for k in keys}
    wall = float(np.median(walls))
    med["startup_and_cli"] = round(wall - med.get("total", 0.0), 4)
    return {"runs": runs, "wall_s": round(wall, 3), "stages_s": med}


def plot(out: str | os.PathLike, quality: dict | None = None, speed: dict | None = None) -> Path:
    """PNG: rank histogram per split (quality) and recall@10 vs p50 latency per index kind (speed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from extract.store import atomic_path

    panels = [p for p in (quality, speed) if p]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.2), squeeze=False)
    ax_iter = iter(axes[0])
    if quality:
        ax = next(ax_iter)
        for name, s in quality["splits"].items():
            r = np.asarray(s["ranks"])
            ax.hist(r, bins=np.arange(0.5, min(s["images"], 50) + 1.5), histtype="step", label=f"{name} (N={s['images']})")
        ax.set(xlabel="rank of the true image (1 = first; clipped at 50)", ylabel="captions", title=f"ranks through {quality['factory']}")
        ax.legend()
    if speed:
        ax = next(ax_iter)
        for row in speed["rows"]:
            pts = row["sweep"]
            ax.plot([p["p50_ms"] for p in pts], [p["recall@10"] for p in pts], marker="o", label=row["factory"])
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", xlabel="single-query p50 latency (ms)", ylabel="recall@10 vs exact",
               title=f"{speed['n']:,} x {speed['d']} clustered")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def format_report(report: dict) -> str:
    """Printable tables of a :func:`run` report."""
    lines = []
    q = report.get("quality")
    if q:
        from retrieval.metrics import format_table

        table = {name: s["index"] for name, s in q["splits"].items()}
        table["average"] = q["average"]
        lines += [f"quality through {q['factory']} ({q['metric']}); equal to exact evaluation: "
                  + ", ".join(f"{n} {'yes' if s['agree'] else 'NO'}" for n, s in q["splits"].items()), format_table(table), ""]
    cols = ["factory", "n", "param", "build_s", "index_mib", "recall@10", "qps", "p50_ms", "p99_ms", "raw_p50_ms", "layer_ratio"]
    for title, rows in (("speed", (report.get("speed") or {}).get("rows")), ("scaling", report.get("scaling"))):
        if rows:
            names = cols + (["exact_batch_qps"] if title == "scaling" else [])
            cells = [names] + [[str(r.get(c, "-")) for c in names] for r in rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
            lines.append(title + (f" (exact batch QPS {report['speed']['exact_batch_qps']})" if title == "speed" else ""))
            lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells] + [""]
    cold = report.get("cold")
    if cold:
        lines.append(f"cold `cli.py search`: {cold['wall_s']:.2f} s wall (median of {cold['runs']}); "
                     + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cold["stages_s"].items()))
    return "\n".join(lines).rstrip()


def run(quality_args: dict | None = None, speed_args: dict | None = None, scaling_args: dict | None = None,
        cold_args: dict | None = None, plot_path: str | os.PathLike | None = None) -> dict:
    """Run the requested parts (each a dict of keyword arguments, or None to skip) and draw the plot."""
    from indexes.quality import quality_benchmark

    report: dict = {}
    if quality_args:
        report["quality"] = quality_benchmark(**quality_args)
    if speed_args:
        report["speed"] = speed_benchmark(**speed_args)
    if scaling_args:
        report["scaling"] = scaling_benchmark(**scaling_args)
    if cold_args:
        report["cold"] = cold_search(**cold_args)
    if plot_path and (report.get("quality") or report.get("speed")):
        report["plot"] = str(plot(plot_path, report.get("quality"), report.get("speed")))
    return report

