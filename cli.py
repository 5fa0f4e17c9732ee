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


# ----------------------------------------------------------------------------------------------
# Indexes and search
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Genre classifiers
# ----------------------------------------------------------------------------------------------

_GENRE_MODELS = ("poster", "text", "concat", "late", "gmu")
_TEXT_DESCRIPTORS = ("tfidf", "bow", "centroid", "use-multilingual", "e5-small", "regressor")


def _genre_config(**opts):
    from retrieval.genre.train import GenreConfig

    return GenreConfig(**opts)


def _genre_data_options(f):
    f = click.option("--allow-pickle", is_flag=True, help="Read a .pkl label file (runs code from the file: trusted files only).")(f)
    f = click.option("--text-field", default="overview", show_default=True, help="Label-file column with the overview text.")(f)
    f = click.option("--labels", "labels", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Label file (.csv/.tsv/.json/.jsonl) [default: workspace demo movies.csv].")(f)
    f = click.option("--features", "features", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Poster features HDF5 [default: workspace posters.h5].")(f)
    return f


def _genre_train_options(f):
    for decl, kw in reversed([
        ("--descriptor", {"type": click.Choice(_TEXT_DESCRIPTORS), "default": "tfidf", "show_default": True, "help": "Overview descriptor."}),
        ("--text-encoder", {"type": click.Path(exists=True), "default": None, "help": "Vectors (centroid) or text regressor checkpoint (regressor)."}),
        ("--hidden", {"type": int, "default": 256, "show_default": True, "help": "Hidden units (0 = linear head)."}),
        ("--dropout", {"type": float, "default": 0.3, "show_default": True}),
        ("--epochs", {"type": click.IntRange(1), "default": 60, "show_default": True}),
        ("--batch-size", {"type": click.IntRange(1), "default": 64, "show_default": True}),
        ("--lr", {"type": float, "default": 1e-3, "show_default": True}),
        ("--pos-weight", {"default": "auto", "show_default": True, "help": "auto (negatives/positives, capped), none, or a number."}),
        ("--seed", {"type": int, "default": 0, "show_default": True, "help": "Seed for the split and training."}),
        ("--device", {"default": "auto", "show_default": True, "help": "auto, cpu or cuda."}),
    ]):
        f = click.option(decl, **kw)(f)
    return f


def _genre_defaults(features, labels):
    return (features or str(workspace_path("posters.h5")), labels or str(workspace_path("demo", "movies", "movies.csv")))


def _train_cfg(model, descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field):
    return _genre_config(model=model, descriptor=descriptor, descriptor_path=text_encoder, hidden=hidden, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, lr=lr, pos_weight=pos_weight, seed=seed, text_field=text_field)


@cli.group(cls=_Group)
def genres() -> None:
    """Movie genre classifiers on poster features and overview text."""


@genres.command("train")
@_genre_data_options
@click.option("--model", type=click.Choice(_GENRE_MODELS), default="concat", show_default=True)
@_genre_train_options
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Checkpoint [default: workspace genre-MODEL.pt].")
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True, help="Log to runs/genre-MODEL-TIME.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def genres_train(features, labels, text_field, allow_pickle, model, descriptor, text_encoder, hidden, dropout, epochs,
                 batch_size, lr, pos_weight, seed, device, out, tensorboard, quiet) -> None:
    """Train a genre model and save it with its config, genre list and validation thresholds."""
    import time

    from retrieval.genre.train import train_and_save

    features, labels = _genre_defaults(features, labels)
    cfg = _train_cfg(model, descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field)
    out = out or str(workspace_path(f"genre-{model}.pt"))
    logdir = f"runs/genre-{model}-{time.strftime('%Y%m%d%H%M%S')}" if tensorboard else None
    summary = train_and_save(labels, None if model == "text" else features, cfg, out, device=device,
                             logdir=logdir, quiet=quiet, allow_pickle=allow_pickle)
    click.echo(summary)


@genres.command("evaluate")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@_genre_data_options
@click.option("--split", type=click.Choice(["test", "val", "all"]), default="test", show_default=True)
@click.option("--top-k", type=click.IntRange(1), default=None, help="Predict the K most probable genres instead of thresholds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def genres_evaluate(ckpt, features, labels, text_field, allow_pickle, split, top_k, as_json) -> None:
    """Score a genre model: micro/macro/samples F1, subset accuracy, hamming loss, per-genre table."""
    import json

    from retrieval.genre.checkpoint import evaluate, load_classifier
    from retrieval.genre.metrics import format_report

    report = evaluate(load_classifier(ckpt), labels, features, split=split, k=top_k, allow_pickle=allow_pickle)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report, f"{ckpt} ({report['model']}, {split} split, {report['decision']})"))


@genres.command("predict")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.option("--poster", type=click.Path(exists=True, dir_okay=False), default=None, help="Poster image.")
@click.option("--overview", default=None, help="Overview text.")
@click.option("--top", type=click.IntRange(1), default=3, show_default=True)
@click.option("--device", default="auto", show_default=True)
def genres_predict(ckpt, poster, overview, top, device) -> None:
    """Print a movie's most probable genres (* = above the genre's validation threshold)."""
    from retrieval.genre.checkpoint import load_classifier, predict_movie

    for g in predict_movie(load_classifier(ckpt), poster, overview, top, device):
        click.echo(f"{g['genre']:<20} {g['probability']:.3f}{'  *' if g['predicted'] else ''}")


@genres.command("benchmark")
@_genre_data_options
@_genre_train_options
@click.option("--models", default=",".join(_GENRE_MODELS), show_default=True, help="Comma-separated model kinds.")
@click.option("--descriptors", default="tfidf", show_default=True, help="Comma-separated text descriptors.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def genres_benchmark(features, labels, text_field, allow_pickle, descriptor, text_encoder, hidden, dropout, epochs,
                     batch_size, lr, pos_weight, seed, device, models, descriptors, as_json) -> None:
    """Every genre model variant plus baselines on one dataset: one table on the test split."""
    import json

    from retrieval.genre.benchmark import format_benchmark, run_benchmark

    features, labels = _genre_defaults(features, labels)
    cfg = _train_cfg("concat", descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field)
    kinds = tuple(m.strip() for m in models.split(",") if m.strip())
    bad = [m for m in kinds if m not in _GENRE_MODELS]
    if bad:
        raise click.BadParameter(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(_GENRE_MODELS)}", param_hint="--models")
    result = run_benchmark(labels, features, tuple(d.strip() for d in descriptors.split(",") if d.strip()), kinds, cfg,
                           device=device, allow_pickle=allow_pickle)
    click.echo(json.dumps(result, indent=1) if as_json else format_benchmark(result))


def main() -> None:
    cli(prog_name="buscador")


if __name__ == "__main__":
    main()
