"""A paper figure for a collection far larger than the benchmark's: index bytes, RAM, build hours on N nodes
and query ms at 100M rows, from the same formulas the ``auto`` choice uses, anchored on a measured row.

- bytes: :func:`indexes.choose.estimate_bytes` at ``n`` rows, with the IVF lists grown as the guideline
  (:func:`indexes.choose.n_lists`), plus the ids at the measured bytes per id;
- build: training is k-means, whose cost grows with training rows x lists (39 rows per list), scaled from
  the measured training time; adding is linear in rows and split over ``nodes`` machines that each add
  their shard to a copy of the trained index (the shards' lists are then merged, one sequential pass over
  the index bytes at ``MERGE_BYTES_PER_S``);
- query: the measured p50 times the scan-cost model's ratio (:func:`indexes.choose.estimate_query_ms`)
  between ``n`` and the measured size, at the same fraction of lists probed (recall at a fixed fraction
  is assumed to carry over).
"""

from __future__ import annotations

import re

from indexes.choose import choose, estimate_bytes, estimate_query_ms, n_lists

MERGE_BYTES_PER_S = 500e6
TRAIN_ROWS_PER_LIST = 39


def _lists(factory: str) -> int | None:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else None


def _at(factory: str, n: int) -> str:
    k = _lists(factory)
    return factory if k is None else factory.replace(f"IVF{k}", f"IVF{n_lists(n)}", 1)


def paper_figure(row: dict, n: int = 100_000_000, nodes: int = 8, memory_budget: int | None = None) -> list[dict]:
    """Figures at ``n`` rows from a measured scaling ``row`` (of the largest measured size): for the kind that
    row measured, and (with ``memory_budget``) for the ``auto`` choice under that budget at ``n``."""
    d, n0 = row["d"], row["n"]
    k0 = _lists(row["factory"]) or 1
    param = row.get("param") or ""
    frac = int(param.split("=")[1]) / k0 if param.startswith("nprobe=") else 1 / 32
    measured_over_model = row["p50_ms"] / max(estimate_query_ms(row["factory"], n0, d, frac), 1e-9)
    per_id = row.get("ids_mib", 0) * 2**20 / n0
    kinds = [_at(row["factory"], n)]
    if memory_budget:
        auto = choose(n, d, memory_budget, None, int(per_id * n)).factory
        if auto not in kinds:
            kinds.append(auto)
    out = []
    for factory in kinds:
        index_bytes = estimate_bytes(factory, n, d)["total"]
        k = _lists(factory) or 1
        train_rows = min(n, TRAIN_ROWS_PER_LIST * k)
        train_s = row.get("train_s", 0.0) * (train_rows * k) / max(row.get("train_rows", 1) * k0, 1)
        add_s = max(row["build_s"] - row.get("train_s", 0.0), 0.0) * n / n0 / nodes
        merge_s = index_bytes / MERGE_BYTES_PER_S
        query_ms = estimate_query_ms(factory, n, d, frac) * measured_over_model
        out.append({"factory": factory, "n": n, "nodes": nodes, "index_gib": round(index_bytes / 2**30, 1),
                    "ram_gib": round((index_bytes + per_id * n) / 2**30, 1),
                    "build_h": round((train_s + add_s + merge_s) / 3600, 2),
                    "train_h": round(train_s / 3600, 2), "query_ms": round(query_ms, 2),
                    "from": f"{row['factory']} measured at {n0:,} rows"})
    return out
