"""Commands of the text side: vectors convert/train, train, evaluate, benchmark retrieval/encode."""

from __future__ import annotations

from pathlib import Path

import click

from retrieval.commands.common import Group, workspace_path
from retrieval.descriptors import KINDS as DESCRIPTOR_KINDS


@click.group(cls=Group)
def vectors() -> None:
    """Word vectors: convert any format to the fast exported one, or train them on captions."""


@vectors.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), help="Keep only the first N (most frequent) words.")
@click.option("--allow-pickle", is_flag=True,
              help="Let a gensim native .kv (a pickle: loading it runs code from the file) be read. Trusted files only.")
def vectors_convert(src: str, out: str, limit: int | None, allow_pickle: bool) -> None:
    """Convert word vectors (.vec/.txt word2vec or GloVe, .bin word2vec or FastText, exported .kv) to OUT.kv."""
    from retrieval.text import convert_vectors, open_vectors

    wv = open_vectors(convert_vectors(src, out, limit=limit, allow_pickle=allow_pickle))
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


@click.command("train")
@_train_options
@click.option("--descriptor", type=click.Choice(DESCRIPTOR_KINDS),
              default="centroid", show_default=True)
@click.option("--regressor", type=click.Choice(["mlp", "gru"]), default="mlp", show_default=True, help="gru needs --descriptor sequence.")
@click.option("--loss", type=click.Choice(["mse", "cosine", "vse"]), default="vse", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--val-split", help="Split that picks the best epoch [val, else the first non-train split].")
@click.option("--out", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")),
              show_default="workspace/text-encoder.npz")
@click.option("--runs-dir", type=click.Path(file_okay=False),
              help="tensorboardX log folder [runs/ next to --out, i.e. workspace/runs by default].")
@click.option("--no-tensorboard", is_flag=True, help="Do not write a tensorboardX run.")
@click.option("--allow-pickle", is_flag=True,
              help="Let --vectors be a gensim native .kv pickle (loading it runs code from the file). Trusted files only.")
@click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(descriptor, regressor, loss, epochs, val_split, out, runs_dir, no_tensorboard, allow_pickle, quiet, as_json,
              **kw) -> None:
    """Train a caption -> image-space encoder; keep the checkpoint with the best validation MRR."""
    import json

    from retrieval.metrics import format_table
    from retrieval.train import run_name, summary_line, train

    config = _base_config(kw, descriptor=descriptor, regressor=regressor, loss=loss, epochs=epochs)
    writer = None
    if not no_tensorboard:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=str(Path(runs_dir or Path(out).parent / "runs") / run_name(config)))
    echo = None if quiet or as_json else (lambda record: click.echo(summary_line(record)))
    try:
        result = train(config, kw["features"], kw["captions"] or [str(workspace_path("demo"))], out, vectors=kw["vectors"],
                       vectors_limit=kw["vectors_limit"], val_split=val_split, writer=writer, quiet=quiet, on_epoch=echo,
                       threads=kw["threads"], allow_pickle=allow_pickle)
    finally:
        if writer is not None:
            writer.close()
    if as_json:
        click.echo(json.dumps({"checkpoint": str(result.checkpoint), "best_epoch": result.best_epoch, "best": result.best,
                               "seconds": result.seconds, "history": result.history}, indent=1))
        return
    click.echo(f"best epoch {result.best_epoch} of {len(result.history)}, {result.seconds:.1f}s; wrote {result.checkpoint}")
    click.echo(format_table(result.best))


@click.command("evaluate")
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


@click.command("retrieval")
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

    from retrieval.bench.combinations import LOSSES, format_rows, run_benchmark

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


@click.command("encode")
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

    from retrieval.bench.encoders import encode_benchmark, format_table

    rows = encode_benchmark(encoder, n, captions, repeat)
    click.echo(json.dumps(rows, indent=1) if as_json else format_table(rows))
