"""Movie label files -> multi-hot genre matrix, joined to cached poster features by id.

Three layouts are read (CSV, JSON list, JSONL; pickle only when explicitly allowed):

* poster CSV: ``Id, Genre, <one 0/1 column per genre>``, posters at ``Images/<Id>.jpg``;
* TMDB-style records: ``id, title, overview, genres`` where genres are names, TMDB genre ids, a JSON
  list of either, or a list of ``{"id", "name"}`` objects, plus an optional poster path;
* plain records: ``id, text, genres`` (names separated by ``|``), optional image path and ``split``.

Genre order is saved with every model: the columns of ``Y`` follow ``LabelSet.genres``.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from extract.core.errors import UserError

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
class LabelSet:
    """Movies with their genres. ``Y`` is ``(n, G) uint8`` multi-hot, columns in ``genres`` order."""

    ids: list[str]
    texts: list[str]
    posters: list[str]
    genres: list[str]
    Y: np.ndarray
    splits: list[str] | None
    source: str

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray | list[int]) -> LabelSet:
        """The movies at ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            ids=[self.ids[r] for r in rows],
            texts=[self.texts[r] for r in rows],
            posters=[self.posters[r] for r in rows],
            Y=self.Y[rows],
            splits=None if self.splits is None else [self.splits[r] for r in rows],
        )


def _preview(items: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


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
    return [t.strip() for t in text.split(sep)] if sep else [text]


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


def _records_from_file(path: Path, allow_pickle: bool) -> tuple[list[dict], list[str]]:
    """Read rows as dicts; also return the column names as found."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
                return rows, list(reader.fieldnames or [])
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise UserError(f"{path}:{n}: not a JSON object ({exc.msg}); fix or remove that line") from None
        elif suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                lists = [v for v in raw.values() if isinstance(v, list)]
                raw = lists[0] if len(lists) == 1 else raw.get("movies", raw.get("results"))
            rows = raw
        elif suffix in (".pkl", ".pickle"):
            rows = _unpickle(path, allow_pickle)
        else:
            raise UserError(f"{path}: unknown label file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path}: expected a list of movie objects (one per movie)")
    columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
    return rows, columns


def _unpickle(path: Path, allow_pickle: bool) -> list[dict]:
    if not allow_pickle:
        raise UserError(
            f"{path} is a pickle, which runs code when loaded; convert it to CSV/JSONL, "
            "or pass --allow-pickle if you trust the file"
        )
    import pickle

    warnings.warn(f"unpickling {path}: this runs any code the file contains; only do it for files you trust", stacklevel=3)
    with open(path, "rb") as fh:
        obj = pickle.load(fh)
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict("records")
    return list(obj)


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _is_poster_csv(columns: list[str], rows: list[dict]) -> bool:
    if not ({"id", "genre"} <= {c.lower() for c in columns[:2]} and len(columns) > 2):
        return False
    return all(str(r.get(c, "")).strip() in ("0", "1", "0.0", "1.0") for r in rows[:50] for c in columns[2:])


def load_labels(
    path: str | os.PathLike,
    text_field: str = "overview",
    genre_ids: dict[int, str] | None = None,
    allow_pickle: bool = False,
) -> tuple[list[str], list[str], list[str], list[list[str]], list[str] | None]:
    """Read a label file -> (ids, texts, posters, genre names per movie, splits or None).

    Posters are resolved relative to the label file's folder when they are relative paths.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label file {path} does not exist")
    rows, columns = _records_from_file(path, allow_pickle)
    if not rows:
        raise UserError(f"{path} holds no movies")
    if _is_poster_csv(columns, rows):
        id_col, genre_cols = columns[0], columns[2:]
        ids = [str(r[id_col]).strip() for r in rows]
        genres = [[g for g in genre_cols if str(r[g]).strip() in ("1", "1.0")] for r in rows]
        posters = [str(path.parent / "Images" / f"{i}.jpg") for i in ids]
        return ids, [""] * len(ids), posters, genres, None
    lower = {c.lower(): c for c in columns}
    id_col = _pick(lower, _ID_COLS)
    genre_col = _pick(lower, _GENRE_COLS)
    if id_col is None or genre_col is None:
        raise UserError(
            f"{path} has columns {columns[:12]}; expected an id column ({'/'.join(_ID_COLS)}) and a genres column "
            f"({'/'.join(_GENRE_COLS)}), or the poster CSV layout (Id, Genre, one 0/1 column per genre)"
        )
    text_col = lower.get(text_field.lower()) or _pick(lower, _TEXT_COLS)
    if text_col is None:
        log.warning("%s has no %r column (nor overview/text); text models will see empty texts", path, text_field)
    poster_col = _pick(lower, _POSTER_COLS)
    split_col = lower.get("split")
    table = genre_ids if genre_ids is not None else TMDB_GENRES
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
    if unknown_ids:
        log.warning(
            "%s: %d genre ids not in the TMDB table are ignored (%s); pass a --genre-ids JSON to name them",
            path, sum(unknown_ids.values()), _preview([f"{k} x{v}" for k, v in unknown_ids.most_common()]),
        )
    splits = None
    if split_col:
        raw = [str(r.get(split_col) or "").strip().lower() for r in rows]
        bad = sorted({s for s in raw if s not in _SPLITS})
        if bad:
            raise UserError(f"{path}: split column has values {_preview(bad)}; use train, val or test")
        splits = [_SPLITS[s] for s in raw]
    return ids, texts, posters, names, splits


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
    text_field: str = "overview",
    genres: list[str] | None = None,
    genre_ids_path: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> LabelSet:
    """Load, encode and clean a label file: duplicates, unknown genres and genre-less movies are reported and dropped."""
    ids, texts, posters, names, splits = load_labels(path, text_field, load_genre_ids(genre_ids_path), allow_pickle)
    Y, order, unknown = encode_genres(names, genres)
    if unknown:
        log.warning(
            "%s: %d genre labels are not among the %d known genres and are ignored: %s",
            path, sum(unknown.values()), len(order), _preview([f"{g} x{n}" for g, n in unknown.most_common()]),
        )
    keep, seen, dupes, empty = [], set(), [], []
    for i, movie_id in enumerate(ids):
        if movie_id in seen:
            dupes.append(movie_id)
        elif not Y[i].any():
            empty.append(movie_id)
        else:
            keep.append(i)
        seen.add(movie_id)
    if dupes:
        log.warning("%s: %d duplicate ids, first occurrence kept: %s", path, len(dupes), _preview(dupes))
    if empty:
        log.warning("%s: %d of %d movies have no known genre and are skipped: %s", path, len(empty), len(ids), _preview(empty))
    if not keep:
        raise UserError(f"{path}: none of its {len(ids)} movies has a known genre; check the genres column")
    labels = LabelSet(ids, texts, posters, order, Y, splits, str(path)).subset(keep)
    used = labels.Y.any(axis=0)
    if genres is None and not used.all():
        labels = replace(labels, genres=[g for g, u in zip(order, used) if u], Y=labels.Y[:, used])
    return labels


def _path_keys(p: str) -> list[str]:
    """A path and every shorter tail of it, each with and without its extension (longest first)."""
    parts = PurePosixPath(p.replace("\\", "/")).parts
    keys = []
    for k in range(len(parts)):
        tail = "/".join(parts[k:])
        keys += [tail, str(PurePosixPath(tail).with_suffix(""))] if PurePosixPath(tail).suffix else [tail]
    return keys


def join_features(labels: LabelSet, feature_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Feature row of each movie, or -1; and the ids that did not join.

    A movie joins a feature id when its id, its poster path, or any tail of its poster path (with or
    without extension) equals a tail of the feature id (the image path relative to the image root),
    e.g. id ``"42"`` or poster ``movies/posters/42.jpg`` both join feature id ``"42.jpg"``. A key that
    matches several feature ids is ambiguous and skipped.
    """
    index: dict[str, int] = {}
    for row, fid in enumerate(feature_ids):
        for key in dict.fromkeys(_path_keys(fid)):
            index[key] = row if index.get(key, row) == row else -1
    for row, fid in enumerate(feature_ids):  # an exact id always wins over a shared tail
        index[fid] = row
    rows = np.full(len(labels), -1, np.int64)
    for i, (movie_id, poster) in enumerate(zip(labels.ids, labels.posters)):
        for key in [movie_id, *(_path_keys(poster) if poster else [])]:
            if index.get(key, -1) >= 0:
                rows[i] = index[key]
                break
    missing = [labels.ids[i] for i in np.flatnonzero(rows < 0)]
    return rows, missing


def joined(labels: LabelSet, feature_ids: list[str]) -> tuple[LabelSet, np.ndarray]:
    """Keep the movies that have poster features; warn with the count and the first missing ids."""
    rows, missing = join_features(labels, feature_ids)
    if missing:
        log.warning(
            "%d of %d movies have no poster features and are skipped: %s",
            len(missing), len(labels), _preview(missing),
        )
    keep = np.flatnonzero(rows >= 0)
    if keep.size == 0:
        raise UserError(
            f"none of the {len(labels)} movies in {labels.source} joins the {len(feature_ids)} feature ids "
            f"(movie ids look like {_preview(labels.ids, 3)}, feature ids like {_preview(list(feature_ids), 3)}); "
            "extract features from the poster folder the label file points to"
        )
    return labels.subset(keep), rows[keep]
