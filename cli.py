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

# demo data


@cli.command("demo-data")
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
    from extract.demo import DemoConfig, generate_demo

    config = DemoConfig(seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, n_movies=n_movies,
                        image_size=image_size)
    click.echo(generate_demo(out_dir, config, force=force).line())


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
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(images: Path, out: Path, model: str, weights: str, batch_size: int, workers: int, device: str,
            image_size: int | None, limit: int | None, root: Path | None, max_pixels: int, quiet: bool) -> None:
    """Extract pooled image features of IMAGES (folder, list file or COCO JSON) into OUT.h5; resumable."""
    from extract.features import extract_features

    summary = extract_features(images, out, model=model, weights=weights, batch_size=batch_size, workers=workers,
                               device=device, image_size=image_size, limit=limit, root=root,
                               max_pixels=max_pixels, quiet=quiet)
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
@click.option("--images", default=64, show_default=True, type=click.IntRange(min=1), help="Images to draw and extract.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark_extract_cmd(model: str, weights: str, batch_size: int, workers: int, device: str,
                          image_size: int | None, images: int, as_json: bool) -> None:
    """Images/s of the full extraction pipeline vs the bare model forward (same run, model, batch, device)."""
    import json

    from extract.bench import benchmark_extract, format_table

    result = benchmark_extract(model, weights, batch_size, workers, device, image_size, images)
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


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


@cli.group(cls=_Group)
def index() -> None:
    """Build and inspect FAISS indexes over feature files."""


@index.command("build")
@click.argument("features", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--index", "factory", default="auto", show_default=True,
              help="faiss factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,PQ64, SQ8, SQfp16, ...) or auto.")
@click.option("--metric", type=click.Choice(["cosine", "ip", "l2"]), default="cosine", show_default=True,
              help="cosine = inner product on L2-normalised vectors.")
@click.option("--memory-budget", default="8GiB", show_default=True, help="Memory the index may use (for --index auto).")
@click.option("--train-size", type=click.IntRange(min=1), default=65536, show_default=True, help="Training sample size.")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 the default nprobe/efSearch must reach on stored vectors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_build(features, out_dir, factory, metric, memory_budget, train_size, target_recall, quiet) -> None:
    """Build an index over FEATURES.h5 and save OUT_DIR/index.faiss + OUT_DIR/index.json."""
    from indexes.build import IndexConfig, build_index_dir, parse_size

    config = IndexConfig(factory=factory, metric=metric, memory_budget=parse_size(memory_budget),
                         train_size=train_size, target_recall=target_recall)
    meta = build_index_dir(features, out_dir, config, quiet=quiet)
    tuned = ", ".join(f"{k}={v}" for k, v in meta["search_params"].items())
    click.echo(f"{out_dir}: {meta['factory']} ({meta['metric']}) over {meta['n']} x {meta['d']} in "
               f"{meta['build_seconds']:.1f} s{'; ' + tuned if tuned else ''}")


@index.command("info")
@click.argument("index_dir", type=click.Path(file_okay=False), default=str(workspace_path("index")))
def index_info(index_dir) -> None:
    """Print the sidecar of an index folder (how it was built)."""
    import json

    from indexes.io import read_sidecar

    click.echo(json.dumps(read_sidecar(index_dir), indent=1, sort_keys=True))


@cli.command("search")
@click.argument("query", nargs=-1)
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=str(workspace_path("index")),
              show_default=True, help="Index folder.")
@click.option("--model", type=click.Path(dir_okay=False), default=str(workspace_path("regressor.pt")),
              show_default=True, help="Text regressor checkpoint (text queries).")
@click.option("-k", type=int, default=5, show_default=True, help="Results per query.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), help="Query by image (repeatable).")
@click.option("--id", "ids", multiple=True, help="Query by the stored vector of an indexed id (repeatable).")
@click.option("--queries-file", type=click.Path(exists=True, dir_okay=False), help="Text queries, one a line.")
@click.option("--features", type=click.Path(exists=True, dir_okay=False), help="Feature file (default: the one in the sidecar).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--contact-sheet", "sheets", multiple=True, type=click.Path(dir_okay=False),
              help="Write the thumbnails to a .png or .html (repeatable).")
@click.option("--truth", type=click.Path(exists=True, dir_okay=False),
              help="JSON-lines ground truth ({\"id\": ..., FIELD: bool}) to mark each result.")
@click.option("--truth-field", default="person_on_bicycle", show_default=True)
@click.option("--timings", is_flag=True, help="Print the time of each stage (to stderr).")
def search_cmd(query, index_dir, model, k, images, ids, queries_file, features, device, as_json, sheets, truth,
               truth_field, timings) -> None:
    """Search images by a Spanish description, e.g. `search "una persona en bicicleta"`."""
    import time

    t0 = time.perf_counter()
    from indexes.search import answer, read_queries_file

    texts = [" ".join(query)] if query else []
    if queries_file:
        texts += read_queries_file(queries_file)
    results = answer(index_dir, texts=texts, images=images, ids=ids, model=model, k=k, features=features, device=device)
    flags = None
    if truth or sheets:
        from indexes.sheet import load_truth, truth_flags, write_contact_sheet

        table = load_truth(truth, truth_field) if truth else None
        flags = truth_flags(results, table) if table is not None else None
        for sheet in sheets:
            write_contact_sheet(results, sheet, table)
    results.timings["total"] = time.perf_counter() - t0
    click.echo(results.format(as_json, flags, truth_field))
    if timings:
        click.echo("timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results.timings.items()), err=True)


@benchmark.command("search")
@click.option("--features", type=click.Path(exists=True, dir_okay=False), help="Feature file for the quality part.")
@click.option("--captions", multiple=True, type=click.Path(exists=True),
              help="Caption folder or <split>_captions.txt (repeatable); enables the quality part.")
@click.option("--model", type=click.Path(dir_okay=False), default=str(workspace_path("regressor.pt")), show_default=True,
              help="Text regressor checkpoint (quality and --cold).")
@click.option("--quality-index", default="Flat", show_default=True, help="Index kind the quality part searches through.")
@click.option("-n", "--n", "n", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Synthetic vectors for the speed part (0 skips it).")
@click.option("--dim", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--kind", "kinds", multiple=True, help="Index kinds to compare (repeatable; default: Flat, HNSW32, IVF-Flat, IVF-SQ8, IVF-PQ).")
@click.option("--nq", type=click.IntRange(min=1), default=1000, show_default=True, help="Batch queries.")
@click.option("--single", type=click.IntRange(min=1), default=200, show_default=True, help="Single queries timed one by one.")
@click.option("--train-size", type=click.IntRange(min=1), default=40_960, show_default=True,
              help="Training sample of the trained kinds (IVF needs ~39 per list).")
@click.option("--scaling", default="", help="Comma-separated N for the scaling part, e.g. 10000,100000,1000000.")
@click.option("--scaling-budget", default="2GiB", show_default=True, help="Memory budget of the auto index in the scaling part.")
@click.option("--cold", is_flag=True, help="Time fresh `cli.py search` processes on --index/--model.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=str(workspace_path("index")), show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG (rank histograms, recall vs latency).")
@click.option("--json", "as_json", is_flag=True)
def benchmark_search(features, captions, model, quality_index, n, dim, kinds, nq, single, train_size, scaling,
                     scaling_budget, cold, index_dir, plot_path, as_json) -> None:
    """Retrieval quality through an index, speed/recall of index kinds, scaling, and cold-start time."""
    import json

    from indexes.benchmark import default_kinds, format_report, run
    from indexes.build import parse_size

    quality = None
    if captions:
        if not features:
            raise click.UsageError("--captions needs --features")
        quality = {"features": features, "captions": list(captions), "model": model, "factory": quality_index}
    speed = {"n": n, "d": dim, "factories": list(kinds) or default_kinds(n, dim), "nq": nq, "n_single": single,
             "train_size": train_size} if n else None
    sizes = [int(s) for s in scaling.split(",") if s.strip()]
    scale = {"sizes": sizes, "d": dim, "memory_budget": parse_size(scaling_budget), "train_size": train_size} if sizes else None
    cold_args = {"query": "una persona en bicicleta", "index_dir": index_dir, "model": model} if cold else None
    report = run(quality, speed, scale, cold_args, plot_path)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


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
