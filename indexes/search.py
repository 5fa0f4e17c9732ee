"""Search an index and map rows back to image ids.

``search(index, xq, k) -> (D, I)`` is the array-level call (faiss naming: ``xq`` (nq, d) float32 queries,
``D`` (nq, k) float32 scores, ``I`` (nq, k) int64 rows). :class:`Collection` ties an index folder to its
feature file so results come back as ids with paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from extract.core.ids import PackedIds

log = logging.getLogger(__name__)
_F32 = np.dtype(np.float32)


def clamp_k(k: int, n: int) -> int:
    """``k`` limited to ``1..n``, with a warning when it had to change."""
    if k <= 0:
        log.warning("k=%d is not positive; using k=1", k)
        return 1
    if k > n:
        log.warning("k=%d is more than the %d indexed images; using k=%d", k, n, n)
        return n
    return k


def search(index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each query: ``xq`` (nq, d) float32 -> ``D`` (nq, k) float32, ``I`` (nq, k) int64 rows.

    ``k`` is clamped to ``1..ntotal`` (with a warning). Rows are -1 where an approximate index found
    fewer than ``k`` results. The checks cost a few microseconds, so this is as fast as ``index.search``.
    """
    if not (type(xq) is np.ndarray and xq.dtype is _F32 and xq.ndim == 2 and xq.flags.c_contiguous):
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim == 1:
            xq = xq[None, :]
        if xq.ndim != 2:
            raise UserError(f"queries must be (nq, d); got shape {xq.shape}")
    ntotal = index.ntotal
    if not 0 < k <= ntotal:
        if ntotal == 0:
            raise UserError("the index is empty; rebuild it from a feature file with rows")
        k = clamp_k(k, ntotal)
    try:
        return index.search(xq, k)
    except AssertionError:  # faiss's wrapper asserts the dimension
        raise UserError(f"queries have shape {xq.shape} but the index holds {index.d}-d vectors") from None


@contextlib.contextmanager
def single_threaded_for(nq: int):
    """Within the block, run faiss single-threaded for a handful of queries (< 20, faiss's own BLAS threshold).

    On one query OpenMP start-up and spinning cost more than they gain, and on a busy machine they can
    make a 1 ms search take 50 ms. The previous thread count is restored afterwards.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    if nq < 20:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class Hit:
    """One result: 1-based rank, image id, score (cosine/inner product: higher is better; l2: lower), path."""

    rank: int
    id: str
    score: float
    path: str
    row: int


@dataclass
class Results:
    """The hits of each query, in query order, plus timings in seconds."""

    queries: list[str]
    hits: list[list[Hit]]
    timings: dict = field(default_factory=dict)

    def to_json(self, flags: list[list] | None = None, flag_name: str = "truth") -> list[dict]:
        """One dict per query: ``{"query", "results": [{"rank", "id", "score", "path"[, flag_name]}]}``."""
        out = []
        for qi, (q, hs) in enumerate(zip(self.queries, self.hits)):
            rows = [{"rank": h.rank, "id": h.id, "score": h.score, "path": h.path} for h in hs]
            if flags is not None:
                for row, f in zip(rows, flags[qi]):
                    row[flag_name] = f
            out.append({"query": q, "results": rows})
        return out

    def format(self, as_json: bool = False, flags: list[list] | None = None, flag_name: str = "truth") -> str:
        """A printable table per query (rank, score, id, path[, flag]) or a JSON document."""
        if as_json:
            import json

            doc = {"queries": self.to_json(flags, flag_name), "timings": {k: round(v, 4) for k, v in self.timings.items()}}
            return json.dumps(doc, ensure_ascii=False, indent=1)
        lines = []
        for qi, (q, hs) in enumerate(zip(self.queries, self.hits)):
            lines.append(f"query: {q}")
            head = f"{'rank':>4}  {'score':>8}  {'id':<28}  path"
            lines.append(head + (f"  {flag_name}" if flags is not None else ""))
            for hi, h in enumerate(hs):
                line = f"{h.rank:>4}  {h.score:>8.4f}  {h.id:<28}  {h.path}"
                if flags is not None:
                    f = flags[qi][hi]
                    line += "  " + ("yes" if f else "no" if f is not None else "?")
                lines.append(line)
            if flags is not None:
                lines.append(f"{sum(1 for f in flags[qi] if f)}/{len(hs)} results have {flag_name}")
        return "\n".join(lines)


def image_path(config: dict, image_id: str) -> str:
    """Where the image ``image_id`` lives: under the image root recorded in the extraction config, if any."""
    for key in ("image_root", "images_root", "root"):
        root = config.get(key)
        if isinstance(root, str) and root:
            return str(Path(root) / image_id)
    return image_id


class Collection:
    """An index folder opened for searching, with its feature file's ids (row i of the index = ids[i]).

    Arrays in, ids out: :meth:`search_vectors` takes query vectors, :meth:`search_ids` stored rows. Query
    encoding (text, images) sits above, in :mod:`retrieval.search`. ``stale`` is None, or the warning (with
    the command to run) when the feature file grew after the index was built.
    """

    def __init__(self, index_dir: str | os.PathLike, features: str | os.PathLike | None = None, mmap: bool = True):
        from extract.store import open_features
        from indexes.io import check_features, load_index
        from indexes.sources import open_shards
        from indexes.state import stale_report

        t0 = time.perf_counter()
        self.loaded = load_index(index_dir, mmap=mmap)
        t1 = time.perf_counter()
        path = features or self.loaded.features_path
        self.features = open_shards(path) or open_features(path)
        self.stale = stale_report(self.meta, self.features, index_dir)
        if self.stale:  # rows were appended after the build: the indexed rows still map to their ids
            log.warning("%s", self.stale)
        else:
            check_features(self.meta, self.features.fingerprint, self.features.path)
        self.timings = {"index_load": t1 - t0, "ids_load": time.perf_counter() - t1}

    @property
    def index(self):
        return self.loaded.index

    @property
    def meta(self) -> dict:
        return self.loaded.meta

    def search_vectors(self, xq: np.ndarray, k: int, queries: Sequence[str] | None = None) -> Results:
        """Search ``(nq, d)`` query vectors (normalised here when the index is cosine) and map rows to ids."""
        xq = np.array(xq, dtype=np.float32, copy=True, ndmin=2)
        if self.meta["normalize"]:
            normalize_rows(xq)
        t0 = time.perf_counter()
        with single_threaded_for(len(xq)):
            D, I = search(self.index, xq, k)
        self.timings["search"] = time.perf_counter() - t0
        ids, cfg = self.features.ids, self.features.config
        hits = [
            [Hit(r + 1, ids[row], float(s), image_path(cfg, ids[row]), int(row)) for r, (s, row) in enumerate(zip(ds, rs)) if row >= 0]
            for ds, rs in zip(D, I)
        ]
        names = list(queries) if queries is not None else [f"query {i}" for i in range(len(xq))]
        return Results(names, hits, dict(self.timings))

    def row(self, image_id: str) -> int | None:
        """The row of a stored id, or None; packed ids are searched in place, with no id -> row table."""
        ids = self.features.ids
        if isinstance(ids, PackedIds):
            return ids.row(image_id)
        try:
            return ids.index(image_id)
        except ValueError:
            return None

    def search_ids(self, image_ids: Sequence[str], k: int) -> Results:
        """Search with the stored vectors of existing ids."""
        rows = [self.row(i) for i in image_ids]
        missing = [i for i, r in zip(image_ids, rows) if r is None]
        if missing:
            raise UserError(f"id {missing[0]!r} is not in {self.features.path} ({len(missing)} unknown id(s)); "
                            "ids are image paths relative to the image root")
        xq = self.features.load(rows)
        return self.search_vectors(xq, k, list(image_ids))
