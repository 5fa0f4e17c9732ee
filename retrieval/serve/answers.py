"""Turn validated request bodies into answers: query vectors, ranked results with thumbnails, timings (ms)."""

from __future__ import annotations

import time
from urllib.parse import quote

from retrieval.serve.engine import Engine
from retrieval.serve.models import GenreBody, SearchBody
from retrieval.serve.uploads import RequestError, decode_base64

THUMB = 256


def thumbnail_url(image_id: str, size: int = THUMB) -> str:
    return f"/api/images/{quote(image_id, safe='/')}?size={size}"


def _image_bytes(engine: Engine, ref, uploads: list[bytes], what: str) -> bytes:
    if isinstance(ref, int):
        if not 0 <= ref < len(uploads):
            raise RequestError(f"{what} refers to upload {ref} but {len(uploads)} image part(s) were sent", 422)
        return uploads[ref]
    return decode_base64(ref, engine.config.max_upload, what)


def _term_vector(engine: Engine, q, image_id, image, uploads, stages: dict, what: str):
    t0 = time.perf_counter()
    if q is not None:
        v, stage, label = engine.text_vector(q), "encode", repr(q)
    elif image_id is not None:
        v, stage = engine.id_vector(image_id), "lookup"
        label = f"id:{engine.ids[engine.row_of(image_id)]}"
    else:
        v, stage, label = engine.image_vector(_image_bytes(engine, image, uploads, what)), "encode", "image"
    stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - t0
    return v, label


def search(engine: Engine, body: SearchBody, uploads: list[bytes] = ()) -> tuple[dict, dict[str, float]]:
    """Answer one search; returns the response document and ``{stage: seconds}``."""
    t0 = time.perf_counter()
    uploads = list(uploads)
    engine.check_paging(body.k, body.offset)
    stages: dict[str, float] = {}
    given = [name for name in ("q", "id", "image", "terms") if getattr(body, name) is not None]
    if body.image is None and uploads and "terms" not in given:
        given.append("image")
    if len(given) != 1:
        raise RequestError("give exactly one of q, id, image or terms" + (f" (got {', '.join(given)})" if given else ""), 422)
    if body.terms is not None:
        if not 1 <= len(body.terms) <= engine.config.max_terms:
            raise RequestError(f"terms must hold 1 to {engine.config.max_terms} entries; got {len(body.terms)}", 422)
        parts, labels = [], []
        for i, t in enumerate(body.terms):
            v, label = _term_vector(engine, t.q, t.id, t.image, uploads, stages, f"terms[{i}].image")
            parts.append((v, t.w))
            labels.append(f"{t.w:+g}*{label}")
        xq, query = engine.combine(parts), " ".join(labels)
    else:
        image = body.image if body.image is not None else (0 if uploads else None)
        xq, query = _term_vector(engine, body.q, body.id, image, uploads, stages, "image")
        query = body.q if body.q is not None else query
    t1 = time.perf_counter()
    matches = engine.search(xq, body.k, body.offset, body.min_score)
    stages["search"] = time.perf_counter() - t1
    stages["total"] = time.perf_counter() - t0
    doc = {
        "query": query,
        "results": [{"rank": m.rank, "id": m.id, "score": m.score, "thumbnail": thumbnail_url(m.id)} for m in matches],
        "timings": {k: round(v * 1000, 3) for k, v in stages.items()},
    }
    return doc, stages


def genres(engine: Engine, body: GenreBody, poster: bytes | None) -> tuple[dict, dict[str, float]]:
    """Top genres of one movie with probabilities, thresholds and which are predicted."""
    t0 = time.perf_counter()
    if poster is None and body.poster is not None:
        poster = decode_base64(body.poster, engine.config.max_upload, "poster")
    top = engine.genres(body.overview, poster, body.top)
    stages = {"genres": time.perf_counter() - t0}
    doc = {"genres": top, "predicted": [g["genre"] for g in top if g["predicted"]],
           "model": engine.genre_model.cfg.model, "timings": {k: round(v * 1000, 3) for k, v in stages.items()}}
    return doc, stages
