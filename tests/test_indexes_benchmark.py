"""Benchmark code paths: Flat-index quality equals the exact evaluation; the speed/scaling rows are sane."""

from __future__ import annotations

import numpy as np
import pytest

from indexes.bench.speed import bench_kind, exact_knn, speed_benchmark
from indexes.bench.synthetic import SyntheticFeatures
from indexes.build import ArrayFeatures, IndexConfig, build_index, normalize_rows
from retrieval.bench.search import format_report, plot, ranks_via_index, split_quality
from retrieval.metrics import rank_metrics, ranks


class _LinearEncoder:
    """Text i -> a noisy copy of image gt[i]'s vector: an encoder with a known, imperfect answer."""

    def __init__(self, xb, gt, metric, noise, seed=0):
        rng = np.random.default_rng(seed)
        self.metric = metric
        self.table = {f"caption {i}": xb[g] + noise * rng.standard_normal(xb.shape[1]).astype(np.float32)
                      for i, g in enumerate(gt)}

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_index_quality_equals_exact_evaluation(metric):
    rng = np.random.default_rng(3)
    xb = rng.random((120, 24), dtype=np.float32)
    gt = rng.integers(0, 120, size=300)
    enc = _LinearEncoder(xb, gt, metric, noise=0.35)
    texts = [f"caption {i}" for i in range(len(gt))]
    r_index, r_exact = split_quality(enc, xb, texts, gt, "Flat")
    assert np.array_equal(r_index, r_exact)
    assert rank_metrics(r_index) == rank_metrics(ranks(enc.encode(texts), xb, gt, metric))
    assert 1 < r_index.max() and r_index.min() == 1  # the planted noise makes some ranks worse than 1


def test_ranks_via_index_ties_and_missing():
    xb = np.array([[1, 0], [1, 0], [0, 1]], np.float32)  # rows 0 and 1 tie for the query [1, 0]
    built = build_index(ArrayFeatures(xb), IndexConfig(factory="Flat", metric="ip"), quiet=True)
    xq = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    r = ranks_via_index(built.index, xq, np.array([0, 1, 2]), "ip")
    assert r.tolist() == ranks(xq, xb, np.array([0, 1, 2]), "cosine").tolist() == [2, 2, 1]
    r_top1 = ranks_via_index(built.index, xq, np.array([2, 2, 0]), "ip", k=1)
    assert r_top1.tolist() == [3, 3, 3]  # not returned within k: the worst rank, N


def test_bench_rows_recall_and_layer_ratio_against_exact():
    src = SyntheticFeatures(3000, 32, seed=1, block=1000)
    xq = normalize_rows(src.queries(60))
    _, gt, _ = exact_knn(src, xq, 10)
    xb = normalize_rows(src.load())
    assert np.array_equal(gt, np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :10])
    flat = bench_kind(src, "Flat", xq, gt, n_single=20)
    assert flat["recall@10"] == 1.0 and flat["param"] is None and flat["index_mib"] > 3000 * 32 * 4 / 2**20
    ivf = bench_kind(src, "IVF16,Flat", xq, gt, target=0.9, n_single=20)
    assert ivf["recall@10"] >= 0.9 and ivf["param"].startswith("nprobe=")
    assert ivf["sweep"][0]["param"] == "nprobe=1"
    assert {"layer_ratio", "qps", "raw_p50_ms"} <= set(ivf)  # speed is printed by the benchmark, not asserted here


def test_speed_report_table_json_and_plot(tmp_path):
    report = {"speed": speed_benchmark(2000, 16, ["Flat", "IVF8,Flat"], nq=40, n_single=10)}
    text = format_report(report)
    assert "speed (exact batch QPS" in text and "IVF8,Flat" in text and "layer_ratio" in text
    png = plot(tmp_path / "p.png", None, report["speed"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
