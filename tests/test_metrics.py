import numpy as np
import pytest

from extract.core.errors import UserError
from retrieval.metrics import format_table, rank_histogram, rank_metrics, ranks, scores


def _brute_ranks(xq, xb, gt, metric):
    """Reference: full argsort per query, ground truth placed after every item with an equal score."""
    out = []
    for i, q in enumerate(xq.astype(np.float64)):
        if metric == "cosine":
            qn = q / np.linalg.norm(q) if np.linalg.norm(q) else q
            bn = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-30)
            s = bn @ qn
        else:
            s = -np.sum((xb - q) ** 2, axis=1)
        # sort by (-score, is_gt) so equal scores put the ground truth last
        order = sorted(range(len(xb)), key=lambda j: (-s[j], j == gt[i]))
        out.append(order.index(gt[i]) + 1)
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("block", [1, 7, None])
def test_ranks_match_brute_force(metric, block):
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((40, 6)).astype(np.float32)
    gt = rng.integers(0, 40, size=33)
    xq = xb[gt] + 0.8 * rng.standard_normal((33, 6)).astype(np.float32)
    got = ranks(xq, xb, gt, metric=metric, block=block)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, _brute_ranks(xq, xb, gt, metric))


def test_ties_are_pessimistic():
    xb = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], np.float32)  # rows 0, 1, 3 identical
    xq = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    got = ranks(xq, xb, [0, 3, 2], metric="cosine")
    np.testing.assert_array_equal(got, [3, 3, 1])
    np.testing.assert_array_equal(got, _brute_ranks(xq, xb, np.array([0, 3, 2]), "cosine"))
    # a constant model (all-zero query) gets the worst rank, not the best
    np.testing.assert_array_equal(ranks(np.zeros((1, 2), np.float32), xb, [2]), [4])


def test_scores_l2_orders_like_distance():
    rng = np.random.default_rng(2)
    xq, xb = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    d = ((xq[:, None] - xb[None]) ** 2).sum(-1)
    np.testing.assert_allclose(scores(xq, xb, "l2"), -d, rtol=1e-5, atol=1e-5)


def test_rank_metrics_reference():
    r = np.array([1, 2, 5, 10, 11, 3])
    m = rank_metrics(r)
    assert m["recall@1"] == pytest.approx(1 / 6)
    assert m["recall@5"] == pytest.approx(4 / 6)
    assert m["recall@10"] == pytest.approx(5 / 6)
    assert m["mrr"] == pytest.approx(np.mean([1, 1 / 2, 1 / 5, 1 / 10, 1 / 11, 1 / 3]))
    assert m["mean_rank"] == pytest.approx(32 / 6)
    assert m["median_rank"] == 4.0
    assert m["n"] == 6
    assert "R@5" in format_table({"test": m})


def test_empty_split_is_a_user_error_not_nan():
    with pytest.raises(UserError, match="empty"):
        rank_metrics(np.zeros(0, np.int64))
    assert ranks(np.zeros((0, 3)), np.ones((4, 3)), np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(UserError, match="no items"):
        ranks(np.ones((2, 3)), np.zeros((0, 3)), [0, 0])


def test_histogram_counts_every_rank():
    counts, edges = rank_histogram(np.array([1, 1, 2, 50, 100]), n_items=100, bins=10)
    assert counts.sum() == 5 and counts[0] == 3 and counts[-1] == 1
    assert edges[0] == 0.5 and edges[-1] == 100.5
