"""The auto choice: memory estimates against faiss's own written indexes, the budget rule, exact kNN."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from extract.core.errors import UserError
from indexes.bench.synthetic import clustered
from indexes.build import make_index
from indexes.choose import candidates, choose, estimate_bytes, plan
from indexes.exact import exact_knn, leave_one_out, recall_at


@pytest.mark.parametrize("factory", [
    "Flat", "HNSW32", "IVF32,Flat", "IVF32_HNSW32,SQ8", "IVF32,PQ16", "IVF32,PQ32x4fs",
    "PCAR32,IVF32_HNSW32,PQ16x4fs,Refine(SQ8)", "PCAR32,IVF32,PQ16x4fs,RFlat",
])
def test_memory_estimate_matches_the_written_index(factory):
    n, d = 3000, 128
    xb = clustered(n, d, seed=4)
    index = make_index(factory, d, "ip")  # as the builder makes it (no polysemous training)
    index.train(xb)
    index.add(xb)
    actual = faiss.serialize_index(index).nbytes
    est = estimate_bytes(factory, n, d)
    assert abs(est["total"] - actual) <= 0.1 * actual + 4096, (factory, est, actual)
    if "IVF" in factory:
        assert est["ids"] == 8 * n and est["coarse_quantizer"] >= 32 * (32 if "PCAR" in factory or "OPQ" in factory else d) * 4


def test_choice_is_the_first_candidate_within_both_budgets():
    n, d = 1_000_000, 2048
    plans = [plan(f, n, d) for f in candidates(n, d)]
    for budget in (16 << 30, 4 << 30, 1 << 30, 200 << 20):
        got = choose(n, d, budget)
        first = next(p for p in plans if p.bytes <= budget)
        assert got == first and got.bytes <= budget
        assert all(p.bytes > budget for p in plans[: plans.index(first)])
    fast = choose(n, d, 16 << 30, max_query_ms=5)
    assert fast.query_ms <= 5 and all(p.query_ms > 5 for p in plans[: plans.index(fast)] if p.bytes <= 16 << 30)
    assert "Refine" in fast.factory or "x4fs" in fast.factory
    with pytest.raises(UserError, match="raise --memory-budget"):
        choose(n, d, 1 << 20)


def test_exact_knn_over_blocks_equals_brute_force():
    rng = np.random.default_rng(0)
    xb = rng.random((1000, 8), dtype=np.float32)
    xq = rng.random((7, 8), dtype=np.float32)
    _, I = exact_knn(xq, (xb[i : i + 300] for i in range(0, 1000, 300)), 5, "l2")
    ref = ((xq[:, None] - xb[None]) ** 2).sum(-1)
    assert np.array_equal(I, np.argsort(ref, axis=1, kind="stable")[:, :5])
    _, I = exact_knn(xq, iter([xb[:3]]), 5, "ip")  # fewer rows than k: empty slots are -1
    assert (I[:, 3:] == -1).all() and set(I[0, :3]) == {0, 1, 2}


def test_leave_one_out_and_recall():
    I = np.array([[4, 1, 2, 3], [0, 5, 1, 2]])
    assert leave_one_out(I, np.array([4, 1]), 3).tolist() == [[1, 2, 3], [0, 5, 2]]
    assert recall_at(np.array([[1, 2, 9]]), np.array([[1, 2, 3]]), 3) == pytest.approx(2 / 3)
    assert recall_at(np.array([[1, -1]]), np.array([[1, -1]]), 2) == 1.0  # one true neighbour, found
