"""Import precomputed image features in the COCO-Spanish format into a buscador feature file.

The format is a pair of files: ``*_images_names.txt`` (one image name per line) and
``*_images_vectors.bin`` (raw little-endian float32, one row of ``dim`` values per name, no header).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from extract.store import write_features

log = logging.getLogger(__name__)

_BLOCK = 65_536  # rows checked for NaN/inf at a time, so the check never holds a full-size boolean array


def read_names(path: str | os.PathLike) -> list[str]:
    """Image names, one per line (blank lines and a UTF-8 byte-order mark ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read names file {path} ({exc.__class__.__name__}); pass a UTF-8 text file") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def import_vectors(names_path: str | os.PathLike, vectors_path: str | os.PathLike, out: str | os.PathLike,
                   dim: int = 2048) -> Path:
    """Write ``out`` from a names file and a raw ``(N, dim) float32`` vectors file; sizes must agree."""
    if dim < 1:
        raise UserError(f"--dim must be >= 1, got {dim}")
    names = read_names(names_path)
    if not names:
        raise UserError(f"{names_path} holds no names; it needs one image name per line")
    size = os.path.getsize(vectors_path)
    expected = len(names) * dim * 4
    if size != expected:
        hint = ""
        if size % (4 * len(names)) == 0 and size:
            hint = f"; the size fits --dim {size // (4 * len(names))}"
        elif size % (4 * dim) == 0:
            hint = f"; the size fits {size // (4 * dim)} rows of {dim}, not {len(names)}"
        raise UserError(
            f"{vectors_path} has {size} bytes but {len(names)} names x {dim} dims x 4 bytes = {expected} were "
            f"expected{hint}; check --dim and that the two files belong together"
        )
    xb = np.memmap(vectors_path, dtype="<f4", mode="r", shape=(len(names), dim))
    bad = sum(int(np.count_nonzero(~np.isfinite(xb[s : s + _BLOCK]).all(axis=1))) for s in range(0, len(xb), _BLOCK))
    if bad:
        log.warning("%d of %d imported rows contain NaN or inf: they are listed as failed, not stored", bad, len(names))
    config = {
        "model": "imported",
        "weights": "imported",
        "dim": dim,
        "source_names": str(Path(names_path).resolve()),
        "source_vectors": str(Path(vectors_path).resolve()),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return write_features(out, names, xb, config)
