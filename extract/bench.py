"""Extraction benchmark: full pipeline images/s against the bare model forward, in the same run.

The pipeline is the real ``extract_features`` on JPEG files drawn into a temporary folder (decode +
resize in workers, forward, HDF5 commits and final merge); the baseline is the same backbone's forward
on ready, normalised tensors of the same batch size on the same device. Both are timed in alternating
rounds and each pipeline round is compared with the forward runs around it (shared, noisy machines).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from extract.backbone import Backbone, load_backbone
from extract.errors import UserError
from extract.features import calibrate, extract_features

log = logging.getLogger(__name__)


def draw_images(folder: Path, n: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> list[Path]:
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


def _forward_rate(bb: Backbone, ready: torch.Tensor, batches: int) -> float:
    bb.forward(ready)  # warm-up (kernel selection, caches)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        bb.forward(ready)
    if bb.device.type == "cuda":
        torch.cuda.synchronize()
    return batches * ready.shape[0] / (time.perf_counter() - t0)


def benchmark_extract(model: str = "resnet152", weights: str = "auto", batch_size: int = 16, workers: int = 2,
                      device: str = "auto", image_size: int | None = None, images: int = 32,
                      rounds: int = 3, threads: int | None = None) -> dict:
    """Time the full extraction pipeline and the bare forward in alternating rounds; figures and ratio.

    The bare forward on ``images`` ready tensors is timed before the first round and after every
    round; each round is a fresh full extraction of the same number of drawn JPEG files. A round's
    ratio is its pipeline rate over the mean of the forward runs around it; the headline figures are
    medians over rounds, because a shared machine's load drifts.
    """
    if images < batch_size:
        raise UserError(f"--images ({images}) must be at least --batch-size ({batch_size})")
    if rounds < 1:
        raise UserError("--rounds must be >= 1")
    images -= images % batch_size  # whole batches only, so both sides run the same shapes
    if threads:
        torch.set_num_threads(threads)
    note = ""
    if weights == "auto":
        try:
            bb = load_backbone(model, "imagenet", device, image_size)
        except UserError as exc:
            note = f"random-init weights (no ImageNet weights: {exc})"
            bb = load_backbone(model, "none", device, image_size)
    else:
        bb = load_backbone(model, weights, device, image_size)
    forward, pipeline = [], []
    with tempfile.TemporaryDirectory(prefix="buscador-bench-") as tmp:
        folder = Path(tmp) / "images"
        paths = draw_images(folder, images)
        if bb.needs_calibration:
            calibrate(bb, folder, [p.name for p in paths[: min(32, images)]])
        ready = bb.normalize(torch.from_numpy(
            np.random.default_rng(1).integers(0, 256, (batch_size, 3, bb.image_size, bb.image_size), dtype=np.uint8)))
        forward.append(_forward_rate(bb, ready, images // batch_size))
        for r in range(rounds):
            summary = extract_features(folder, Path(tmp) / f"out{r}.h5", backbone=bb, batch_size=batch_size,
                                       workers=workers, quiet=True)
            if summary.written != images:
                raise RuntimeError(f"benchmark pipeline wrote {summary.written} of {images} images")
            pipeline.append(summary.written / summary.seconds)
            forward.append(_forward_rate(bb, ready, images // batch_size))
    # each pipeline round against the mean of the forward runs just before and after it (cancels drift)
    ratios = [p / ((forward[r] + forward[r + 1]) / 2) for r, p in enumerate(pipeline)]
    return {
        "model": model,
        "weights": bb.config["weights"],
        "weights_source": bb.config["weights_source"],
        "device": str(bb.device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "workers": workers,
        "image_size": bb.image_size,
        "images": images,
        "rounds": rounds,
        "dim": bb.dim,
        "pipeline_images_per_s": round(float(np.median(pipeline)), 3),
        "forward_images_per_s": round(float(np.median(forward)), 3),
        "ratio": round(float(np.median(ratios)), 3),
        "ratio_rounds": [round(v, 3) for v in ratios],
        "pipeline_rounds_images_per_s": [round(v, 3) for v in pipeline],
        "forward_rounds_images_per_s": [round(v, 3) for v in forward],
        "note": note,
    }


def format_table(result: dict) -> str:
    """The benchmark result as a small text table."""
    rows = [
        ("model", f"{result['model']} ({result['dim']}-d, {result['image_size']}px, weights {result['weights']})"),
        ("device / threads", f"{result['device']} / {result['threads']}"),
        ("batch / workers / images", f"{result['batch_size']} / {result['workers']} / {result['images']}"),
        ("bare forward (median)", (f"{result['forward_images_per_s']:.2f} images/s "
                                  f"(runs {result['forward_rounds_images_per_s']})")),
        ("full pipeline (median)", (f"{result['pipeline_images_per_s']:.2f} images/s "
                                   f"(rounds {result['pipeline_rounds_images_per_s']}; decode+resize+forward+write)")),
        ("ratio pipeline/forward", f"{result['ratio']:.3f} (median of rounds {result['ratio_rounds']})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if result["note"]:
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)
