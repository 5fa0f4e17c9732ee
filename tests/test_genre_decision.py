"""Decision rules: global/per-genre thresholds (shrunk by support) and top-k against brute force; a model on
imbalanced labels (a 60 % genre, 20 genres under 3 %) beats predicting the most frequent genres."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.genre.decision import (
    DecisionRule,
    at_least_one,
    choose_rule,
    global_threshold,
)
from retrieval.genre.metrics import tune_thresholds


def _micro(Y, P):
    tp = int((Y & P).sum())
    fp = int((~Y & P).sum())
    fn = int((Y & ~P).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_global_threshold_is_the_brute_force_best_with_at_least_one_genre():
    rng = np.random.default_rng(3)
    Y = rng.random((40, 5)) < 0.3
    probs = np.clip(Y * 0.3 + rng.random((40, 5)) * 0.7, 0, 1)
    best = -1.0
    for t in np.unique(probs):
        P = probs >= t
        for i in range(len(P)):  # at least one genre per movie, by hand
            if not P[i].any():
                P[i, int(np.argmax(probs[i]))] = True
        best = max(best, _micro(Y, P))
    t = global_threshold(probs, Y.astype(np.uint8))
    assert _micro(Y, at_least_one(probs >= t, probs).astype(bool)) == pytest.approx(best)
    flat = np.unique(probs)
    assert t == flat[0] or not np.isin(t, flat)  # a cut between two scores, not on one
    above, below = flat[flat >= t][0], flat[flat < t][-1] if t > flat[0] else None
    assert below is None or t == pytest.approx((above + below) / 2)


def test_at_least_one_switches_on_the_most_probable_genre_of_empty_rows_only():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.1, 0.8]])
    pred = at_least_one(np.array([[0, 0, 0], [1, 0, 1]]), probs)
    assert pred.tolist() == [[0, 1, 0], [1, 0, 1]]


def test_per_genre_thresholds_shrink_toward_the_global_one_by_support():
    rng = np.random.default_rng(0)
    n = 200
    Y = np.zeros((n, 3), np.uint8)
    Y[:100, 0] = 1
    Y[100:, 1] = 1
    Y[:2, 2] = 1  # two validation positives only
    probs = np.clip(0.6 * Y + 0.4 * rng.random((n, 3)), 0, 1)
    probs[:2, 2] = 0.95
    m = 10.0
    rule = choose_rule(probs, Y, min_support=m, rules=("thresholds",))
    t_global = global_threshold(probs, Y)
    best = tune_thresholds(probs, Y, default=t_global)
    support = Y.sum(axis=0)
    expected = (support * best + m * t_global) / (support + m)
    assert rule.rule == "thresholds"
    np.testing.assert_allclose(rule.thresholds, expected, rtol=1e-6)
    # the genre with 2 positives keeps 10/12 of the global threshold's weight
    assert abs(rule.thresholds[2] - t_global) == pytest.approx(abs(best[2] - t_global) * 2 / 12, rel=1e-5)


def test_top_k_is_chosen_when_every_movie_has_exactly_its_k_most_probable_genres():
    rng = np.random.default_rng(1)
    n, g = 150, 6
    scale = rng.uniform(0.05, 1.0, (n, 1))  # row scales differ: no single threshold separates the classes
    probs = rng.random((n, g)) * 0.5 * scale
    Y = np.zeros((n, g), np.uint8)
    for i in range(n):
        top = rng.choice(g, 2, replace=False)
        Y[i, top] = 1
        probs[i, top] = scale[i, 0] * rng.uniform(0.55, 1.0, 2)
    rule = choose_rule(probs, Y)
    assert (rule.rule, rule.k) == ("top-k", 2)
    assert rule.val_micro_f1 == pytest.approx(1.0)
    assert dict(rule.scores)["top-2"] == pytest.approx(1.0)
    assert (rule.apply(probs) == Y).all()
    again = DecisionRule.from_state(rule.state())
    assert (again.rule, again.k) == (rule.rule, rule.k) and (again.apply(probs) == rule.apply(probs)).all()


def _imbalanced(n: int, seed: int = 0):
    """A 60 % genre, a 30 % genre and 20 genres at 1-3 %; features carry each genre weakly."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.6, 0.35] + list(np.linspace(0.004, 0.011, 20)))
    Y = (rng.random((n, len(rates))) < rates).astype(np.uint8)
    empty = np.flatnonzero(Y.sum(axis=1) == 0)
    Y[empty, rng.integers(2, len(rates), len(empty))] = 1  # movies without a genre get one rare genre
    planted = rng.normal(size=(len(rates), 24))
    x = rng.normal(size=(n, 24)) * 2.0 + Y @ planted
    return Y, x.astype(np.float32)


def test_model_on_imbalanced_labels_beats_the_most_frequent_baseline(tmp_path):
    from extract.store import write_features
    from retrieval.genre.baselines import most_frequent
    from retrieval.genre.metrics import multilabel_report
    from retrieval.genre.train import GenreConfig, fit, prepare

    Y, x = _imbalanced(1200)
    genres = [f"g{j:02d}" for j in range(Y.shape[1])]
    assert Y[:, 0].mean() > 0.55 and (Y[:, 2:].mean(axis=0) < 0.03).all()
    rows = ["id,genres"] + [f"m{i},{'|'.join(g for g, y in zip(genres, Y[i]) if y)}" for i in range(len(Y))]
    labels = tmp_path / "movies.csv"
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8")
    feats = tmp_path / "posters.h5"
    write_features(feats, [f"m{i}.jpg" for i in range(len(Y))], x, {"model": "planted"})
    prep = prepare(labels, feats, val_fraction=0.15, test_fraction=0.25, seed=0)
    test, train = prep.rows("test"), prep.rows("train")
    Yt = prep.labels.Y[test]
    base = multilabel_report(Yt, most_frequent(prep.labels.Y[train], len(test)), prep.labels.genres)
    clf = fit(prep, GenreConfig(model="poster", hidden=32, epochs=40, batch_size=128, lr=3e-3, seed=0), device="cpu")
    pred = clf.decide(clf.predict_proba(prep.poster[test], None))
    got = multilabel_report(Yt, pred, prep.labels.genres)
    assert pred.sum(axis=1).min() >= 1  # every movie gets a genre
    assert pred.mean(axis=0).max() <= 1.0 and pred.sum() < 2.5 * Yt.sum()  # no "predict everything"
    assert got["micro_f1"] > base["micro_f1"] + 0.03, (got["micro_f1"], base["micro_f1"], clf.decision.describe())
