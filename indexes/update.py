"""A feature file that grew since its index was built: add only the new rows, or say why it is rebuilt;
and the staleness report ``search`` gives for an index older than its feature file.

The sidecar records of its feature source the sha256 of the ids in order and of 16 rows spread over
the file (:func:`source_state`). A file whose first ``n`` rows still give both hashes is the same file
with rows appended (confirmed while adding by the sha256 of all the old rows' values, recorded at build
time); then Flat, IVF and HNSW indexes take the new rows as they are (IVF lists keep their
trained centroids, which is why a file that more than doubled is rebuilt instead), and other kinds, whose
codes were trained for the old rows alone, are rebuilt.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

from extract.core.errors import UserError
from indexes.fill import fill
from indexes.io import IVFDATA_FILE, SIDECAR_FILE, load_index
from indexes.state import features_record, grown_from, source_state

log = logging.getLogger(__name__)

_SAME_OPTIONS = ("metric", "target_recall", "max_query_ms", "train_size", "seed", "kmeans_iters", "calibration_queries")
MAX_GROWTH = 2.0  # an IVF index whose rows more than doubled is retrained


def _can_add(index) -> str | None:
    """None when the index kind takes new rows as is; else why it must be rebuilt."""
    import faiss

    from indexes.params import _unwrap

    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexFlat | faiss.IndexIVF | faiss.IndexHNSW):
        return None
    return f"{type(inner).__name__} codes are trained for the rows they were built from"


def plan_update(out_dir: str | os.PathLike, ff, config, factory: str) -> tuple[str, str, object]:
    """``(action, reason, previous)`` for building ``factory`` (resolved) over ``ff`` into ``out_dir``:
    ``built`` (no index yet), ``added``, ``unchanged`` or ``rebuilt``."""
    folder = Path(out_dir)
    if not (folder / SIDECAR_FILE).exists():
        return "built", "", None
    try:
        prev = load_index(folder, mmap=False)
    except UserError as exc:
        return "rebuilt", f"the existing index cannot be used ({exc})", None
    meta = prev.meta
    old_cfg = meta.get("index_config") or {}
    changed = [k for k in _SAME_OPTIONS if k in old_cfg and old_cfg[k] != getattr(config, k)]
    if meta["d"] != ff.dim:
        return "rebuilt", f"the index holds {meta['d']}-d vectors, {ff.path} {ff.dim}-d ones", prev
    if changed:
        return "rebuilt", "options changed (" + ", ".join(f"{k} {old_cfg[k]} -> {getattr(config, k)}" for k in changed) + ")", prev
    measured = config.factory == "auto" and bool(meta.get("candidates"))  # chosen by measurement, not the model
    if factory != meta["factory"] and not measured:
        why = "the auto choice" if config.factory == "auto" else "--index"
        return "rebuilt", f"{why} for {len(ff)} rows is {factory}, the index is {meta['factory']}", prev
    if len(ff) == meta["n"] and ff.fingerprint == meta["features"]["fingerprint"]:
        state, was = source_state(ff, len(ff)), meta["features"]
        if all(state.get(k) == was.get(k) for k in ("ids_sha256", "rows_sha256", "size", "mtime_ns")):
            return "unchanged", f"{ff.path} has not changed since the build", prev
        return "rebuilt", f"{ff.path} was rewritten since the build", prev
    if not grown_from(meta, ff):
        return "rebuilt", f"the first {meta['n']} rows of {ff.path} changed (ids or vectors) since the build", prev
    if IVFDATA_FILE in meta["files"]:
        return "rebuilt", "on-disk lists are rebuilt as a whole, not changed in place", prev
    why = _can_add(prev.index)
    if why:
        return "rebuilt", why, prev
    if "IVF" in factory and len(ff) > MAX_GROWTH * meta["n"]:
        return "rebuilt", f"the rows grew from {meta['n']} to {len(ff)}, more than {MAX_GROWTH:g}x: lists retrained", prev
    return "added", f"{len(ff) - meta['n']} new rows", prev


def update_index(prev, ff, config, quiet: bool = False) -> tuple[object, dict]:
    """Add rows ``prev.meta['n']..`` of ``ff`` to the loaded index ``prev``; returns ``(index, sidecar)``.

    The rows the index holds are read and hashed first (one pass over the file with the new rows): when
    they differ from the build's :class:`~indexes.fill.PrefixChanged` is raised and nothing is added.
    """
    meta = {k: v for k, v in prev.meta.items() if k not in ("files", "format_version", "update")}
    n0 = meta["n"]
    t0 = time.perf_counter()
    content = fill(prev.index, ff, replace(config, factory=meta["factory"]), n0, quiet,
                   prefix_sha256=meta["features"].get("content_sha256", ""))
    meta.update(n=int(prev.index.ntotal), features={**features_record(ff), "content_sha256": content})
    meta["add_seconds"] = round(time.perf_counter() - t0, 3)
    if meta.get("calibration"):
        meta["calibration"] = dict(meta["calibration"], rows=meta["calibration"].get("rows", n0))
    log.info("added %d rows to %s (%d -> %d)", prev.index.ntotal - n0, meta["factory"], n0, prev.index.ntotal)
    return prev.index, meta
