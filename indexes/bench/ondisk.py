"""On-disk IVF lists against the same lists in memory, in one run.

A feature file of clustered synthetic vectors (:mod:`indexes.bench.synthetic`) several times the memory
budget is indexed with ``--on-disk`` in a forked child (its peak RSS is its own); then, on fresh queries
from the same clusters, the on-disk index (lists memory-mapped) and an in-memory copy of the very same
trained index and lists are compared: recall@10 against exact search, and median single-thread latency
of one query (first pass over the queries, and a second, with the pages in the page cache).

    python -m indexes.bench.ondisk --n 200000 --d 512 --memory-budget 64MiB
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.store import open_features, write_features
from indexes.bench.speed import peak_rss_mib, reset_peak_rss
from indexes.bench.synthetic import clustered_blocks, clustered_queries
from indexes.build import ArrayFeatures, IndexConfig, build_index_dir, parse_size
from indexes.exact import exact_knn, recall_at
from indexes.fill import block_rows
from indexes.io import INDEX_FILE, load_index
from indexes.params import set_search_params

log = logging.getLogger(__name__)


def _rss(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024


def _build_in_child(features: Path, out: Path, config: IndexConfig) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def work():
        # warm-up at the same block sizes: BLAS, OpenMP and HDF5 allocate their buffers on first use
        ff = open_features(features)
        warm = ArrayFeatures(ff.load(np.arange(min(len(ff), 3 * block_rows(ff.dim, config)))), name="synthetic:warm-up")
        build_index_dir(warm, out.with_name(out.name + "-warm"), replace(config, factory="IVF8,Flat", on_disk=True),
                        quiet=True)
        del warm
        reset_peak_rss()
        base = _rss()
        t0 = time.perf_counter()
        meta = build_index_dir(features, out, config, quiet=True)
        send.send({"seconds": time.perf_counter() - t0, "base_mib": base, "peak_mib": peak_rss_mib(),
                   "factory": meta["factory"], "storage": meta["storage"], "search_params": meta["search_params"],
                   "calibration": meta["calibration"]})

    proc = ctx.Process(target=work)
    proc.start()
    got = recv.recv()
    proc.join()
    return got


def in_memory_copy(folder: Path, loaded):
    """The index of ``folder`` with its on-disk lists copied into ordinary in-memory lists."""
    import faiss

    index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf, src = faiss.extract_index_ivf(index), faiss.extract_index_ivf(loaded.index).invlists
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for j in range(ivf.nlist):
        if src.list_size(j):
            lists.add_entries(j, src.list_size(j), src.get_ids(j), src.get_codes(j))
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    set_search_params(index, loaded.meta["search_params"])
    return index


def _latency_ms(index, xq: np.ndarray, k: int) -> float:
    times = []
    for i in range(len(xq)):
        t0 = time.perf_counter()
        index.search(xq[i : i + 1], k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def ondisk_benchmark(n: int, d: int, memory_budget: int, factory: str = "auto", nq: int = 200, k: int = 10,
                     seed: int = 0, folder: Path | None = None) -> dict:
    """Build, recall and latency figures of the on-disk index vs the same lists in memory (see the module doc)."""
    import faiss

    work = Path(folder or tempfile.mkdtemp(prefix="buscador-ondisk-"))
    features = work / "features.h5"
    block = max(256, int(memory_budget * 0.1) // (4 * d))
    if not features.exists():
        xb = np.concatenate([x for _, x in clustered_blocks(n, d, 65536, seed)])
        write_features(features, [str(i) for i in range(n)], xb, {"model": "synthetic", "seed": seed})
        del xb
    built = _build_in_child(features, work / "index", IndexConfig(factory=factory, memory_budget=memory_budget,
                                                                  on_disk=True))
    ff = open_features(features)
    xq = normalize_rows(clustered_queries(nq, n, d, seed))
    _, gt = exact_knn(xq, (normalize_rows(x) for _, x in ff.iter_blocks(block)), k)
    before = _rss()
    t0 = time.perf_counter()
    loaded = load_index(work / "index")
    load_seconds = time.perf_counter() - t0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        disk_first = _latency_ms(loaded.index, xq, k)
        disk = _latency_ms(loaded.index, xq, k)
        disk_recall = recall_at(loaded.index.search(xq, k)[1], gt, k)
        mapped_rss = _rss() - before
        memory = in_memory_copy(work / "index", loaded)
        mem_first = _latency_ms(memory, xq, k)
        mem = _latency_ms(memory, xq, k)
        mem_recall = recall_at(memory.search(xq, k)[1], gt, k)
    finally:
        faiss.omp_set_num_threads(threads)
    return {"n": n, "d": d, "memory_budget_mib": memory_budget / 2**20, "features_mib": round(features.stat().st_size / 2**20, 1),
            "factory": built["factory"], "build_seconds": round(built["seconds"], 1),
            "build_peak_rss_mib": round(built["peak_mib"] - built["base_mib"], 1), "storage": built["storage"],
            "search_params": built["search_params"], "calibration": built["calibration"],
            "load_seconds": round(load_seconds, 2), "rss_after_searches_mib": round(mapped_rss, 1),
            f"recall@{k}_on_disk": round(disk_recall, 4), f"recall@{k}_in_memory": round(mem_recall, 4),
            "p50_ms_on_disk_first_pass": round(disk_first, 3), "p50_ms_on_disk": round(disk, 3),
            "p50_ms_in_memory_first_pass": round(mem_first, 3), "p50_ms_in_memory": round(mem, 3),
            "on_disk_over_in_memory": round(disk / mem, 2), "folder": str(work)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--memory-budget", default="64MiB")
    p.add_argument("--index", default="auto")
    p.add_argument("--nq", type=int, default=200)
    p.add_argument("--folder", type=Path, default=None, help="Work folder (kept; its features.h5 is reused).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(json.dumps(ondisk_benchmark(args.n, args.d, parse_size(args.memory_budget), args.index, args.nq,
                                      folder=args.folder), indent=1))


if __name__ == "__main__":
    main()
