#!/usr/bin/env python
"""buscador: search images by a Spanish description and classify movies by genre, on cached deep features.

This file only assembles the command groups of :mod:`retrieval.commands` (one module per area). Every
command parses its options, calls one library function and prints the result. Heavy libraries (torch,
gensim, faiss) are imported inside the commands that need them, so ``--help`` and cold searches stay
fast. Problems the user can fix are raised as ``UserError`` and printed as one ``Error:`` line.

The default workspace is ``./workspace`` (or ``$BUSCADOR_WORKSPACE``); ``make demo`` fills it, and
commands whose paths are omitted read from it.
"""

from __future__ import annotations

import logging

import click

from retrieval.commands import genres, images, search, serve, text
from retrieval.commands.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """buscador: feature extraction, text-to-image retrieval and genre classification."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")


@cli.group(cls=Group)
def benchmark() -> None:
    """Benchmarks that print figures (speed as a ratio to a baseline measured in the same run)."""


for command in (images.demo_data, images.extract, images.import_vectors_cmd, text.vectors, text.train_cmd,
                text.evaluate_cmd, search.index, search.search_cmd, genres.genres, serve.serve_cmd):
    cli.add_command(command)
for command in (images.benchmark_extract_cmd, images.benchmark_engines_cmd, text.benchmark_retrieval,
                text.benchmark_encode, search.benchmark_search, search.benchmark_serve):
    benchmark.add_command(command)


def main() -> None:
    cli(prog_name="buscador")


if __name__ == "__main__":
    main()
