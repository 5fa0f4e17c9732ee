"""Resumable, incremental writes of a feature file: committed batches as part files, merged atomically.

Each committed batch is a part file ``OUT.parts/part-NNNNNN.h5`` (written whole, fsynced, renamed into
place). :meth:`ResumableWriter.finalize` merges the existing ``OUT`` (if any) and all parts into a new
``OUT`` atomically, then removes the parts. A kill at any point leaves either the old complete file plus
complete parts, or the new complete file; leftover ``.tmp`` files are discarded on the next start.

A later source overrides an earlier one: a part holding an id that the existing file also holds
(an image that changed and was extracted again) replaces that row. The merged file keeps the existing
rows in their order, then the new and re-extracted rows in commit order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path
from extract.fingerprints import recorded
from extract.store import (
    BLOCK_ROWS,
    NO_SOURCE,
    FeatureBuilder,
    SourceStat,
    _read_sources,
    open_features,
    storable_id,
    write_error,
)

log = logging.getLogger(__name__)


@dataclass
class StoredState:
    """What an output file and its unfinished parts already hold: ``entries[id] = (source, stored_ok)``."""

    config: dict | None = None
    dim: int | None = None
    where: str = ""
    entries: dict[str, tuple[SourceStat, bool]] = field(default_factory=dict)
    parts: int = 0

    @property
    def empty(self) -> bool:
        return self.config is None and not self.entries


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _part_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.h5"))


def read_state(out: str | os.PathLike) -> StoredState:
    """The stored state of ``out`` and ``out.parts`` (a later part overrides the file), without writing."""
    out = Path(out)
    state = StoredState()
    if out.exists():
        ff = open_features(out)
        state.config, state.dim, state.where = ff.config, ff.dim, str(out)
        for i, src in ff.sources().items():
            state.entries[i] = (src, False)
        for i in ff.ids:
            state.entries[i] = (state.entries[i][0], True)
    folder = parts_dir(out)
    cfg_path = folder / "config.json"
    if cfg_path.exists() and state.config is None:
        state.config, state.where = json.loads(cfg_path.read_text()), str(folder)
    for part in _part_paths(folder):
        with h5py.File(part, "r") as f:
            ids = list(f["ids"].asstr()[...])
            fids = list(f["failed/ids"].asstr()[...])
            for i, src in zip(ids, _read_sources(f, "sources", len(ids))):
                state.entries[i] = (src, True)
            for i, src in zip(fids, _read_sources(f, "failed", len(fids))):
                state.entries[i] = (src, False)
        state.parts += 1
    return state


class ResumableWriter:
    """Append batches to a feature file so that a killed run loses nothing it reported written.

    ``match_keys`` are the config keys that must agree with an existing file or unfinished run
    (model, weights, image size, ...): resuming with different ones is refused.
    """

    def __init__(self, out: str | os.PathLike, config: dict, dim: int, match_keys: Sequence[str] = ()):
        self.out = Path(out)
        self.parts_dir = parts_dir(self.out)
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
        try:
            if self.parts_dir.exists():
                self._load_parts()
            else:
                self.parts_dir.mkdir()
            with atomic_path(self.parts_dir / "config.json") as tmp:
                tmp.write_text(json.dumps(self.config, sort_keys=True, default=str, indent=1))
        except OSError as exc:
            raise write_error(exc, self.parts_dir) from None

    def _check_config(self, other: dict, where: str, dim: int) -> None:
        if dim != self.dim:
            raise UserError(f"{where} holds {dim}-d features but this run makes {self.dim}-d ones; pass another output file")
        for key in self.match_keys:
            theirs = recorded(other, key)
            if theirs is not None and theirs != recorded(self.config, key):
                raise UserError(
                    f"{where} was made with {key}={theirs!r} but this run has {key}={recorded(self.config, key)!r}; "
                    "use the same options to resume, or pass another output file"
                )

    def _load_parts(self) -> None:
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()
        cfg_path = self.parts_dir / "config.json"
        if cfg_path.exists():
            self._check_config(json.loads(cfg_path.read_text()), str(self.parts_dir), self.dim)
        for part in _part_paths(self.parts_dir):
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

    def redo(self, ids: Iterable[str]) -> None:
        """Accept new rows for these ids (their images changed); the new rows replace the old at finalize."""
        for i in ids:
            self._done.discard(storable_id(i))
            self._failed_done.discard(storable_id(i))

    def commit(self, ids: Sequence[str], xb: np.ndarray, failed: Sequence[tuple[str, str]] = (),
               sources: Mapping[str, SourceStat] | None = None) -> None:
        """Durably add a batch. When this returns, the batch survives a kill of the process.

        ``sources`` maps an id (of a row or a failed image) to its source record (size, mtime_ns, sha256).
        """
        sources = sources or {}
        keep = [r for r, i in enumerate(ids) if storable_id(i) not in self._done]
        ids = [ids[r] for r in keep]
        xb = np.asarray(xb, dtype=np.float32)[keep] if len(keep) else np.zeros((0, self.dim), np.float32)
        failed = [(i, why) for i, why in failed
                  if storable_id(i) not in self._done and storable_id(i) not in self._failed_done]
        if not ids and not failed:
            return
        part = self.parts_dir / f"part-{self._next_part:06d}.h5"
        try:
            with atomic_path(part) as tmp, h5py.File(tmp, "w") as f:
                b = FeatureBuilder(f, self.dim, {}, rows=len(ids))
                b.add(ids, xb, [sources.get(i, NO_SOURCE) for i in ids])
                b.add_failed(failed, [sources.get(i, NO_SOURCE) for i, _ in failed])
                b.seal()
        except OSError as exc:
            raise write_error(exc, part, f"the {len(self._done)} rows committed before are kept in {self.parts_dir}; "
                              "the next run continues from them") from None
        self._next_part += 1
        self._done.update(storable_id(i) for i in ids)
        self._failed_done.update(storable_id(i) for i, _ in failed)

    def finalize(self, drop: Iterable[str] = ()) -> Path:
        """Merge the existing file and all parts into ``out`` (atomically), leaving out the ``drop`` ids.

        Removes the parts afterwards. Returns ``out``.
        """
        drop = {storable_id(i) for i in drop}
        parts = _part_paths(self.parts_dir)
        if self.out.exists() and not parts and not drop:  # nothing new: keep the file as it is
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return self.out
        sources = ([self.out] if self.out.exists() else []) + parts
        owner: dict[str, tuple[int, bool]] = {}  # id -> (source that holds its latest record, stored ok)
        listed: list[tuple[list[str], list[str]]] = []  # (ids, failed ids) of each source, read once
        for s, path in enumerate(sources):
            with h5py.File(path, "r") as f:
                listed.append((list(f["ids"].asstr()[...]), list(f["failed/ids"].asstr()[...])))
            owner.update((i, (s, True)) for i in listed[-1][0])
            owner.update((i, (s, False)) for i in listed[-1][1])
        rows = sum(len(ids) for ids, _ in listed)
        try:
            with atomic_path(self.out) as tmp, h5py.File(tmp, "w") as dst:
                b = FeatureBuilder(dst, self.dim, self.config, rows)
                batch = _Batch(b)
                for s, path in enumerate(sources):
                    with h5py.File(path, "r") as src:
                        _copy_rows(src, *listed[s], batch, s, owner, drop)
                batch.flush()
                b.seal()
        except OSError as exc:
            raise write_error(exc, self.out, "the existing file and the committed parts are kept; the merge runs "
                              "again next time") from None
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return self.out


class _Batch:
    """Rows and failed records on their way into a :class:`FeatureBuilder`, appended ``BLOCK_ROWS`` at a time.

    A run commits a part about every second, so a merge reads thousands of small parts; one append per
    part would spend most of the merge in HDF5's per-call overhead.
    """

    def __init__(self, b: FeatureBuilder):
        self.b = b
        self.rows: list[tuple[list[str], np.ndarray, list]] = []
        self.failed: list[tuple[list, list]] = []
        self.n = 0

    def add(self, ids: list[str], xb: np.ndarray, sources: list) -> None:
        self.rows.append((ids, xb, sources))
        self.n += len(ids)
        if self.n >= BLOCK_ROWS:
            self.flush()

    def add_failed(self, pairs: list, sources: list) -> None:
        self.failed.append((pairs, sources))

    def flush(self) -> None:
        if self.rows:
            self.b.add([i for ids, _, _ in self.rows for i in ids], np.concatenate([x for _, x, _ in self.rows]),
                       [s for _, _, srcs in self.rows for s in srcs])
        if self.failed:
            self.b.add_failed([p for pairs, _ in self.failed for p in pairs],
                              [s for _, srcs in self.failed for s in srcs])
        self.rows, self.failed, self.n = [], [], 0


def _copy_rows(src: h5py.File, ids: list[str], fids: list[str], b: _Batch, s: int, owner: dict,
               drop: set[str]) -> None:
    """Copy the rows and failed records of source ``s`` that are its ids' latest record and not dropped."""
    keep = np.array([owner.get(i) == (s, True) and i not in drop for i in ids], dtype=bool)
    srcs = _read_sources(src, "sources", len(ids)) if keep.any() else []
    for start in range(0, len(ids), BLOCK_ROWS):
        mask = keep[start : start + BLOCK_ROWS]
        if not mask.any():
            continue
        block = src["features"][start : start + BLOCK_ROWS][mask]
        chosen = np.flatnonzero(mask) + start
        b.add([ids[r] for r in chosen], block, [srcs[r] for r in chosen])
    pick = [r for r, i in enumerate(fids) if owner.get(i) == (s, False) and i not in drop]
    if pick:
        reasons = list(src["failed/reasons"].asstr()[...])
        fsrcs = _read_sources(src, "failed", len(fids))
        b.add_failed([(fids[r], reasons[r]) for r in pick], [fsrcs[r] for r in pick])
