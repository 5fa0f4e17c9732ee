"""Multi-label metrics against explicit loops over their definitions; threshold tuning; top-k."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from retrieval.genre.metrics import (
    apply_thresholds,
    multilabel_report,
    top_k,
    tune_thresholds,
)


def _f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


def _reference(Y, P):
    """Loops over cells, rows and columns straight from the definitions."""
    n, g = len(Y), len(Y[0])
    TP = FP = FN = 0
    per = []
    for j in range(g):
        tp = sum(1 for i in range(n) if Y[i][j] and P[i][j])
        fp = sum(1 for i in range(n) if not Y[i][j] and P[i][j])
        fn = sum(1 for i in range(n) if Y[i][j] and not P[i][j])
        TP, FP, FN = TP + tp, FP + fp, FN + fn
        per.append((tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0, _f1(tp, fp, fn), tp + fn))
    samples = []
    for i in range(n):
        inter = sum(1 for j in range(g) if Y[i][j] and P[i][j])
        size = sum(Y[i]) + sum(P[i])
        samples.append(2 * inter / size if size else 0.0)
    return {
        "micro_f1": _f1(TP, FP, FN),
        "macro_f1": sum(p[2] for p in per) / g,
        "samples_f1": sum(samples) / n,
        "subset_accuracy": sum(1 for i in range(n) if list(Y[i]) == list(P[i])) / n,
        "hamming_loss": sum(1 for i in range(n) for j in range(g) if Y[i][j] != P[i][j]) / (n * g),
        "per": per,
    }


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_brute_force_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    Y = (rng.random((23, 6)) < 0.3).astype(np.uint8)
    P = (rng.random((23, 6)) < 0.35).astype(np.uint8)
    Y[:, 5] = 0  # a genre without support: its F1 is 0, never NaN
    genres = list("abcdef")
    got = multilabel_report(Y, P, genres)
    ref = _reference(Y.tolist(), P.tolist())
    for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    for row, (p, r, f, s) in zip(got["per_genre"], ref["per"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p, r, f, s))
    from sklearn import metrics as skm

    assert got["micro_f1"] == pytest.approx(skm.f1_score(Y, P, average="micro", zero_division=0))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(Y, P, average="macro", zero_division=0))
    assert got["samples_f1"] == pytest.approx(skm.f1_score(Y, P, average="samples", zero_division=0))
    assert got["hamming_loss"] == pytest.approx(skm.hamming_loss(Y, P))
    assert got["subset_accuracy"] == pytest.approx(skm.accuracy_score(Y, P))
    assert any("f" in note for note in got["notes"])


def test_excluded_genre_leaves_macro_f1_and_is_noted():
    Y = np.array([[1, 0], [0, 0], [1, 0]])
    P = np.array([[1, 1], [0, 1], [1, 0]])
    got = multilabel_report(Y, P, ["Drama", "Western"], exclude=["Western"])
    assert got["macro_f1"] == 1.0
    assert "Western" in got["notes"][0] and "macro-F1" in got["notes"][0]
    assert got["per_genre"][1]["f1"] == 0.0


def test_empty_everything_is_zero_not_nan():
    got = multilabel_report(np.zeros((4, 3)), np.zeros((4, 3)), ["a", "b", "c"])
    values = [got[k] for k in ("micro_f1", "macro_f1", "samples_f1", "hamming_loss")]
    assert values == [0.0, 0.0, 0.0, 0.0] and not any(np.isnan(values))


def _best_f1_by_search(p, y):
    """Best F1 over every threshold in a fine grid and at every score (brute force)."""
    best = 0.0
    for t in sorted(set(p.tolist()) | set(np.linspace(0, 1, 101).tolist())):
        pred = p >= t
        tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
        best = max(best, _f1(tp, fp, fn))
    return best


def test_tuned_threshold_is_f1_optimal_on_a_hand_built_case():
    # scores and truth for one genre: the best cut keeps the top four (3 true, 1 false) -> F1 = 6/8 = 0.75
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    th = tune_thresholds(p[:, None], y[:, None])
    assert th[0] == pytest.approx(0.5)  # midway between 0.6 and 0.4
    pred = apply_thresholds(p[:, None], th)[:, 0].astype(bool)
    assert pred.tolist() == [True, True, True, True, False, False, False, False]
    tp = int((pred & y).sum())
    assert _f1(tp, int((pred & ~y).sum()), int((~pred & y).sum())) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(8))
def test_tuned_thresholds_reach_the_brute_force_best_f1(seed):
    rng = np.random.default_rng(seed)
    y = rng.random((40, 3)) < 0.3
    y[0] = True
    p = np.clip(0.3 * y + rng.random((40, 3)) * 0.7, 0, 1).round(2)  # rounded: ties happen
    th = tune_thresholds(p, y)
    pred = apply_thresholds(p, th).astype(bool)
    for j in range(3):
        got = _f1(int((pred[:, j] & y[:, j]).sum()), int((pred[:, j] & ~y[:, j]).sum()), int((~pred[:, j] & y[:, j]).sum()))
        assert got == pytest.approx(_best_f1_by_search(p[:, j], y[:, j]))


def test_thresholds_default_without_positives_or_when_skipped():
    p = np.array([[0.9, 0.2], [0.1, 0.8]])
    y = np.array([[1, 0], [0, 0]])
    th = tune_thresholds(p, y, skip=np.array([True, False]))
    assert th.tolist() == [0.5, 0.5]


def test_top_k_sets_the_k_most_probable():
    p = np.array([[0.1, 0.5, 0.3, 0.9], [0.4, 0.2, 0.8, 0.1]])
    got = top_k(p, 2)
    for row, probs in zip(got, p):
        best = set(np.argsort(-probs)[:2])
        assert {j for j, v in enumerate(row) if v} == best
    assert top_k(p, 10).sum() == 8
    assert list(itertools.chain(*top_k(p, 0))) == [0] * 8


@pytest.mark.parametrize("seed", range(3))
def test_micro_f1_helper_matches_the_cell_loop(seed):
    from retrieval.genre.metrics import micro_f1

    rng = np.random.default_rng(seed)
    Y = (rng.random((17, 4)) < 0.4).astype(np.uint8)
    P = (rng.random((17, 4)) < 0.4).astype(np.uint8)
    assert micro_f1(Y, P) == pytest.approx(_reference(Y.tolist(), P.tolist())["micro_f1"], abs=1e-12)
    assert micro_f1(np.zeros((3, 2)), np.zeros((3, 2))) == 0.0
