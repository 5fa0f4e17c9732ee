"""The measured auto choice under a latency budget, and the ids a collection keeps in memory."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

from extract.core.ids import PackedIds, packed_bytes
from extract.store import open_features, write_features
from indexes.bench.synthetic import clustered
from indexes.build import ArrayFeatures, IndexConfig, build_index, make_index
from indexes.choose import ids_bytes
from indexes.compare import compare_candidates, pick


def test_pick_is_the_best_recall_within_the_budget_else_the_fastest():
    results = [
        {"factory": "IVF,Flat", "recall": 0.99, "query_ms": 9.0},
        {"factory": "IVF,SQ8", "recall": 0.95, "query_ms": 4.0},
        {"factory": "PQ,Refine", "recall": 0.93, "query_ms": 1.0},
        {"factory": "PQ", "recall": 0.95, "query_ms": 2.0},
    ]
    assert pick(results, 5.0)["factory"] == "PQ"  # 0.95 twice within 5 ms: the faster
    assert pick(results, 10.0)["factory"] == "IVF,Flat"
    assert pick(results, 1.5)["factory"] == "PQ,Refine"
    assert pick(results, 0.5)["factory"] == "PQ,Refine"  # none fast enough: the fastest


def _kind(factory: str) -> str:
    return re.sub(r"IVF\d+", "IVF", factory)  # the list count follows the training rows


def _features(n=3000, d=32):
    return ArrayFeatures(clustered(n, d, seed=5))


def test_compared_candidates_are_measured_on_held_out_queries():
    ff = _features()
    config = IndexConfig(factory="auto", train_size=1000, calibration_queries=100, max_query_ms=1e6,
                         memory_budget=1 << 30)
    factory, results = compare_candidates(ff, config, 1 << 30, 0, make_index)
    assert len(results) == 3 and sum(r["chosen"] for r in results) == 1
    by = {r["factory"]: r for r in results}
    assert by["Flat"]["recall"] == 1.0  # exact search finds the exact answer
    assert any("IVF" in f for f in by)
    best = max(r["recall"] for r in results)
    chosen = next(r for r in results if r["chosen"])
    assert chosen["recall"] == best and _kind(factory) == _kind(chosen["factory"])
    _, slow = compare_candidates(ff, IndexConfig(factory="auto", train_size=1000, calibration_queries=100,
                                                 max_query_ms=1e-9), 1 << 30, 0, make_index)
    chosen = next(r for r in slow if r["chosen"])
    assert chosen["query_ms"] == min(r["query_ms"] for r in slow)


def test_a_build_under_a_latency_budget_records_the_compared_candidates(monkeypatch):
    from indexes import build

    monkeypatch.setattr(build, "FLAT_MAX_N", 1000)  # compare at test size
    built = build_index(_features(), IndexConfig(factory="auto", train_size=1000, calibration_queries=100,
                                                 max_query_ms=1e6), quiet=True)
    cands = built.meta["candidates"]
    chosen = next(c for c in cands if c["chosen"])
    assert _kind(built.meta["factory"]) == _kind(chosen["factory"])
    assert {"factory", "bytes", "recall", "query_ms"} <= set(chosen)
    assert built.meta["estimated_memory"]["ids"] == ids_bytes(_features())


def test_packed_ids_behave_as_the_list():
    ids = ["a.jpg", "sub/é.jpg", "", "x" * 300, "b.jpg"]
    p = PackedIds.from_strings(ids)
    assert list(p) == ids and p == ids and len(p) == 5 and p[1] == "sub/é.jpg" and p[-1] == "b.jpg"
    assert p[1:4] == ids[1:4] and p.row("x" * 300) == 3 and p.row("") == 2 and p.row("a") is None
    assert "b.jpg" in p and "c.jpg" not in p
    with pytest.raises(IndexError):
        p[5]
    both = PackedIds.concat([p, PackedIds.from_strings(["c.jpg", "a.jpg"])])
    assert list(both) == ids + ["c.jpg", "a.jpg"] and both.row("c.jpg") == 5 and both.row("a.jpg") == 0


def test_id_memory_estimate_matches_what_loading_holds(tmp_path):
    n = 20_000
    ids = [f"posters/{i:07d}-{'x' * (i % 23)}.jpg" for i in range(n)]
    path = tmp_path / "f.h5"
    write_features(path, ids, np.zeros((n, 4), np.float32), {"model": "resnet18"})
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ff = open_features(path)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert ff.ids == ids
    mean = sum(len(i.encode()) for i in ids) / n
    assert abs(packed_bytes(n, mean) - ff.ids.nbytes) <= 8
    assert abs(held - ff.ids.nbytes) <= 0.05 * ff.ids.nbytes + 64 * 1024  # the packed ids are what stays
    as_list = sum(len(i) + 49 + 8 for i in ids)  # a str object plus the list's pointer
    assert held < 0.6 * as_list
    assert abs(ids_bytes(ArrayFeatures(np.zeros((n, 4), np.float32), ids)) - ff.ids.nbytes) <= 0.02 * ff.ids.nbytes


def test_index_build_prints_the_candidates_and_a_second_build_keeps_the_measured_choice(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli import cli
    from indexes import build

    monkeypatch.setattr(build, "FLAT_MAX_N", 1000)
    path = tmp_path / "f.h5"
    write_features(path, [f"{i}.jpg" for i in range(3000)], clustered(3000, 32, seed=6), {"model": "resnet18"})
    args = ["index", "build", str(path), str(tmp_path / "ix"), "--max-query-ms", "1000", "--train-size", "1000", "-q"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "candidates compared on 1000 rows" in first.output and first.output.count(" MiB, recall@10 ") == 3
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "up to date" in again.output, again.output
