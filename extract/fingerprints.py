"""What a feature file's fingerprint covers: content hashes of ids and values, and the identity config.

``ContentHash`` hashes the ids and the float32 values (as readers get them) block by block in row order;
``combine_content`` joins the two with the shape; ``fingerprint`` (16 hex digits) joins the content hash
with the config that made the features, less the keys that say where or when (:data:`IDENTITY_IGNORED`).
Feature files (:mod:`extract.store`), Ray shards (:mod:`extract.shards`) and index folders record them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np

_HASH_ROWS = 65536  # rows hashed at a time by fingerprint_arrays (the hash does not depend on it)

# Config keys that say where or when features were made, not what they are: left out of the fingerprint.
IDENTITY_IGNORED = ("created", "torch", "torchvision", "images", "image_root", "bn_calibration_root", "max_pixels",
                    "source_names", "source_vectors")

# Config keys a file made before they were recorded has implicitly: compared with this value when absent.
IMPLIED_CONFIG = {"dtype": "float32"}


def recorded(config: Mapping, key: str):
    """``config[key]``, or what a file made before ``key`` was recorded implies (:data:`IMPLIED_CONFIG`)."""
    return config[key] if key in config else IMPLIED_CONFIG.get(key)


def identity_config(config: Mapping) -> dict:
    """The part of an extraction config that defines the feature space (JSON types, volatile keys dropped)."""
    plain = json.loads(json.dumps(dict(config), sort_keys=True, default=str))
    return {k: v for k, v in plain.items() if k not in IDENTITY_IGNORED}


class ContentHash:
    """sha256 of a feature matrix's ids and float32 values, fed block by block in row order."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.n = 0
        self._ids = hashlib.sha256()
        self._values = hashlib.sha256()

    def update(self, ids: Sequence[str], xb: np.ndarray) -> None:
        if len(ids) != len(xb):
            raise ValueError(f"{len(ids)} ids for {len(xb)} rows")
        if len(ids):
            self._ids.update(("\n".join(ids) + "\n").encode("utf-8"))
            self._values.update(np.ascontiguousarray(xb, dtype="<f4").tobytes())
        self.n += len(ids)

    @property
    def ids_sha256(self) -> str:
        return self._ids.hexdigest()

    @property
    def values_sha256(self) -> str:
        return self._values.hexdigest()

    @property
    def content_sha256(self) -> str:
        return combine_content(self.n, self.dim, self.ids_sha256, self.values_sha256)


def combine_content(n: int, dim: int, ids_sha256: str, values_sha256: str) -> str:
    return hashlib.sha256(f"{n}x{dim}:{ids_sha256}:{values_sha256}".encode()).hexdigest()


def ids_sha256(ids: Sequence[str]) -> str:
    return hashlib.sha256(("\n".join(ids) + "\n").encode("utf-8") if ids else b"").hexdigest()


def fingerprint(content_sha256: str, config: Mapping) -> str:
    """Identity of a feature file (16 hex digits): its content hash and the config that made it."""
    cfg = json.dumps(identity_config(config), sort_keys=True)
    return hashlib.sha256(f"{content_sha256}\n{cfg}".encode()).hexdigest()[:16]


def fingerprint_arrays(ids: Sequence[str], xb: np.ndarray, config: Mapping | None = None) -> str:
    """:func:`fingerprint` of an in-memory ``(n, d)`` matrix and its ids."""
    h = ContentHash(xb.shape[1])
    for start in range(0, len(ids), _HASH_ROWS):
        h.update(list(ids[start : start + _HASH_ROWS]), xb[start : start + _HASH_ROWS])
    return fingerprint(h.content_sha256, config or {})
