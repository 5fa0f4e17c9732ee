"""Commands on images: demo-data, extract, import-vectors, benchmark extract."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-train", default=1000, show_default=True, help="Images in the train split.")
@click.option("--n-val", default=150, show_default=True, help="Images in the val split.")
@click.option("--n-test", default=150, show_default=True, help="Images in the test split.")
@click.option("--n-movies", default=1200, show_default=True, help="Movies with posters and overviews.")
@click.option("--seed", default=0, show_default=True, help="Seed; the same seed and options give identical files.")
@click.option("--image-size", default=256, show_default=True, help="Side of the square scene images, in pixels.")
@click.option("--force", is_flag=True, help="Regenerate even when OUT_DIR already holds this exact demo set.")
def demo_data(out_dir: Path, n_train: int, n_val: int, n_test: int, n_movies: int, seed: int,
              image_size: int, force: bool) -> None:
    """Draw the demo corpus into OUT_DIR: captioned scenes (train/val/test) and movies with genres.

    Nothing is downloaded: every image is drawn from the seed. A folder that already holds the same
    demo set is left as it is; one made with other options is regenerated.
    """
    from retrieval.demo.corpus import DemoConfig, generate_demo

    config = DemoConfig(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, n_movies=n_movies,
                        image_size=image_size)
    click.echo(generate_demo(out_dir, config, force=force).line())


@click.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", default="resnet152", show_default=True,
              help="torchvision classification model name, or efficientnet-lite0.")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (torch hub cache or installed package), none (seeded random init), or a state_dict .pth.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Decoding threads or processes (0: decode between batches).")
@click.option("--decode-in", default="auto", show_default=True, type=click.Choice(["auto", "threads", "processes"]),
              help="Where the workers decode: threads of this process, or worker processes [auto: threads on CPU, "
                   "processes on GPU].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--image-size", type=click.IntRange(min=16), help="Crop size N in pixels; the shorter side is resized to N*resize/crop [the weights' own crop, e.g. 224].")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most this many images of the list.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Image root for ids and relative paths [the folder, or the list file's folder].")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images (decompression-bomb guard).")
@click.option("--commit-every", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between durable commits of finished batches (0: every batch).")
@click.option("--prune", is_flag=True, help="Drop rows whose image file no longer exists.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16"]),
              help="How values are stored: float16 halves the file (readers still get float32; rel. error <= 2^-11).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: this process and its decoding workers; ray: Ray Data tasks and actors (buscador[ray]).")
@click.option("--address", help="[ray] Cluster to join: auto, or HOST:PORT [start a local Ray].")
@click.option("--actors", type=click.IntRange(min=1), help="[ray] Backbone actors, each loads the model once [1].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), help="[ray] GPUs per actor; 0: CPU actors [0].")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True),
              help="[ray] CPUs (torch threads) per CPU actor [1].")
@click.option("--shard-size", type=click.IntRange(min=1),
              help="[ray] Images per shard: the unit written, listed in the manifest and redone after a failure [10000].")
@click.option("--virtual", is_flag=True,
              help="[ray] Keep the shards and make OUT.h5 a virtual dataset over them instead of merging (disk x1).")
def extract(images: Path, out: Path, model: str, weights: str, batch_size: int, workers: int, decode_in: str,
            device: str, image_size: int | None, limit: int | None, root: Path | None, max_pixels: int, commit_every: float,
            prune: bool, dtype: str, quiet: bool, engine: str, address: str | None, actors: int | None, gpus_per_actor: float | None,
            cpus_per_actor: float | None, shard_size: int | None, virtual: bool) -> None:
    """Extract pooled image features of IMAGES into OUT.h5; resumable.

    IMAGES is a folder, a list file, a COCO JSON, or (for collections too big to list twice) a
    Parquet/CSV table with a path column. Re-running it on OUT extracts only new images and images
    whose bytes changed, and with --prune drops rows whose file is gone.
    """
    ray_options = {"address": address, "actors": actors, "gpus_per_actor": gpus_per_actor,
                   "cpus_per_actor": cpus_per_actor, "shard_size": shard_size}
    if engine == "local":
        given = [f"--{k.replace('_', '-')}" for k, v in ray_options.items() if v is not None] + (
            ["--virtual"] if virtual else [])
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to --engine ray")
        from extract.features import extract_features

        summary = extract_features(images, out, model=model, weights=weights, batch_size=batch_size,
                                   workers=workers, device=device, image_size=image_size, limit=limit, root=root,
                                   max_pixels=max_pixels, commit_seconds=commit_every, quiet=quiet, prune=prune,
                                   dtype=dtype, decode_in=decode_in)
    else:
        if decode_in != "auto":
            raise click.UsageError("--decode-in applies to --engine local (the Ray engine decodes in Ray tasks)")
        from extract.ray_engine import extract_features_ray

        summary = extract_features_ray(images, out, model=model, weights=weights, batch_size=batch_size,
                                       device=device, image_size=image_size, limit=limit, root=root,
                                       max_pixels=max_pixels, quiet=quiet, virtual=virtual, dtype=dtype, prune=prune,
                                       **{k: v for k, v in ray_options.items() if v is not None})
    click.echo(summary.report())


@click.command("verify")
@click.argument("features", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def verify_features(features: Path) -> None:
    """Re-hash every row of FEATURES.h5 and check it against the hashes recorded when it was written."""
    from extract.store import open_features

    ff = open_features(features)
    ff.verify()
    click.echo(f"{ff.path}: {len(ff)} rows x {ff.dim}-d intact, fingerprint {ff.fingerprint}")


@click.command("import-vectors")
@click.argument("names", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("vectors", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dim", default=2048, show_default=True, type=click.IntRange(min=1), help="Values per row.")
def import_vectors_cmd(names: Path, vectors: Path, out: Path, dim: int) -> None:
    """Import precomputed features: NAMES.txt (one per line) + VECTORS.bin (float32 rows) -> OUT.h5."""
    from extract.store import open_features
    from extract.vectors_import import import_vectors

    ff = open_features(import_vectors(names, vectors, out, dim))
    click.echo(f"{ff.path}: {len(ff)} images x {ff.dim}-d imported")


def _photo_size(ctx, param, value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 640x480") from None
    if min(w, h) < 64:
        raise click.BadParameter(f"{value!r}: both sides must be at least 64 pixels")
    return w, h


@click.command("extract")
@click.option("--model", default="resnet152", show_default=True)
@click.option("--weights", default="auto", show_default=True,
              help="auto: ImageNet when the file is present, else random init (said in the output).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--decode-in", default="auto", show_default=True,
              type=click.Choice(["auto", "threads", "processes", "both"]),
              help="Where the pipeline decodes; both: alternate threads and processes rounds, each against "
                   "the forward runs around it.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--image-size", type=click.IntRange(min=16))
@click.option("--images", default=96, show_default=True, type=click.IntRange(min=1),
              help="Images to draw and extract per round (enough to amortise worker start-up).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Alternating timing rounds.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads for the forward [torch default].")
@click.option("--allocator-baseline/--no-allocator-baseline", default=True, show_default=True,
              help="On CPU, also time the bare forward in a fresh process with glibc's default allocator.")
@click.option("--photo-size", default="500x375", show_default=True, callback=_photo_size,
              help="WIDTHxHEIGHT of the drawn JPEGs (a JPEG whose shorter side is twice the resize decodes at 1/2).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark_extract_cmd(model: str, weights: str, batch_size: int, workers: int, decode_in: str, device: str,
                          image_size: int | None, images: int, rounds: int, threads: int | None,
                          allocator_baseline: bool, photo_size: tuple[int, int], as_json: bool) -> None:
    """Images/s of the full extraction pipeline vs the bare model forward (same run, model, batch, device)."""
    import json

    from extract.bench.pipeline import benchmark_extract, format_table

    result = benchmark_extract(model, weights, batch_size, workers, device, image_size, images, rounds, threads,
                               allocator_baseline, decode_in=decode_in, photo_size=photo_size)
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


@click.command("extract-engines")
@click.option("--model", default="resnet18", show_default=True)
@click.option("--weights", default="none", show_default=True)
@click.option("--image-size", default=112, show_default=True, type=click.IntRange(min=16))
@click.option("--images", default=64, show_default=True, type=click.IntRange(min=2),
              help="Drawn JPEGs; each engine runs on this many and on twice as many.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Decoding threads of the local engine; the Ray cluster gets as many CPUs more.")
@click.option("--shard-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="Forward threads of the local engine [all cores].")
@click.option("--actors", default=1, show_default=True, type=click.IntRange(min=1), help="Ray backbone actors.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True),
              help="CPUs (forward threads) of each Ray actor [--threads].")
@click.option("--photo-size", default="500x375", show_default=True, callback=_photo_size,
              help="WIDTHxHEIGHT of the drawn JPEGs.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark_engines_cmd(model: str, weights: str, image_size: int, images: int, batch_size: int, workers: int,
                          shard_size: int, threads: int | None, actors: int, cpus_per_actor: float | None,
                          photo_size: tuple[int, int], as_json: bool) -> None:
    """Images/s of the Ray engine on one machine against the local engine (same run, images and model)."""
    import json

    from extract.bench.engines import benchmark_engines, format_engines

    result = benchmark_engines(model, weights, image_size, images, batch_size, workers, shard_size, threads, actors,
                               cpus_per_actor, photo_size)
    click.echo(json.dumps(result, indent=1) if as_json else format_engines(result))
