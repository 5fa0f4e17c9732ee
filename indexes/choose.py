"""The ``auto`` index: candidate kinds, what each costs in memory and per query, and the choice under budgets.

Memory counts everything a loaded index holds (faiss's own layout, checked against written indexes in the
tests): the codes, 8 bytes of id per vector in IVF lists, the coarse quantizer (``K * d' * 4`` bytes, plus
its HNSW graph), the PCA/OPQ matrices (PCA keeps the full ``d x d`` eigenvectors too), the PQ/SQ codebooks, an HNSW graph (about ``2 * M * 4 * 1.05``
bytes per vector, levels and offsets included), a re-ranking stage's vectors, and a direct map (8 bytes
per vector) where one is made. The budget also holds the feature ids a searching collection keeps
(:func:`ids_bytes`: packed, their UTF-8 bytes plus 5 bytes each).

Candidates, best recall first (``K`` IVF lists, ``r`` the reduced dimension):

1. ``Flat`` for ``N <= 50,000``: exact, a few ms per query there;
2. ``IVF{K}_HNSW32,Flat``: exact vectors in lists, an HNSW graph over the centroids;
3. ``IVF{K}_HNSW32,SQ8``: one byte per dimension;
4. ``PCAR{r},IVF{K}_HNSW32,PQ{r/2}x4fs,Refine(SQ8)``: PCA (with a random rotation) to ``r`` dims, 4-bit
   fast-scan PQ codes scanned in SIMD registers, re-ranked on 8-bit vectors of the full dimension;
5. ``PCAR{r},IVF{K}_HNSW32,PQ{r/2}x4fs``, then smaller codes, for budgets below one byte per dimension;
6. ``OPQ{m}_{r},IVF{K},PQ{m}`` down to 8 bytes per vector.

The estimated query time of each (see :func:`estimate_query_ms`) is a scan-cost model with
single-core throughputs measured on one x86 core; it shortlists candidates against ``--max-query-ms``,
the build then measures the shortlist on held-out queries (:mod:`indexes.compare`) and the winner on the
whole set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from extract.core.errors import UserError
from extract.core.ids import PackedIds, packed_bytes

FLAT_MAX_N = 50_000
HNSW_M = 32
# single-core throughputs of the scan loops (bytes of codes per second) and fixed costs, measured with
# `cli.py benchmark search` on 2048-d clustered vectors (see the README's index section)
SCAN_BYTES_PER_S = {"flat": 6e9, "sq8": 3e9, "pq": 1.2e9, "fastscan": 12e9}
HNSW_QUERY_MS = 0.15  # one HNSW descent (coarse quantizer or HNSW index) at efSearch ~64
REFINE_CANDIDATES = 16  # k_factor: re-ranked candidates per result (4 loses ~9 points of recall@10)
RANDOM_ACCESS_MS = 2e-4  # fetching one re-ranked vector from an unrelated place in memory
_FIELD = re.compile(r"^(PCAR?|PCAW?R?)(\d+)$|^OPQ(\d+)(?:_(\d+))?$")


def n_lists(n: int) -> int:
    """Number of IVF lists: the power of two nearest ``4 * sqrt(n)``, with >= 39 points per list."""
    k = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    while k > 1 and n < 39 * k:
        k //= 2
    return max(k, 1)


def reduced_dim(d: int) -> int:
    """Dimension after PCA for the compressed candidates: 256 (or ``d`` when it is already small)."""
    return min(d, 256)


@dataclass(frozen=True)
class Plan:
    """One candidate: its factory string, index bytes, and estimated single-query ms at recall ~0.9."""

    factory: str
    bytes: int
    query_ms: float
    parts: dict


def _split(factory: str) -> tuple[list[str], str, str | None]:
    """``(transforms, main, refine)`` parts of a factory string."""
    parts = [p.strip() for p in factory.split(",")]
    refine = None
    if parts[-1] in ("RFlat",) or parts[-1].startswith("Refine("):
        refine = parts.pop()
    transforms = []
    while parts and _FIELD.match(parts[0]):
        transforms.append(parts.pop(0))
    return transforms, ",".join(parts), refine


def _code_bytes(code: str, d: int) -> tuple[float, float, str]:
    """(bytes per vector, codebook bytes, scan kind) of an encoding (``Flat``, ``SQ8``, ``PQ32x4fs``, ...)."""
    if code in ("Flat", ""):
        return 4 * d, 0, "flat"
    if code in ("SQ8",):
        return d, 2 * 4 * d, "sq8"
    if code in ("SQfp16", "SQ16"):
        return 2 * d, 0, "sq8"
    if code == "SQ4":
        return math.ceil(d / 2), 2 * 4 * d, "sq8"
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(fs)?(?:np)?", code)
    if m:
        mm, nbits = int(m.group(1)), int(m.group(2) or 8)
        codebooks = (1 << nbits) * d * 4
        return math.ceil(mm * nbits / 8), codebooks, "fastscan" if m.group(3) else "pq"
    raise UserError(f"cannot estimate the memory of encoding {code!r}")


def estimate_bytes(factory: str, n: int, d: int, direct_map: bool = False) -> dict:
    """Bytes a loaded ``factory`` index over ``n`` x ``d`` vectors holds, per part (and ``total``)."""
    transforms, main, refine = _split(factory)
    parts: dict = {}
    dim = d
    for t in transforms:
        m = _FIELD.match(t)
        out = int(m.group(2) or m.group(4) or d)
        if t.startswith("PCA"):  # faiss keeps the full d x d eigenvector matrix besides the d' x d projection
            size = (dim * dim + dim * out + 3 * dim) * 4 + (out * out * 4 if "R" in t else 0)
        else:  # OPQ: the d' x d rotation
            size = (dim * out + out) * 4
        parts["transform"] = parts.get("transform", 0) + size
        dim = out
    if main == "Flat":
        parts["codes"] = n * 4 * dim
    elif main.startswith("HNSW"):
        m = re.fullmatch(r"HNSW(\d+)(?:_(\w+))?", main)
        if not m:
            raise UserError(f"cannot estimate the memory of {main!r}")
        mh = int(m.group(1))
        per, books, _ = _code_bytes(m.group(2) or "Flat", dim)
        parts["codes"] = n * per + books
        parts["graph"] = int(n * (2 * mh * 4 * 1.05 + 12))
    elif main.startswith("IVF"):
        m = re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?,(.+)", main)
        if not m:
            raise UserError(f"cannot estimate the memory of {main!r}")
        k, qm = int(m.group(1)), m.group(2)
        per, books, _ = _code_bytes(m.group(3), dim)
        parts["codes"] = int(n * per + books)
        parts["ids"] = 8 * n
        parts["coarse_quantizer"] = k * dim * 4 + (int(k * (2 * int(qm) * 4 * 1.05 + 12)) if qm else 0)
        parts["lists"] = k * 48
    else:
        per, books, _ = _code_bytes(main, dim)
        parts["codes"] = int(n * per + books)
    if refine == "RFlat":
        parts["refine"] = n * 4 * d
    elif refine:
        per, books, _ = _code_bytes(refine[len("Refine("):-1], d)
        parts["refine"] = int(n * per + books)
    if direct_map:
        parts["direct_map"] = 8 * n
    parts["total"] = int(sum(parts.values()))
    return parts


def estimate_query_ms(factory: str, n: int, d: int, nprobe_fraction: float = 1 / 32) -> float:
    """Single-thread ms per query: codes scanned at ``nprobe = K * nprobe_fraction`` (IVF), an HNSW
    descent (HNSW, or an HNSW coarse quantizer), the PCA product, and the re-ranking of ``16 * k`` candidates."""
    transforms, main, refine = _split(factory)
    dim, ms = d, 0.0
    for t in transforms:
        m = _FIELD.match(t)
        out = int(m.group(2) or m.group(4) or d)
        ms += dim * out * 4 / SCAN_BYTES_PER_S["flat"] * 1e3
        dim = out
    if main.startswith("HNSW"):
        ms += HNSW_QUERY_MS * max(1.0, math.log2(max(n, 2)) / 17)
    elif main.startswith("IVF"):
        m = re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?,(.+)", main)
        k = int(m.group(1))
        per, _, kind = _code_bytes(m.group(3), dim)
        scanned = max(1, k * nprobe_fraction) * n / k
        ms += scanned * per / SCAN_BYTES_PER_S[kind] * 1e3
        ms += HNSW_QUERY_MS if m.group(2) else k * dim * 4 / SCAN_BYTES_PER_S["flat"] * 1e3
    else:
        per, _, kind = _code_bytes(main, dim)
        ms += n * per / SCAN_BYTES_PER_S[kind] * 1e3
    if refine:
        per = 4 * d if refine == "RFlat" else _code_bytes(refine[len("Refine("):-1], d)[0]
        ms += REFINE_CANDIDATES * 10 * (per / SCAN_BYTES_PER_S["sq8"] * 1e3 + RANDOM_ACCESS_MS)
    return ms


def candidates(n: int, d: int, k_lists: int | None = None) -> list[str]:
    """Candidate factory strings for ``n`` x ``d`` vectors with ``k_lists`` IVF lists (default
    :func:`n_lists`), best recall first (see the module doc)."""
    k = k_lists or n_lists(n)
    r = reduced_dim(d)
    out = ["Flat"] if n <= FLAT_MAX_N else []
    out += [f"IVF{k}_HNSW{HNSW_M},Flat", f"IVF{k}_HNSW{HNSW_M},SQ8"]
    pca = f"PCAR{r}," if r < d else ""
    for m in (r // 2, r // 4, r // 8):
        if m >= 8 and r % m == 0:
            out.append(f"{pca}IVF{k}_HNSW{HNSW_M},PQ{m}x4fs,Refine(SQ8)")
    for m in (r // 2, r // 4, r // 8, r // 16):
        if m >= 8 and r % m == 0:
            out.append(f"{pca}IVF{k}_HNSW{HNSW_M},PQ{m}x4fs")
    for m in (32, 16, 8):
        if m <= r and r % m == 0:
            out.append(f"OPQ{m}_{r},IVF{k},PQ{m}")
    return out


def plan(factory: str, n: int, d: int) -> Plan:
    """Memory and estimated latency of one factory string."""
    parts = estimate_bytes(factory, n, d)
    return Plan(factory, parts["total"], round(estimate_query_ms(factory, n, d), 3), parts)


def fitting(n: int, d: int, memory_budget: int, id_bytes: int = 0, k_lists: int | None = None) -> list[Plan]:
    """The candidates whose index plus ``id_bytes`` (the collection's ids in memory) fit ``memory_budget``
    bytes, best recall first; none fitting is a :class:`UserError`."""
    plans = [plan(f, n, d) for f in candidates(n, d, k_lists)]
    fits = [p for p in plans if p.bytes + id_bytes <= memory_budget]
    if not fits:
        smallest = min(plans, key=lambda p: p.bytes)
        ids = f" plus {id_bytes / 2**20:,.0f} MiB of ids" if id_bytes else ""
        raise UserError(
            f"{n} x {d} vectors do not fit a memory budget of {memory_budget / 2**20:,.0f} MiB even as {smallest.factory} "
            f"({smallest.bytes / 2**20:,.0f} MiB{ids}); raise --memory-budget")
    return fits


def choose(n: int, d: int, memory_budget: int, max_query_ms: float | None = None, id_bytes: int = 0) -> Plan:
    """The best-recall candidate whose whole index (plus ``id_bytes`` of ids) fits ``memory_budget`` bytes
    and whose estimated single-query time is within ``max_query_ms``; when none is fast enough, the fastest
    that fits."""
    fits = fitting(n, d, memory_budget, id_bytes)
    if max_query_ms is None:
        return fits[0]
    fast = [p for p in fits if p.query_ms <= max_query_ms]
    return fast[0] if fast else min(fits, key=lambda p: p.query_ms)


def ids_bytes(source) -> int:
    """Bytes the ids of a feature source take in a searching collection (packed, :class:`PackedIds`): measured
    when they are packed already, else from the mean UTF-8 length of up to 1,000 of them; sources without
    stored ids (generated ones, whose ids are row numbers) count the row numbers' digits."""
    n = len(source)
    ids = vars(source).get("ids") if hasattr(source, "__dict__") else None
    if isinstance(ids, PackedIds):
        return ids.nbytes
    if ids is None or not n:
        return packed_bytes(n, len(str(max(n - 1, 0))))
    step = max(1, n // 1000)
    sample = [ids[i] for i in range(0, n, step)]
    return packed_bytes(n, sum(len(i.encode("utf-8")) for i in sample) / len(sample))
