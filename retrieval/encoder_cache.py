"""Disk cache of sentence-encoder outputs: an HDF5 file keyed by the SHA-1 of each text's UTF-8 bytes.

Sentence encoders are slow (tens to hundreds of captions/s on a CPU), so :func:`cached_encode` encodes each
distinct text once and keeps its vector. The cache file is an ordinary feature file of the store
(:mod:`extract.store`): ``/ids`` are the text keys, ``/features`` the vectors, and the attrs name the encoder
and its fingerprint, so a cache filled by another encoder (or another release of it) is rebuilt, never mixed.
Batches are committed as they are encoded; an interrupted run keeps them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from extract.core.errors import UserError
from extract.core.files import locked

log = logging.getLogger(__name__)

CACHE_KIND = "sentence-encoder-cache"
KEY_SCHEME = "sha1-utf8"


class Encoder(Protocol):
    """What :func:`cached_encode` needs from an encoder."""

    name: str
    dim: int
    fingerprint: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def text_key(text: str) -> str:
    """Cache key of a text: hex SHA-1 of its UTF-8 bytes."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_empty(text: str) -> bool:
    """Whether a text is empty or blank (it gets a zero vector and is never cached)."""
    return not text.strip()


def as_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, refusing anything that is not a str."""
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be str, got {type(t).__name__}")
    return texts


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _cache_config(encoder: Encoder) -> dict:
    return {
        "kind": CACHE_KIND,
        "key": KEY_SCHEME,
        "encoder": encoder.name,
        "encoder_fingerprint": encoder.fingerprint,
        "encoder_dim": int(encoder.dim),
    }


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    shutil.rmtree(_parts_dir(path), ignore_errors=True)


def _writer(path: Path, encoder: Encoder):
    from extract.store import ResumableWriter

    config = _cache_config(encoder)
    keys = ("kind", "encoder", "encoder_fingerprint")
    try:
        return ResumableWriter(path, config, int(encoder.dim), match_keys=keys)
    except UserError as exc:  # parts left by an interrupted run of another encoder
        log.warning("discarding unfinished cache entries in %s: %s", _parts_dir(path), exc)
        shutil.rmtree(_parts_dir(path), ignore_errors=True)
        return ResumableWriter(path, config, int(encoder.dim), match_keys=keys)


def _open_cache(path: Path, encoder: Encoder):
    """The cache file for ``encoder`` (or None when empty), after dropping stale or merging leftover entries."""
    from extract.store import open_features

    ff = None
    if path.exists():
        ff = open_features(path)
        if ff.config.get("kind") != CACHE_KIND:
            raise UserError(f"{path} is not a sentence-encoder cache; pass another cache path")
        old = ff.config.get("encoder_fingerprint")
        if old != encoder.fingerprint or ff.dim != encoder.dim:
            log.warning(
                "cache %s holds vectors of %s (%s); rebuilding it for %s (%s)",
                path, ff.config.get("encoder"), old, encoder.name, encoder.fingerprint,
            )
            _discard(path)
            ff = None
    if _parts_dir(path).exists():  # a run was interrupted: keep what it committed
        _writer(path, encoder).finalize()
        ff = None  # rewritten
    if ff is None and path.exists():
        ff = open_features(path)
    return ff


def _gather(ff, rows: np.ndarray) -> np.ndarray:
    """Rows of a cache file as ``(len(rows), dim) float32``, reading it block by block when many are wanted."""
    if len(rows) * 8 < len(ff):
        return ff.load(rows)
    out = np.empty((len(rows), ff.dim), np.float32)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    for start, block in ff.iter_blocks():
        lo, hi = np.searchsorted(ordered, [start, start + len(block)])
        out[order[lo:hi]] = block[ordered[lo:hi] - start]
    return out


def _locked(path: Path):
    """Hold an exclusive lock on ``PATH.lock`` so that two processes never fill one cache at once."""
    return locked(path.with_name(path.name + ".lock"))


def _fill(
    path: Path, encoder: Encoder, unique: dict[str, str], found: dict, batch_size: int, progress: bool
) -> list[str]:
    """Put the vector of every key of ``unique`` into ``found``, from the cache or encoded and committed to it.

    Returns the keys that had to be encoded.
    """
    ff = _open_cache(path, encoder)
    if ff is not None:
        row_of = ff.row_of()
        hit_keys = [k for k in unique if k in row_of]
        if hit_keys:
            block = _gather(ff, np.array([row_of[k] for k in hit_keys], dtype=np.int64))
            found.update(zip(hit_keys, block))
    missing = [k for k in unique if k not in found]
    if missing:
        writer = _writer(path, encoder)
        from tqdm import tqdm

        chunks = list(batches(missing, batch_size))
        show = progress and sys.stderr.isatty() and len(chunks) > 1
        for chunk in tqdm(chunks, desc=f"encode {encoder.name}", unit="batch", disable=not show):
            vecs = np.asarray(encoder.encode([unique[k] for k in chunk]), dtype=np.float32)
            writer.commit(list(chunk), vecs)
            found.update(zip(chunk, vecs))
        writer.finalize()
    return missing


def cached_encode(
    encoder: Encoder,
    texts: Sequence[str],
    cache_path: str | os.PathLike,
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Embed texts as ``(n, dim) float32``, encoding only texts missing from the HDF5 cache at ``cache_path``.

    Each distinct text is encoded once. Every encoded batch is committed as its own part file (written
    whole, then renamed), so an interrupted run loses at most one batch and leaves the cache readable; the
    parts are merged into the cache file by an atomic rewrite at the end (or at the next call). A cache made
    by another encoder (different fingerprint) is rebuilt. Empty or blank texts give zero rows, unstored.
    """
    path = Path(cache_path)
    texts = as_texts(texts)
    out = np.zeros((len(texts), encoder.dim), np.float32)
    keys = [None if is_empty(t) else text_key(t) for t in texts]
    n_empty = keys.count(None)
    if n_empty:
        log.warning("%d of %d texts are empty; their %s vectors are zeros", n_empty, len(texts), encoder.name)
    unique: dict[str, str] = {}
    for t, k in zip(texts, keys):
        if k is not None and k not in unique:
            unique[k] = t
    found: dict[str, np.ndarray] = {}
    missing: list[str] = []
    if unique:
        with _locked(path):
            missing = _fill(path, encoder, unique, found, batch_size, progress)
    log.info(
        "%s: %d texts, %d distinct, %d from cache %s, %d encoded, %d empty",
        encoder.name, len(texts), len(unique), len(unique) - len(missing), path, len(missing), n_empty,
    )
    for i, k in enumerate(keys):
        if k is not None:
            out[i] = found[k]
    return out
