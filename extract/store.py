"""HDF5 feature store: image ids, pooled features, failed images and the config that made them.

Layout of a feature file (readable with plain h5py)::

    /ids               (N,)    UTF-8 strings, the image path relative to the image root
    /features          (N, D)  float32, chunked, resizable along N
    /failed/ids        (F,)    UTF-8 strings, images that could not be used
    /failed/reasons    (F,)    UTF-8 strings, one reason per failed image
    attrs              config (JSON string) + each scalar config value as its own attr,
                       format_version, count, dim, fingerprint

Writes are atomic: a file is written under ``NAME.tmp`` and renamed into place, so a reader never sees
half a file. Extraction appends through :class:`ResumableWriter`, which keeps committed batches as
small part files (each renamed into place once complete) and merges them into the final file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_ROWS = 256
_STR = h5py.string_dtype("utf-8")


def fingerprint(ids: Sequence[str], shape: tuple[int, ...]) -> str:
    """Identity of a feature file's rows: sha256 of the ids in order and the matrix shape."""
    h = hashlib.sha256()
    h.update(json.dumps(list(shape)).encode())
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureFile:
    """A validated, opened-for-reading feature file. ``ids[i]`` names row ``i`` of the features."""

    path: Path
    ids: list[str]
    dim: int
    config: dict
    fingerprint: str
    failed: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Return features as ``(n, D) float32``: all rows, or the given row numbers in that order."""
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            if rows is None:
                return ds[...].astype(np.float32, copy=False)
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size == 0:
                return np.zeros((0, self.dim), np.float32)
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            uniq, inverse = np.unique(sorted_rows, return_inverse=True)
            block = ds[uniq.tolist()]
            out = np.empty((rows.size, self.dim), np.float32)
            out[order] = block[inverse]
            return out

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, (b, D) float32)`` blocks, so large files never sit whole in memory."""
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            for start in range(0, ds.shape[0], block_rows):
                yield start, ds[start : start + block_rows].astype(np.float32, copy=False)

    def row_of(self) -> dict[str, int]:
        """Map id -> row number."""
        return {i: r for r, i in enumerate(self.ids)}


def open_features(path: str | os.PathLike) -> FeatureFile:
    """Open and validate a feature file; a missing or malformed file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"feature file {path} does not exist; create it with `cli.py extract` or `cli.py import-vectors`")
    try:
        with h5py.File(path, "r") as f:
            if "ids" not in f or "features" not in f:
                raise UserError(f"{path} is not a buscador feature file (needs /ids and /features datasets)")
            ds = f["features"]
            if ds.ndim != 2:
                raise UserError(f"{path}: /features must be 2-D (N, D), found shape {ds.shape}")
            ids = [s for s in f["ids"].asstr()[...]]
            if len(ids) != ds.shape[0]:
                raise UserError(f"{path}: {len(ids)} ids but {ds.shape[0]} feature rows; the file is damaged, re-create it")
            config = json.loads(f.attrs.get("config", "{}"))
            fp = f.attrs.get("fingerprint") or fingerprint(ids, ds.shape)
            failed = []
            if "failed" in f:
                failed = list(zip(f["failed/ids"].asstr()[...], f["failed/reasons"].asstr()[...]))
            return FeatureFile(path, ids, int(ds.shape[1]), config, str(fp), failed)
    except OSError as exc:
        raise UserError(f"cannot read {path} as HDF5 ({exc}); re-create it or pass another file") from None


def _create_layout(f: h5py.File, dim: int, config: dict) -> None:
    f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(CHUNK_ROWS * 16,))
    f.create_dataset(
        "features", shape=(0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(CHUNK_ROWS, dim)
    )
    g = f.create_group("failed")
    g.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
    g.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    for key, value in config.items():
        for kind in (bool, int, float, str):  # plain types only (str subclasses such as TorchVersion too)
            if isinstance(value, kind):
                f.attrs[key] = kind(value)
                break


def _append(ds: h5py.Dataset, values) -> None:
    n = len(values)
    if n == 0:
        return
    start = ds.shape[0]
    ds.resize(start + n, axis=0)
    ds[start : start + n] = values


def _seal(f: h5py.File) -> None:
    ids = list(f["ids"].asstr()[...])
    shape = f["features"].shape
    f.attrs["count"] = shape[0]
    f.attrs["dim"] = shape[1]
    f.attrs["fingerprint"] = fingerprint(ids, shape)


def write_features(
    path: str | os.PathLike,
    ids: Sequence[str],
    xb: np.ndarray,
    config: dict,
    failed: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write a complete feature file atomically. ``xb`` is ``(N, D)``, stored as float32."""
    xb = np.asarray(xb)
    if xb.ndim != 2 or xb.shape[0] != len(ids):
        raise ValueError(f"features shape {xb.shape} does not match {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise UserError(f"{len(ids) - len(set(ids))} duplicate ids; ids must be unique")
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _create_layout(f, xb.shape[1], config)
        _append(f["ids"], list(ids))
        for start in range(0, xb.shape[0], 65536):
            _append(f["features"], xb[start : start + 65536].astype(np.float32, copy=False))
        _append(f["failed/ids"], [i for i, _ in failed])
        _append(f["failed/reasons"], [r for _, r in failed])
        _seal(f)
    return path


class ResumableWriter:
    """Append batches to a feature file so that a killed run loses nothing it reported written.

    Each committed batch is a part file ``OUT.parts/part-NNNNNN.h5`` (written whole, fsynced, renamed
    into place); :meth:`finalize` merges the existing ``OUT`` (if any) and all parts into a new ``OUT``
    atomically, then removes the parts. A kill at any point leaves either the old complete file plus
    complete parts, or the new complete file; leftover ``.tmp`` files are discarded on the next start.

    ``match_keys`` are the config keys that must agree with an existing file or unfinished run
    (model, weights, image size, ...): resuming with different ones is refused.
    """

    def __init__(self, out: str | os.PathLike, config: dict, dim: int, match_keys: Sequence[str] = ()):
        self.out = Path(out)
        self.parts_dir = self.out.with_name(self.out.name + ".parts")
        self.config = dict(config)
        self.dim = dim
        self.match_keys = tuple(match_keys)
        self._done: set[str] = set()
        self._failed_done: set[str] = set()
        self._next_part = 0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.with_name(self.out.name + ".tmp").unlink(missing_ok=True)
        if self.out.exists():
            existing = open_features(self.out)
            self._check_config(existing.config, str(self.out), existing.dim)
            self._done.update(existing.ids)
            self._failed_done.update(i for i, _ in existing.failed)
        if self.parts_dir.exists():
            self._load_parts()
        else:
            self.parts_dir.mkdir()
        with atomic_path(self.parts_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(self.config, sort_keys=True, default=str, indent=1))

    def _check_config(self, other: dict, where: str, dim: int) -> None:
        if dim != self.dim:
            raise UserError(f"{where} holds {dim}-d features but this run makes {self.dim}-d ones; pass another output file")
        for key in self.match_keys:
            if key in other and other.get(key) != self.config.get(key):
                raise UserError(
                    f"{where} was made with {key}={other.get(key)!r} but this run has {key}={self.config.get(key)!r}; "
                    "use the same options to resume, or pass another output file"
                )

    def _part_paths(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.h5"))

    def _load_parts(self) -> None:
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()
        cfg_path = self.parts_dir / "config.json"
        if cfg_path.exists():
            self._check_config(json.loads(cfg_path.read_text()), str(self.parts_dir), self.dim)
        for part in self._part_paths():
            with h5py.File(part, "r") as f:
                self._done.update(f["ids"].asstr()[...])
                self._failed_done.update(f["failed/ids"].asstr()[...])
            self._next_part = max(self._next_part, int(part.stem.split("-")[1]) + 1)

    @property
    def done(self) -> set[str]:
        """Ids already written or already recorded as failed (by this run or an earlier one)."""
        return self._done | self._failed_done

    @property
    def written(self) -> int:
        return len(self._done)

    def commit(self, ids: Sequence[str], xb: np.ndarray, failed: Sequence[tuple[str, str]] = ()) -> None:
        """Durably add a batch. When this returns, the batch survives a kill of the process."""
        keep = [r for r, i in enumerate(ids) if i not in self._done]
        ids = [ids[r] for r in keep]
        xb = np.asarray(xb, dtype=np.float32)[keep] if len(keep) else np.zeros((0, self.dim), np.float32)
        failed = [(i, why) for i, why in failed if i not in self._done and i not in self._failed_done]
        if not ids and not failed:
            return
        part = self.parts_dir / f"part-{self._next_part:06d}.h5"
        with atomic_path(part) as tmp, h5py.File(tmp, "w") as f:
            _create_layout(f, self.dim, {})
            _append(f["ids"], ids)
            _append(f["features"], xb)
            _append(f["failed/ids"], [i for i, _ in failed])
            _append(f["failed/reasons"], [r for _, r in failed])
        self._next_part += 1
        self._done.update(ids)
        self._failed_done.update(i for i, _ in failed)

    def finalize(self) -> Path:
        """Merge the existing file and all parts into ``out`` (atomically) and remove the parts."""
        if self.out.exists() and not self._part_paths():  # nothing new: keep the file as it is
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.out
        sources = ([self.out] if self.out.exists() else []) + self._part_paths()
        seen: set[str] = set()
        seen_failed: set[str] = set()
        with atomic_path(self.out) as tmp, h5py.File(tmp, "w") as dst:
            _create_layout(dst, self.dim, self.config)
            for src_path in sources:
                with h5py.File(src_path, "r") as src:
                    ids = list(src["ids"].asstr()[...])
                    keep = np.array([i not in seen for i in ids], dtype=bool)
                    for start in range(0, len(ids), 65536):
                        rows = keep[start : start + 65536]
                        block = src["features"][start : start + 65536]
                        _append(dst["features"], block[rows])
                    _append(dst["ids"], [i for i, k in zip(ids, keep) if k])
                    seen.update(ids)
                    fids = list(src["failed/ids"].asstr()[...])
                    freasons = list(src["failed/reasons"].asstr()[...])
                    pairs = [(i, r) for i, r in zip(fids, freasons) if i not in seen_failed and i not in seen]
                    _append(dst["failed/ids"], [i for i, _ in pairs])
                    _append(dst["failed/reasons"], [r for _, r in pairs])
                    seen_failed.update(fids)
            _seal(dst)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.out
