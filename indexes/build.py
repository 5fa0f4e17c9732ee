"""Build a FAISS index over an HDF5 feature file: factory strings, the ``auto`` choice, training, adding.

Row ``i`` of the index is row ``i`` of the feature file's ``ids``. Features are read in blocks and added
to the index block by block, so memory holds the index plus one block (and the training sample), never
a second full copy of the features.

``factory="auto"`` picks a kind under a memory budget and a latency budget (:mod:`indexes.choose`; with a
latency budget the best few candidates are built and measured, :mod:`indexes.compare`). Of the budget, 60%
goes to the index and the ids a searching collection holds (packed, :mod:`extract.core.ids`), the rest to
the training sample (25%) and the feature blocks being added (10%), so a build over a feature file bigger
than memory stays within ``memory_budget``. An IVF index that does not fit its share keeps its lists on disk
in ``index.ivfdata`` (:mod:`indexes.ondisk`).

Approximate indexes are calibrated on held-out queries: stored vectors searched with their own row left
out of both the exact and the approximate answer (the question a fresh query asks), and the smallest
``nprobe``/``efSearch`` reaching ``target_recall`` recall@10 becomes the default; with ``max_query_ms``
the value is lowered until a single query fits that time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from extract.fingerprints import fingerprint_arrays
from extract.store import FeatureFile, open_features
from indexes.calibrate import Calibration
from indexes.choose import (
    FLAT_MAX_N,
    REFINE_CANDIDATES,
    choose,
    estimate_bytes,
    ids_bytes,
    n_lists,
)
from indexes.exact import METRICS, faiss_metric, recall_at
from indexes.fill import (
    INDEX_SHARE,
    PrefixChanged,
    fill,
    sample_rows,
    train,
    train_rows,
)
from indexes.io import IVFDATA_FILE, check_writable, read_sidecar, save_index
from indexes.ondisk import OnDiskLists, choose_on_disk, disk_reason, work_folder
from indexes.params import refine_stage, set_search_params, tunable_parameter
from indexes.state import features_record
from indexes.update import plan_update, update_index

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 8 << 30

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
    on_disk: bool | None = None  # IVF lists in index.ivfdata: True always, False never, None when over budget
    search_params: dict = field(default_factory=dict)

    @property
    def normalize(self) -> bool:
        """Cosine similarity is inner product on L2-normalised vectors."""
        return self.metric == "cosine"


def auto_factory(n: int, d: int, memory_budget: int = DEFAULT_BUDGET, max_query_ms: float | None = None,
                 train_rows: int | None = None, id_bytes: int = 0, on_disk: bool = False) -> str:
    """The ``auto`` factory string for ``n`` x ``d`` vectors: the index and the collection's ids in memory
    (``id_bytes``) get ``INDEX_SHARE`` of ``memory_budget`` (with ``on_disk``, only the index's resident part
    counts: :func:`indexes.ondisk.choose_on_disk`); IVF lists are limited to one per 39 training rows
    (``train_rows``)."""
    share = int(memory_budget * INDEX_SHARE)
    if on_disk:
        factory = choose_on_disk(n, d, max(share - id_bytes, 0), max_query_ms,
                                 n_lists(min(n, train_rows)) if train_rows else None).factory
    else:
        factory = choose(n, d, share, max_query_ms, id_bytes).factory
    if train_rows is not None and "IVF" in factory:
        k = int(re.search(r"IVF(\d+)", factory).group(1))
        fit = n_lists(min(n, train_rows))
        if fit < k:
            factory = factory.replace(f"IVF{k}", f"IVF{fit}", 1)
    return factory


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


class ArrayFeatures:
    """An in-memory ``(n, d)`` array with the feature-file interface the builder reads (``load``, ``iter_blocks``)."""

    def __init__(self, xb: np.ndarray, ids: list[str] | None = None, config: dict | None = None, name: str = "array"):
        self.xb = np.asarray(xb, dtype=np.float32)
        self.ids = ids if ids is not None else [str(i) for i in range(len(self.xb))]
        self.dim = int(self.xb.shape[1])
        self.config = config or {}
        self.path = name
        self.fingerprint = fingerprint_arrays(self.ids, self.xb, self.config)

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
    ivfdata: Path | None = None  # the on-disk lists file the index maps, to move into its folder


def resolve_storage(n: int, d: int, config: IndexConfig, can_disk: bool = True,
                    id_bytes: int = 0) -> tuple[str, str | None]:
    """The factory string to build and why its IVF lists go on disk (None: all in memory); see
    :mod:`indexes.ondisk` for when. ``can_disk=False`` (no index folder to write them to) keeps them in memory."""
    if config.on_disk and not can_disk:
        raise UserError("on-disk lists need an index folder to live in; build with build_index_dir / `index build`")
    rows = min(config.train_size, train_rows(d, config))
    if config.factory != "auto":
        if not can_disk:
            return config.factory, None
        return config.factory, disk_reason(config.factory, n, d, config, lambda: make_index(config.factory, d, config.metric))
    if not config.on_disk:
        try:
            return auto_factory(n, d, config.memory_budget, config.max_query_ms, rows, id_bytes), None
        except UserError:
            if config.on_disk is False or not can_disk:
                raise
        reason = f"no index kind over {n} x {d} fits the index share of --memory-budget in memory"
    else:
        reason = "--on-disk"
    return auto_factory(n, d, config.memory_budget, config.max_query_ms, rows, id_bytes, on_disk=True), reason


def _compared(ff, config: IndexConfig, id_bytes: int) -> tuple[str | None, list | None]:
    """Under a latency budget, the ``auto`` kind measured among the best candidates (:mod:`indexes.compare`)."""
    if config.factory != "auto" or config.max_query_ms is None or len(ff) <= FLAT_MAX_N:
        return None, None
    from indexes.compare import compare_candidates

    return compare_candidates(ff, config, int(config.memory_budget * INDEX_SHARE), id_bytes, make_index)


def build_index(
    features: str | os.PathLike | FeatureFile,
    config: IndexConfig = IndexConfig(),
    quiet: bool = False,
    work_dir: Path | None = None,
) -> BuiltIndex:
    """Build an index over every row of a feature source (see the module doc for ``factory="auto"``).

    With ``work_dir`` (a folder on the index folder's file system) IVF lists over the memory budget, or
    with ``config.on_disk``, are built there as ``index.ivfdata`` (:mod:`indexes.ondisk`; ``BuiltIndex.ivfdata``).
    """
    import faiss

    ff = open_source(features)
    n, d = len(ff), ff.dim
    if n == 0:
        raise UserError(f"{ff.path} holds no feature rows; nothing to index")
    id_bytes = ids_bytes(ff)
    factory, reason = resolve_storage(n, d, config, can_disk=work_dir is not None, id_bytes=id_bytes)
    t0 = time.perf_counter()
    compared = None
    if reason is None:  # in memory: under a latency budget, the best candidates are built and measured
        measured, compared = _compared(ff, config, id_bytes)
        factory = measured or factory
    lists = OnDiskLists(factory, n, d, config, work_dir, reason) if reason else None
    index = make_index(factory, d, config.metric)
    try:
        estimate = estimate_bytes(factory, n, d)["total"]
    except UserError:
        estimate = None
    log.info("building %s over %d x %d features (%s)%s", factory, n, d, config.metric,
             f"; about {estimate / 2**20:,.0f} MiB" if estimate else "")
    t_train = time.perf_counter()
    train_n = 0 if index.is_trained else train(index, ff, factory, config)
    train_seconds = time.perf_counter() - t_train
    calib = None
    if tunable_parameter(index) is not None and n > 1:
        rows = sample_rows(n, config.calibration_queries, config.seed + 1)
        calib = Calibration(ff.load(rows), rows, config.metric, n)
    content = fill(index if lists is None else lists.sink(index), ff, replace(config, factory=factory), 0, quiet, calib)
    search_params = {}
    if lists is not None:
        lists.finish()
        search_params["max_codes"] = lists.max_codes()
    build_seconds = time.perf_counter() - t0

    if refine_stage(index) is not None:
        search_params["k_factor"] = REFINE_CANDIDATES
    set_search_params(index, search_params)
    calibration = None
    if calib is not None:
        with lists.paged(index) if lists is not None else contextlib.nullcontext():
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
        "train_seconds": round(train_seconds, 3),
        "estimated_bytes": estimate,
        "estimated_memory": {"index": estimate, "ids": id_bytes,
                             "total": None if estimate is None else estimate + id_bytes},
        "candidates": compared,
        "search_params": search_params,
        "calibration": calibration,
        "index_config": {k: v for k, v in asdict(config).items() if k != "search_params"},
        "features": {**features_record(ff), "content_sha256": content},
        "faiss_version": faiss.__version__,
        "storage": lists.record() if lists is not None else {"lists": "memory"},
    }
    log.info("built %s: %d vectors in %.1f s", factory, index.ntotal, build_seconds)
    return BuiltIndex(index, meta, lists.ivfdata if lists is not None else None)


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
    check_writable(out_dir)
    ff = open_source(features)
    factory, disk = resolve_storage(len(ff), ff.dim, config, id_bytes=ids_bytes(ff))
    action, reason, previous = plan_update(out_dir, ff, config, factory) if incremental else ("built", "", None)
    if action in ("unchanged", "added") and (IVFDATA_FILE in previous.meta["files"]) != bool(disk):
        action, reason = "rebuilt", f"the lists go {'on disk' if disk else 'in memory'} now ({disk or '--in-memory'})"
    if action == "unchanged":
        return dict(previous.meta, update={"action": action, "reason": reason, "rows_before": previous.meta["n"]})
    if action == "added":
        try:
            index, meta = update_index(previous, ff, config, quiet)
        except PrefixChanged:
            action, reason = "rebuilt", f"the first {previous.meta['n']} rows of {ff.path} changed since the build"
    with work_folder(out_dir) as work:
        ivfdata = None
        if action != "added":
            built = build_index(ff, config, quiet=quiet, work_dir=work)
            index, meta, ivfdata = built.index, built.meta, built.ivfdata
        meta["update"] = {"action": action, "reason": reason, "rows_before": previous.meta["n"] if previous else 0}
        save_index(index, meta, out_dir, ivfdata=ivfdata)
    return read_sidecar(out_dir)


def parse_size(text: str) -> int:
    """Bytes from ``"8GiB"``, ``"512MiB"``, ``"2G"`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UserError(f"cannot read {text!r} as a size; write e.g. 8GiB or 512MiB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)
