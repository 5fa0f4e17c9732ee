"""What an index records of its feature source, to recognise the same file with rows appended.

The sidecar keeps the sha256 of the ids in order and of 16 rows spread over the file
(:func:`source_state`), plus its size and mtime. ``search`` uses them to tell a file that grew after the
build (a stale index: the warning names the command that adds the new rows) from one that changed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

_CHECK_ROWS = 16


def ids_sha256(ids, n: int) -> str:
    h = hashlib.sha256()
    for i in ids[:n]:
        h.update(str(i).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def rows_sha256(ff, n: int) -> str:
    """sha256 of ``_CHECK_ROWS`` rows spread evenly over the first ``n`` rows (float32 bytes)."""
    rows = np.unique(np.linspace(0, max(n - 1, 0), _CHECK_ROWS).astype(np.int64)) if n else np.zeros(0, np.int64)
    return hashlib.sha256(np.ascontiguousarray(ff.load(rows), dtype=np.float32).tobytes()).hexdigest()


def source_state(ff, n: int) -> dict:
    """The sidecar's record of the first ``n`` rows of a feature source, and the file's size and mtime."""
    state = {"rows": int(n), "ids_sha256": ids_sha256(ff.ids, n), "rows_sha256": rows_sha256(ff, n)}
    path = Path(str(ff.path))
    if path.is_file():
        st = path.stat()
        state.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    return state


def grown_from(meta: dict, ff) -> bool:
    """True when ``ff`` is the feature source the index was built from with rows appended."""
    feats = meta["features"]
    n = meta["n"]
    if "ids_sha256" not in feats or len(ff) <= n or ff.dim != meta["d"]:
        return False
    return ids_sha256(ff.ids, n) == feats["ids_sha256"] and rows_sha256(ff, n) == feats.get("rows_sha256")


def stale_report(meta: dict, ff, folder: str | os.PathLike) -> str | None:
    """A warning when the index covers only the first rows of a feature file that grew after the build."""
    if ff.fingerprint == meta["features"]["fingerprint"] or not grown_from(meta, ff):
        return None
    return (f"the index {folder} is stale: it covers {meta['n']} of the {len(ff)} rows of {ff.path} (rows were added "
            f"after it was built), so the {len(ff) - meta['n']} new images cannot be found; run "
            f"`cli.py index build {ff.path} {folder}` to add them")


def features_record(ff) -> dict:
    """What the sidecar records of the feature source: path, fingerprint, model, config, and a content
    check (ids in order, and a sample of rows) that lets a grown file be recognised (:mod:`indexes.update`)."""
    return {"path": str(Path(ff.path).resolve()) if not str(ff.path).startswith("synthetic:") else str(ff.path),
            "fingerprint": ff.fingerprint, "model": ff.config.get("model"), "config": ff.config,
            **source_state(ff, len(ff))}
