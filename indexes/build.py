"""Build a FAISS index over an HDF5 feature file: factory strings, the ``auto`` choice, training, adding.

Row ``i`` of the index is row ``i`` of the feature file's ``ids``. Features are read in blocks and added
to the index block by block, so memory holds the index plus one block (and the training sample), never
a second full copy of the features.

The ``auto`` rule (after faiss's "Guidelines to choose an index"), with ``F = N * d * 4`` bytes the size
of the raw float32 vectors and ``B`` the memory budget:

* ``N <= 50,000`` and ``F <= B``: ``Flat``, exact search (brute force is a few ms per query there);
* ``F <= B``: ``IVF{K},Flat``, vectors kept exactly, only the lists near the query are scanned;
* ``F / 4 <= B``: ``IVF{K},SQ8``, 8-bit scalar quantisation (1 byte per dimension);
* otherwise ``IVF{K},PQ{m}`` with the largest ``m`` (bytes per vector) whose codes fit in ``B``.

``K`` is the power of two nearest ``4 * sqrt(N)`` (the guideline's lower end for N below 1M; also used
above 1M, where the guideline's 65,536 lists would take hours to train on a few CPU cores), and never so
large that a list would get fewer than 39 training points.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from extract.store import FeatureFile, fingerprint_arrays, open_features
from indexes.io import read_sidecar, save_index
from indexes.params import set_search_params, tunable_parameter

log = logging.getLogger(__name__)

METRICS = ("cosine", "ip", "l2")
FLAT_MAX_N = 50_000
DEFAULT_BUDGET = 8 << 30
_PQ_BYTES = (256, 128, 64, 32, 16, 8)


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
    kmeans_iters: int = 10
    seed: int = 0
    search_params: dict = field(default_factory=dict)

    @property
    def normalize(self) -> bool:
        """Cosine similarity is inner product on L2-normalised vectors."""
        return self.metric == "cosine"


def faiss_metric(metric: str) -> int:
    """The faiss metric constant for ``cosine``/``ip`` (inner product) or ``l2``."""
    import faiss

    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def n_lists(n: int) -> int:
    """Number of IVF lists: the power of two nearest ``4 * sqrt(n)``, with >= 39 points per list."""
    k = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    while k > 1 and n < 39 * k:
        k //= 2
    return max(k, 1)


def auto_factory(n: int, d: int, memory_budget: int = DEFAULT_BUDGET) -> str:
    """Pick a factory string for ``n`` vectors of dimension ``d`` within ``memory_budget`` bytes (see module doc)."""
    flat_bytes = n * d * 4
    if n <= FLAT_MAX_N and flat_bytes <= memory_budget:
        return "Flat"
    k = n_lists(n)
    if flat_bytes <= memory_budget:
        return f"IVF{k},Flat"
    if flat_bytes // 4 <= memory_budget:
        return f"IVF{k},SQ8"
    for m in _PQ_BYTES:
        if d % m == 0 and n * m <= memory_budget:
            return f"IVF{k},PQ{m}"
    raise UserError(
        f"{n} x {d} vectors do not fit a memory budget of {memory_budget / 2**30:.1f} GiB even as 8-byte PQ codes; "
        "raise --memory-budget"
    )


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


def build_index(
    features: str | os.PathLike | FeatureFile,
    config: IndexConfig = IndexConfig(),
    quiet: bool = False,
) -> BuiltIndex:
    """Build an index over every row of a feature file (see the module doc for ``factory="auto"``).

    Approximate indexes are calibrated while they are filled: ``calibration_queries`` stored vectors are
    searched exactly against every block as it is added, and afterwards the smallest ``nprobe`` /
    ``efSearch`` reaching ``target_recall`` recall@10 is recorded as the default search parameter.
    """
    import faiss

    ff = features if hasattr(features, "iter_blocks") else open_features(features)
    n, d = len(ff), ff.dim
    if n == 0:
        raise UserError(f"{ff.path} holds no feature rows; nothing to index")
    factory = auto_factory(n, d, config.memory_budget) if config.factory == "auto" else config.factory
    t0 = time.perf_counter()
    index = make_index(factory, d, config.metric)
    log.info("building %s over %d x %d features (%s)", factory, n, d, config.metric)

    train_n = 0
    if not index.is_trained:
        rows = _sample_rows(n, config.train_size, config.seed)
        xt = ff.load(rows)
        if config.normalize:
            normalize_rows(xt)
        train_n = len(xt)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = config.kmeans_iters  # 10 k-means rounds: cells barely move after that
        log.info("training on a sample of %d vectors", train_n)
        try:
            index.train(xt)
        except RuntimeError as exc:
            raise UserError(f"cannot train {factory!r} on {train_n} vectors ({str(exc).strip().splitlines()[-1]}); "
                            "use fewer lists/centroids or a Flat index") from None
        del xt

    calib = _Calibration(ff, config) if tunable_parameter(index) is not None else None
    with _progress(n, f"adding to {factory}", quiet) as bar:
        for start, xb in ff.iter_blocks(config.block_rows):
            if config.normalize:
                normalize_rows(xb)
            index.add(xb)
            if calib is not None:
                calib.add_block(start, xb, config.metric)
            bar.update(len(xb))
    build_seconds = time.perf_counter() - t0

    search_params = dict(config.search_params)
    calibration = None
    if calib is not None:
        tuned, calibration = calib.tune(index, config.target_recall)
        search_params = {**tuned, **search_params}
        set_search_params(index, search_params)

    meta = {
        "factory": factory,
        "metric": config.metric,
        "normalize": config.normalize,
        "n": int(index.ntotal),
        "d": int(d),
        "build_seconds": round(build_seconds, 3),
        "train_size": train_n,
        "search_params": search_params,
        "calibration": calibration,
        "index_config": {k: v for k, v in asdict(config).items() if k != "search_params"},
        "features": {
            "path": str(Path(ff.path).resolve()),
            "fingerprint": ff.fingerprint,
            "model": ff.config.get("model"),
            "config": ff.config,
        },
        "faiss_version": faiss.__version__,
    }
    log.info("built %s: %d vectors in %.1f s", factory, index.ntotal, build_seconds)
    return BuiltIndex(index, meta)


def recall_at(I: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-``k`` (``gt``, (nq, >=k) int64) found in the approximate top-``k`` ``I``."""
    hits = [len(set(a[:k].tolist()) & set(b[:k].tolist()) - {-1}) for a, b in zip(I, gt)]
    return float(np.mean(hits)) / k


class _Calibration:
    """Exact top-10 of some stored vectors, accumulated block by block while the index is filled."""

    k = 10

    def __init__(self, ff: FeatureFile, config: IndexConfig):
        import faiss

        rows = _sample_rows(len(ff), config.calibration_queries, config.seed + 1)
        self.xq = ff.load(rows)
        if config.normalize:
            normalize_rows(self.xq)
        self.k = min(self.k, len(ff))
        self.heap = faiss.ResultHeap(len(self.xq), self.k, keep_max=config.metric != "l2")

    def add_block(self, start: int, xb: np.ndarray, metric: str) -> None:
        import faiss

        D, I = faiss.knn(self.xq, xb, min(self.k, len(xb)), metric=faiss_metric(metric))
        self.heap.add_result(D, np.where(I >= 0, I + start, -1))

    def tune(self, index, target: float) -> tuple[dict, dict]:
        self.heap.finalize()
        gt = self.heap.I
        name, values = tunable_parameter(index)
        best, reached = values[-1], 0.0
        for value in values:
            set_search_params(index, {name: value})
            _, I = index.search(self.xq, self.k)
            reached = recall_at(I, gt, self.k)
            if reached >= target:
                best = value
                break
        log.info("calibrated %s=%d: recall@%d %.3f on %d stored vectors", name, best, self.k, reached, len(self.xq))
        return {name: best}, {"parameter": name, "value": best, f"recall@{self.k}": round(reached, 4),
                              "queries": len(self.xq), "target": target}


def build_index_dir(
    features: str | os.PathLike, out_dir: str | os.PathLike, config: IndexConfig = IndexConfig(), quiet: bool = False
) -> dict:
    """Build an index over ``features`` and save it to ``OUT_DIR`` (index.faiss + index.json); returns the sidecar."""

    built = build_index(features, config, quiet=quiet)
    save_index(built.index, built.meta, out_dir)
    return read_sidecar(out_dir)


def parse_size(text: str) -> int:
    """Bytes from ``"8GiB"``, ``"512MiB"``, ``"2G"`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise UserError(f"cannot read {text!r} as a size; write e.g. 8GiB or 512MiB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * scale)
