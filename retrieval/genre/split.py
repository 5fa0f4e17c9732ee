"""Seeded multi-label stratified train/val/test split (iterative stratification, Sechidis et al. 2011)."""

from __future__ import annotations

import numpy as np

from extract.core.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


def stratified_split(Y: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Assign each row of a ``(n, G)`` multi-hot matrix to a split: ``(n,) int8`` with 0=train, 1=val, 2=test.

    Rarest labels are distributed first, each of their rows going to the split that still wants most of
    that label (then most rows overall, then a seeded random choice). The same ``Y`` and seed always
    give the same split.
    """
    Y = np.asarray(Y, dtype=bool)
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac < 0).any() or not np.isclose(frac.sum(), 1.0):
        raise UserError(f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    n, _g = Y.shape
    rng = np.random.default_rng(seed)
    want_rows = frac * n
    want_label = frac[:, None] * Y.sum(axis=0)[None, :]
    out = np.full(n, -1, np.int8)
    remaining = Y.copy()
    order = rng.permutation(n)
    while True:
        counts = remaining.sum(axis=0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, n + 1)))
        for i in order[remaining[order, label]]:
            best = np.flatnonzero(want_label[:, label] == want_label[:, label].max())
            if best.size > 1:
                best = best[want_rows[best] == want_rows[best].max()]
            s = int(best[0] if best.size == 1 else rng.choice(best))
            out[i] = s
            want_rows[s] -= 1
            want_label[s] -= Y[i]
            remaining[i] = False
    for i in order[out[order] < 0]:  # rows without any label
        s = int(np.argmax(want_rows))
        out[i] = s
        want_rows[s] -= 1
    return out


def split_masks(codes: np.ndarray) -> dict[str, np.ndarray]:
    """``{"train": rows, "val": rows, "test": rows}`` from split codes, each ``(k,) int64`` row numbers."""
    return {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLIT_NAMES)}


def codes_from_names(splits: list[str]) -> np.ndarray:
    """Split names (train/val/test) -> codes as returned by :func:`stratified_split`."""
    lookup = {name: k for k, name in enumerate(SPLIT_NAMES)}
    return np.array([lookup[s] for s in splits], np.int8)
