"""``cli.py benchmark search``: retrieval quality through an index, index speed and scaling, a cold ``cli.py search``.

Quality: text -> image retrieval measured through an index, per split, with the evaluation's metric code.

For each caption the rank of its ground-truth image comes from the index's answer list: the number of
returned images scoring at least as well as the ground truth (ties count against it, as in
:func:`retrieval.metrics.ranks`). With a ``Flat`` index and ``k`` = all images these ranks are exactly the
brute-force ones; an approximate index that does not return the ground truth gives it the worst rank, N.
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

from extract.core.errors import UserError
from extract.core.files import atomic_path
from indexes.bench.speed import scaling_benchmark, speed_benchmark
from indexes.build import ArrayFeatures, IndexConfig, build_index, normalize_rows
from indexes.search import search
from retrieval.metrics import format_table

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
        table = {name: s["index"] for name, s in q["splits"].items()}
        table["average"] = q["average"]
        lines += [f"quality through {q['factory']} ({q['metric']}); equal to exact evaluation: "
                  + ", ".join(f"{n} {'yes' if s['agree'] else 'NO'}" for n, s in q["splits"].items()), format_table(table), ""]
    cols = ["factory", "n", "param", "build_s", "index_mib", "recall@10", "qps", "p50_ms", "p99_ms", "raw_p50_ms", "layer_ratio"]
    extra = ["estimated_mib", "ids_mib", "peak_rss_mib", "budget_mib", "build_threads", "exact_batch_qps"]
    for title, rows in (("speed", (report.get("speed") or {}).get("rows")), ("scaling", report.get("scaling"))):
        if rows:
            names = cols + (extra if title == "scaling" else [])
            cells = [names] + [[str(r.get(c, "-")) for c in names] for r in rows]
            widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
            lines.append(title + (f" (exact batch QPS {report['speed']['exact_batch_qps']})" if title == "speed" else ""))
            lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells] + [""]
    for row in report.get("scaling") or []:
        if row.get("candidates"):
            lines.append(f"candidates compared at N={row['n']:,} (on {row['candidates'][0]['rows']:,} rows, times projected to N):")
            lines += [f"  {'*' if c['chosen'] else ' '} {c['factory']:<48} {c['bytes'] / 2**20:>9,.0f} MiB  recall@10 "
                      f"{c['recall']:.3f} at {c['parameter']}  {c['query_ms']:.2f} ms" for c in row["candidates"]]
            lines.append("")
    for p in report.get("paper") or []:
        lines.append(f"paper figure, {p['n']:,} rows, {p['factory']}: index {p['index_gib']:,} GiB, RAM {p['ram_gib']:,} GiB, "
                     f"build {p['build_h']} h on {p['nodes']} nodes (training {p['train_h']} h), {p['query_ms']} ms a query "
                     f"(from {p['from']})")
    if report.get("paper"):
        lines.append("")
    spec = report.get("spectrum")
    if spec:
        keys = list(spec["synthetic"])
        lines.append(f"PCA spectrum, synthetic vs {spec['real_path']} ({spec['real_n']} real rows):")
        lines.append("  " + "  ".join(f"{k}" for k in ["which"] + keys))
        for which in ("real", "synthetic"):
            lines.append("  " + "  ".join([which] + [str(spec[which][k]) for k in keys]))
        lines.append("")
    cold = report.get("cold")
    if cold:
        lines.append(f"cold `cli.py search`: {cold['wall_s']:.2f} s wall (median of {cold['runs']}); "
                     + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cold["stages_s"].items()))
    return "\n".join(lines).rstrip()


def spectrum_comparison(real: str | os.PathLike, rows: int = 2000) -> dict:
    """PCA-spectrum statistics of up to ``rows`` rows of a real feature file and of as many synthetic vectors
    of the same dimension (:func:`indexes.bench.synthetic.spectrum_summary`)."""
    from extract.store import open_features
    from indexes.bench.synthetic import clustered, spectrum_summary

    ff = open_features(real)
    n = min(rows, len(ff))
    xr = ff.load(np.arange(n))
    return {"real_path": str(real), "real_n": n, "real": spectrum_summary(xr),
            "synthetic": spectrum_summary(clustered(n, ff.dim, seed=0))}


def run(quality_args: dict | None = None, speed_args: dict | None = None, scaling_args: dict | None = None,
        cold_args: dict | None = None, plot_path: str | os.PathLike | None = None,
        real_features: str | os.PathLike | None = None) -> dict:
    """Run the requested parts (each a dict of keyword arguments, or None to skip) and draw the plot."""
    report: dict = {}
    if real_features:
        report["spectrum"] = spectrum_comparison(real_features)
    if quality_args:
        report["quality"] = quality_benchmark(**quality_args)
    if speed_args:
        report["speed"] = speed_benchmark(**speed_args)
    if scaling_args:
        report["scaling"] = scaling_benchmark(**scaling_args)
        from indexes.bench.paper import paper_figure

        largest = max(report["scaling"], key=lambda r: r["n"])
        report["paper"] = paper_figure(largest, memory_budget=64 << 30)
    if cold_args:
        report["cold"] = cold_search(**cold_args)
    if plot_path and (report.get("quality") or report.get("speed")):
        report["plot"] = str(plot(plot_path, report.get("quality"), report.get("speed")))
    return report

