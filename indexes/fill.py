"""Fill an index from a feature source block by block: finite check, normalisation, content hash, training.

Of the memory budget, ``SAMPLE_SHARE`` is for the training sample and ``BLOCK_SHARE`` for the block being
added (the index gets ``INDEX_SHARE``, see :mod:`indexes.build`).
"""

from __future__ import annotations

import hashlib
import logging
import sys

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from indexes.calibrate import Calibration

log = logging.getLogger(__name__)

INDEX_SHARE, SAMPLE_SHARE, BLOCK_SHARE = 0.6, 0.25, 0.1


def budget_rows(memory_budget: int, d: int, share: float) -> int:
    """Rows of ``d`` float32 that fit ``share`` of ``memory_budget`` (at least 256)."""
    return max(256, int(memory_budget * share) // (4 * d))


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=quiet or not sys.stderr.isatty())


def check_finite(xb: np.ndarray, start: int, source) -> None:
    """Refuse a block with NaN/inf values, naming the file, the first bad row and its id."""
    bad = ~np.isfinite(xb).all(axis=1)
    if bad.any():
        row = start + int(np.argmax(bad))
        ids = getattr(source, "ids", None)
        name = f" (id {ids[row]!r})" if ids is not None and row < len(ids) else ""
        raise UserError(f"{source.path} has NaN or infinite values in row {row}{name} ({int(bad.sum())} such rows in "
                        f"rows {start}-{start + len(xb) - 1}); re-extract those images or drop them, then build again")


def train_rows(d: int, config) -> int:
    return budget_rows(config.memory_budget, d, SAMPLE_SHARE)


def block_rows(d: int, config) -> int:
    return min(config.block_rows, budget_rows(config.memory_budget, d, BLOCK_SHARE))


class PrefixChanged(Exception):
    """The rows an index already holds differ from the same rows of the feature source."""


def fill(index, ff, config, start_row: int = 0, quiet: bool = False, calib: Calibration | None = None,
         prefix_sha256: str | None = None) -> str:
    """Add rows ``start_row..`` of ``ff`` to ``index`` block by block (finite-checked, normalised for cosine).

    Returns the sha256 of all rows' float32 bytes in order. Rows below ``start_row`` are only hashed, and
    with ``prefix_sha256`` they must give that hash (else :class:`PrefixChanged`, before anything is added).
    With ``calib`` (only for ``start_row == 0``) its exact answers are computed over the same blocks.
    """
    h = hashlib.sha256()
    rows_per_block = block_rows(ff.dim, config)
    with _progress(len(ff) - start_row, f"adding to {config.factory}", quiet) as bar:

        def blocks():
            for start, xb in ff.iter_blocks(rows_per_block):
                if start < start_row:
                    cut = min(len(xb), start_row - start)
                    h.update(np.ascontiguousarray(xb[:cut], dtype=np.float32).tobytes())
                    if start + cut == start_row and prefix_sha256 is not None and h.hexdigest() != prefix_sha256:
                        raise PrefixChanged
                    xb, start = xb[cut:], start + cut
                    if not len(xb):
                        continue
                check_finite(xb, start, ff)
                h.update(np.ascontiguousarray(xb, dtype=np.float32).tobytes())
                if config.normalize:
                    normalize_rows(xb)
                index.add(xb)
                bar.update(len(xb))
                yield xb

        if calib is None:
            for _ in blocks():
                pass
        else:
            calib.ground_truth(blocks())
    return h.hexdigest()


def train(index, ff, factory: str, config) -> int:
    """Train ``index`` on a seeded sample of ``ff`` (within the sample's share of the budget); returns its size."""
    import faiss

    size = min(config.train_size, train_rows(ff.dim, config))
    rows = sample_rows(len(ff), size, config.seed)
    xt = ff.load(rows)
    bad = ~np.isfinite(xt).all(axis=1)
    if bad.any():  # find the file's first bad row to name it (a read of the file, on this error path only)
        for start, xb in ff.iter_blocks(block_rows(ff.dim, config)):
            check_finite(xb, start, ff)
    if config.normalize:
        normalize_rows(xt)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = config.kmeans_iters  # 10 k-means rounds: cells barely move after that
    log.info("training on a sample of %d vectors", len(xt))
    try:
        index.train(xt)
    except RuntimeError as exc:
        raise UserError(f"cannot train {factory!r} on {len(xt)} vectors ({str(exc).strip().splitlines()[-1]}); "
                        "use fewer lists/centroids or a Flat index") from None
    return len(xt)
