"""Genre commands: genres train, evaluate, predict, benchmark."""

from __future__ import annotations

import click

from retrieval.commands.common import Group, workspace_path
from retrieval.genre.inputs import TEXT_DESCRIPTORS
from retrieval.genre.kinds import MODEL_KINDS


def _genre_config(**opts):
    from retrieval.genre.config import GenreConfig

    return GenreConfig(**opts)


def _genre_data_options(f):
    f = click.option("--genre-ids", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="JSON table of TMDB genre ids -> names ({id: name} or TMDB's genre list).")(f)
    f = click.option("--allow-pickle", is_flag=True, help="Read a .pkl label file (runs code from the file: trusted files only).")(f)
    f = click.option("--text-field", default="overview", show_default=True, help="Label-file column with the overview text.")(f)
    f = click.option("--labels", "labels", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Label file (.csv/.tsv/.json/.jsonl) [default: workspace demo movies.csv].")(f)
    f = click.option("--features", "features", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Poster features HDF5 [default: workspace posters.h5].")(f)
    return f


def _genre_train_options(f):
    for decl, kw in reversed([
        ("--descriptor", {"type": click.Choice(TEXT_DESCRIPTORS), "default": "tfidf", "show_default": True, "help": "Overview descriptor."}),
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


def _train_cfg(model, descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field,
               out=None):
    """The genre config; the sentence-encoder cache goes to ``cache/`` next to ``out`` (or in the workspace)."""
    from pathlib import Path

    cache = Path(out).parent / "cache" if out else workspace_path("cache")
    return _genre_config(model=model, descriptor=descriptor, descriptor_path=text_encoder, hidden=hidden, dropout=dropout,
                         epochs=epochs, batch_size=batch_size, lr=lr, pos_weight=pos_weight, seed=seed, text_field=text_field,
                         text_cache=str(cache))


@click.group(cls=Group)
def genres() -> None:
    """Movie genre classifiers on poster features and overview text."""


@genres.command("train")
@_genre_data_options
@click.option("--model", type=click.Choice(MODEL_KINDS), default="concat", show_default=True)
@_genre_train_options
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint [default: workspace genre-MODEL.pt]. Sentence-encoder caches go to cache/ and tensorboard "
                   "runs to runs/ in the same folder.")
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
              help="Log to runs/genre-MODEL-TIME next to --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def genres_train(features, labels, text_field, allow_pickle, genre_ids, model, descriptor, text_encoder, hidden, dropout, epochs,
                 batch_size, lr, pos_weight, seed, device, out, tensorboard, quiet) -> None:
    """Train a genre model and save it with its config, genre list and validation thresholds."""
    import time
    from pathlib import Path

    from retrieval.genre.train import train_and_save

    features, labels = _genre_defaults(features, labels)
    out = out or str(workspace_path(f"genre-{model}.pt"))
    cfg = _train_cfg(model, descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field,
                     out)
    logdir = str(Path(out).parent / "runs" / f"genre-{model}-{time.strftime('%Y%m%d%H%M%S')}") if tensorboard else None
    summary = train_and_save(labels, None if model == "text" else features, cfg, out, device=device,
                             logdir=logdir, quiet=quiet, allow_pickle=allow_pickle, genre_ids=genre_ids)
    click.echo(summary)


@genres.command("evaluate")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@_genre_data_options
@click.option("--split", type=click.Choice(["test", "val", "all"]), default="test", show_default=True)
@click.option("--top-k", type=click.IntRange(1), default=None, help="Predict the K most probable genres instead of thresholds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def genres_evaluate(ckpt, features, labels, text_field, allow_pickle, genre_ids, split, top_k, as_json) -> None:
    """Score a genre model: micro/macro/samples F1, subset accuracy, hamming loss, per-genre table."""
    import json

    from retrieval.genre.checkpoint import evaluate, load_classifier
    from retrieval.genre.metrics import format_report

    report = evaluate(load_classifier(ckpt), labels, features, split=split, k=top_k, allow_pickle=allow_pickle,
                      genre_ids=genre_ids)
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
@click.option("--models", default=",".join(MODEL_KINDS), show_default=True, help="Comma-separated model kinds.")
@click.option("--descriptors", default="tfidf", show_default=True, help="Comma-separated text descriptors.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def genres_benchmark(features, labels, text_field, allow_pickle, genre_ids, descriptor, text_encoder, hidden, dropout, epochs,
                     batch_size, lr, pos_weight, seed, device, models, descriptors, as_json) -> None:
    """Every genre model variant plus baselines on one dataset: one table on the test split."""
    import json

    from retrieval.bench.genres import format_benchmark, run_benchmark

    features, labels = _genre_defaults(features, labels)
    cfg = _train_cfg("concat", descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field)
    kinds = tuple(m.strip() for m in models.split(",") if m.strip())
    bad = [m for m in kinds if m not in MODEL_KINDS]
    if bad:
        raise click.BadParameter(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODEL_KINDS)}", param_hint="--models")
    result = run_benchmark(labels, features, tuple(d.strip() for d in descriptors.split(",") if d.strip()), kinds, cfg,
                           device=device, allow_pickle=allow_pickle, genre_ids=genre_ids)
    click.echo(json.dumps(result, indent=1) if as_json else format_benchmark(result))
