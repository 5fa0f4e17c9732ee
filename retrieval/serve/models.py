"""Request bodies of the JSON API (pydantic models: FastAPI documents them at ``/docs``)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Term(BaseModel):
    """One weighted part of a query: exactly one of ``q`` (text), ``id`` (indexed image), ``image``."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = None
    id: str | None = None
    image: str | int | None = Field(None, description="JSON: base64 image bytes; multipart: index of an uploaded `image` part")
    w: float = Field(1.0, description="weight; negative to steer away")

    @field_validator("w")
    @classmethod
    def _finite(cls, w: float) -> float:
        if not math.isfinite(w) or abs(w) > 100:
            raise ValueError("w must be a finite number between -100 and 100")
        return w

    @model_validator(mode="after")
    def _one_kind(self):
        if sum(x is not None for x in (self.q, self.id, self.image)) != 1:
            raise ValueError("each term needs exactly one of q, id, image")
        return self


class SearchBody(BaseModel):
    """One search: ``q``, ``id``, ``image`` or weighted ``terms``, plus paging."""

    model_config = ConfigDict(extra="forbid")
    q: str | None = Field(None, description="Spanish text, e.g. 'una persona en bicicleta'")
    id: str | None = Field(None, description="indexed image id (or its unique file name or stem)")
    image: str | None = Field(None, description="base64 image bytes (JSON bodies; multipart sends a file part)")
    terms: list[Term] | None = Field(None, description='e.g. [{"q": "una persona en bicicleta", "w": 1}, {"q": "nieve", "w": -0.5}]')
    k: int = Field(10, description="results to return")
    offset: int = Field(0, description="results to skip (paging)")
    min_score: float | None = Field(None, description="drop results scoring below this (cosine / inner-product indexes)")


class BatchBody(BaseModel):
    """Several searches answered in one request."""

    model_config = ConfigDict(extra="forbid")
    queries: list[SearchBody]


class GenreBody(BaseModel):
    """A movie to classify: its overview and/or poster (base64 in JSON, a file part in multipart)."""

    model_config = ConfigDict(extra="forbid")
    overview: str | None = None
    poster: str | None = None
    top: int = Field(3, ge=1, le=50)


# ---- answers (documented at /docs; the routes send them as ready-made JSON, tests check them against these) ----
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(_Answer):
    """One hit: 1-based rank over the whole ranking, stored id, score, the thumbnail's URL."""

    rank: int
    id: str
    score: float = Field(description="cosine / inner product (higher is closer) or l2 distance (lower is closer)")
    thumbnail: str = Field(description="e.g. /api/images/<id>?size=256")


class SearchAnswer(_Answer):
    """The answer to one search."""

    query: str = Field(description="the text, or a label of the query (id:..., image, weighted terms)")
    results: list[Result]
    timings: dict[str, float] = Field(description="milliseconds per stage: encode or lookup, search, total")


class BatchAnswer(_Answer):
    answers: list[SearchAnswer]


class Genre(_Answer):
    genre: str
    probability: float
    threshold: float
    predicted: bool


class GenreAnswer(_Answer):
    genres: list[Genre] = Field(description="the most probable genres, best first")
    predicted: list[str] = Field(description="those at or over their threshold")
    model: str
    timings: dict[str, float]
