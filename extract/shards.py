"""Shards of a distributed extraction: self-describing feature files listed in a manifest.

A distributed run writes ``OUT.shards/shard-NNNNNN.h5``, each a complete feature file in the store's
format (written atomically by :func:`~extract.store.write_features`) that carries its own ids, failed
images, the full run config plus the shard number and a content fingerprint (sha256 of ids, features
and failed list). ``OUT.shards/manifest.json`` lists the finished shards with their fingerprints and
row counts. A finished shard is never redone: a resumed run skips every id it holds. A shard file
that is missing or whose identity no longer matches the manifest is dropped (its images are redone);
a complete shard that a killed driver wrote but did not yet list is validated and adopted.

At the end the shards become one feature file, either merged through
:class:`~extract.parts.ResumableWriter` (streaming, one shard in memory at a time) or, when merging
would double the disk, as a small HDF5 file whose ``/features`` is a virtual dataset over the shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path
from extract.fingerprints import ContentHash, fingerprint, recorded
from extract.parts import ResumableWriter
from extract.store import (
    NO_SOURCE,
    SourceStat,
    open_features,
    storage_dtype,
    write_features,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard as listed in the manifest."""

    index: int
    file: str
    rows: int
    failed: int
    fingerprint: str
    content_sha256: str


def content_sha256(ids: Sequence[str], xb: np.ndarray, failed: Sequence[tuple[str, str]]) -> str:
    """sha256 of a shard's ids, ``(n, D) float32`` features (bytes) and failed list, in order."""
    h = hashlib.sha256()
    h.update(json.dumps([list(ids), [list(p) for p in failed], list(xb.shape)]).encode("utf-8"))
    h.update(np.ascontiguousarray(xb, dtype=np.float32).tobytes())
    return h.hexdigest()


def shards_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".shards")


class ShardStore:
    """The shard folder of one output file: finished shards, their manifest, and the final merge.

    ``match_keys`` are the config keys that must agree between this run and the shards already written.
    """

    def __init__(self, out: str | os.PathLike, config: dict, dim: int, match_keys: Sequence[str] = ()):
        self.out = Path(out)
        self.folder = shards_dir(out)
        self.config = dict(config)
        self.dim = dim
        self.match_keys = tuple(match_keys)
        self.records: dict[int, ShardRecord] = {}
        self._done: set[str] = set()
        self.folder.mkdir(parents=True, exist_ok=True)
        for tmp in self.folder.glob("*.tmp"):
            tmp.unlink()
        self._load()

    # -- resume -----------------------------------------------------------------------------------
    def _load(self) -> None:
        path = self.folder / MANIFEST
        listed: dict[int, ShardRecord] = {}
        if path.exists():
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                listed = {r["index"]: ShardRecord(**r) for r in doc["shards"]}
                self._check(doc.get("config", {}), doc.get("dim", self.dim), str(path))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{path} is damaged ({exc.__class__.__name__}: {exc}); remove {self.folder} "
                                "to start the distributed run over") from None
        for file in sorted(self.folder.glob("shard-*.h5")):
            index = int(file.stem.split("-")[1])
            try:
                ff = open_features(file)
            except UserError as exc:
                log.warning("shard %s cannot be read (%s); its images are redone", file, exc)
                file.unlink()
                continue
            self._check(ff.config, ff.dim, str(file))
            rec = listed.get(index)
            if rec is not None and rec.fingerprint != ff.fingerprint:
                log.warning("shard %s does not match the manifest (fingerprint %s, listed %s); its images are redone",
                            file, ff.fingerprint, rec.fingerprint)
                file.unlink()
                continue
            if rec is None:
                log.info("adopting finished shard %s, written but not yet listed", file.name)
                rec = ShardRecord(index, file.name, len(ff), len(ff.failed), ff.fingerprint,
                                  str(ff.config.get("content_sha256", "")))
            self.records[index] = rec
            self._done.update(ff.ids)
            self._done.update(i for i, _ in ff.failed)
        for index in sorted(set(listed) - set(self.records)):
            log.warning("shard %s listed in the manifest is missing; its images are redone", listed[index].file)
        self._save_manifest()

    def _check(self, other: dict, dim: int, where: str) -> None:
        if dim != self.dim:
            raise UserError(f"{where} holds {dim}-d features but this run makes {self.dim}-d ones; "
                            f"pass another output file or remove {self.folder}")
        for key in self.match_keys:
            theirs = recorded(other, key)
            if theirs is not None and theirs != recorded(self.config, key):
                raise UserError(f"{where} was made with {key}={theirs!r} but this run has "
                                f"{key}={recorded(self.config, key)!r}; use the same options to resume, or remove "
                                f"{self.folder}")

    def _save_manifest(self) -> None:
        doc = {"manifest_version": MANIFEST_VERSION, "dim": self.dim, "config": self.config,
               "shards": [asdict(self.records[k]) for k in sorted(self.records)]}
        with atomic_path(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(doc, sort_keys=True, default=str, indent=1), encoding="utf-8")

    @property
    def done(self) -> set[str]:
        """Ids held by finished shards (written or failed)."""
        return set(self._done)

    @property
    def next_index(self) -> int:
        return max(self.records, default=-1) + 1

    # -- write ------------------------------------------------------------------------------------
    def write(self, index: int, ids: Sequence[str], xb: np.ndarray, failed: Sequence[tuple[str, str]],
              sources: Mapping[str, SourceStat] | None = None) -> ShardRecord:
        """Write shard ``index`` (``xb`` is ``(len(ids), D)``) atomically and list it in the manifest.

        ``sources`` maps ids (rows and failed) to their source record (size, mtime_ns, sha256).
        """
        if index in self.records:
            raise ValueError(f"shard {index} is already written")
        ids, xb, failed = self._storable(list(ids), np.asarray(xb, dtype=np.float32).reshape(len(ids), self.dim),
                                         list(failed))
        sha = content_sha256(ids, xb, failed)
        name = f"shard-{index:06d}.h5"
        sources = sources or {}
        try:
            write_features(self.folder / name, ids, xb, dict(self.config, shard=index, content_sha256=sha), failed,
                           [sources.get(i, NO_SOURCE) for i in ids], [sources.get(i, NO_SOURCE) for i, _ in failed])
        except OSError as exc:
            raise UserError(f"cannot write shard {self.folder / name} ({exc.strerror or exc}); free space or fix "
                            "permissions and run the same command again: finished shards are kept") from None
        rec = ShardRecord(index, name, len(ids), len(failed), open_features(self.folder / name).fingerprint, sha)
        self.records[index] = rec
        self._done.update(ids)
        self._done.update(i for i, _ in failed)
        self._save_manifest()
        return rec

    def _storable(self, ids: list[str], xb: np.ndarray,
                  failed: list[tuple[str, str]]) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """The rows as the store keeps them (values rounded to the run's dtype, non-finite rows failed), so
        the shard's content hash is that of what a reader gets back."""
        with np.errstate(over="ignore"):
            kept = xb.astype(storage_dtype(self.config)).astype(np.float32)
        bad = ~np.isfinite(kept).all(axis=1)
        if not bad.any():
            return ids, kept, failed
        beyond = np.isfinite(xb).all(axis=1)
        failed = failed + [(ids[r], f"features beyond {storage_dtype(self.config)} range; extract with --dtype float32"
                            if beyond[r] else "the model gave NaN or inf features") for r in np.flatnonzero(bad)]
        return [ids[r] for r in np.flatnonzero(~bad)], kept[~bad], failed

    # -- the final file ---------------------------------------------------------------------------
    def _verified(self, rec: ShardRecord) -> tuple[list[str], np.ndarray, list[tuple[str, str]], dict]:
        ff = open_features(self.folder / rec.file)
        xb = ff.load()
        if rec.content_sha256 and content_sha256(ff.ids, xb, ff.failed) != rec.content_sha256:
            raise UserError(f"shard {ff.path} does not match its content fingerprint {rec.content_sha256[:16]}; "
                            "delete it and run again to redo its images")
        return ff.ids, xb, ff.failed, ff.sources()

    def merge(self, writer: ResumableWriter, drop: Iterable[str] = ()) -> Path:
        """Commit every shard (in shard order, content verified) through ``writer``, finalize without the ``drop``
        ids, remove the shards."""
        if self.is_virtual_output():
            raise UserError(f"{self.out} is a virtual file over {self.folder}; pass --virtual to add images to it "
                            "(merging would remove the shards it reads)")
        try:
            for index in sorted(self.records):
                ids, xb, failed, sources = self._verified(self.records[index])
                writer.commit(ids, xb, failed, sources)
            out = writer.finalize(drop)
        except OSError as exc:
            raise UserError(f"cannot merge the shards into {self.out} ({exc.strerror or exc}); free space (or pass "
                            "--virtual) and run the same command again: the shards are kept") from None
        shutil.rmtree(self.folder, ignore_errors=True)
        return out

    def is_virtual_output(self) -> bool:
        """True when ``out`` is a virtual file over this shard folder (merging would delete its data)."""
        if not self.out.exists():
            return False
        try:
            with h5py.File(self.out, "r") as f:
                return f.attrs.get("virtual_shards") == self.folder.name
        except OSError:
            return False

    def write_virtual(self) -> Path:
        """Write ``out`` as ids + failed list + a virtual ``/features`` over the shard files (kept in place).

        The shard folder must stay beside ``out``; nothing is copied, so the disk holds the features once.
        """
        if self.out.exists() and not self.is_virtual_output():
            raise UserError(f"{self.out} is a complete feature file; a virtual one over {self.folder} "
                            "would replace it: pass another output file")
        recs = [self.records[k] for k in sorted(self.records)]
        ids: list[str] = []
        failed: list[tuple[str, str]] = []
        sources = []
        stats: dict[str, SourceStat] = {}
        for rec in recs:
            ff = open_features(self.folder / rec.file)
            ids += ff.ids
            failed += ff.failed
            stats.update(ff.sources())
            sources.append((f"{self.folder.name}/{rec.file}", len(ff)))
        if len(set(ids)) != len(ids):
            raise UserError(f"shards in {self.folder} hold duplicate ids; remove the folder and run again")
        base = self.folder / "virtual-base.h5"  # the store's layout and attrs, then /features swapped
        write_features(base, [], np.zeros((0, self.dim), np.float32), self.config, failed, None,
                       [stats[i] for i, _ in failed])
        layout = h5py.VirtualLayout(shape=(len(ids), self.dim), dtype=storage_dtype(self.config))
        start = 0
        for name, n in sources:
            if n:
                layout[start : start + n] = h5py.VirtualSource(name, "features", shape=(n, self.dim))
            start += n
        with atomic_path(self.out) as tmp:
            shutil.copyfile(base, tmp)
            with h5py.File(tmp, "r+") as f:
                if ids:  # with no rows at all the store's empty datasets stay as they are
                    del f["ids"], f["features"]
                    f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=_STR)
                    f.create_virtual_dataset("features", layout)
                    _replace_sources(f["sources"], [stats[i] for i in ids])
                f.attrs["count"] = len(ids)
                f.attrs["virtual_shards"] = self.folder.name
                h = ContentHash(self.dim)  # the shards' rows in order, as the store hashes a written file
                for rec in recs:
                    part = open_features(self.folder / rec.file)
                    for start, block in part.iter_blocks():
                        h.update(part.ids[start : start + len(block)], block)
                f.attrs["ids_sha256"], f.attrs["values_sha256"] = h.ids_sha256, h.values_sha256
                f.attrs["content_sha256"] = h.content_sha256
                f.attrs["fingerprint"] = fingerprint(h.content_sha256, json.loads(f.attrs["config"]))
        base.unlink()
        return self.out


def _replace_sources(g: h5py.Group, stats: Sequence[SourceStat]) -> None:
    """Rewrite a store file's ``/sources`` datasets with one record per row, in the store's dtypes."""
    for name, values in zip(("size", "mtime_ns", "sha256"), zip(*stats)):
        dtype = g[name].dtype
        del g[name]
        g.create_dataset(name, data=np.array([v.encode("ascii") if isinstance(v, str) else v for v in values], dtype))
