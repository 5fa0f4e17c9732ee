"""The batched extraction loop: images -> backbone -> resumable HDF5 feature file.

Decoding and resizing run in threads (CPU) or worker processes (GPU) of :mod:`extract.loading` and
arrive as ``uint8`` batches; the main process normalises on the device, runs the backbone in
``channels_last`` under ``inference_mode`` (autocast fp16/bf16 on CUDA) and commits the finished
batches through :class:`~extract.parts.ResumableWriter` about every second, in a writer thread while
the next batches run through the model (one commit in flight at a time), so a killed run resumes where
it stopped. A re-run over a grown or edited folder extracts only new and changed images
(:mod:`extract.collection`); with nothing to do it returns before loading a model.
``embed_images`` embeds a few new images exactly as a feature file's images were embedded (same model,
weights, preprocessing and decoder).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from extract.backbone import Backbone, load_backbone
from extract.collection import (
    calibration_files,
    check_calibration,
    check_options,
    check_root,
    plan_run,
)
from extract.core.errors import UserError
from extract.core.files import ensure_writable
from extract.images import (
    DEFAULT_MAX_PIXELS,
    ImageList,
    prepare_image,
    recorded_preprocessing,
)
from extract.inputs import list_inputs
from extract.loading import batches, check_decode_in
from extract.parts import ResumableWriter, read_state
from extract.store import DTYPES, open_features, storable_id

log = logging.getLogger(__name__)

# Config keys that must agree between a feature file (or an unfinished run) and a run resuming it.
# "resize" (a readable summary of preprocessing and decoder) also refuses files made before the structured keys.
MATCH_KEYS = ("model", "weights", "weights_sha256", "seed", "dim", "image_size", "mean", "std", "preprocessing",
              "decoder", "resize", "bn_calibration_sha", "image_root", "dtype")
BN_IMAGES = 64
_CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class ExtractSummary:
    """What one extraction run did. ``written``/``failed`` count this run; ``total_*`` the whole file."""

    out: Path
    model: str
    dim: int
    listed: int
    written: int
    skipped: int
    failed: int
    duplicates: int
    total_rows: int
    total_failed: int
    seconds: float
    failed_examples: list[tuple[str, str]] = field(default_factory=list)
    changed: int = 0  # of ``written``: rows whose image changed, extracted again
    pruned: int = 0
    gone: int = 0  # rows whose file is gone, kept (no --prune)

    @property
    def images_per_s(self) -> float:
        return (self.written + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def report(self) -> str:
        """A short human-readable summary (several lines)."""
        lines = [
            f"{self.out}: {self.total_rows} images x {self.dim}-d ({self.model}), {self.total_failed} failed in total",
            (f"this run: {self.written - self.changed} new, {self.changed} changed (extracted again), "
             f"{self.skipped} unchanged, {self.failed} failed, {self.pruned} pruned, "
             f"{self.duplicates} duplicate paths dropped ({self.images_per_s:.1f} images/s)"),
        ]
        if self.gone:
            lines.append(f"  {self.gone} rows name images that are gone; pass --prune to drop them")
        lines += [f"  failed: {i}: {why}" for i, why in self.failed_examples[:5]]
        if self.failed > 5:
            lines.append(f"  ... and {self.failed - 5} more (see /failed in the file)")
        return "\n".join(lines)


def calibration_ids(listing: ImageList, count: int = BN_IMAGES, max_pixels: int = DEFAULT_MAX_PIXELS,
                    image_size: int = 32) -> list[str]:
    """The first ``count`` readable images of the sorted full list: the same on every (resumed) run."""
    chosen = []
    for i in sorted(listing.ids):
        if storable_id(i) != i:  # a file name that is not UTF-8 is never a row, so never calibrates
            continue
        if prepare_image(listing.root / i, image_size, max_pixels)[0] is not None:
            chosen.append(i)
            if len(chosen) == count:
                break
    return chosen


def _calibration_batches(root: Path, ids: list[str], bb: Backbone, max_pixels: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(ids), _CALIBRATION_BATCH):
        arrs = []
        for i in ids[start : start + _CALIBRATION_BATCH]:
            arr, reason = prepare_image(root / i, bb.preprocessing, max_pixels, bb.decoder)
            if arr is None:
                raise UserError(f"calibration image {root / i} cannot be read ({reason}); it is needed to "
                                "rebuild the random-init backbone: restore it or re-extract")
            arrs.append(torch.from_numpy(arr))
        yield torch.stack(arrs).permute(0, 3, 1, 2)


def calibrate(backbone: Backbone, root: Path, ids: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Recalibrate a random-init backbone's BatchNorm statistics on ``root/ids`` (in that order)."""
    backbone.recalibrate(_calibration_batches(root, ids, backbone, max_pixels), ids)
    backbone.config["bn_calibration_ids"] = list(ids)
    backbone.config["bn_calibration_files"] = calibration_files(Path(root), list(ids))
    backbone.config["bn_calibration_root"] = str(Path(root).resolve())


def extract_features(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = "resnet152",
    weights: str = "imagenet",
    batch_size: int = 32,
    workers: int = 2,
    device: str = "auto",
    image_size: int | None = None,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quiet: bool = False,
    backbone: Backbone | None = None,
    bn_images: int = BN_IMAGES,
    commit_seconds: float = 1.0,
    prune: bool = False,
    dtype: str = "float32",
    decode_in: str = "auto",
    on_commit: Callable[[int], None] | None = None,
) -> ExtractSummary:
    """Extract pooled features of ``images`` into ``out`` (HDF5), resuming an unfinished or existing file.

    Finished batches are committed durably every ``commit_seconds`` (0: every batch) and at the end;
    a killed run continues where it stopped when re-run with the same options, and a different
    model, weights, image size or image root is refused. A re-run extracts new images and images whose
    bytes changed; ``prune`` drops rows whose image file is gone. Bad images go to the failed list.
    With ``--weights none`` the calibration images are the first ``bn_images`` readable images of
    the sorted full list, recorded with their sha256: a later run rebuilds the same network from them,
    and refuses, naming them, when they changed. ``dtype`` ``float16`` stores the values in half the
    space (readers still get float32); a file is resumed only with the dtype it was made with.
    ``decode_in``: ``threads``, ``processes`` or ``auto`` (threads on CPU, processes on GPU), for the
    ``workers`` decoders (:mod:`extract.loading`). ``on_commit`` is called with the number of images
    (rows and failures) of each part once it is durably committed.
    """
    if batch_size < 1 or workers < 0 or (limit is not None and limit < 1):
        raise UserError("--batch-size and --limit must be >= 1 and --workers >= 0")
    check_dtype(dtype)
    check_decode_in(decode_in)
    out = Path(out)
    ensure_writable(out)  # before any model is loaded
    listing = list_inputs(images, root)
    state = read_state(out)
    check_root(state, listing, out)
    ids = listing.ids[:limit] if limit else listing.ids
    plan = plan_run(listing, ids, state)
    t0 = time.perf_counter()
    drop = plan.gone if prune else []
    if backbone is not None:
        model, weights = backbone.config["model"], backbone.config["weights"]
        _check_match(state, backbone.config)
    check_options(state, model, weights, image_size, dtype)  # before any model is loaded
    if not plan.todo and not plan.bad_names:  # nothing to extract
        if state.parts or drop:  # merge what an interrupted run committed, or prune: no model needed
            ResumableWriter(out, state.config, state.dim, MATCH_KEYS).finalize(drop)
        return _summary(out, listing, plan, 0, [], time.perf_counter() - t0, len(drop))
    bb = backbone or load_backbone(model, weights, device, image_size)
    if bb.needs_calibration:
        recorded = (state.config or {}).get("bn_calibration_ids")
        if recorded:  # rebuild the network the stored rows came from
            check_calibration(state.config, listing.root)
        calibrate(bb, listing.root, recorded or calibration_ids(listing, bn_images, max_pixels), max_pixels)
    config = dict(bb.config, created=datetime.now(UTC).isoformat(timespec="seconds"),
                  image_root=str(listing.root.resolve()), images=str(listing.source), max_pixels=max_pixels,
                  dtype=dtype)
    writer = ResumableWriter(out, config, bb.dim, MATCH_KEYS)
    writer.redo(plan.changed + plan.retry)
    if plan.bad_names:
        writer.commit([], np.zeros((0, bb.dim), np.float32), plan.bad_names)
    t0 = time.perf_counter()
    written, failed = _run(bb, listing.root, plan.todo, writer, batch_size, workers, max_pixels, quiet, commit_seconds,
                           decode_in, on_commit)
    writer.finalize(drop)
    changed = len(set(plan.changed + plan.retry) - {i for i, _ in failed})
    return _summary(out, listing, plan, written, failed + plan.bad_names, time.perf_counter() - t0, len(drop),
                    changed)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def _check_match(state, config: dict) -> None:
    """Refuse a given backbone whose match keys differ from the stored file's (those both record)."""
    stored = state.config or {}
    for key in MATCH_KEYS:
        if key in stored and key in config and _plain(stored[key]) != _plain(config[key]):
            raise UserError(f"{state.where} was made with {key}={stored[key]!r} but this run has {key}={config[key]!r}; "
                            "use the same options to resume, or pass another output file")


def _plain(value):
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _summary(out: Path, listing: ImageList, plan, written: int, failed: list, seconds: float, pruned: int,
             changed: int = 0) -> ExtractSummary:
    ff = open_features(out)
    return ExtractSummary(out, ff.config.get("model", "?"), ff.dim, len(listing), written, plan.unchanged, len(failed),
                          listing.duplicates, len(ff), len(ff.failed), seconds, failed, changed, pruned,
                          0 if pruned else len(plan.gone))


def _run(bb: Backbone, root: Path, todo: list[str], writer: ResumableWriter, batch_size: int, workers: int,
         max_pixels: int, quiet: bool, commit_seconds: float, decode_in: str,
         on_commit: Callable[[int], None] | None = None) -> tuple[int, list[tuple[str, str]]]:
    if not todo:
        return 0, []
    loader = batches([root / i for i in todo], bb.preprocessing, bb.decoder, bb.device, max_pixels, batch_size,
                     workers, decode_in)
    written, failed = 0, []
    pending: list[tuple[list[str], np.ndarray, list[tuple[str, str]], dict]] = []
    spent = {"waiting for images": 0.0, "forward": 0.0, "waiting for the writer": 0.0}
    bar = tqdm(total=len(todo), unit="img", disable=quiet or not sys.stderr.isatty(), desc="extract")
    committing = None  # the commit in flight: at most one, so parts keep their order and memory stays bounded
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as pool:
            t = last_commit = time.perf_counter()
            for good, xb, bad, sources in loader:
                t = _lap(spent, "waiting for images", t)
                feats = bb.forward(bb.normalize(xb)).numpy() if xb is not None else np.zeros((0, bb.dim), np.float32)
                t = _lap(spent, "forward", t)
                pending.append(([todo[i] for i in good], feats, [(todo[i], why) for i, why in bad],
                                {todo[i]: src for i, src in sources.items()}))
                bar.update(len(good) + len(bad))
                if t - last_commit >= commit_seconds:
                    written, failed = _settle(committing, written, failed, on_commit)
                    committing, pending, last_commit = pool.submit(_commit, writer, pending), [], time.perf_counter()
                    bar.set_postfix(committed=written + len(failed))
                    t = _lap(spent, "waiting for the writer", t)
            written, failed = _settle(committing, written, failed, on_commit)
            written, failed = _settle(pool.submit(_commit, writer, pending), written, failed, on_commit)
            _lap(spent, "waiting for the writer", t)
    finally:
        bar.close()
    log.info("extraction loop: %s", ", ".join(f"{v:.2f} s {k}" for k, v in spent.items()))
    return written, failed


def _settle(commit, written: int, failed: list[tuple[str, str]],
            on_commit: Callable[[int], None] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Wait for a commit in flight (its error is raised here) and add what it stored."""
    if commit is None:
        return written, failed
    n, bad = commit.result()
    if on_commit is not None and n + len(bad):
        on_commit(n + len(bad))
    return written + n, failed + bad


def _commit(writer: ResumableWriter, pending: list) -> tuple[int, list[tuple[str, str]]]:
    """Durably write the pending batches as one part; returns (rows stored, [(id, reason)] failed)."""
    if not pending:
        return 0, []
    ids = [i for batch_ids, _, _, _ in pending for i in batch_ids]
    bad = [pair for _, _, batch_bad, _ in pending for pair in batch_bad]
    sources = {i: src for _, _, _, batch_sources in pending for i, src in batch_sources.items()}
    feats = np.concatenate([f for _, f, _, _ in pending])
    finite = np.isfinite(feats).all(axis=1)
    if not finite.all():  # never stored: recorded as failed with the reason
        bad = bad + [(ids[r], "the model gave NaN or inf features") for r in np.flatnonzero(~finite)]
        ids = [ids[r] for r in np.flatnonzero(finite)]
        feats = feats[finite]
    writer.commit(ids, feats, bad, sources)
    for i, why in bad:
        log.info("failed: %s: %s", i, why)
    return len(ids), bad


def _lap(spent: dict[str, float], key: str, since: float) -> float:
    now = time.perf_counter()
    spent[key] += now - since
    return now


def backbone_from_config(config: dict, device: str = "auto") -> Backbone:
    """Rebuild the backbone that made a feature file, from its config; refuses different weights.

    The preprocessing and decoder are the recorded ones (:func:`~extract.images.recorded_preprocessing`).
    """
    if config.get("model") in (None, "imported"):
        raise UserError("this feature file was imported from precomputed vectors and records no backbone; "
                        "embed new images with a file made by `cli.py extract`")
    weights = {"file": config.get("weights_source", "")}.get(config.get("weights"), config.get("weights", "imagenet"))
    pre, dec = recorded_preprocessing(config)
    bb = load_backbone(config["model"], weights, device, seed=config.get("seed") or 0, preprocessing=pre, decoder=dec)
    if config.get("weights_sha256", "") != bb.config["weights_sha256"]:
        raise UserError(f"weights of {config['model']} differ: the feature file was made with sha256 "
                        f"{config.get('weights_sha256')!r}, found {bb.config['weights_sha256']!r} at "
                        f"{bb.config['weights_source']}")
    if config.get("bn_recalibrated") and bb.needs_calibration:
        check_calibration(config, Path(config["bn_calibration_root"]))
        calibrate(bb, Path(config["bn_calibration_root"]), list(config["bn_calibration_ids"]),
                  config.get("max_pixels", DEFAULT_MAX_PIXELS))
        if bb.config["bn_calibration_sha"] != config.get("bn_calibration_sha"):
            raise UserError("BatchNorm calibration images differ from the ones recorded in the feature file")
    return bb


def embed_images(paths: Sequence[str | os.PathLike], config_or_backbone: dict | Backbone | str | os.PathLike,
                 device: str = "auto", batch_size: int = 16) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Embed new images like a feature file's images: ``((n, D) float32, [(path, reason)] failed)``.

    ``config_or_backbone`` is a feature file path, its config dict, or a :class:`Backbone`. Row ``j``
    belongs to the ``j``-th path that did not fail.
    """
    if isinstance(config_or_backbone, Backbone):
        bb = config_or_backbone
        max_pixels = DEFAULT_MAX_PIXELS
    else:
        config = config_or_backbone
        if not isinstance(config, dict):
            config = open_features(config).config
        bb = backbone_from_config(config, device)
        max_pixels = config.get("max_pixels", DEFAULT_MAX_PIXELS)
    rows, failed, batch = [], [], []
    for p in list(paths) + [None]:
        if p is not None:
            arr, reason = prepare_image(p, bb.preprocessing, max_pixels, bb.decoder)
            if arr is None:
                failed.append((str(p), reason))
            else:
                batch.append(torch.from_numpy(arr))
        if batch and (p is None or len(batch) == batch_size):
            rows.append(bb.forward(bb.normalize(torch.stack(batch).permute(0, 3, 1, 2))).numpy())
            batch = []
    xb = np.concatenate(rows) if rows else np.zeros((0, bb.dim), np.float32)
    return xb.astype(np.float32, copy=False), failed
