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


# ----------------------------------------------------------------------------------------------
# Text side: vectors, train, evaluate
# ----------------------------------------------------------------------------------------------


# sentence encoders


@benchmark.command("encode")
@click.option(
    "--encoder",
    type=click.Choice(["all", "use-multilingual", "e5-small"]),
    default="all",
    show_default=True,
    help="Sentence encoder to time.",
)
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True, help="Captions to encode.")
@click.option(
    "--captions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Caption file (one per line, or name<TAB>caption); default: generated Spanish captions.",
)
@click.option("--repeat", type=click.IntRange(min=1), default=2, show_default=True, help="Runs; the best is kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def benchmark_encode(encoder: str, n: int, captions: Path | None, repeat: int, as_json: bool) -> None:
    """Sentence encoders: load time and captions/s bare, through a cold cache and a warm one."""
    import json

    from retrieval.encoder_benchmark import encode_benchmark, format_table

    rows = encode_benchmark(encoder, n, captions, repeat)
    click.echo(json.dumps(rows, indent=1) if as_json else format_table(rows))


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
