"""Ray engine against the local engine on one machine: images/s in the same run, same images and model.

Both engines extract the same drawn JPEGs with the same backbone, batch size and CPU shape: the local
engine with ``workers`` decoding processes and a forward on all cores, the Ray engine on a local
cluster of ``workers + threads`` logical CPUs (decode tasks of one CPU, one actor of ``threads``).
Rounds alternate local, Ray, local; the Ray round is compared with the mean of the local rounds
around it. The Ray figures are end to end (start of the job, actor start-up and model shipping
included) and steady (first to last finished shard, i.e. without the fixed start-up cost, which a
long job amortises). The features of the two engines are compared as well.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from extract.bench.pipeline import draw_images
from extract.features import extract_features
from extract.ray_engine import extract_features_ray
from extract.store import open_features

log = logging.getLogger(__name__)


def benchmark_engines(model: str = "resnet18", weights: str = "none", image_size: int | None = 112,
                      images: int = 384, batch_size: int = 16, workers: int = 1, shard_size: int = 16,
                      threads: int | None = None) -> dict:
    """Images/s of the local and the Ray engine on the same ``images`` drawn JPEGs (500x375)."""
    import ray

    threads = threads or os.cpu_count() or 1
    common = {"model": model, "weights": weights, "image_size": image_size, "batch_size": batch_size, "quiet": True}
    tmp = Path(tempfile.mkdtemp(prefix="buscador-engines-"))
    try:
        draw_images(tmp / "imgs", images)
        local_rates = []

        def local_round(k: int) -> None:
            s = extract_features(tmp / "imgs", tmp / f"local{k}.h5", workers=workers, **common)
            local_rates.append(s.images_per_s)

        local_round(0)
        t0 = time.perf_counter()
        ray.init(num_cpus=workers + threads, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        try:
            stamps: list[tuple[float, int]] = []
            s = extract_features_ray(tmp / "imgs", tmp / "ray.h5", cpus_per_actor=threads, shard_size=shard_size,
                                     on_shard=lambda rec: stamps.append((time.perf_counter(), rec.rows + rec.failed)),
                                     **common)
        finally:
            ray.shutdown()
        local_round(1)
        steady = 0.0
        if len(stamps) > 1:
            steady = sum(n for _, n in stamps[1:]) / max(stamps[-1][0] - stamps[0][0], 1e-9)
        a, b = open_features(tmp / "local0.h5"), open_features(tmp / "ray.h5")
        local = float(np.mean(local_rates))
        return {
            "model": model, "weights": weights, "image_size": image_size or 224, "images": images,
            "batch_size": batch_size, "workers": workers, "threads": threads, "shard_size": shard_size,
            "local_images_per_s": [round(r, 2) for r in local_rates],
            "ray_init_s": round(init_s, 2),
            "ray_end_to_end_images_per_s": round(s.images_per_s, 2),
            "ray_steady_images_per_s": round(steady, 2),
            "ratio_end_to_end": round(s.images_per_s / local, 3) if local else 0.0,
            "ratio_steady": round(steady / local, 3) if local else 0.0,
            "load_average": round(os.getloadavg()[0], 1),
            "same_ids": a.ids == b.ids and a.failed == b.failed,
            "max_abs_diff": float(np.abs(a.load() - b.load()).max()) if len(a) else 0.0,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def format_engines(r: dict) -> str:
    local = ", ".join(f"{v:.1f}" for v in r["local_images_per_s"])
    return "\n".join([
        (f"{r['model']} ({r['weights']}) at {r['image_size']} px, {r['images']} images, batch {r['batch_size']}, "
         f"{r['workers']} decode worker(s) + {r['threads']} forward threads, shards of {r['shard_size']}"),
        f"local engine:        {local} images/s (rounds before and after the Ray round)",
        (f"ray engine, steady:  {r['ray_steady_images_per_s']:.1f} images/s = {r['ratio_steady']:.3f} x local "
         "(first to last shard)"),
        (f"ray engine, overall: {r['ray_end_to_end_images_per_s']:.1f} images/s = {r['ratio_end_to_end']:.3f} x local "
         f"(job start-up included; ray.init took {r['ray_init_s']:.1f} s more)"),
        (f"same ids and failed list: {r['same_ids']}, max |local - ray| = {r['max_abs_diff']:.2e}; "
         f"load average {r['load_average']} at the end"),
    ])
