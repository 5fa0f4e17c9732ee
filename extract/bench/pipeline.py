"""Extraction benchmark: full pipeline images/s against the bare model forward, in the same run.

The pipeline is the real ``extract_features`` on JPEG files drawn into a temporary folder (decode +
resize in workers, forward, HDF5 commits and final merge); the baseline is the same backbone's forward
on ready, normalised tensors (the first batch of the same images, decoded once) of the same batch size
on the same device. Both are timed in alternating rounds and each pipeline round is compared with the
forward runs around it (shared, noisy machines). The CPU seconds per image of both sides (this process
and its decoding workers, user + system) are reported as well: on a machine that other jobs load, a
pipeline with more runnable threads than the bare forward can win a larger share of the cores, so
its images/s ratio flatters it, while the CPU ratio says how much of the pipeline's CPU the model
itself uses.

On CPU the backbone keeps freed activation memory for reuse (:mod:`extract.cpu_memory`); with
``allocator_baseline`` the bare forward is also timed in a fresh process with glibc's default allocator
behaviour, before and after the rounds, to show what that setting is worth.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from extract.backbone import Backbone, load_backbone
from extract.core.errors import UserError
from extract.cpu_memory import ENV as MALLOC_ENV
from extract.cpu_memory import keep_freed_memory
from extract.cpu_threads import wait_policy
from extract.features import backbone_from_config, calibrate, extract_features
from extract.images import Decoder, prepare_image
from extract.loading import check_decode_in, resolve_decode_in

log = logging.getLogger(__name__)
PHOTO_SIZE = (500, 375)  # width x height of the drawn JPEGs: an ImageNet-sized photo


def draw_images(folder: Path, n: int, size: tuple[int, int] = PHOTO_SIZE, seed: int = 0) -> list[Path]:
    """Draw ``n`` seeded JPEG scenes (random rectangles and ellipses) of ``size`` into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, size[0] - 40)), int(rng.integers(0, size[1] - 40))
            box = [x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))]
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
        path = folder / f"img{k:05d}.jpg"
        im.save(path, quality=90)
        paths.append(path)
    return paths


def _forward_rate(bb: Backbone, ready: torch.Tensor, batches: int) -> tuple[float, float]:
    """Images/s of ``batches`` bare forwards, and the kernel's share of this process's CPU time meanwhile."""
    bb.forward(ready)  # warm-up (kernel selection, caches)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(batches):
        bb.forward(ready)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return batches * ready.shape[0] / seconds, system / max(user + system, 1e-9)


def _ready_batch(bb: Backbone, paths: list[Path]) -> torch.Tensor:
    """The first images of the benchmark, decoded and normalised once: the bare forward's input."""
    arrays = [prepare_image(p, bb.preprocessing, decoder=bb.decoder)[0] for p in paths]
    return bb.normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the decoding workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _default_allocator_forward(spec: dict, queue) -> None:
    """Child process: the bare forward with glibc's default allocator; puts (images/s, kernel share) on ``queue``."""
    torch.set_num_threads(spec["threads"])
    bb = backbone_from_config(spec["config"], spec["device"])  # the parent's backbone, calibration included
    queue.put(_forward_rate(bb, _ready_batch(bb, [Path(p) for p in spec["ready"]]), spec["batches"]))


def _forward_rate_default_allocator(spec: dict) -> tuple[float, float]:
    """Bare forward (images/s, kernel share) in a fresh process with ``BUSCADOR_MALLOC_TUNING=0``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    saved = os.environ.get(MALLOC_ENV)
    os.environ[MALLOC_ENV] = "0"  # the spawned interpreter reads it at start
    try:
        proc = ctx.Process(target=_default_allocator_forward, args=(spec, queue))
        proc.start()
    finally:
        if saved is None:
            os.environ.pop(MALLOC_ENV, None)
        else:
            os.environ[MALLOC_ENV] = saved
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"default-allocator forward process failed (exit code {proc.exitcode})")
    return queue.get(timeout=30)


def benchmark_extract(model: str = "resnet152", weights: str = "auto", batch_size: int = 16, workers: int = 2,
                      device: str = "auto", image_size: int | None = None, images: int = 96,
                      rounds: int = 3, threads: int | None = None, allocator_baseline: bool = False,
                      decoder: str | None = None, decode_in: str = "auto",
                      photo_size: tuple[int, int] = PHOTO_SIZE) -> dict:
    """Time the full extraction pipeline and the bare forward in alternating rounds; figures and ratio.

    The bare forward on ``images`` ready tensors is timed before the first round and after every
    round; each round is a fresh full extraction of the same number of drawn JPEG files. A round's
    ratio is its pipeline rate over the mean of the forward runs around it; the headline figures are
    medians over rounds, because a shared machine's load drifts. ``decoder`` picks the image decoder
    library (``pil``, ``simplejpeg``; default: the extraction default). ``decode_in`` is where the pipeline
    decodes (:mod:`extract.loading`); ``both`` runs a threads round and a processes round each time, every
    pipeline round between two forward runs, and reports both (the headline figures are the threads').
    ``photo_size`` (width, height) of the drawn JPEGs: the DCT scale a JPEG decodes at depends on it.
    """
    if images < batch_size:
        raise UserError(f"--images ({images}) must be at least --batch-size ({batch_size})")
    if rounds < 1:
        raise UserError("--rounds must be >= 1")
    if decode_in != "both":
        check_decode_in(decode_in)
    images -= images % batch_size  # whole batches only, so both sides run the same shapes
    if threads:
        torch.set_num_threads(threads)
    note = ""
    dec = Decoder(decoder) if decoder else None
    if weights == "auto":
        try:
            bb = load_backbone(model, "imagenet", device, image_size, decoder=dec)
        except UserError as exc:
            note = f"random-init weights (no ImageNet weights: {exc})"
            bb = load_backbone(model, "none", device, image_size, decoder=dec)
    else:
        bb = load_backbone(model, weights, device, image_size, decoder=dec)
    modes = ["threads", "processes"] if decode_in == "both" else [resolve_decode_in(decode_in, bb.device)]
    forward, untuned, forward_cpu = [], [], []
    pipeline = {m: [] for m in modes}  # mode -> [(images/s, CPU s per image, index of the forward run before)]
    with tempfile.TemporaryDirectory(prefix="buscador-bench-") as tmp:
        folder = Path(tmp) / "images"
        paths = draw_images(folder, images, photo_size)
        if bb.needs_calibration:
            calibrate(bb, folder, [p.name for p in paths[: min(32, images)]])
        ready = _ready_batch(bb, paths[:batch_size])
        child = {"config": bb.config, "device": str(bb.device), "threads": torch.get_num_threads(),
                 "batches": images // batch_size, "ready": [str(p) for p in paths[:batch_size]]}
        use_baseline = allocator_baseline and bb.device.type == "cpu"
        if use_baseline:
            untuned.append(_forward_rate_default_allocator(child))
        cpu = _cpu_seconds()
        forward.append(_forward_rate(bb, ready, images // batch_size))
        forward_cpu.append((_cpu_seconds() - cpu) / (images + batch_size))  # the rounds plus one warm-up batch
        for r in range(rounds):
            for mode in modes:
                cpu = _cpu_seconds()
                summary = extract_features(folder, Path(tmp) / f"out{r}-{mode}.h5", backbone=bb,
                                           batch_size=batch_size, workers=workers, quiet=True, decode_in=mode)
                if summary.written != images:
                    raise RuntimeError(f"benchmark pipeline wrote {summary.written} of {images} images")
                pipeline[mode].append((summary.written / summary.seconds, (_cpu_seconds() - cpu) / images,
                                       len(forward) - 1))
                cpu = _cpu_seconds()
                forward.append(_forward_rate(bb, ready, images // batch_size))
                forward_cpu.append((_cpu_seconds() - cpu) / (images + batch_size))
        if use_baseline:
            untuned.append(_forward_rate_default_allocator(child))
    forward, kernel = [rate for rate, _ in forward], [share for _, share in forward]
    untuned_rate, untuned_kernel = [rate for rate, _ in untuned], [share for _, share in untuned]
    # each pipeline round against the mean of the forward runs just before and after it (cancels drift)
    by_mode = {}
    for mode, runs in pipeline.items():
        ratios = [rate / ((forward[k] + forward[k + 1]) / 2) for rate, _, k in runs]
        cpu_ratios = [(forward_cpu[k] + forward_cpu[k + 1]) / 2 / cpu for _, cpu, k in runs]
        by_mode[mode] = {
            "pipeline_images_per_s": round(float(np.median([rate for rate, _, _ in runs])), 3),
            "ratio": round(float(np.median(ratios)), 3),
            "ratio_rounds": [round(v, 3) for v in ratios],
            "pipeline_rounds_images_per_s": [round(rate, 3) for rate, _, _ in runs],
            "pipeline_cpu_ms_per_image": round(1000 * float(np.median([cpu for _, cpu, _ in runs])), 2),
            "cpu_ratio": round(float(np.median(cpu_ratios)), 3),
        }
    head = by_mode[modes[0]]
    return {
        "model": model,
        "weights": bb.config["weights"],
        "weights_source": bb.config["weights_source"],
        "device": str(bb.device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "workers": workers,
        "image_size": bb.image_size,
        "preprocessing": bb.preprocessing.describe(),
        "decoder": bb.decoder.describe(),
        "images": images,
        "photo_size": list(photo_size),
        "rounds": rounds,
        "dim": bb.dim,
        "decode_in": modes[0],
        **{k: head[k] for k in ("pipeline_images_per_s", "ratio", "ratio_rounds", "pipeline_rounds_images_per_s")},
        "forward_images_per_s": round(float(np.median(forward)), 3),
        "forward_rounds_images_per_s": [round(v, 3) for v in forward],
        "forward_cpu_ms_per_image": round(1000 * float(np.median(forward_cpu)), 2),
        **{k: head[k] for k in ("pipeline_cpu_ms_per_image", "cpu_ratio")},
        "by_decode_in": by_mode,
        "allocator_tuned": bb.device.type == "cpu" and keep_freed_memory(),
        "omp_wait_policy": wait_policy(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "forward_kernel_share": round(float(np.median(kernel)), 4),
        "forward_default_allocator_images_per_s": [round(v, 3) for v in untuned_rate],
        "forward_default_allocator_kernel_share": [round(v, 4) for v in untuned_kernel],
        "allocator_gain": round(float(np.median(forward) / np.mean(untuned_rate)), 3) if untuned else None,
        "note": note,
    }


def format_table(result: dict) -> str:
    """The benchmark result as a small text table."""
    rows = [
        ("model", f"{result['model']} ({result['dim']}-d, {result['image_size']}px, weights {result['weights']})"),
        ("preprocessing / decoder", f"{result['preprocessing']} / {result['decoder']}"),
        ("device / threads", (f"{result['device']} / {result['threads']} (OpenMP wait policy "
                              f"{result['omp_wait_policy']}, load average {result['load_average']})")),
        ("batch / workers / images", (f"{result['batch_size']} / {result['workers']} / {result['images']} "
                                      f"({result['photo_size'][0]}x{result['photo_size'][1]} JPEGs)")),
        ("bare forward (median)", (f"{result['forward_images_per_s']:.2f} images/s "
                                  f"(runs {result['forward_rounds_images_per_s']})")),
    ]
    for mode, r in result["by_decode_in"].items():
        rows += [
            (f"full pipeline, {mode} (median)", (f"{r['pipeline_images_per_s']:.2f} images/s (rounds "
                                                 f"{r['pipeline_rounds_images_per_s']}; decode+resize+forward+write)")),
            (f"ratio pipeline/forward, {mode}", f"{r['ratio']:.3f} (median of rounds {r['ratio_rounds']})"),
            (f"CPU per image, {mode}", (f"{result['forward_cpu_ms_per_image']:.1f} ms forward, "
                                        f"{r['pipeline_cpu_ms_per_image']:.1f} ms pipeline incl. decoding: "
                                        f"CPU ratio {r['cpu_ratio']:.3f}")),
        ]
    if result["forward_default_allocator_images_per_s"]:
        rows.append(("bare forward, default allocator", (
            f"{result['forward_default_allocator_images_per_s']} images/s (fresh process before/after the rounds); "
            f"kept-memory gain {result['allocator_gain']:.3f}x")))
        shares = ", ".join(f"{v:.1%}" for v in result["forward_default_allocator_kernel_share"])
        kept = f"{result['forward_kernel_share']:.1%}"
        rows.append(("kernel share of forward CPU time", f"{kept} kept memory, {shares} default allocator"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
