"""Genre commands: genres train, evaluate, predict, benchmark."""

from __future__ import annotations

import os
from pathlib import Path

import click

from retrieval.commands.common import Group, workspace_path
from retrieval.genre.inputs import TEXT_DESCRIPTORS, check_descriptor
from retrieval.genre.kinds import MODEL_KINDS


def _genre_config(**opts):
    from retrieval.genre.config import GenreConfig

    return GenreConfig(**opts)


def _genre_data_options(f):
    for decl, kw in reversed([
        (("--features", "features"), {"type": click.Path(exists=True, dir_okay=False), "default": None,
                                      "help": "Poster features HDF5 [default: workspace posters.h5; text-only models need none]."}),
        (("--labels", "labels"), {"type": click.Path(exists=True), "default": None,
                                  "help": "Label file (.csv/.tsv/.json/.jsonl, optionally .gz; .pkl with --allow-pickle) "
                                          "or an MM-IMDb folder [default: workspace demo movies.csv]."}),
        (("--text-column", "--text-field", "text_field"), {"default": "overview", "show_default": True,
                                                           "help": "Label-file column with the overview text."}),
        (("--id-column",), {"default": None, "help": "Label-file column with the movie id [default: id/imdb_id/..., "
                                                     "whichever joins the feature ids]."}),
        (("--genres-column",), {"default": None, "help": "Label-file column with the genres [default: genres/genre_ids/...]."}),
        (("--allow-pickle",), {"is_flag": True, "help": "Read a .pkl label file (runs code from the file: trusted files only)."}),
        (("--genre-ids",), {"type": click.Path(exists=True, dir_okay=False), "default": None,
                            "help": "JSON table of TMDB genre ids -> names ({id: name} or TMDB's genre list)."}),
    ]):
        f = click.option(*decl, **kw)(f)
    return f


def _descriptor_option(ctx, param, value):
    from extract.core.errors import UserError

    try:
        return check_descriptor(value)
    except UserError as exc:
        raise click.BadParameter(str(exc)) from None


def _genre_train_options(f):
    for decl, kw in reversed([
        ("--descriptor", {"default": "tfidf", "show_default": True, "callback": _descriptor_option,
                          "help": f"Overview descriptor: {', '.join(TEXT_DESCRIPTORS)}, or several joined with + "
                                  "(e.g. e5-small+tfidf: the blocks side by side)."}),
        ("--text-encoder", {"type": click.Path(exists=True), "default": None, "help": "Vectors (centroid) or text regressor checkpoint (regressor)."}),
        ("--hidden", {"type": int, "default": 256, "show_default": True, "help": "Hidden units (0 = linear head)."}),
        ("--dropout", {"type": float, "default": 0.3, "show_default": True}),
        ("--epochs", {"type": click.IntRange(1), "default": 60, "show_default": True}),
        ("--batch-size", {"type": click.IntRange(1), "default": 64, "show_default": True}),
        ("--lr", {"type": float, "default": 1e-3, "show_default": True}),
        ("--weight-decay", {"type": float, "default": 1e-4, "show_default": True}),
        ("--pos-weight", {"default": "none", "show_default": True,
                          "help": "Loss weight of positives: none (1), sqrt (square root of negatives/positives), auto "
                                  "(negatives/positives), or a number; capped at 10."}),
        ("--min-support", {"type": click.FloatRange(0), "default": 10.0, "show_default": True,
                           "help": "Validation positives at which a genre's own threshold weighs as much as the global one."}),
        ("--val-fraction", {"type": click.FloatRange(0, 1, max_open=True), "default": 0.1, "show_default": True}),
        ("--test-fraction", {"type": click.FloatRange(0, 1, max_open=True), "default": 0.1, "show_default": True}),
        ("--folds", {"type": click.IntRange(0), "default": 0, "show_default": True,
                     "help": "0: one model, early-stopped on the validation split. K >= 2: an ensemble of K models, each "
                             "trained on train+val outside one fold and early-stopped on it; the decision rule is chosen "
                             "on their out-of-fold probabilities and predictions average the K."}),
        ("--seed", {"type": int, "default": 0, "show_default": True, "help": "Seed for the split and training."}),
        ("--device", {"default": "auto", "show_default": True, "help": "auto, cpu or cuda."}),
    ]):
        f = click.option(decl, **kw)(f)
    return f


_TRAIN_KEYS = ("descriptor", "text_encoder", "hidden", "dropout", "epochs", "batch_size", "lr", "weight_decay",
               "pos_weight", "min_support", "val_fraction", "test_fraction", "seed", "text_field", "id_column",
               "genres_column", "folds")


def _train_cfg(model, opts: dict, out: str | None = None):
    """The :class:`GenreConfig` of the shared training options in ``opts`` (popped from it).

    The sentence-encoder cache goes to ``cache/`` next to ``out`` (or in the workspace).
    """
    kw = {k: opts.pop(k) for k in _TRAIN_KEYS if k in opts}  # an option left out keeps the GenreConfig default
    kw["descriptor_path"] = kw.pop("text_encoder", None)
    cache = Path(out).parent / "cache" if out else workspace_path("cache")
    return _genre_config(model=model, text_cache=str(cache), **kw)


def _labels_default(labels):
    return labels or str(workspace_path("demo", "movies", "movies.csv"))


def _features_default(features, needed: bool):
    """The feature file to use: the one given, else the workspace's when a model needs posters."""
    if features or not needed:
        return features
    return str(workspace_path("posters.h5"))


@click.group(cls=Group)
def genres() -> None:
    """Movie genre classifiers on poster features and overview text."""


@genres.command("train")
@_genre_data_options
@click.option("--model", type=click.Choice(MODEL_KINDS), default="concat", show_default=True)
@_genre_train_options
@click.option("--fine-tune", type=click.IntRange(0), default=0, show_default=True,
              help="With --model poster: train the last N blocks of the backbone on the poster images (not cached "
                   "features), with augmentation; 0 = cached features only.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Checkpoint [default: workspace genre-MODEL.pt]. Sentence-encoder caches go to cache/ and tensorboard "
                   "runs to runs/ in the same folder.")
@click.option("--tensorboard/--no-tensorboard", default=False, show_default=True,
              help="Log to runs/genre-MODEL-TIME next to --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def genres_train(features, labels, allow_pickle, genre_ids, model, fine_tune, out, tensorboard, quiet, **opts) -> None:
    """Train a genre model and save it with its config, genre list and validation decision rule."""
    import time

    device = opts.pop("device")
    out = out or str(workspace_path(f"genre-{model}{'-ft' if fine_tune else ''}.pt"))
    cfg = _train_cfg(model, opts, out)
    labels = _labels_default(labels)
    if fine_tune:
        if model != "poster":
            raise click.BadParameter("fine-tuning trains a poster backbone: use it with --model poster", param_hint="--fine-tune")
        if cfg.folds:
            raise click.BadParameter("fine-tuning trains one backbone: leave --folds at 0", param_hint="--fine-tune")
        from retrieval.genre.finetune import finetune_and_save

        click.echo(finetune_and_save(labels, _features_default(features, True), cfg, fine_tune, out, device=device,
                                     quiet=quiet, allow_pickle=allow_pickle, genre_ids=genre_ids))
        return
    from retrieval.genre.train import train_and_save

    logdir = str(Path(out).parent / "runs" / f"genre-{model}-{time.strftime('%Y%m%d%H%M%S')}") if tensorboard else None
    summary = train_and_save(labels, _features_default(features, model != "text"), cfg, out, device=device,
                             logdir=logdir, quiet=quiet, allow_pickle=allow_pickle, genre_ids=genre_ids)
    click.echo(summary)


@genres.command("evaluate")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@_genre_data_options
@click.option("--split", type=click.Choice(["test", "val", "all"]), default="test", show_default=True)
@click.option("--top-k", type=click.IntRange(1), default=None, help="Predict the K most probable genres instead of thresholds.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def genres_evaluate(ckpt, features, labels, text_field, id_column, genres_column, allow_pickle, genre_ids, split, top_k,
                    as_json) -> None:
    """Score a genre model: micro/macro/samples F1, subset accuracy, hamming loss, per-genre table.

    A fine-tuned poster model (`genres train --fine-tune N`) runs its own backbone on the poster images of the
    feature file (its image root and ids; default: the training one).
    """
    import json

    from retrieval.genre.checkpoint import evaluate, load_classifier
    from retrieval.genre.metrics import format_report

    columns = {"text_field": text_field, "id_column": id_column, "genres_column": genres_column}
    report = evaluate(load_classifier(ckpt), labels, features, split=split, k=top_k, allow_pickle=allow_pickle,
                      genre_ids=genre_ids, columns={k: v for k, v in columns.items() if v and v != "overview"})
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report, f"{ckpt} ({report['model']}, {split} split, {report['decision']})"))


@genres.command("predict")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.option("--poster", type=click.Path(exists=True, dir_okay=False), default=None, help="Poster image.")
@click.option("--overview", default=None, help="Overview text.")
@click.option("--top", type=click.IntRange(1), default=3, show_default=True)
@click.option("--device", default="auto", show_default=True)
def genres_predict(ckpt, poster, overview, top, device) -> None:
    """Print a movie's most probable genres (* = chosen by the model's validation decision rule).

    Poster models embed --poster with the backbone of their training features; a fine-tuned one with its own.
    """
    from retrieval.genre.checkpoint import load_classifier, predict_movie

    for g in predict_movie(load_classifier(ckpt), poster, overview, top, device):
        click.echo(f"{g['genre']:<20} {g['probability']:.3f}{'  *' if g['predicted'] else ''}")


@genres.command("benchmark")
@_genre_data_options
@_genre_train_options
@click.option("--models", default=",".join(MODEL_KINDS), show_default=True, help="Comma-separated model kinds.")
@click.option("--descriptors", default="tfidf", show_default=True,
              help="Comma-separated text descriptors (each may join several with +, e.g. tfidf,e5-small+tfidf).")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Repeat with split seeds SEED..SEED+N-1 and report mean ± sd.")
@click.option("--fine-tune", type=click.IntRange(1), default=None,
              help="Instead: poster model on cached features vs the last N backbone blocks fine-tuned on the images.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def genres_benchmark(features, labels, allow_pickle, genre_ids, models, descriptors, repeats, fine_tune, as_json, quiet,
                     **opts) -> None:
    """Every genre model variant plus baselines on one dataset: one table on the test split."""
    import json

    from retrieval.bench.genres import (
        finetune_benchmark,
        format_benchmark,
        format_finetune,
        run_benchmark,
    )

    device = opts.pop("device")
    cfg = _train_cfg("concat", opts)
    if fine_tune:
        result = finetune_benchmark(_labels_default(labels), _features_default(features, True), fine_tune, cfg,
                                    device=device, allow_pickle=allow_pickle, genre_ids=genre_ids)
        click.echo(json.dumps(result, indent=1) if as_json else format_finetune(result))
        return
    kinds = tuple(m.strip() for m in models.split(",") if m.strip())
    bad = [m for m in kinds if m not in MODEL_KINDS]
    if bad:
        raise click.BadParameter(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODEL_KINDS)}", param_hint="--models")
    descs = tuple(d.strip() for d in descriptors.split(",") if d.strip())
    for d in descs:
        _descriptor_option(None, None, d)
    features = _features_default(features, any(k != "text" for k in kinds))
    if features is not None and not os.path.exists(features):
        if all(k == "text" for k in kinds):
            features = None
        else:
            raise click.UsageError(f"feature file {features} does not exist; pass --features FILE.h5, or --models text "
                                   "for a text-only dataset")
    result = run_benchmark(_labels_default(labels), features, descs, kinds, cfg, device=device,
                           allow_pickle=allow_pickle, genre_ids=genre_ids, repeats=repeats, quiet=quiet)
    click.echo(json.dumps(result, indent=1) if as_json else format_benchmark(result))
