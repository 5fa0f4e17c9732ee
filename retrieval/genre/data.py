"""Movie label files -> multi-hot genre matrix, joined to cached poster features by id.

Layouts read (containers in :mod:`retrieval.genre.readers`: CSV/TSV/JSON/JSONL, gzipped or not, pickle only
when explicitly allowed, MM-IMDb folders):

* poster CSV: ``Id, Genre, <one 0/1 column per genre>``, posters at ``Images/<Id>.jpg``;
* TMDB-style records: ``id, title, overview, genres`` where genres are names, TMDB genre ids, a JSON
  list of either, a list literal (``[Drama, Comedia]``) or a list of ``{"id", "name"}`` objects, plus an optional
  poster path;
* plain records: ``id, text, genres`` (names separated by ``|``), optional image path and ``split``.

Column names can be given (``id_column``, ``text_column``, ``genres_column``); otherwise the usual names are
tried. Every id-like column is kept, so a join to poster features can use the one that matches (Kaggle's
``movies_metadata.csv`` has TMDB ``id`` and ``imdb_id``; posters are often named by the latter).

Genre order is saved with every model: the columns of ``Y`` follow ``LabelSet.genres``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.errors import UserError
from retrieval.genre.join import best_id_column, join_features, joined, preview  # noqa: F401 (re-exported)
from retrieval.genre.labels import LabelSet
from retrieval.genre.readers import read_records

log = logging.getLogger(__name__)

# TMDB movie genre ids (https://developer.themoviedb.org/reference/genre-movie-list).
TMDB_GENRES: dict[int, str] = {
    28: "Action", 12: "Adventure", 16: "Animation", 35: "Comedy", 80: "Crime", 99: "Documentary",
    18: "Drama", 10751: "Family", 14: "Fantasy", 36: "History", 27: "Horror", 10402: "Music",
    9648: "Mystery", 10749: "Romance", 878: "Science Fiction", 10770: "TV Movie", 53: "Thriller",
    10752: "War", 37: "Western",
}

_ID_COLS = ("id", "movie_id", "tmdb_id", "imdb_id", "imdbid")
_TEXT_COLS = ("overview", "text", "plot", "description", "synopsis")
_GENRE_COLS = ("genres", "genre_ids", "genre", "labels")
_POSTER_COLS = ("poster", "poster_path", "image", "image_path", "path", "file")
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


@dataclass(frozen=True)
class RawLabels:
    """A label file as read, before genres are encoded: one entry per row of the file."""

    ids: list[str]
    texts: list[str]
    posters: list[str]
    names: list[list[str]]
    splits: list[str] | None
    id_column: str
    alt_ids: dict[str, list[str]]


def load_genre_ids(path: str | os.PathLike | None) -> dict[int, str]:
    """TMDB genre id -> name table: built-in movie genres, updated from a JSON file if given.

    The file is ``{"28": "Acción", ...}`` or TMDB's ``{"genres": [{"id": 28, "name": "Acción"}, ...]}``.
    """
    table = dict(TMDB_GENRES)
    if path is None:
        return table
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read genre id table {path}: {exc}") from None
    items = raw.get("genres", raw) if isinstance(raw, dict) else raw
    try:
        if isinstance(items, dict):
            table.update({int(k): str(v) for k, v in items.items()})
        else:
            table.update({int(d["id"]): str(d["name"]) for d in items})
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: expected {{id: name}} or {{'genres': [{{'id', 'name'}}]}}") from None
    return table


def _genre_items(value: Any) -> list[Any]:
    """One cell of a genres column -> a list of names/ids/objects."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (int, float)):
        return [int(value)]
    text = str(value).strip()
    if not text:
        return []
    if text[0] in "[{(":
        for parse in (json.loads, ast.literal_eval):  # literal_eval only builds literals, never runs code
            try:
                parsed = parse(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            return _genre_items(parsed) if not isinstance(parsed, dict) else [parsed]
        if text[0] in "[(" and text[-1] in "])":  # a list written without quotes: [Drama, Comedia]
            text = text[1:-1].strip()
            if not text:
                return []
    sep = "|" if "|" in text else ("," if "," in text else ";" if ";" in text else None)
    items = [t.strip().strip("'\"").strip() for t in text.split(sep)] if sep else [text.strip("'\"").strip()]
    return [t for t in items if t]


def _genre_name(item: Any, id_table: dict[int, str]) -> str | None:
    """A genre item -> its name, or None for an unknown id."""
    if isinstance(item, dict):
        if item.get("name"):
            return str(item["name"]).strip()
        item = item.get("id")
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, (int, float)) or (isinstance(item, str) and item.strip().isdigit()):
        return id_table.get(int(item))
    name = str(item).strip()
    return name or None


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _is_poster_csv(columns: list[str], rows: list[dict]) -> bool:
    if not ({"id", "genre"} <= {c.lower() for c in columns[:2]} and len(columns) > 2):
        return False
    return all(str(r.get(c, "")).strip() in ("0", "1", "0.0", "1.0") for r in rows[:50] for c in columns[2:])


def _column(lower: dict[str, str], wanted: str | None, defaults: tuple[str, ...], what: str, path: Path,
            columns: list[str]) -> str | None:
    """The column to read: the one asked for (an error when absent), else the first default present."""
    if wanted:
        if wanted.lower() not in lower:
            raise UserError(f"{path} has no {what} column {wanted!r}; its columns are {preview(columns, 12)}")
        return lower[wanted.lower()]
    return _pick(lower, defaults)


def load_labels(
    path: str | os.PathLike,
    text_field: str | None = "overview",
    genre_ids: dict[int, str] | None = None,
    allow_pickle: bool = False,
    id_column: str | None = None,
    genres_column: str | None = None,
) -> RawLabels:
    """Read a label file (or MM-IMDb folder) -> :class:`RawLabels`, one entry per row.

    ``text_field`` names the text column (falls back to overview/text/plot/... when absent); ``id_column`` and
    ``genres_column`` must exist when given. Posters are resolved relative to the label file's folder when they
    are relative paths.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"label file {path} does not exist")
    rows, columns = read_records(path, allow_pickle)
    if not rows:
        raise UserError(f"{path} holds no movies")
    if path.is_dir():
        path = path / "split.json"
    lower = {c.lower(): c for c in columns}
    if _is_poster_csv(columns, rows) and not genres_column:
        id_col = _column(lower, id_column, (columns[0].lower(),), "id", path, columns)
        genre_cols = columns[2:]
        ids = [str(r[id_col]).strip() for r in rows]
        genres = [[g for g in genre_cols if str(r[g]).strip() in ("1", "1.0")] for r in rows]
        posters = [str(path.parent / "Images" / f"{i}.jpg") for i in ids]
        return RawLabels(ids, [""] * len(ids), posters, genres, None, id_col, {})
    id_col = _column(lower, id_column, _ID_COLS, "id", path, columns)
    genre_col = _column(lower, genres_column, _GENRE_COLS, "genres", path, columns)
    if id_col is None or genre_col is None:
        raise UserError(
            f"{path} has columns {preview(columns, 12)}; expected an id column ({'/'.join(_ID_COLS)}) and a genres "
            f"column ({'/'.join(_GENRE_COLS)}), or the poster CSV layout (Id, Genre, one 0/1 column per genre); "
            "name them with --id-column and --genres-column"
        )
    text_col = (lower.get(text_field.lower()) if text_field else None) or _pick(lower, _TEXT_COLS)
    if text_col is None:
        log.warning("%s has no %r column (nor overview/text/plot); text models will see empty texts", path, text_field)
    poster_col = _pick(lower, _POSTER_COLS)
    split_col = lower.get("split")
    table = genre_ids if genre_ids is not None else TMDB_GENRES
    alt_cols = [] if id_column else [lower[c] for c in _ID_COLS if c in lower and lower[c] != id_col]
    ids, texts, posters, names, unknown_ids = [], [], [], [], Counter()
    for r in rows:
        ids.append(str(r.get(id_col, "")).strip())
        texts.append(str(r.get(text_col) or "") if text_col else "")
        p = str(r.get(poster_col) or "").strip() if poster_col else ""
        posters.append(str(path.parent / p) if p and not p.startswith(("http:", "https:")) else p)
        movie = []
        for item in _genre_items(r.get(genre_col)):
            name = _genre_name(item, table)
            if name is None:
                unknown_ids[str(item.get("id") if isinstance(item, dict) else item)] += 1
            elif name not in movie:
                movie.append(name)
        names.append(movie)
    alt_ids = {c: [str(r.get(c) or "").strip() for r in rows] for c in alt_cols}
    if unknown_ids:
        log.warning(
            "%s: %d genre ids not in the TMDB table are ignored (%s); pass a --genre-ids JSON to name them",
            path, sum(unknown_ids.values()), preview([f"{k} x{v}" for k, v in unknown_ids.most_common()]),
        )
    splits = None
    if split_col:
        raw = [str(r.get(split_col) or "").strip().lower() for r in rows]
        bad = sorted({s for s in raw if s not in _SPLITS})
        if bad:
            raise UserError(f"{path}: split column has values {preview(bad)}; use train, val or test")
        splits = [_SPLITS[s] for s in raw]
    return RawLabels(ids, texts, posters, names, splits, id_col, alt_ids)


def encode_genres(
    names: list[list[str]], genres: list[str] | None = None
) -> tuple[np.ndarray, list[str], Counter]:
    """Genre names per movie -> ``(n, G) uint8`` multi-hot, the genre order, and unknown-name counts.

    Names are matched case-insensitively (the first spelling seen names the genre). Without ``genres``
    the order is by frequency (descending), then name; with ``genres``, names outside it are counted, not encoded.
    """
    if genres is None:
        counts = Counter(g.casefold() for movie in names for g in movie)
        spelling: dict[str, str] = {}
        for g in (g for movie in names for g in movie):
            spelling.setdefault(g.casefold(), g)
        genres = sorted(spelling.values(), key=lambda g: (-counts[g.casefold()], g))
    col = {g.casefold(): j for j, g in enumerate(genres)}
    Y = np.zeros((len(names), len(genres)), np.uint8)
    unknown: Counter = Counter()
    for i, movie in enumerate(names):
        for g in movie:
            j = col.get(g.casefold())
            if j is None:
                unknown[g] += 1
            else:
                Y[i, j] = 1
    return Y, list(genres), unknown


def read_label_set(
    path: str | os.PathLike,
    text_field: str | None = "overview",
    genres: list[str] | None = None,
    genre_ids_path: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    id_column: str | None = None,
    genres_column: str | None = None,
) -> LabelSet:
    """Load, encode and clean a label file: duplicates, unknown genres and genre-less movies are reported and dropped."""
    raw = load_labels(path, text_field, load_genre_ids(genre_ids_path), allow_pickle, id_column, genres_column)
    Y, order, unknown = encode_genres(raw.names, genres)
    if unknown:
        log.warning(
            "%s: %d genre labels are not among the %d known genres and are ignored: %s",
            path, sum(unknown.values()), len(order), preview([f"{g} x{n}" for g, n in unknown.most_common()]),
        )
    keep, seen, dupes, empty = [], set(), [], []
    for i, movie_id in enumerate(raw.ids):
        if movie_id in seen:
            dupes.append(movie_id)
        elif not Y[i].any():
            empty.append(movie_id)
        else:
            keep.append(i)
        seen.add(movie_id)
    if dupes:
        log.warning("%s: %d duplicate ids, first occurrence kept: %s", path, len(dupes), preview(dupes))
    if empty:
        log.warning("%s: %d of %d movies have no known genre and are skipped: %s", path, len(empty), len(raw.ids),
                    preview(empty))
    if not keep:
        raise UserError(f"{path}: none of its {len(raw.ids)} movies has a known genre; check the genres column")
    labels = LabelSet(raw.ids, raw.texts, raw.posters, order, Y, raw.splits, str(path), raw.id_column,
                      raw.alt_ids).subset(keep)
    used = labels.Y.any(axis=0)
    if genres is None and not used.all():
        labels = replace(labels, genres=[g for g, u in zip(order, used) if u], Y=labels.Y[:, used])
    return labels
