"""From genre probabilities to decisions: the rule is chosen on validation, scored by cross-fitting.

Candidate rules, each giving every movie at least one genre:

* ``global``: one threshold for every genre (the one that maximises validation micro-F1);
* ``thresholds``: a threshold per genre, tuned on validation and shrunk toward the global one where the genre
  has few validation positives: ``t_j = (s_j * best_j + m * global) / (s_j + m)`` with ``s_j`` the genre's
  validation support and ``m = min_support``; a genre without validation positives keeps the global threshold;
* ``top-k``: the ``k`` most probable genres (``k = 1 .. max_k``).

A rule's validation score is its micro-F1 when its parameters are tuned on the other folds of the validation
set (``folds``-fold cross-fitting), so a rule with more parameters does not win by fitting the same movies it is
scored on. The chosen rule is then tuned on the whole validation set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.genre.metrics import micro_f1, tune_thresholds

RULES = ("global", "thresholds", "top-k")


def at_least_one(pred: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``pred`` with the most probable genre switched on in every row that predicts none."""
    pred = np.array(pred, dtype=np.uint8, copy=True)
    empty = ~pred.any(axis=1)
    if empty.any():
        pred[np.flatnonzero(empty), np.argmax(probs[empty], axis=1)] = 1
    return pred


def _top_k(probs: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, probs.shape[1]))
    out = np.zeros(probs.shape, np.uint8)
    np.put_along_axis(out, np.argsort(-probs, axis=1, kind="stable")[:, :k], 1, axis=1)
    return out


def global_threshold(probs: np.ndarray, Y: np.ndarray, n_candidates: int = 200) -> float:
    """The single threshold (with at least one genre per movie) that maximises micro-F1 on ``(probs, Y)``.

    Candidate cuts lie between consecutive distinct probabilities (midpoints, as per-genre thresholds do;
    the lowest score itself keeps every genre), never on a validation score: a movie scored exactly at the
    threshold would be decided by float rounding (another batch size or thread count).
    """
    flat = np.unique(np.asarray(probs, np.float64).ravel())
    cuts = np.r_[flat[:1], (flat[1:] + flat[:-1]) / 2.0]
    if cuts.size > n_candidates:
        cuts = cuts[np.unique(np.linspace(0, cuts.size - 1, n_candidates).round().astype(int))]
    best, best_t = -1.0, 0.5
    for t in cuts:
        score = micro_f1(Y, at_least_one(probs >= t, probs))
        if score > best + 1e-12 or (abs(score - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = score, float(t)
    return best_t


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities ``(n, G)`` become 0/1 decisions. ``thresholds`` is ``(G,) float32`` (unused by top-k)."""

    rule: str
    thresholds: np.ndarray
    k: int = 0
    val_micro_f1: float = 0.0
    scores: tuple = ()

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """``(n, G) uint8`` decisions; every movie gets at least one genre."""
        probs = np.asarray(probs)
        if self.rule == "top-k":
            return _top_k(probs, self.k)
        return at_least_one(probs >= self.thresholds[None, :], probs)

    def describe(self) -> str:
        name = f"top-{self.k}" if self.rule == "top-k" else self.rule
        tried = ", ".join(f"{r} {s:.3f}" for r, s in self.scores)
        return f"{name} (cross-fitted validation micro-F1 {self.val_micro_f1:.3f}; tried {tried})" if tried else name

    def state(self) -> dict:
        return {"rule": self.rule, "thresholds": [float(t) for t in self.thresholds], "k": int(self.k),
                "val_micro_f1": float(self.val_micro_f1), "scores": [[r, float(s)] for r, s in self.scores]}

    @classmethod
    def from_state(cls, state: dict) -> DecisionRule:
        return cls(state["rule"], np.asarray(state["thresholds"], np.float32), int(state.get("k", 0)),
                   float(state.get("val_micro_f1", 0.0)), tuple((r, float(s)) for r, s in state.get("scores", [])))


def _fit(rule: str, probs: np.ndarray, Y: np.ndarray, k: int, min_support: float, skip) -> np.ndarray:
    """Thresholds of ``rule`` tuned on ``(probs, Y)``: ``(G,) float32``."""
    g = probs.shape[1]
    if rule == "top-k":
        return np.full(g, 0.5, np.float32)
    t_global = global_threshold(probs, Y)
    if rule == "global":
        return np.full(g, t_global, np.float32)
    best = tune_thresholds(probs, Y, default=t_global, skip=skip)
    support = np.asarray(Y).astype(bool).sum(axis=0).astype(np.float64)
    shrunk = (support * best + min_support * t_global) / np.maximum(support + min_support, 1e-12)
    return shrunk.astype(np.float32)


def _candidates(max_k: int, g: int) -> list[tuple[str, int]]:
    return [("global", 0), ("thresholds", 0)] + [("top-k", k) for k in range(1, min(max_k, g) + 1)]


def choose_rule(
    probs: np.ndarray,
    Y: np.ndarray,
    min_support: float = 10.0,
    max_k: int = 3,
    folds: int = 5,
    seed: int = 0,
    skip: np.ndarray | None = None,
    rules: tuple[str, ...] = RULES,
) -> DecisionRule:
    """The rule with the best cross-fitted validation micro-F1, tuned on all of ``(probs, Y)``.

    ``probs`` ``(n, G)`` are validation probabilities, ``Y`` ``(n, G)`` the truth; ``skip`` marks genres whose
    per-genre threshold is not tuned (no training positive). Ties go to the simpler rule (listed first).
    """
    probs = np.asarray(probs, np.float64)
    Y = np.asarray(Y).astype(np.uint8)
    n, g = probs.shape
    cands = [(r, k) for r, k in _candidates(max_k, g) if r in rules]
    if n == 0:
        return DecisionRule("global", np.full(g, 0.5, np.float32))
    folds = max(2, min(folds, n))
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    scores = []
    for rule, k in cands:
        pred = np.zeros_like(Y)
        for f in range(folds):
            tune, held = fold_of != f, fold_of == f
            if not held.any():
                continue
            th = _fit(rule, probs[tune], Y[tune], k, min_support, skip) if tune.any() else np.full(g, 0.5, np.float32)
            pred[held] = DecisionRule(rule, th, k).apply(probs[held])
        scores.append(micro_f1(Y, pred))
    best = int(np.argmax(scores))
    rule, k = cands[best]
    names = tuple((f"top-{kk}" if r == "top-k" else r, s) for (r, kk), s in zip(cands, scores))
    return DecisionRule(rule, _fit(rule, probs, Y, k, min_support, skip), k, float(scores[best]), names)
