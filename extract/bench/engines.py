"""Ray engine against the local engine on one machine: images/s and CPU per image in the same run.

Both engines extract the same drawn JPEGs with the same backbone and batch size: the local engine with
``workers`` decoding threads and a forward on ``threads`` cores, the Ray engine on a local cluster of
``workers + threads`` logical CPUs (decode tasks of one CPU, ``actors`` actors of ``cpus_per_actor``).
Each engine runs on N and on 2N images (local N, Ray warm-up, Ray N, Ray 2N, local 2N). Per engine:
the steady rate of the 2N run between its first and last durable output; wall images/s on 2N, start-up
included; the CPU time of the extra N images (all processes of the engine, Ray's daemons and workers
included). The features of the two engines are compared as well.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import numpy as np

from extract.bench.pipeline import PHOTO_SIZE, draw_images
from extract.features import extract_features
from extract.ray_engine import extract_features_ray
from extract.store import open_features

log = logging.getLogger(__name__)


class _TreeCpu:
    """CPU time (user + system) of this process, its reaped children and every descendant seen alive.

    Ray's daemons name their session folder on their command line (``markers``) and its workers
    descend from them; Ray ends its workers itself (their time never reaches ``RUSAGE_CHILDREN``), so
    a thread samples ``/proc/*/stat`` every ``every`` seconds and keeps the largest count per process.
    """

    def __init__(self, every: float = 0.25):
        self.every = every
        self.seen: dict[int, int] = {}
        self.markers: list[bytes] = []  # command-line parts that make a process a root too (Ray's session dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        parent, ticks = {}, {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(entry.name)] = int(fields[1])
                ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
        roots = {os.getpid()}
        if self.markers:
            for pid in ticks:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if any(m in cmd for m in self.markers):
                    roots.add(pid)
        for pid, t in ticks.items():
            p = pid
            while p in parent and p not in roots and p not in (0, 1):
                p = parent[p]
            if p in roots and pid != os.getpid():
                self.seen[pid] = max(self.seen.get(pid, 0), t)

    def seconds(self) -> float:
        self.sample()
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
                + sum(self.seen.values()) / os.sysconf("SC_CLK_TCK"))


def benchmark_engines(model: str = "resnet18", weights: str = "none", image_size: int | None = 112,
                      images: int = 64, batch_size: int = 16, workers: int = 1, shard_size: int = 16,
                      threads: int | None = None, actors: int = 1, cpus_per_actor: float | None = None,
                      photo_size: tuple[int, int] = PHOTO_SIZE) -> dict:
    """Both engines on ``images`` and ``2 * images`` drawn JPEGs of ``photo_size``: wall rates and CPU cost.

    The Ray cluster has ``workers + threads`` CPUs and ``actors`` actors of ``cpus_per_actor`` CPUs
    (default ``threads``: one actor shaped as the local forward). The steady rate of an engine is
    that of its 2N run between its first and its last durable output (a local commit, a Ray shard):
    what a long job runs at once started, without job start-up and the final merge.
    """
    import ray

    threads = threads or os.cpu_count() or 1
    cpus_per_actor = cpus_per_actor or threads
    common = {"model": model, "weights": weights, "image_size": image_size, "batch_size": batch_size, "quiet": True}
    tmp = Path(tempfile.mkdtemp(prefix="buscador-engines-"))
    try:
        draw_images(tmp / "imgs", 2 * images, photo_size)
        (tmp / "warm.txt").write_text("\n".join(f"imgs/img{k:05d}.jpg" for k in range(batch_size)) + "\n")
        (tmp / "half.txt").write_text("\n".join(f"imgs/img{k:05d}.jpg" for k in range(images)) + "\n")
        (tmp / "all.txt").write_text("\n".join(f"imgs/img{k:05d}.jpg" for k in range(2 * images)) + "\n")
        runs: dict[str, dict[str, tuple[float, float]]] = {"local": {}, "ray": {}}
        outputs: dict[str, list[tuple[float, int]]] = {"local": [], "ray": []}  # 2N run: (time, images) per output

        def timed(engine: str, part: str, run) -> None:
            c0, t0 = cpu.seconds(), time.perf_counter()
            events = outputs[engine] if part == "all" else []
            run(tmp / f"{part}.txt", tmp / f"{engine}-{part}.h5", lambda n: events.append((time.perf_counter(), n)))
            runs[engine][part] = (time.perf_counter() - t0, cpu.seconds() - c0)

        def local(src: Path, out: Path, output) -> None:
            import torch

            torch.set_num_threads(threads)
            extract_features(src, out, workers=workers, on_commit=output, **common)

        def on_ray(src: Path, out: Path, output) -> None:
            extract_features_ray(src, out, actors=actors, cpus_per_actor=cpus_per_actor, shard_size=shard_size,
                                 on_shard=lambda rec: output(rec.rows + rec.failed), **common)

        with _TreeCpu() as cpu:
            timed("local", "half", local)
            t0 = time.perf_counter()
            context = ray.init(num_cpus=workers + threads, include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - t0
            cpu.markers.append(str(context.address_info["session_dir"]).encode())  # Ray's daemons leave our tree
            try:
                timed("ray", "warm", on_ray)  # the first job on a fresh cluster also pays its workers' imports
                timed("ray", "half", on_ray)
                timed("ray", "all", on_ray)
            finally:
                ray.shutdown()
            timed("local", "all", local)
        a, b = open_features(tmp / "local-all.h5"), open_features(tmp / "ray-all.h5")
        result = {"model": model, "weights": weights, "image_size": image_size or 224, "images": images,
                  "batch_size": batch_size, "workers": workers, "threads": threads, "shard_size": shard_size,
                  "actors": actors, "cpus_per_actor": cpus_per_actor, "photo_size": list(photo_size),
                  "ray_init_s": round(init_s, 2), "load_average": round(os.getloadavg()[0], 1),
                  "same_ids": a.ids == b.ids and a.failed == b.failed,
                  "max_abs_diff": float(np.abs(a.load() - b.load()).max()) if len(a) else 0.0}
        for engine, r in runs.items():
            ch, (wa, ca) = r["half"][1], r["all"]
            result[f"{engine}_wall_images_per_s"] = round(2 * images / wa, 2)
            result[f"{engine}_steady_images_per_s"] = steady_rate(outputs[engine])
            result[f"{engine}_cpu_s_per_image"] = round((ca - ch) / images, 4)  # the extra images only
        result["ratio_wall"] = round(result["ray_wall_images_per_s"] / result["local_wall_images_per_s"], 3)
        local_steady, ray_steady = result["local_steady_images_per_s"], result["ray_steady_images_per_s"]
        result["ratio_steady"] = round(ray_steady / local_steady, 3) if local_steady and ray_steady else None
        result["ratio_cpu"] = round(result["local_cpu_s_per_image"] / max(result["ray_cpu_s_per_image"], 1e-9), 3)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def steady_rate(outputs: list[tuple[float, int]]) -> float | None:
    """Images/s between the first and the last of ``(time, images)`` outputs (the first one's images
    were made before the clock starts); None with fewer than two outputs."""
    if len(outputs) < 2 or outputs[-1][0] <= outputs[0][0]:
        return None
    return round(sum(n for _, n in outputs[1:]) / (outputs[-1][0] - outputs[0][0]), 2)


def _rate(v: float | None) -> str:
    return "- (one output only: use more images or smaller shards)" if v is None else f"{v:.1f} images/s"


def format_engines(r: dict) -> str:
    return "\n".join([
        (f"{r['model']} ({r['weights']}) at {r['image_size']} px, {r['images']} and {2 * r['images']} images, "
         f"{r['photo_size'][0]}x{r['photo_size'][1]} JPEGs, batch {r['batch_size']}, local: {r['workers']} decode "
         f"worker(s) + {r['threads']} forward threads; ray: {r['workers'] + r['threads']} CPUs, {r['actors']} "
         f"actor(s) of {r['cpus_per_actor']:g} CPU, shards of {r['shard_size']}"),
        (f"steady, first to last output of the {2 * r['images']}-image run: "
         f"local {_rate(r['local_steady_images_per_s'])}, ray {_rate(r['ray_steady_images_per_s'])} = "
         f"{'-' if r['ratio_steady'] is None else format(r['ratio_steady'], '.3f')} x local"),
        (f"wall, {2 * r['images']} images: local {r['local_wall_images_per_s']:.1f} images/s, ray "
         f"{r['ray_wall_images_per_s']:.1f} images/s = {r['ratio_wall']:.3f} x local (job start-up included; "
         f"ray.init took {r['ray_init_s']:.1f} s more)"),
        (f"CPU per extra image: local {r['local_cpu_s_per_image'] * 1000:.1f} ms, ray "
         f"{r['ray_cpu_s_per_image'] * 1000:.1f} ms: ray does {r['ratio_cpu']:.3f} x the local images per CPU second"),
        (f"same ids and failed list: {r['same_ids']}, max |local - ray| = {r['max_abs_diff']:.2e}; "
         f"load average {r['load_average']} at the end"),
    ])
