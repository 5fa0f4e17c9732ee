#!/usr/bin/env python
"""buscador: search images by a Spanish description and classify movies by genre, on cached deep features.

Every command parses its options, calls one library function and prints the result. Heavy libraries
(torch, gensim, faiss) are imported inside the commands that need them, so `--help` and cold searches
stay fast. Problems the user can fix are raised as ``UserError`` and printed as one ``Error:`` line.

The default workspace is ``./workspace`` (or ``$BUSCADOR_WORKSPACE``); ``make demo`` fills it, and
commands whose paths are omitted read from it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

WORKSPACE = Path(os.environ.get("BUSCADOR_WORKSPACE", "workspace"))


def workspace_path(*parts: str) -> Path:
    """A path inside the default workspace."""
    return WORKSPACE.joinpath(*parts)


class _Group(click.Group):
    """Click group that turns library ``UserError`` into a one-line ``Error:`` and exit code 1."""

    def invoke(self, ctx: click.Context):
        from extract.errors import UserError

        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """buscador: feature extraction, text-to-image retrieval and genre classification."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


@cli.group(cls=_Group)
def benchmark() -> None:
    """Benchmarks that print figures (speed as a ratio to a baseline measured in the same run)."""


# ----------------------------------------------------------------------------------------------
# Image features: extract, import-vectors, demo-data
# ----------------------------------------------------------------------------------------------


@cli.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", default="resnet152", show_default=True,
              help="torchvision classification model name, or efficientnet-lite0.")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (torch hub cache or installed package), none (seeded random init), or a state_dict .pth.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0), help="Decoding processes.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--image-size", type=click.IntRange(min=16), help="Input side in pixels [model default, 224].")
@click.option("--limit", type=click.IntRange(min=1), help="Process at most this many images of the list.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Image root for ids and relative paths [the folder, or the list file's folder].")
@click.option("--max-pixels", default=89_478_485, show_default=True, type=click.IntRange(min=1),
              help="Refuse larger images (decompression-bomb guard).")
@click.option("--commit-every", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between durable commits of finished batches (0: every batch).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(images: Path, out: Path, model: str, weights: str, batch_size: int, workers: int, device: str,
            image_size: int | None, limit: int | None, root: Path | None, max_pixels: int, commit_every: float,
            quiet: bool) -> None:
    """Extract pooled image features of IMAGES (folder, list file or COCO JSON) into OUT.h5; resumable."""
    from extract.features import extract_features

    summary = extract_features(images, out, model=model, weights=weights, batch_size=batch_size, workers=workers,
                               device=device, image_size=image_size, limit=limit, root=root,
                               max_pixels=max_pixels, commit_seconds=commit_every, quiet=quiet)
    click.echo(summary.report())


@cli.command("import-vectors")
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


@benchmark.command("extract")
@click.option("--model", default="resnet152", show_default=True)
@click.option("--weights", default="auto", show_default=True,
              help="auto: ImageNet when the file is present, else random init (said in the output).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0))
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--image-size", type=click.IntRange(min=16))
@click.option("--images", default=32, show_default=True, type=click.IntRange(min=1), help="Images to draw and extract.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Alternating timing rounds.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads for the forward [torch default].")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark_extract_cmd(model: str, weights: str, batch_size: int, workers: int, device: str,
                          image_size: int | None, images: int, rounds: int, threads: int | None,
                          as_json: bool) -> None:
    """Images/s of the full extraction pipeline vs the bare model forward (same run, model, batch, device)."""
    import json

    from extract.bench import benchmark_extract, format_table

    result = benchmark_extract(model, weights, batch_size, workers, device, image_size, images, rounds, threads)
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


# ----------------------------------------------------------------------------------------------
# Text side: vectors, train, evaluate
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Indexes and search
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Genre classifiers
# ----------------------------------------------------------------------------------------------


def main() -> None:
    cli(prog_name="buscador")


if __name__ == "__main__":
    main()
