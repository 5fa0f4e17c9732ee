"""Build a FAISS index over an HDF5 feature file: factory strings, the ``auto`` choice, training, adding.

Row ``i`` of the index is row ``i`` of the feature file's ``ids``. Features are read in blocks and added
to the index block by block, so memory holds the index plus one block (and the training sample), never
a second full copy of the features.

``factory="auto"`` picks a kind under a memory budget and a latency budget (:mod:`indexes.choose`). Of the
budget, 60% goes to the index and the rest to the training sample (25%) and the feature blocks being
added (10%), so a build over a feature file bigger than memory stays within ``memory_budget``.

Approximate indexes are calibrated on held-out queries: stored vectors searched with their own row left
out of both the exact and the approximate answer (the question a fresh query asks), and the smallest
``nprobe``/``efSearch`` reaching ``target_recall`` recall@10 becomes the default; with ``max_query_ms``
the value is lowered until a single query fits that time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from extract.store import FeatureFile, fingerprint, open_features
from indexes.calibrate import Calibration
from indexes.choose import (
    FLAT_MAX_N,
    REFINE_CANDIDATES,
    choose,
    estimate_bytes,
    n_lists,
)
from indexes.exact import METRICS, faiss_metric, recall_at
from indexes.params import refine_stage, set_search_params, tunable_parameter

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 8 << 30
INDEX_SHARE, SAMPLE_SHARE, BLOCK_SHARE = 0.6, 0.25, 0.1

__all__ = ["FLAT_MAX_N", "METRICS", "ArrayFeatures", "BuiltIndex", "IndexConfig", "auto_factory", "build_index",
           "faiss_metric", "make_index", "n_lists", "normalize_rows", "parse_size", "recall_at"]


@dataclass(frozen=True)
class IndexConfig:
    """How an index is built. ``factory`` is a faiss factory string or ``"auto"``."""

    factory: str = "auto"
    metric: str = "cosine"
    memory_budget: int = DEFAULT_BUDGET
    train_size: int = 65_536
    block_rows: int = 16_384
    target_recall: float = 0.95
    calibration_queries: int = 200
    max_query_ms: float | None = None
    kmeans_iters: int = 10
    seed: int = 0
    search_params: dict = field(default_factory=dict)

    @property
    def normalize(self) -> bool:
        """Cosine similarity is inner product on L2-normalised vectors."""
        return self.metric == "cosine"


def auto_factory(n: int, d: int, memory_budget: int = DEFAULT_BUDGET, max_query_ms: float | None = None,
                 train_rows: int | None = None) -> str:
    """The ``auto`` factory string for ``n`` x ``d`` vectors: the index gets ``INDEX_SHARE`` of
    ``memory_budget``; IVF lists are limited to one per 39 training rows (``train_rows``)."""
    factory = choose(n, d, int(memory_budget * INDEX_SHARE), max_query_ms).factory
    if train_rows is not None and "IVF" in factory:
        k = int(re.search(r"IVF(\d+)", factory).group(1))
        fit = n_lists(min(n, train_rows))
        if fit < k:
            factory = factory.replace(f"IVF{k}", f"IVF{fit}", 1)
    return factory


def budget_rows(memory_budget: int, d: int, share: float) -> int:
    """Rows of ``d`` float32 that fit ``share`` of ``memory_budget`` (at least 256)."""
    return max(256, int(memory_budget * share) // (4 * d))


def make_index(factory: str, d: int, metric: str):
    """An empty faiss index from a factory string; a bad string is a :class:`UserError`."""
    import faiss

    try:
        index = faiss.index_factory(d, factory, faiss_metric(metric))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise UserError(f"faiss cannot build index {factory!r} for d={d} ({first}); try Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64, SQ8") from None
    # Polysemous training only serves Hamming-threshold search, which is not used here, and takes
    # minutes on a few cores; PQ codes are the same without it.
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if hasattr(inner, "do_polysemous_training"):
        inner.do_polysemous_training = False
    return index


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=quiet or not sys.stderr.isatty())


class ArrayFeatures:
    """An in-memory ``(n, d)`` array with the feature-file interface the builder reads (``load``, ``iter_blocks``)."""

    def __init__(self, xb: np.ndarray, ids: list[str] | None = None, config: dict | None = None, name: str = "array"):
        self.xb = np.asarray(xb, dtype=np.float32)
        self.ids = ids if ids is not None else [str(i) for i in range(len(self.xb))]
        self.dim = int(self.xb.shape[1])
        self.config = config or {}
        self.path = name
        self.fingerprint = fingerprint(self.ids, self.xb.shape)

    def __len__(self) -> int:
        return len(self.xb)

    def load(self, rows=None) -> np.ndarray:
        return self.xb.copy() if rows is None else self.xb[np.asarray(rows, dtype=np.int64)]

    def iter_blocks(self, block_rows: int = 65536):
        for start in range(0, len(self.xb), block_rows):
            yield start, self.xb[start : start + block_rows].copy()


@dataclass
class BuiltIndex:
    """A built (in-memory) faiss index and the sidecar fields that describe it."""

    index: object
    meta: dict


def check_finite(xb: np.ndarray, start: int, source) -> None:
    """Refuse a block with NaN/inf values, naming the file, the first bad row and its id."""
    bad = ~np.isfinite(xb).all(axis=1)
    if bad.any():
        row = start + int(np.argmax(bad))
        ids = getattr(source, "ids", None)
        name = f" (id {ids[row]!r})" if ids is not None and row < len(ids) else ""
        raise UserError(f"{source.path} has NaN or infinite values in row {row}{name} ({int(bad.sum())} such rows in "
                        f"rows {start}-{start + len(xb) - 1}); re-extract those images or drop them, then build again")


def resolve_factory(n: int, d: int, config: IndexConfig) -> str:
    """The factory string to build: ``config.factory``, or the ``auto`` choice for ``n`` x ``d``."""
    if config.factory != "auto":
        return config.factory
    return auto_factory(n, d, config.memory_budget, config.max_query_ms, min(config.train_size, _train_rows(d, config)))


def _train_rows(d: int, config: IndexConfig) -> int:
    return budget_rows(config.memory_budget, d, SAMPLE_SHARE)


def _block_rows(d: int, config: IndexConfig) -> int:
    return min(config.block_rows, budget_rows(config.memory_budget, d, BLOCK_SHARE))


class PrefixChanged(Exception):
    """The rows an index already holds differ from the same rows of the feature source."""


def fill(index, ff, config: IndexConfig, start_row: int = 0, quiet: bool = False, calib: Calibration | None = None,
         prefix_sha256: str | None = None) -> str:
    """Add rows ``start_row..`` of ``ff`` to ``index`` block by block (finite-checked, normalised for cosine).

    Returns the sha256 of all rows' float32 bytes in order. Rows below ``start_row`` are only hashed, and
    with ``prefix_sha256`` they must give that hash (else :class:`PrefixChanged`, before anything is added).
    With ``calib`` (only for ``start_row == 0``) its exact answers are computed over the same blocks.
    """
    h = hashlib.sha256()
    block_rows = _block_rows(ff.dim, config)
    with _progress(len(ff) - start_row, f"adding to {config.factory}", quiet) as bar:

        def blocks():
            for start, xb in ff.iter_blocks(block_rows):
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


def train(index, ff, factory: str, config: IndexConfig) -> int:
    """Train ``index`` on a seeded sample of ``ff`` (within the sample's share of the budget); returns its size."""
    import faiss

    size = min(config.train_size, _train_rows(ff.dim, config))
    rows = _sample_rows(len(ff), size, config.seed)
    xt = ff.load(rows)
    bad = ~np.isfinite(xt).all(axis=1)
    if bad.any():  # find the file's first bad row to name it (a read of the file, on this error path only)
        for start, xb in ff.iter_blocks(_block_rows(ff.dim, config)):
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


def features_record(ff) -> dict:
    """What the sidecar records of the feature source: path, fingerprint, model, config, and a content
    check (ids in order, and a sample of rows) that lets a grown file be recognised (:mod:`indexes.update`)."""
    from indexes.update import source_state

    return {"path": str(Path(ff.path).resolve()) if not str(ff.path).startswith("synthetic:") else str(ff.path),
            "fingerprint": ff.fingerprint, "model": ff.config.get("model"), "config": ff.config,
            **source_state(ff, len(ff))}


def build_index(
    features: str | os.PathLike | FeatureFile,
    config: IndexConfig = IndexConfig(),
    quiet: bool = False,
) -> BuiltIndex:
    """Build an index over every row of a feature source (see the module doc for ``factory="auto"``)."""
    import faiss

    ff = open_source(features)
    n, d = len(ff), ff.dim
    if n == 0:
        raise UserError(f"{ff.path} holds no feature rows; nothing to index")
    factory = resolve_factory(n, d, config)
    t0 = time.perf_counter()
    index = make_index(factory, d, config.metric)
    try:
        estimate = estimate_bytes(factory, n, d)["total"]
    except UserError:
        estimate = None
    log.info("building %s over %d x %d features (%s)%s", factory, n, d, config.metric,
             f"; about {estimate / 2**20:,.0f} MiB" if estimate else "")
    train_n = 0 if index.is_trained else train(index, ff, factory, config)
    calib = None
    if tunable_parameter(index) is not None and n > 1:
        rows = _sample_rows(n, config.calibration_queries, config.seed + 1)
        calib = Calibration(ff.load(rows), rows, config.metric, n)
    content = fill(index, ff, replace(config, factory=factory), 0, quiet, calib)
    build_seconds = time.perf_counter() - t0

    search_params = {}
    if refine_stage(index) is not None:
        search_params["k_factor"] = REFINE_CANDIDATES
        set_search_params(index, search_params)
    calibration = None
    if calib is not None:
        tuned, calibration = calib.tune(index, config.target_recall, config.max_query_ms)
        search_params.update(tuned)
    search_params.update(config.search_params)
    set_search_params(index, search_params)

    meta = {
        "factory": factory,
        "metric": config.metric,
        "normalize": config.normalize,
        "n": int(index.ntotal),
        "d": int(d),
        "build_seconds": round(build_seconds, 3),
        "train_size": train_n,
        "estimated_bytes": estimate,
        "search_params": search_params,
        "calibration": calibration,
        "index_config": {k: v for k, v in asdict(config).items() if k != "search_params"},
        "features": {**features_record(ff), "content_sha256": content},
        "faiss_version": faiss.__version__,
    }
    log.info("built %s: %d vectors in %.1f s", factory, index.ntotal, build_seconds)
    return BuiltIndex(index, meta)


def open_source(features):
    """A feature source: an object with ``iter_blocks``/``load`` as is, a shard manifest, or a feature file."""
    if hasattr(features, "iter_blocks"):
        return features
    from indexes.sources import open_shards

    return open_shards(features) or open_features(features)


def build_index_dir(
    features: str | os.PathLike, out_dir: str | os.PathLike, config: IndexConfig = IndexConfig(), quiet: bool = False,
    incremental: bool = True,
) -> dict:
    """Build (or, for a grown feature file, extend) the index in ``OUT_DIR``; returns the sidecar.

    The sidecar's ``update`` says what happened: ``built`` (new folder), ``added`` (only the new rows were
    added to the existing index) or ``rebuilt`` (with the reason).
    """
    from indexes.io import check_writable, read_sidecar, save_index
    from indexes.update import plan_update, update_index

    check_writable(out_dir)
    ff = open_source(features)
    action, reason, previous = plan_update(out_dir, ff, config) if incremental else ("built", "", None)
    if action == "unchanged":
        return dict(previous.meta, update={"action": action, "reason": reason, "rows_before": previous.meta["n"]})
    if action == "added":
        try:
            index, meta = update_index(previous, ff, config, quiet)
        except PrefixChanged:
            action, reason = "rebuilt", f"the first {previous.meta['n']} rows of {ff.path} changed since the build"
    if action != "added":
        built = build_index(ff, config, quiet=quiet)
        index, meta = built.index, built.meta
    meta["update"] = {"action": action, "reason": reason, "rows_before": previous.meta["n"] if previous else 0}
    save_index(index, meta, out_dir)
    return read_sidecar(out_dir)


def parse_size(text: str) -> int:
    """Bytes from ``"8GiB"``, ``"512MiB"``, ``"2G"`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UserError(f"cannot read {text!r} as a size; write e.g. 8GiB or 512MiB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)
