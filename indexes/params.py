"""Search-time parameters of faiss indexes: which knob an index has, and setting it."""

from __future__ import annotations

import math

from extract.core.errors import UserError


def _unwrap(index):
    """The index that holds the search knob: below pre-transforms (PCA, OPQ) and re-ranking stages (Refine)."""
    import faiss

    inner = faiss.downcast_index(index)
    while True:
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
        elif isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.base_index)
        else:
            return inner


def refine_stage(index):
    """The ``IndexRefine`` of an index (``...,RFlat`` / ``...,Refine(SQ8)``), or None."""
    import faiss

    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner if isinstance(inner, faiss.IndexRefine) else None


def tunable_parameter(index) -> tuple[str, list[int]] | None:
    """The search-time knob of an approximate index and the values worth trying, or None for exact kinds."""
    import faiss

    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe", [1 << i for i in range(int(math.log2(inner.nlist)) + 1)]
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    return None


def coupled_params(name: str, value: int, index) -> dict:
    """``{name: value}`` plus the settings that go with it: an HNSW coarse quantizer searches at least
    ``2 * nprobe`` candidates (fewer would return fewer lists than asked for)."""
    import faiss

    params = {name: int(value)}
    inner = _unwrap(index)
    if name == "nprobe" and isinstance(inner, faiss.IndexIVF):
        quantizer = faiss.downcast_index(inner.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            params["quantizer_efSearch"] = max(64, 2 * int(value))
    return params


def set_search_params(index, params: dict) -> None:
    """Apply search-time parameters such as ``{"nprobe": 32}``, ``{"efSearch": 64}`` or ``{"k_factor": 4}``
    (the re-ranking stage's candidates per result)."""
    import faiss

    ps = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "k_factor":
            refine = refine_stage(index)
            if refine is None:
                raise UserError(f"index {type(index).__name__} has no re-ranking stage for k_factor")
            refine.k_factor = float(value)
            continue
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError:
            raise UserError(f"index {type(index).__name__} has no search parameter {name!r}") from None
