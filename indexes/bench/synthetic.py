"""Seeded clustered vectors that resemble pooled CNN features (non-negative, clustered), made in blocks.

Uniform noise is a poor stand-in for image features: every point is nearly equidistant from every other,
so approximate indexes look worse than they are. Here each vector is ``relu(centre + noise)`` around one
of ``n_clusters`` (default N / 20) centres; clusters overlap enough that approximate search has
to work for its recall, as with real features. Block ``b`` depends only on ``(seed, b)``, so a
1M x 2048 set can be generated block by block, and regenerated identically.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

NOISE = 1.0


def centres(d: int, n_clusters: int, seed: int) -> np.ndarray:
    """``(n_clusters, d) float32`` cluster centres."""
    rng = np.random.default_rng([seed, 0])
    return rng.standard_normal((n_clusters, d), dtype=np.float32)


def _draw(c: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    which = rng.integers(0, len(c), size=n)
    x = rng.standard_normal((n, c.shape[1]), dtype=np.float32)
    x *= NOISE
    x += c[which]
    np.maximum(x, 0, out=x)
    return x


def clustered_blocks(
    n: int, d: int, block: int = 65536, seed: int = 0, n_clusters: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, (b, d) float32)`` blocks of ``n`` clustered vectors."""
    c = centres(d, n_clusters or max(8, n // 20), seed)
    for b, start in enumerate(range(0, n, block)):
        rng = np.random.default_rng([seed, 1, b])
        yield start, _draw(c, min(block, n - start), rng)


def clustered(n: int, d: int, seed: int = 0, n_clusters: int | None = None) -> np.ndarray:
    """``(n, d) float32`` clustered vectors (the concatenation of :func:`clustered_blocks`)."""
    return np.concatenate([x for _, x in clustered_blocks(n, d, 65536, seed, n_clusters)]) if n else np.zeros((0, d), np.float32)


def clustered_queries(nq: int, n: int, d: int, seed: int = 0, n_clusters: int | None = None) -> np.ndarray:
    """``(nq, d) float32`` fresh points from the same clusters as ``clustered(n, d, seed)`` (not stored ones)."""
    c = centres(d, n_clusters or max(8, n // 20), seed)
    return _draw(c, nq, np.random.default_rng([seed, 2]))


class SyntheticFeatures:
    """A feature-file look-alike (``ids``, ``dim``, ``load``, ``iter_blocks``) over generated clustered vectors.

    Lets the index builder run on sizes that would not fit on disk or in memory as one array.
    """

    def __init__(self, n: int, d: int, seed: int = 0, block: int = 65536, n_clusters: int | None = None):
        self.n, self.dim, self.seed, self.block = n, d, seed, block
        self.n_clusters = n_clusters or max(8, n // 20)
        self.path = f"synthetic:{n}x{d}:seed{seed}"
        self.fingerprint = f"synthetic-{n}-{d}-{seed}"
        self.config = {"model": "synthetic", "n_clusters": self.n_clusters, "seed": seed}
        self.gen_seconds = 0.0  # time spent generating, so benchmarks can leave it out

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in range(self.n)]

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Blocks are always ``self.block`` rows (the generation unit); ``block_rows`` is ignored."""
        blocks = clustered_blocks(self.n, self.dim, self.block, self.seed, self.n_clusters)
        while True:
            t0 = time.perf_counter()
            item = next(blocks, None)
            self.gen_seconds += time.perf_counter() - t0
            if item is None:
                return
            yield item

    def load(self, rows=None) -> np.ndarray:
        """The given rows (sorted or not), generating only the blocks that hold them."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        t0 = time.perf_counter()
        out = np.empty((len(rows), self.dim), np.float32)
        want = rows // self.block
        c = centres(self.dim, self.n_clusters, self.seed)
        for b in np.unique(want):
            start = int(b) * self.block
            x = _draw(c, min(self.block, self.n - start), np.random.default_rng([self.seed, 1, int(b)]))
            sel = np.nonzero(want == b)[0]
            out[sel] = x[rows[sel] - start]
        self.gen_seconds += time.perf_counter() - t0
        return out

    def queries(self, nq: int) -> np.ndarray:
        """``(nq, d) float32`` fresh points from the same clusters."""
        return clustered_queries(nq, self.n, self.dim, self.seed, self.n_clusters)
