"""Feature sources the index builder reads block by block: a feature file, or the shards of a manifest.

A distributed extraction writes ``OUT.shards/shard-NNNNNN.h5`` (each a complete feature file) and
``OUT.shards/manifest.json`` listing them with their row counts and fingerprints. :class:`ShardedFeatures`
presents the shards, in manifest order, as one source (row ``i`` of the index = row ``i`` of the
concatenation), reading one block of one shard at a time, so the features never sit in memory whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from extract.core.ids import PackedIds
from extract.store import FeatureFile, open_features

MANIFEST = "manifest.json"
_SHARD_KEYS = ("shard", "content_sha256")


def manifest_path(path: str | os.PathLike) -> Path | None:
    """The manifest a path names (``manifest.json`` or a folder holding one), or None for other files."""
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p / MANIFEST
    if p.is_file() and p.suffix == ".json":
        return p
    return None


class ShardedFeatures:
    """The shards listed in a manifest as one feature source (``ids``, ``dim``, ``load``, ``iter_blocks``)."""

    def __init__(self, manifest: Path):
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            listed = sorted(doc["shards"], key=lambda r: int(r["index"]))
            records = [(manifest.parent / str(r["file"]), int(r["rows"]), str(r["fingerprint"])) for r in listed]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{manifest} is not a shard manifest ({exc.__class__.__name__}: {exc}); pass a feature "
                            "file or the manifest.json of a distributed extraction") from None
        if not records:
            raise UserError(f"{manifest} lists no shards; nothing to index")
        self.path = manifest
        self.shards: list[FeatureFile] = []
        for file, rows, fp in records:
            ff = open_features(file)
            if len(ff) != rows or ff.fingerprint != fp:
                raise UserError(f"shard {file} holds {len(ff)} rows with fingerprint {ff.fingerprint} but {manifest} "
                                f"lists {rows} rows with fingerprint {fp}; finish or redo the extraction")
            if self.shards and ff.dim != self.shards[0].dim:
                raise UserError(f"shard {file} holds {ff.dim}-d features but {self.shards[0].path} {self.shards[0].dim}-d")
            self.shards.append(ff)
        self.dim = self.shards[0].dim
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.ids = PackedIds.concat([s.ids if isinstance(s.ids, PackedIds) else PackedIds.from_strings(s.ids)
                                     for s in self.shards])
        first = self.shards[0].config
        self.config = doc.get("config") or {k: v for k, v in first.items() if k not in _SHARD_KEYS}
        h = hashlib.sha256()
        for s in self.shards:
            h.update(s.fingerprint.encode())
        self.fingerprint = h.hexdigest()[:16]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        for base, shard in zip(self.offsets, self.shards):
            for start, xb in shard.iter_blocks(block_rows):
                yield int(base) + start, xb

    def load(self, rows=None) -> np.ndarray:
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            out[sel] = self.shards[s].load(rows[sel] - self.offsets[s])
        return out

    def row_of(self) -> dict[str, int]:
        return {i: r for r, i in enumerate(self.ids)}

    def row(self, image_id: str) -> int | None:
        """The row of ``image_id`` (first one), or None."""
        return self.ids.row(image_id)


def open_shards(path: str | os.PathLike) -> ShardedFeatures | None:
    """The shards of a manifest as one source, or None when ``path`` is not a manifest."""
    manifest = manifest_path(path)
    return ShardedFeatures(manifest) if manifest is not None else None
