"""HDF5 feature store: image ids, pooled features, where each row came from, failed images and the config.

Layout of a feature file (format 2, readable with plain h5py)::

    /ids                 (N,)    UTF-8 strings, the image path relative to the image root
    /features            (N, D)  float32 (or float16: config ``dtype``), chunked, resizable along N; every value finite
    /sources/size        (N,)    int64, size in bytes of the source image when it was read (-1: unknown)
    /sources/mtime_ns    (N,)    int64, its modification time in ns (-1: unknown)
    /sources/sha256      (N,)    64-byte ASCII, sha256 of its bytes ("" : unknown)
    /failed/ids          (F,)    UTF-8 strings, images that could not be used
    /failed/reasons      (F,)    UTF-8 strings, one reason per failed image
    /failed/size, /failed/mtime_ns, /failed/sha256   the same source record for each failed image
    attrs                config (JSON string) + each scalar config value as its own attr,
                         format_version, count, dim, ids_sha256, values_sha256, content_sha256, fingerprint

A ``dtype: float16`` file halves the disk (8 KiB -> 4 KiB per 2048-d row); every reader still hands out
float32 (the float16 values, exactly), so downstream code never sees the storage type. Values are rounded
to nearest (relative error <= 2^-11); a row beyond float16's range (|x| > 65504) is recorded as failed.

``values_sha256`` hashes the float32 rows (as readers get them) in order and ``ids_sha256`` the ids in order, both computed
block by block while the file is written; ``content_sha256`` combines them with the shape, and
``fingerprint`` (16 hex digits) combines the content hash with the config that made the features
(model, weights and their sha256, preprocessing, ...; :mod:`extract.fingerprints`). Opening a file checks the
shape, config and attrs against each other (cheap: nothing is hashed, so a cold search stays fast);
:meth:`FeatureFile.verify` and :meth:`FeatureFile.load_verified` (used by training and evaluation)
re-hash the ids and values too. Writes are atomic: a file is written under ``NAME.tmp`` and renamed into
place, so a reader never sees half a file. Extraction appends through
:class:`extract.parts.ResumableWriter`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path
from extract.core.ids import PackedIds
from extract.fingerprints import ContentHash, combine_content, fingerprint

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
CHUNK_ROWS = 256
BLOCK_ROWS = 65536
NO_SOURCE = (-1, -1, "")
_STR = h5py.string_dtype("utf-8")
_SHA = np.dtype("S64")
_SOURCE_FIELDS = ("size", "mtime_ns", "sha256")
DTYPES = ("float32", "float16")

SourceStat = tuple[int, int, str]  # (size in bytes, mtime in ns, sha256 hex) of a source image


def storable_id(image_id: str) -> str:
    """``image_id`` as it can be stored in UTF-8: undecodable file-name bytes become ``\\xNN`` escapes."""
    try:
        image_id.encode("utf-8")
        return image_id
    except UnicodeEncodeError:
        return os.fsencode(image_id).decode("utf-8", "backslashreplace")


def storage_dtype(config: Mapping) -> np.dtype:
    """The dtype a feature file with this config stores its values in (float32 unless ``dtype`` says float16)."""
    name = str(dict(config or {}).get("dtype", "float32"))
    if name not in DTYPES:
        raise UserError(f"unknown feature dtype {name!r}; use one of {', '.join(DTYPES)}")
    return np.dtype(name)


def first_nonfinite(xb: np.ndarray) -> int | None:
    """Row number of the first row of ``xb`` holding NaN or inf, or ``None``."""
    bad = ~np.isfinite(xb).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def write_error(exc: OSError, path: str | os.PathLike, kept: str = "") -> UserError:
    """A one-line :class:`UserError` for a failed write (disk full, read-only folder, ...)."""
    code = exc.errno
    text = str(exc)
    if code is None and ("errno = 28" in text or "No space left" in text):
        code = errno.ENOSPC
    if code == errno.ENOSPC:
        why = "the disk is full"
        fix = "free some space and run the same command again"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
        fix = "pass an output path in a writable folder"
    else:
        why = (exc.strerror or text.strip().splitlines()[-1] if text.strip() else type(exc).__name__)
        fix = "check the output folder and run the same command again"
    return UserError(f"cannot write {path}: {why}; {fix}" + (f" ({kept})" if kept else ""))


@dataclass(frozen=True)
class FeatureFile:
    """A validated, opened-for-reading feature file. ``ids[i]`` names row ``i`` of the features."""

    path: Path
    ids: Sequence[str]  # a PackedIds when opened from a file
    dim: int
    config: dict
    fingerprint: str
    failed: list[tuple[str, str]] = field(default_factory=list)
    content_sha256: str = ""
    values_sha256: str = ""
    format_version: int = FORMAT_VERSION
    ids_sha256: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dtype(self) -> str:
        """How the values are stored (``float32`` or ``float16``); readers always return float32."""
        return str(storage_dtype(self.config))

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
            block = ds[uniq.tolist()].astype(np.float32, copy=False)
            if uniq.size == rows.size and np.array_equal(order, np.arange(rows.size)):
                return block  # sorted distinct rows (a training sample): no second and third copy
            out = np.empty((rows.size, self.dim), np.float32)
            out[order] = block[inverse]
            return out

    def iter_blocks(self, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, (b, D) float32)`` blocks, so large files never sit whole in memory."""
        with h5py.File(self.path, "r") as f:
            ds = f["features"]
            for start in range(0, ds.shape[0], block_rows):
                yield start, ds[start : start + block_rows].astype(np.float32, copy=False)

    def row_of(self) -> dict[str, int]:
        """Map id -> row number."""
        return {i: r for r, i in enumerate(self.ids)}

    def sources(self) -> dict[str, SourceStat]:
        """Source record ``id -> (size, mtime_ns, sha256)`` of every row and failed image (unknown: -1, -1, "")."""
        with h5py.File(self.path, "r") as f:
            out = dict(zip(self.ids, _read_sources(f, "sources", len(self.ids))))
            out.update(zip((i for i, _ in self.failed), _read_sources(f, "failed", len(self.failed))))
        return out

    def load_verified(self) -> np.ndarray:
        """All rows ``(N, D) float32`` after checking them: finite, and hashing to the recorded content.

        A changed or damaged file is a :class:`UserError` naming it and how to re-create it.
        """
        out = np.empty((len(self), self.dim), np.float32)
        self._scan(out)
        return out

    def verify(self) -> None:
        """Re-hash every value and check it against the recorded hashes (see :meth:`load_verified`)."""
        self._scan(None)

    def _scan(self, out: np.ndarray | None) -> None:
        try:
            self._scan_blocks(out)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot read the features of {self.path} ({_one_line(exc)}); the file is damaged: "
                            "re-create it with `cli.py extract`") from None

    def _scan_blocks(self, out: np.ndarray | None) -> None:
        h = ContentHash(self.dim)
        for start, block in self.iter_blocks():
            if out is not None:
                out[start : start + len(block)] = block
            h.update(self.ids[start : start + len(block)], block)
            bad = first_nonfinite(block)
            if bad is not None:
                r = start + bad
                raise UserError(f"{self.path} row {r} (id {self.ids[r]!r}) holds NaN or inf; re-extract the "
                                "file with `cli.py extract` (it records such images as failed)")
        if self.ids_sha256 and h.ids_sha256 != self.ids_sha256:
            raise UserError(f"the ids of {self.path} changed after it was written (recorded ids sha256 "
                            f"{self.ids_sha256[:16]}, now {h.ids_sha256[:16]}); re-create it with `cli.py extract`")
        if self.values_sha256 and h.values_sha256 != self.values_sha256:
            raise UserError(f"the feature values of {self.path} changed after it was written (recorded values "
                            f"sha256 {self.values_sha256[:16]}, the file now hashes to {h.values_sha256[:16]}); "
                            "the file is damaged or was edited: re-create it with `cli.py extract`")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _read_sources(f: h5py.File, group: str, n: int) -> list[SourceStat]:
    if f"{group}/sha256" not in f or f[f"{group}/sha256"].shape[0] != n:  # older or virtual files: unknown
        return [NO_SOURCE] * n
    g = f[group]
    shas = [s.decode("ascii") for s in g["sha256"][...]]
    return list(zip(g["size"][...].tolist(), g["mtime_ns"][...].tolist(), shas))


def _read_ids(ds: h5py.Dataset) -> PackedIds:
    """The ``/ids`` dataset packed (:class:`PackedIds`), read in blocks so no full list of strings is made."""
    step = 65536
    ids = PackedIds.from_encoded(ds[start : start + step] for start in range(0, ds.shape[0], step))
    ids.check_utf8()
    return ids


def open_features(path: str | os.PathLike) -> FeatureFile:
    """Open and validate a feature file; a missing, malformed or inconsistent file is a :class:`UserError`.

    The shape, the config and the recorded hashes must agree (cheap: neither ids nor values are hashed;
    :meth:`FeatureFile.verify` does that). A format-1 file (fingerprint of ids and shape only) gets its content hash
    computed here, with a warning.
    """
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
            ids = _read_ids(f["ids"])
            if len(ids) != ds.shape[0]:
                raise UserError(f"{path}: {len(ids)} ids but {ds.shape[0]} feature rows; the file is damaged, re-create it")
            config = json.loads(f.attrs.get("config", "{}"))
            failed = []
            if "failed" in f:
                failed = list(zip(f["failed/ids"].asstr()[...], f["failed/reasons"].asstr()[...]))
            attrs = {k: f.attrs.get(k) for k in ("ids_sha256", "values_sha256", "content_sha256", "fingerprint")}
            version = int(f.attrs.get("format_version", 1))
            dim = int(ds.shape[1])
            stored_as = ds.dtype
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} has a damaged config or id list ({exc}); re-create it") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise UserError(f"cannot read {path} as HDF5 features ({_one_line(exc)}); the file is damaged "
                        "or of another kind: re-create it or pass another file") from None
    if stored_as != storage_dtype(config):
        raise UserError(f"{path} stores {stored_as} values but its config records dtype {storage_dtype(config)}; "
                        "the file is damaged or was edited: re-create it with `cli.py extract`")
    if not attrs["values_sha256"]:  # format 1: hash it now
        log.warning("%s is a format-1 feature file: hashing its content now (re-create it with `cli.py extract` "
                    "to store the hash)", path)
        h = ContentHash(dim)
        ff = FeatureFile(path, ids, dim, config, "", failed)
        for start, block in ff.iter_blocks():
            h.update(ids[start : start + len(block)], block)
        return FeatureFile(path, ids, dim, config, fingerprint(h.content_sha256, config), failed,
                           h.content_sha256, h.values_sha256, version, h.ids_sha256)
    content = combine_content(len(ids), dim, str(attrs["ids_sha256"]), str(attrs["values_sha256"]))
    fp = fingerprint(content, config)
    if content != attrs["content_sha256"] or fp != attrs["fingerprint"]:
        raise UserError(f"{path} does not match its own record (shape, config or hashes were changed after it was "
                        f"written: fingerprint {attrs['fingerprint']} recorded, {fp} now); re-create it with `cli.py extract`")
    return FeatureFile(path, ids, dim, config, fp, failed, content, str(attrs["values_sha256"]), version,
                       str(attrs["ids_sha256"]))


def _chunks(rows: int) -> int:
    return max(1, min(CHUNK_ROWS, rows))


class FeatureBuilder:
    """Write a feature file's datasets into an open h5py file, hashing rows as they are appended.

    Values are stored in the config's ``dtype`` (:func:`storage_dtype`). Rows holding NaN or inf, or
    values beyond that dtype's range, are never stored: they go to the failed list with the reason.
    """

    def __init__(self, f: h5py.File, dim: int, config: dict, rows: int = CHUNK_ROWS):
        self.f, self.dim, self.config = f, int(dim), dict(config)
        self.hash = ContentHash(dim)
        self.dtype = storage_dtype(self.config)
        chunk = _chunks(rows)
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(chunk * 16,))
        f.create_dataset("features", shape=(0, dim), maxshape=(None, dim), dtype=self.dtype, chunks=(chunk, dim))
        for group in ("sources", "failed"):
            g = f.require_group(group)
            n = chunk * 16 if group == "sources" else 1024
            g.create_dataset("size", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(n,))
            g.create_dataset("mtime_ns", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(n,))
            g.create_dataset("sha256", shape=(0,), maxshape=(None,), dtype=_SHA, chunks=(n,))
        f["failed"].create_dataset("ids", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        f["failed"].create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["config"] = json.dumps(self.config, sort_keys=True, default=str)
        for key, value in self.config.items():
            for kind in (bool, int, float, str):  # plain types only (str subclasses such as TorchVersion too)
                if isinstance(value, kind):
                    f.attrs[key] = kind(value)
                    break

    def add(self, ids: Sequence[str], xb: np.ndarray, sources: Sequence[SourceStat] | None = None) -> int:
        """Append rows (non-finite ones go to the failed list); returns the number of rows stored."""
        ids = [storable_id(i) for i in ids]
        xb = np.asarray(xb, dtype=np.float32)
        sources = list(sources) if sources is not None else [NO_SOURCE] * len(ids)
        if self.dtype != np.float32:
            with np.errstate(over="ignore"):
                stored = xb.astype(self.dtype)
            beyond = np.isfinite(xb).all(axis=1) & ~np.isfinite(stored).all(axis=1) if len(ids) else np.zeros(0, bool)
            xb = stored.astype(np.float32)  # the values readers get back: what is hashed
        else:
            beyond = np.zeros(len(ids), bool)
        finite = np.isfinite(xb).all(axis=1) if len(ids) else np.ones(0, bool)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            self.add_failed([(ids[r], f"features beyond {self.dtype} range (|x| > {float(np.finfo(self.dtype).max):g}); "
                             "extract with --dtype float32" if beyond[r] else "the model gave NaN or inf features")
                             for r in bad], [sources[r] for r in bad])
            ids = [ids[r] for r in np.flatnonzero(finite)]
            sources = [sources[r] for r in np.flatnonzero(finite)]
            xb = xb[finite]
        _append(self.f["ids"], ids)
        _append(self.f["features"], xb.astype(self.dtype, copy=False))
        _append_sources(self.f["sources"], sources)
        self.hash.update(ids, xb)
        return len(ids)

    def add_failed(self, pairs: Sequence[tuple[str, str]], sources: Sequence[SourceStat] | None = None) -> None:
        _append(self.f["failed/ids"], [storable_id(i) for i, _ in pairs])
        _append(self.f["failed/reasons"], [r for _, r in pairs])
        _append_sources(self.f["failed"], list(sources) if sources is not None else [NO_SOURCE] * len(pairs))

    def seal(self) -> None:
        """Record count, dim and the hashes in the attrs."""
        a = self.f.attrs
        a["count"], a["dim"] = self.hash.n, self.dim
        a["ids_sha256"], a["values_sha256"] = self.hash.ids_sha256, self.hash.values_sha256
        a["content_sha256"] = self.hash.content_sha256
        a["fingerprint"] = fingerprint(self.hash.content_sha256, self.config)


def _append(ds: h5py.Dataset, values) -> None:
    n = len(values)
    if n == 0:
        return
    start = ds.shape[0]
    ds.resize(start + n, axis=0)
    ds[start : start + n] = values


def _append_sources(g: h5py.Group, sources: Sequence[SourceStat]) -> None:
    if not sources:
        return
    _append(g["size"], np.array([s[0] for s in sources], np.int64))
    _append(g["mtime_ns"], np.array([s[1] for s in sources], np.int64))
    _append(g["sha256"], np.array([s[2].encode("ascii") for s in sources], _SHA))


def write_features(
    path: str | os.PathLike,
    ids: Sequence[str],
    xb: np.ndarray,
    config: dict,
    failed: Sequence[tuple[str, str]] = (),
    sources: Sequence[SourceStat] | None = None,
    failed_sources: Sequence[SourceStat] | None = None,
) -> Path:
    """Write a complete feature file atomically. ``xb`` is ``(N, D)``, stored in ``config``'s dtype in blocks.

    Rows with NaN or inf are recorded as failed instead of stored.
    """
    if xb.ndim != 2 or xb.shape[0] != len(ids):
        raise ValueError(f"features shape {xb.shape} does not match {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise UserError(f"{len(ids) - len(set(ids))} duplicate ids; ids must be unique")
    path = Path(path)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            b = FeatureBuilder(f, xb.shape[1], config, len(ids))
            for start in range(0, xb.shape[0], BLOCK_ROWS):
                b.add(list(ids[start : start + BLOCK_ROWS]), xb[start : start + BLOCK_ROWS],
                      None if sources is None else sources[start : start + BLOCK_ROWS])
            b.add_failed(list(failed), failed_sources)
            b.seal()
    except OSError as exc:
        raise write_error(exc, path) from None
    return path
