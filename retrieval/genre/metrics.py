"""Multi-label metrics and per-genre decision thresholds.

Scores come from :mod:`sklearn.metrics` with ``zero_division=0``: an F1 whose denominator is zero is 0.0,
so no figure is ever NaN. Genres listed in ``exclude`` (no positive example in training) still show
in the per-genre table but do not enter macro-F1.
"""

from __future__ import annotations

import numpy as np


def micro_f1(Y_true: np.ndarray, Y_pred: np.ndarray) -> float:
    """Micro-averaged F1 of ``(n, G)`` 0/1 predictions (numpy, for the inner loops of rule tuning)."""
    t = np.asarray(Y_true).astype(bool)
    p = np.asarray(Y_pred).astype(bool)
    tp = float((t & p).sum())
    den = 2 * tp + float((t ^ p).sum())
    return 2 * tp / den if den > 0 else 0.0


def multilabel_report(
    Y_true: np.ndarray, Y_pred: np.ndarray, genres: list[str], exclude: list[str] | tuple[str, ...] = ()
) -> dict:
    """Scores of ``(n, G)`` 0/1 predictions against ``(n, G)`` 0/1 truth (``sklearn.metrics``).

    Returns micro_f1, macro_f1, samples_f1, subset_accuracy, hamming_loss, n, per_genre (list of dicts
    with genre, precision, recall, f1, support, predicted) and notes (strings).
    """
    from sklearn import metrics as skm

    Y_true = np.asarray(Y_true).astype(np.uint8)
    Y_pred = np.asarray(Y_pred).astype(np.uint8)
    if Y_true.shape != Y_pred.shape or Y_true.ndim != 2 or Y_true.shape[1] != len(genres):
        raise ValueError(f"shapes {Y_true.shape} and {Y_pred.shape} do not match {len(genres)} genres")
    n = Y_true.shape[0]
    empty = n == 0
    if not empty:
        precision, recall, f1, support = skm.precision_recall_fscore_support(Y_true, Y_pred, average=None, zero_division=0)
    else:
        precision = recall = f1 = support = np.zeros(len(genres))
    predicted = Y_pred.sum(axis=0)
    per = [
        {"genre": g, "precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j]),
         "support": int(support[j]), "predicted": int(predicted[j])}
        for j, g in enumerate(genres)
    ]
    skip = set(exclude)
    macro_rows = [p["f1"] for p in per if p["genre"] not in skip]
    notes = []
    if skip:
        notes.append(f"excluded from macro-F1 (no positive example in training): {', '.join(sorted(skip))}")
    unsupported = [p["genre"] for p in per if p["support"] == 0 and p["genre"] not in skip]
    if unsupported:
        notes.append(f"no positive example in this split (F1 counts as 0): {', '.join(unsupported)}")
    return {
        "n": int(n),
        "micro_f1": 0.0 if empty else float(skm.f1_score(Y_true, Y_pred, average="micro", zero_division=0)),
        "macro_f1": float(np.mean(macro_rows)) if macro_rows else 0.0,
        "samples_f1": 0.0 if empty else float(skm.f1_score(Y_true, Y_pred, average="samples", zero_division=0)),
        "subset_accuracy": 0.0 if empty else float(skm.accuracy_score(Y_true, Y_pred)),
        "hamming_loss": 0.0 if empty else float(skm.hamming_loss(Y_true, Y_pred)),
        "per_genre": per,
        "notes": notes,
    }


def tune_thresholds(
    probs: np.ndarray, Y_true: np.ndarray, default: float = 0.5, skip: np.ndarray | None = None
) -> np.ndarray:
    """Per-genre thresholds that maximise that genre's F1 on validation: ``(G,) float32``.

    ``probs`` is ``(n, G)`` in [0, 1]; a movie is predicted positive when ``prob >= threshold``. Candidate
    cuts lie between consecutive distinct probabilities (midpoints), so the threshold generalises rather
    than sitting on one validation score. Genres with no positive in ``Y_true``, with ``skip`` set, or
    whose best F1 is 0 keep ``default``. Ties prefer the cut nearest ``default``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    Y = np.asarray(Y_true).astype(bool)
    n, g = probs.shape
    out = np.full(g, default, np.float32)
    for j in range(g):
        pos = int(Y[:, j].sum())
        if pos == 0 or (skip is not None and skip[j]):
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        p = probs[order, j]
        tp = np.cumsum(Y[order, j])
        k = np.arange(1, n + 1)
        last = np.r_[p[1:] != p[:-1], True]  # only cut after the last of equal scores
        f1 = np.where(last, 2.0 * tp / (k + pos), -1.0)
        below = np.r_[p[1:], p[-1] - 1.0]
        cuts = np.where(k < n, (p + below) / 2.0, p)
        best = f1.max()
        if best <= 0:
            continue
        cand = np.flatnonzero(f1 == best)
        out[j] = cuts[cand[np.argmin(np.abs(cuts[cand] - default))]]
    return out


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(n, G)`` probabilities -> ``(n, G) uint8`` predictions (``prob >= threshold``)."""
    return (np.asarray(probs) >= np.asarray(thresholds)[None, :]).astype(np.uint8)


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """``(n, G)`` probabilities -> ``(n, G) uint8`` with the ``k`` most probable genres of each row set."""
    probs = np.asarray(probs)
    k = max(0, min(k, probs.shape[1]))
    out = np.zeros(probs.shape, np.uint8)
    if k:
        idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        np.put_along_axis(out, idx, 1, axis=1)
    return out


def format_report(report: dict, title: str = "") -> str:
    """The summary line and the per-genre table as text."""
    lines = [title] if title else []
    lines.append(
        f"n={report['n']}  micro-F1 {report['micro_f1']:.3f}  macro-F1 {report['macro_f1']:.3f}  "
        f"samples-F1 {report['samples_f1']:.3f}  subset-acc {report['subset_accuracy']:.3f}  "
        f"hamming {report['hamming_loss']:.4f}"
    )
    width = max([5] + [len(p["genre"]) for p in report["per_genre"]])
    lines.append(f"{'genre':<{width}}  precision  recall     f1  support  predicted")
    for p in report["per_genre"]:
        lines.append(
            f"{p['genre']:<{width}}  {p['precision']:9.3f}  {p['recall']:6.3f}  {p['f1']:5.3f}  {p['support']:7d}  {p['predicted']:9d}"
        )
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
