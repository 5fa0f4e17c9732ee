"""Array helpers shared by every layer."""

from __future__ import annotations

import numpy as np


def normalize_rows(x: np.ndarray, copy: bool = False) -> np.ndarray:
    """L2-normalise the rows of a 2-d float array (in place unless ``copy``); zero rows stay zero."""
    if copy:
        x = np.array(x, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x
