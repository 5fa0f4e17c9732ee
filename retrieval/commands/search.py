"""Commands on indexes and search: index build/info, search, benchmark search."""

from __future__ import annotations

import click

from retrieval.commands.common import Group, workspace_path


@click.group(cls=Group)
def index() -> None:
    """Build and inspect FAISS indexes over feature files."""


@index.command("build")
@click.argument("features", type=click.Path(exists=True))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--index", "factory", default="auto", show_default=True,
              help="faiss factory string (Flat, HNSW32, IVF1024,Flat, IVF1024_HNSW32,SQ8, "
                   "PCAR256,IVF1024_HNSW32,PQ128x4fs,Refine(SQ8), ...) or auto.")
@click.option("--metric", type=click.Choice(["cosine", "ip", "l2"]), default="cosine", show_default=True,
              help="cosine = inner product on L2-normalised vectors.")
@click.option("--memory-budget", default="8GiB", show_default=True,
              help="Memory the build may use: the index (60%), training sample and feature blocks.")
@click.option("--max-query-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency budget of one query: auto picks a kind expected to fit it, and the search "
                   "parameter is lowered until a measured single query does.")
@click.option("--train-size", type=click.IntRange(min=1), default=65536, show_default=True, help="Training sample size.")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 the default nprobe/efSearch must reach on held-out queries.")
@click.option("--on-disk/--in-memory", "on_disk", default=None,
              help="Keep the IVF lists in OUT_DIR/index.ivfdata, memory-mapped to search (default: when the index "
                   "would not fit the index share of --memory-budget in memory).")
@click.option("--rebuild", is_flag=True, help="Build from scratch even when only new rows would be added.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_build(features, out_dir, factory, metric, memory_budget, max_query_ms, train_size, target_recall, on_disk,
                rebuild, quiet) -> None:
    """Build an index over FEATURES.h5 (or a shard manifest.json) and save OUT_DIR/index.faiss + index.json.

    When OUT_DIR already holds an index of a feature file that has since grown, only the new rows are
    added (Flat, IVF and HNSW kinds); otherwise it is rebuilt, and the output says why.
    """
    from indexes.build import IndexConfig, build_index_dir, parse_size

    config = IndexConfig(factory=factory, metric=metric, memory_budget=parse_size(memory_budget),
                         train_size=train_size, target_recall=target_recall, max_query_ms=max_query_ms, on_disk=on_disk)
    meta = build_index_dir(features, out_dir, config, quiet=quiet, incremental=not rebuild)
    click.echo(format_build(out_dir, meta))


def format_build(out_dir, meta: dict) -> str:
    """One line: what happened to OUT_DIR, the kind, its size, the calibrated parameter."""
    upd = meta.get("update") or {}
    action = upd.get("action", "built")
    tuned = ", ".join(f"{k}={v}" for k, v in meta["search_params"].items())
    cal = meta.get("calibration") or {}
    recall = f" (recall@10 {cal['recall@10']:.3f} held out, {cal['query_ms']:.2f} ms a query)" if "query_ms" in cal else ""
    size = sum(f["size"] for f in meta.get("files", {}).values())
    what = f"{meta['factory']} ({meta['metric']}) over {meta['n']} x {meta['d']}, {size / 2**20:,.1f} MiB"
    storage = meta.get("storage") or {}
    if storage.get("lists") == "on_disk":
        what += f" (lists on disk, {storage['resident_bytes'] / 2**20:,.1f} MiB in memory)"
    if action == "unchanged":
        return f"{out_dir}: up to date ({upd['reason']}); {what}"
    if action == "added":
        return (f"{out_dir}: added {meta['n'] - upd['rows_before']} new rows to the existing index "
                f"({upd['rows_before']} -> {meta['n']}) in {meta.get('add_seconds', 0):.1f} s; {what}")
    head = f"rebuilt ({upd['reason']})" if action == "rebuilt" else "built"
    line = f"{out_dir}: {head} {what} in {meta['build_seconds']:.1f} s{'; ' + tuned if tuned else ''}{recall}"
    compared = meta.get("candidates") or []
    if compared:
        line += f"\ncandidates compared on {compared[0]['rows']} rows (query times projected to {meta['n']}):"
        line += "".join(f"\n  {'*' if c['chosen'] else ' '} {c['factory']}: {c['bytes'] / 2**20:,.0f} MiB, recall@10 "
                        f"{c['recall']:.3f} at {c['parameter']}, {c['query_ms']:.2f} ms" for c in compared)
    return line


@index.command("info")
@click.argument("index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")))
def index_info(index_dir) -> None:
    """Print the sidecar of an index folder (how it was built)."""
    import json

    from indexes.io import read_sidecar

    click.echo(json.dumps(read_sidecar(index_dir), indent=1, sort_keys=True))


@click.command("search")
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
    from extract.core.files import ensure_writable
    from retrieval.search import answer, read_queries_file

    for sheet in sheets:  # before any model or index is loaded
        ensure_writable(sheet)

    texts = [" ".join(query)] if query else []
    if queries_file:
        texts += read_queries_file(queries_file)
    results = answer(index_dir, texts=texts, images=images, ids=ids, model=model, k=k, features=features, device=device)
    flags = None
    if truth or sheets:
        from retrieval.sheet import load_truth, truth_flags, write_contact_sheet

        table = load_truth(truth, truth_field) if truth else None
        flags = truth_flags(results, table) if table is not None else None
        for sheet in sheets:
            write_contact_sheet(results, sheet, table)
    results.timings["total"] = time.perf_counter() - t0
    click.echo(results.format(as_json, flags, truth_field))
    if timings:
        from retrieval.search import timing_line

        click.echo(timing_line(results.timings, t0), err=True)


@click.command("search")
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
@click.option("--max-query-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Latency budget of the auto index in the scaling part (candidates are then compared by measurement).")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Recall@10 the speed and scaling parts report the cheapest operating point for.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder where the scaling part writes its synthetic vectors once (.npy) and reads them back.")
@click.option("--real-features", type=click.Path(exists=True, dir_okay=False),
              help="A real feature file whose PCA spectrum is compared with the synthetic vectors'.")
@click.option("--cold", is_flag=True, help="Time fresh `cli.py search` processes on --index/--model.")
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")),
              show_default="workspace/index")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG (rank histograms, recall vs latency).")
@click.option("--json", "as_json", is_flag=True)
def benchmark_search(features, captions, model, quality_index, n, dim, kinds, nq, single, train_size, scaling,
                     scaling_budget, scaling_kind, max_query_ms, target_recall, data_dir, real_features, cold, index_dir,
                     plot_path, as_json) -> None:
    """Retrieval quality through an index, speed/recall of index kinds, scaling, and cold-start time."""
    import json

    from indexes.bench.speed import default_kinds
    from indexes.build import parse_size
    from retrieval.bench.search import format_report, run

    quality = None
    if captions:
        quality = {"features": features, "captions": list(captions), "model": model, "factory": quality_index}
    speed = {"n": n, "d": dim, "factories": list(kinds) or default_kinds(n, dim), "nq": nq, "n_single": single,
             "train_size": train_size, "target": target_recall} if n else None
    sizes = [int(s) for s in scaling.split(",") if s.strip()]
    scale = {"sizes": sizes, "d": dim, "memory_budget": parse_size(scaling_budget), "train_size": train_size,
             "kind": scaling_kind, "max_query_ms": max_query_ms, "target": target_recall, "cache_dir": data_dir} if sizes else None
    cold_args = {"query": "una persona en bicicleta", "index_dir": index_dir, "model": model} if cold else None
    report = run(quality, speed, scale, cold_args, plot_path, real_features)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


@click.command("serve")
@click.option("--index", "index_dir", type=click.Path(file_okay=False), default=lambda: str(workspace_path("index")),
              show_default="workspace/index")
@click.option("--model", type=click.Path(dir_okay=False), default=lambda: str(workspace_path("text-encoder.npz")),
              show_default="workspace/text-encoder.npz", help="Text encoder checkpoint.")
@click.option("--queries-file", type=click.Path(exists=True, dir_okay=False),
              help="Text queries (id<TAB>caption or one a line) [default: a built-in list of 10].")
@click.option("--clients", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--text", "n_text", type=click.IntRange(0), default=2000, show_default=True, help="Text queries under load.")
@click.option("--ids", "n_id", type=click.IntRange(0), default=500, show_default=True, help="Id queries under load.")
@click.option("--single", "n_single", type=click.IntRange(10), default=300, show_default=True,
              help="Queries timed one at a time, in process and over HTTP.")
@click.option("--time-limit", type=click.FloatRange(1), default=150.0, show_default=True, help="Seconds the load part may take.")
@click.option("--inline-ms", type=click.FloatRange(0), default=20.0, show_default=True,
              help="The server's `serve --inline-ms` (0: every query on its query threads).")
@click.option("--json", "as_json", is_flag=True)
def benchmark_serve(index_dir, model, queries_file, clients, n_text, n_id, n_single, time_limit, inline_ms, as_json) -> None:
    """Load test of `serve` on loopback: throughput, p50/p99, errors, RSS, against the in-process call."""
    import json

    from retrieval.bench.serve import DEFAULT_QUERIES, format_report, read_captions, run

    texts = read_captions(queries_file) if queries_file else list(DEFAULT_QUERIES)
    report = run(index_dir, model, texts, clients, n_text, n_id, n_single, time_limit, inline_ms=inline_ms)
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))
