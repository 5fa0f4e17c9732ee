"""Search-time parameters of faiss indexes: which knob an index has, and setting it."""

from __future__ import annotations

import math

from extract.core.errors import UserError


def tunable_parameter(index) -> tuple[str, list[int]] | None:
    """The search-time knob of an approximate index and the values worth trying, or None for exact kinds."""
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        return tunable_parameter(inner.index)
    if isinstance(inner, faiss.IndexIVF):
        values = [1 << i for i in range(int(math.log2(inner.nlist)) + 1)]
        return "nprobe", values
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    return None


def set_search_params(index, params: dict) -> None:
    """Apply search-time parameters such as ``{"nprobe": 32}`` or ``{"efSearch": 64}``."""
    import faiss

    ps = faiss.ParameterSpace()
    for name, value in params.items():
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError:
            raise UserError(f"index {type(index).__name__} has no search parameter {name!r}") from None
