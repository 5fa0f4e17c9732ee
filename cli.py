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
@click.option("--images", default=96, show_default=True, type=click.IntRange(min=1),
              help="Images to draw and extract per round (enough to amortise worker start-up).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Alternating timing rounds.")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads for the forward [torch default].")
@click.option("--allocator-baseline/--no-allocator-baseline", default=True, show_default=True,
              help="On CPU, also time the bare forward in a fresh process with glibc's default allocator.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def benchmark_extract_cmd(model: str, weights: str, batch_size: int, workers: int, device: str,
                          image_size: int | None, images: int, rounds: int, threads: int | None,
                          allocator_baseline: bool, as_json: bool) -> None:
    """Images/s of the full extraction pipeline vs the bare model forward (same run, model, batch, device)."""
    import json

    from extract.bench import benchmark_extract, format_table

    result = benchmark_extract(model, weights, batch_size, workers, device, image_size, images, rounds, threads,
                               allocator_baseline)
    click.echo(json.dumps(result, indent=1) if as_json else format_table(result))


# ----------------------------------------------------------------------------------------------
# Text side: vectors, train, evaluate
# ----------------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def vectors() -> None:
    """Word vectors: convert any format to the fast exported one, or train them on captions."""


@vectors.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), help="Keep only the first N (most frequent) words.")
def vectors_convert(src: str, out: str, limit: int | None) -> None:
    """Convert word vectors (.vec/.txt word2vec or GloVe, .bin word2vec or FastText, .kv) to OUT.kv."""
    from retrieval.text import convert_vectors, open_vectors

    wv = open_vectors(convert_vectors(src, out, limit=limit))
    click.echo(f"wrote {out}: {len(wv)} words x {wv.dim} dims, fingerprint {wv.fingerprint}"
               + (", subword vectors for unknown words" if wv.subword else ""))


@vectors.command("train")
@click.argument("captions", nargs=-1, required=True, type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["fasttext", "word2vec"]), default="fasttext", show_default=True)
@click.option("--dim", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--min-count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--fold-accents", is_flag=True, help="Strip accents before training (queries must match).")
def vectors_train(captions: tuple[str, ...], out: str, kind: str, dim: int, epochs: int, min_count: int, seed: int,
                  fold_accents: bool) -> None:
    """Train word vectors on CAPTIONS (caption files or folders) and export them to OUT.kv."""
    from retrieval.text import open_vectors, vectors_from_captions

    wv = open_vectors(vectors_from_captions(captions, out, fold=fold_accents, kind=kind, dim=dim, epochs=epochs,
                                            min_count=min_count, seed=seed))
    click.echo(f"wrote {out}: {kind}, {len(wv)} words x {wv.dim} dims, fingerprint {wv.fingerprint}")


def _default_vectors() -> str | None:
    path = workspace_path("vectors.kv")
    return str(path) if path.exists() else None


def _train_options(f):
    """Options shared by `train` and `benchmark retrieval` (the fields of retrieval.config.TrainConfig)."""
    options = [
        click.option("--features", type=click.Path(exists=True, dir_okay=False), default=lambda: str(workspace_path("features.h5")),
                     show_default="workspace/features.h5", help="HDF5 image features (cli.py extract)."),
        click.option("--captions", multiple=True, type=click.Path(exists=True),
                     help="Caption folder(s) with <split>_captions.txt / captions_<split>.json, or such files [default: workspace/demo]."),
        click.option("--vectors", type=click.Path(exists=True), default=_default_vectors, show_default="workspace/vectors.kv if present",
                     help="Word vectors (.kv export, or any format: converted once)."),
        click.option("--vectors-limit", type=click.IntRange(min=1), help="Load only the first N words of a .vec/.bin file."),
        click.option("--target-norm", type=click.Choice(["l2", "standardise", "none"]), default="l2", show_default=True,
                     help="Target features: l2-normalised (search by cosine), standardised or raw (search by l2)."),
        click.option("--margin", type=float, default=0.2, show_default=True, help="Margin of the vse ranking loss."),
        click.option("--optimiser", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--hidden", type=click.IntRange(min=1), help="MLP hidden width [4096] / GRU hidden size [512]."),
        click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True, help="Early stopping."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (1 is fastest on a busy machine)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _base_config(kw: dict, **more):
    from retrieval.config import TrainConfig

    keys = ("target_norm", "margin", "optimiser", "lr", "batch_size", "hidden", "patience", "device", "seed")
    return TrainConfig(**{k: kw[k] for k in keys}, **more)


@cli.command("train")
@_train_options
@click.option("--descriptor", type=click.Choice(["centroid", "centroid-tfidf", "tfidf", "sequence", "use-multilingual", "e5-small"]),
              default="centroid", show_default=True)
@click.option("--regressor", type=click.Choice(["mlp", "gru"]), default="mlp", show_default=True, help="gru needs --descriptor sequence.")
@click.option("--loss", type=click.Choice(["mse", "cosine", "vse"]), default="vse", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--val-split", help="Split that picks the best epoch [val, else the first non-train split].")
@click.option("--out", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")),
              show_default="workspace/text-encoder.npz")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True, help="tensorboardX log folder.")
@click.option("--no-tensorboard", is_flag=True, help="Do not write a tensorboardX run.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(descriptor, regressor, loss, epochs, val_split, out, runs_dir, no_tensorboard, quiet, as_json, **kw) -> None:
    """Train a caption -> image-space encoder; keep the checkpoint with the best validation MRR."""
    import json

    from retrieval.metrics import format_table
    from retrieval.train import run_name, summary_line, train

    config = _base_config(kw, descriptor=descriptor, regressor=regressor, loss=loss, epochs=epochs)
    writer = None
    if not no_tensorboard:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=str(Path(runs_dir) / run_name(config)))
    echo = None if quiet or as_json else (lambda record: click.echo(summary_line(record)))
    try:
        result = train(config, kw["features"], kw["captions"] or [str(workspace_path("demo"))], out, vectors=kw["vectors"],
                       vectors_limit=kw["vectors_limit"], val_split=val_split, writer=writer, quiet=quiet, on_epoch=echo,
                       threads=kw["threads"])
    finally:
        if writer is not None:
            writer.close()
    if as_json:
        click.echo(json.dumps({"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch, "best": result.best,
                               "seconds": result.seconds, "history": result.history}, indent=1))
        return
    click.echo(f"best epoch {result.best_epoch} of {len(result.history)}, {result.seconds:.1f}s; wrote {result.checkpoint}")
    click.echo(format_table(result.best))


@cli.command("evaluate")
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")))
@click.option("--features", type=click.Path(exists=True, dir_okay=False), default=lambda: str(workspace_path("features.h5")),
              show_default="workspace/features.h5")
@click.option("--captions", multiple=True, type=click.Path(exists=True), help="Caption folder(s) or files [workspace/demo].")
@click.option("--vectors", type=click.Path(exists=True), help="Word vectors, when not where training left them.")
@click.option("--split", "splits", multiple=True, help="Only these splits.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def evaluate_cmd(ckpt, features, captions, vectors, splits, as_json) -> None:
    """Text -> image retrieval metrics of a checkpoint, one row per caption split."""
    import json

    from retrieval.evaluate import evaluate
    from retrieval.metrics import format_table

    results = evaluate(ckpt, features, captions or [str(workspace_path("demo"))], vectors=vectors, splits=splits or None)
    click.echo(json.dumps(results, indent=1) if as_json else format_table(results))


@benchmark.command("retrieval")
@_train_options
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True, help="Epochs for MLP combinations.")
@click.option("--gru-epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--gru-hidden", type=click.IntRange(min=1), default=256, show_default=True, help="GRU hidden size (--hidden is the MLP's).")
@click.option("--descriptor", "descriptors", multiple=True, help="Only these descriptors (default: all available).")
@click.option("--loss", "losses", multiple=True, type=click.Choice(["mse", "cosine", "vse"]), help="Only these losses.")
@click.option("--test-split", help="Split to report [test].")
@click.option("--out-dir", type=click.Path(file_okay=False), help="Keep the checkpoints here.")
@click.option("--also-features", "also_features", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="More feature files of the same images from other backbones (repeatable): one row set each.")
@click.option("--json", "as_json", is_flag=True)
def benchmark_retrieval(epochs, gru_epochs, gru_hidden, descriptors, losses, test_split, out_dir, also_features, as_json,
                        **kw) -> None:
    """Train and evaluate every backbone x descriptor x regressor x loss; print R@1/5/10, MRR, times."""
    import json

    from retrieval.benchmark import LOSSES, format_rows, run_benchmark

    res = run_benchmark([kw["features"], *also_features], kw["captions"] or [str(workspace_path("demo"))], kw["vectors"], epochs=epochs,
                        gru_epochs=gru_epochs, hidden=kw["hidden"], gru_hidden=gru_hidden, test_split=test_split, descriptors=descriptors or None,
                        losses=losses or LOSSES, base=_base_config(kw), out_dir=out_dir, threads=kw["threads"])
    if as_json:
        click.echo(json.dumps(res, indent=1))
        return
    click.echo(f"text -> image retrieval on split {res['test_split']}")
    click.echo(format_rows(res["rows"]))
    e = res["encoding"]
    if e:
        click.echo(f"centroid caption encoding: {e['centroid_captions_per_s']:.0f} captions/s vs gensim per-caption loop "
                   f"{e['gensim_loop_captions_per_s']:.0f} captions/s (x{e['speedup']:.1f}, {e['captions']} captions)")


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
@click.argument("index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")))
def index_info(index_dir) -> None:
    """Print the sidecar of an index folder (how it was built)."""
    import json

    from indexes.io import read_sidecar

    click.echo(json.dumps(read_sidecar(index_dir), indent=1, sort_keys=True))


@cli.command("search")
@click.argument("query", nargs=-1)
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")),
              show_default="workspace/index", help="Index folder.")
@click.option("--model", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")),
              show_default="workspace/text-encoder.npz", help="Text encoder checkpoint (text queries).")
@click.option("-k", type=int, default=5, show_default=True, help="Results per query.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), help="Query by image (repeatable).")
@click.option("--id", "ids", multiple=True, help="Query by the stored vector of an indexed id (repeatable).")
@click.option("--queries-file", type=click.Path(exists=True, dir_okay=False), help="Text queries, one a line.")
@click.option("--features", type=click.Path(exists=True, dir_okay=False), help="Feature file (default: the one in the sidecar).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: GPU when faiss has GPU support and a GPU is present, else CPU.")
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
@click.option("--features", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("features.h5")),
              show_default="workspace/features.h5", help="Feature file for the quality part.")
@click.option("--captions", multiple=True, type=click.Path(exists=True),
              help="Caption folder or <split>_captions.txt (repeatable); enables the quality part.")
@click.option("--model", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")),
              show_default="workspace/text-encoder.npz", help="Text encoder checkpoint (quality and --cold).")
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
@click.option("--scaling-kind", default="auto", show_default=True,
              help="Index kind of the scaling part: auto, or a factory string where {nlist} is the guideline's list count.")
@click.option("--cold", is_flag=True, help="Time fresh `cli.py search` processes on --index/--model.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")),
              show_default="workspace/index")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG (rank histograms, recall vs latency).")
@click.option("--json", "as_json", is_flag=True)
def benchmark_search(features, captions, model, quality_index, n, dim, kinds, nq, single, train_size, scaling,
                     scaling_budget, scaling_kind, cold, index_dir, plot_path, as_json) -> None:
    """Retrieval quality through an index, speed/recall of index kinds, scaling, and cold-start time."""
    import json

    from indexes.benchmark import default_kinds, format_report, run
    from indexes.build import parse_size

    quality = None
    if captions:
        quality = {"features": features, "captions": list(captions), "model": model, "factory": quality_index}
    speed = {"n": n, "d": dim, "factories": list(kinds) or default_kinds(n, dim), "nq": nq, "n_single": single,
             "train_size": train_size} if n else None
    sizes = [int(s) for s in scaling.split(",") if s.strip()]
    scale = {"sizes": sizes, "d": dim, "memory_budget": parse_size(scaling_budget), "train_size": train_size,
             "kind": scaling_kind} if sizes else None
    cold_args = {"query": "una persona en bicicleta", "index_dir": index_dir, "model": model} if cold else None
    report = run(quality, speed, scale, cold_args, plot_path)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


# ----------------------------------------------------------------------------------------------
# Genre classifiers
# ----------------------------------------------------------------------------------------------

_GENRE_MODELS = ("poster", "text", "concat", "late", "gmu")
_TEXT_DESCRIPTORS = ("tfidf", "centroid", "centroid-tfidf", "use-multilingual", "e5-small", "regressor")


def _genre_config(**opts):
    from retrieval.genre.train import GenreConfig

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
                         epochs=epochs, batch_size=batch_size, lr=lr, pos_weight=pos_weight, seed=seed, text_field=text_field,
                         text_cache=str(workspace_path("cache")))


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
def genres_train(features, labels, text_field, allow_pickle, genre_ids, model, descriptor, text_encoder, hidden, dropout, epochs,
                 batch_size, lr, pos_weight, seed, device, out, tensorboard, quiet) -> None:
    """Train a genre model and save it with its config, genre list and validation thresholds."""
    import time

    from retrieval.genre.train import train_and_save

    features, labels = _genre_defaults(features, labels)
    cfg = _train_cfg(model, descriptor, text_encoder, hidden, dropout, epochs, batch_size, lr, pos_weight, seed, text_field)
    out = out or str(workspace_path(f"genre-{model}.pt"))
    logdir = f"runs/genre-{model}-{time.strftime('%Y%m%d%H%M%S')}" if tensorboard else None
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
@click.option("--models", default=",".join(_GENRE_MODELS), show_default=True, help="Comma-separated model kinds.")
@click.option("--descriptors", default="tfidf", show_default=True, help="Comma-separated text descriptors.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def genres_benchmark(features, labels, text_field, allow_pickle, genre_ids, descriptor, text_encoder, hidden, dropout, epochs,
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
                           device=device, allow_pickle=allow_pickle, genre_ids=genre_ids)
    click.echo(json.dumps(result, indent=1) if as_json else format_benchmark(result))


def main() -> None:
    cli(prog_name="buscador")


if __name__ == "__main__":
    main()
