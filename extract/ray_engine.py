"""The extraction loop on a Ray cluster: decode in CPU tasks, run the backbone in a pool of actors.

The driver lists the images, builds the backbone once (and recalibrates a random-init one exactly as
the local engine does), and ships its state dict through the object store, so every actor runs the
same network without reading weight files on its node. Ray Data streams rows ``(shard, id)`` through
``map_batches(decode)`` (stateless tasks) and ``map_batches(_Embedder, compute=ActorPoolStrategy)``
(actors that load the model once); rows carry their id and shard number, so nothing depends on the
order Ray returns them in. The driver gathers the rows of each shard and writes it as soon as it is
complete (:class:`~extract.shards.ShardStore`): a killed actor is restarted by Ray and its unfinished
batches retried, a failed or killed job is resumed from the manifest and only redoes unfinished
shards. The shards end as one feature file, the same as the local engine makes.

On a cluster, the image paths (``root / id``) must be readable from every node (shared storage).
Ray is imported inside the functions: ``import extract.ray_engine`` does not need it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from extract.collection import plan_run, read_source
from extract.core.errors import UserError
from extract.cpu_memory import worker_env
from extract.features import (
    BN_IMAGES,
    MATCH_KEYS,
    ExtractSummary,
    calibrate,
    calibration_ids,
    check_dtype,
)
from extract.images import (
    DEFAULT_MAX_PIXELS,
    Decoder,
    Preprocessing,
    prepare_image,
    recorded_preprocessing,
)
from extract.inputs import list_inputs
from extract.parts import ResumableWriter, read_state
from extract.shards import ShardRecord, ShardStore
from extract.store import open_features

log = logging.getLogger(__name__)

RAY_HINT = "pip install 'buscador[ray]'"


_SOURCE_COLUMNS = ("size", "mtime_ns", "sha256")


def _decode(batch: dict, root: str, preprocessing: dict, decoder: dict, max_pixels: int) -> dict:
    """Ray task: ``{shard, id}`` rows -> ``+ image (n, S, S, 3) uint8, reason ('' when readable)`` and the
    source record ``size, mtime_ns, sha256`` of the bytes decoded (each file is read once, as locally)."""
    pre, dec = Preprocessing.from_config(preprocessing), Decoder.from_config(decoder)
    images = np.zeros((len(batch["id"]), pre.crop, pre.crop, 3), np.uint8)
    reasons, sources = [], []
    for r, i in enumerate(batch["id"]):
        path = Path(root) / str(i)
        data, source = read_source(path)
        arr, reason = prepare_image(path, pre, max_pixels, dec, data)
        if arr is not None:
            images[r] = arr
        reasons.append(reason or "")
        sources.append(source)
    return {"shard": batch["shard"], "id": batch["id"], "image": images, "reason": np.array(reasons, dtype=object),
            "size": np.array([s[0] for s in sources], np.int64), "mtime_ns": np.array([s[1] for s in sources], np.int64),
            "sha256": np.array([s[2] for s in sources], dtype=object)}


class _Embedder:
    """Ray actor: holds the backbone (built once from the driver's state dict), embeds decoded batches.

    Ray Data cuts batches at block boundaries and failed images drop out, so batches come in any size;
    each is padded to ``batch_size`` rows. Every forward then has one input shape: cuDNN tunes its
    kernels once, and an image's features do not depend on the size of the batch it landed in (CPU
    convolution kernels for a single image differ from the batched ones in the last float bits).
    """

    def __init__(self, model: str, seed: int, device: str, threads: int, state: list, config: dict,
                 batch_size: int):
        import ray
        import torch

        from extract.backbone import load_backbone

        if device == "cpu":
            torch.set_num_threads(threads)
        pre, dec = recorded_preprocessing(config)
        self.bb = load_backbone(model, "none", device, seed=seed, preprocessing=pre, decoder=dec)
        self.bb.module.load_state_dict(ray.get(state[0]))
        self.bb.config = dict(config)
        self.pin = self.bb.device.type == "cuda"
        self.batch_size = batch_size
        log.info("embedding actor pid %d: %s on %s", os.getpid(), model, self.bb.device)

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        feats = np.zeros((len(ok), self.bb.dim), np.float32)
        if ok.any():
            good = batch["image"][ok]
            if len(good) < self.batch_size:  # one input shape for every forward (see the class docstring)
                good = np.concatenate([good, np.zeros((self.batch_size - len(good), *good.shape[1:]), good.dtype)])
            x = torch.from_numpy(np.ascontiguousarray(good)).permute(0, 3, 1, 2)
            if self.pin:
                x = x.pin_memory()  # page-locked host buffer: the copy to the GPU overlaps the previous batch
            feats[ok] = self.bb.forward(self.bb.normalize(x)).numpy()[: int(ok.sum())]
        return {"shard": batch["shard"], "id": batch["id"], "feature": feats, "reason": batch["reason"],
                **{c: batch[c] for c in _SOURCE_COLUMNS}}


def _connect(address: str | None, num_cpus: int | None):
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray Data; {RAY_HINT}") from None
    if ray.is_initialized():
        return ray, False
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                        "or pass --address HOST:PORT") from None
    return ray, True


def _plan(todo: list[str], first_index: int, shard_size: int) -> dict[int, list[str]]:
    return {first_index + k: todo[s : s + shard_size] for k, s in enumerate(range(0, len(todo), shard_size))}


def _dataset(ray, plan: dict[int, list[str]], root: Path, bb, state_ref, device: str, actors: int,
             gpus_per_actor: float, cpus_per_actor: float, batch_size: int, max_pixels: int):
    import pyarrow as pa

    ray.data.DataContext.get_current().enable_progress_bars = False  # the engine's own bar counts images
    tables = [pa.table({"shard": np.full(len(ids), k, np.int64), "id": pa.array(ids, pa.string())})
              for k, ids in plan.items()]
    ds = ray.data.from_arrow(tables)
    ds = ds.map_batches(_decode, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                        fn_kwargs={"root": str(root), "preprocessing": bb.preprocessing.to_config(),
                                   "decoder": bb.decoder.to_config(), "max_pixels": max_pixels})
    env = worker_env()  # actor tasks run on a thread pool: one malloc arena, or each batch faults its buffers in
    return ds.map_batches(
        _Embedder, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None, num_cpus=cpus_per_actor,
        **({"runtime_env": {"env_vars": env}} if env else {}),
        fn_constructor_kwargs={"model": bb.config["model"],
                               "seed": bb.config.get("seed") or 0, "device": device,
                               "threads": max(1, int(cpus_per_actor)), "state": [state_ref], "config": bb.config,
                               "batch_size": batch_size},
    )


def gather_shards(ds, plan: dict[int, list[str]], shards: ShardStore, on_shard, bar, tally: dict) -> None:
    """Collect rows per shard (order-free, each id once) and write every shard as soon as it is complete.

    ``tally`` counts what this run wrote (``written``: rows, ``failed``: ``[(id, reason)]``).
    """
    pending: dict[int, dict[str, tuple[np.ndarray | None, str, tuple[int, int, str]]]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for k, i, feat, why, *source in zip(batch["shard"], batch["id"], batch["feature"], batch["reason"],
                                            *(batch[c] for c in _SOURCE_COLUMNS)):
            k, i = int(k), str(i)
            if k in shards.records:
                continue  # a retried batch delivered again after its shard was written
            rows = pending.setdefault(k, {})
            if i in rows:
                continue  # delivered twice: keep the first copy
            rows[i] = (None if why else feat, str(why), (int(source[0]), int(source[1]), str(source[2])))
            bar.update(1)
            if len(rows) == len(plan[k]):
                ids = [j for j in plan[k] if rows[j][0] is not None]
                bad = [(j, rows[j][1]) for j in plan[k] if rows[j][0] is None]
                xb = np.stack([rows[j][0] for j in ids]) if ids else np.zeros((0, shards.dim), np.float32)
                rec = shards.write(k, ids, xb, bad, {j: rows[j][2] for j in plan[k]})
                del pending[k]
                tally["written"] += len(ids)
                tally["failed"] += bad
                if on_shard is not None:
                    on_shard(rec)
    if pending:
        raise RuntimeError(f"{len(pending)} shards came back incomplete")


def extract_features_ray(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = "resnet152",
    weights: str = "imagenet",
    batch_size: int = 32,
    device: str = "auto",
    image_size: int | None = None,
    limit: int | None = None,
    root: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quiet: bool = False,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    shard_size: int = 10_000,
    virtual: bool = False,
    bn_images: int = BN_IMAGES,
    attempts: int = 3,
    num_cpus: int | None = None,
    on_shard: Callable[[ShardRecord], None] | None = None,
    dtype: str = "float32",
    prune: bool = False,
) -> ExtractSummary:
    """Extract features of ``images`` into ``out`` on Ray; the same file, ids and failed list as the local engine.

    ``address`` is a running cluster (``auto`` or ``HOST:PORT``); ``None`` uses the Ray already
    initialised in this process or starts a local one with ``num_cpus``. ``actors`` backbone actors
    each take ``gpus_per_actor`` GPUs (0: CPU actors with ``cpus_per_actor`` threads). Images are
    grouped into shards of ``shard_size`` rows; a run that fails or is killed resumes from the
    manifest, and a failed Ray job is retried ``attempts`` times in all. ``virtual`` leaves the shards
    in place and makes ``out`` a virtual dataset over them instead of merging (the disk holds the
    features once). ``on_shard`` is called with each finished shard's record. ``dtype`` as locally.
    Shards record each row's source (size, mtime, sha256), so a later run, on either engine, extracts
    only new and changed images; images that changed since ``out`` was made are extracted again.
    ``prune`` drops rows whose image file is gone, in the merge, as the local engine does (not with ``virtual``:
    the shards are the virtual file's data).
    """
    check_dtype(dtype)
    if prune and virtual:
        raise UserError("--prune rewrites the merged file; a --virtual file reads its rows from the shards: "
                        "merge it (run without --virtual into a new file) and prune that")
    if batch_size < 1 or actors < 1 or shard_size < 1 or attempts < 1 or gpus_per_actor < 0 or cpus_per_actor <= 0:
        raise UserError("--batch-size, --actors, --shard-size must be >= 1, --gpus-per-actor >= 0, --cpus-per-actor > 0")
    if limit is not None and limit < 1:
        raise UserError("--limit must be >= 1")
    if device == "cuda" and not gpus_per_actor:
        raise UserError("--device cuda on Ray needs --gpus-per-actor (e.g. 1: one actor per GPU)")
    actor_device = "cuda" if gpus_per_actor else "cpu"
    if device == "cpu" and gpus_per_actor:
        raise UserError("--device cpu and --gpus-per-actor > 0 disagree; drop one of them")
    from extract.backbone import load_backbone

    listing = list_inputs(images, root)
    session = _connect(address, num_cpus) if address is not None else None  # a wrong address fails first
    bb = load_backbone(model, weights, "cpu", image_size)
    if bb.needs_calibration:
        calibrate(bb, listing.root, calibration_ids(listing, bn_images, max_pixels), max_pixels)
    config = dict(bb.config, created=datetime.now(UTC).isoformat(timespec="seconds"),
                  image_root=str(listing.root.resolve()), images=str(listing.source), max_pixels=max_pixels,
                  engine="ray", shard_size=shard_size, dtype=dtype)
    bb.config = config
    shards = ShardStore(out, config, bb.dim, MATCH_KEYS)
    if not virtual and shards.is_virtual_output():
        raise UserError(f"{out} is a virtual file over {shards.folder}; pass --virtual to add images to it")
    writer = None if virtual else ResumableWriter(out, config, bb.dim, MATCH_KEYS)
    ids = listing.ids[:limit] if limit else listing.ids
    plan = plan_run(listing, ids, read_state(out)) if writer is not None else None
    if plan is not None:
        writer.redo(plan.changed + plan.retry)  # their rows from the shards replace the stored ones
    redo = set(plan.changed + plan.retry) if plan is not None else set()
    done = shards.done | ((writer.done - redo) if writer is not None else set())
    skipped = sum(1 for i in ids if i in done)
    t0 = time.perf_counter()
    written, failed = 0, []
    todo = [i for i in ids if i not in done]
    if todo:
        ray, started = session or _connect(address, num_cpus)
        try:
            state_ref = ray.put({k: v.cpu() for k, v in bb.module.state_dict().items()})
            written, failed = _attempts(ray, todo, shards, listing.root, bb, state_ref, actor_device, actors,
                                        gpus_per_actor, cpus_per_actor, batch_size, shard_size, max_pixels,
                                        attempts, quiet, on_shard)
        finally:
            if started:
                ray.shutdown()
    elif session is not None and session[1]:
        session[0].shutdown()
    compute_s = time.perf_counter() - t0
    drop = plan.gone if prune else []  # prune excludes virtual, so there is a plan
    result = shards.write_virtual() if virtual else shards.merge(writer, drop)
    log.info("ray engine: %.2f s extracting, %.2f s %s", compute_s, time.perf_counter() - t0 - compute_s,
             "writing the virtual file" if virtual else "merging shards")
    ff = open_features(result)
    gone = 0 if (prune or plan is None) else len(plan.gone)
    return ExtractSummary(Path(out), config["model"], bb.dim, len(ids), written, skipped, len(failed),
                          listing.duplicates, len(ff), len(ff.failed), time.perf_counter() - t0, failed,
                          pruned=len(drop), gone=gone)


def _attempts(ray, todo, shards, root, bb, state_ref, device, actors, gpus_per_actor, cpus_per_actor, batch_size,
              shard_size, max_pixels, attempts, quiet, on_shard) -> tuple[int, list[tuple[str, str]]]:
    tally = {"written": 0, "failed": []}
    bar = tqdm(total=len(todo), unit="img", disable=quiet or not sys.stderr.isatty(), desc="extract (ray)")
    try:
        for attempt in range(1, attempts + 1):
            done = shards.done
            left = [i for i in todo if i not in done]
            if not left:
                break
            plan = _plan(left, shards.next_index, shard_size)
            ds = _dataset(ray, plan, root, bb, state_ref, device, actors, gpus_per_actor, cpus_per_actor,
                          batch_size, max_pixels)
            bar.reset(total=len(left))
            try:
                gather_shards(ds, plan, shards, on_shard, bar, tally)
            except (ray.exceptions.RayError, RuntimeError) as exc:
                lost = len([i for i in left if i not in shards.done])
                if attempt == attempts:
                    raise UserError(f"the Ray job failed {attempts} times (last: {exc.__class__.__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}); {len(shards.records)} shards "
                                    f"are done and {lost} images left: run the same command again to resume") from None
                log.warning("Ray job failed (%s); retrying the %d images of unfinished shards", exc, lost)
    finally:
        bar.close()
    return tally["written"], tally["failed"]
