"""Label files -> rows (one dict per movie) and their column names, whatever the container.

* ``.csv``, ``.tsv``, ``.json`` (a list, or one list inside an object), ``.jsonl``, each optionally gzipped
  (``.csv.gz``, ...);
* ``.pkl`` / ``.pickle`` (a list of dicts, e.g. TMDB API results with ``overview``, ``title``, ``genre_ids``; or a
  pandas DataFrame): only with ``allow_pickle``, because unpickling runs code from the file;
* an MM-IMDb folder (or its ``split.json``): ``split.json`` maps train/dev/test to movie ids, and
  ``dataset/<id>.json`` holds ``plot`` (a list of texts; the first is used) and ``genres`` beside the poster
  ``dataset/<id>.jpeg``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import warnings
from pathlib import Path

from extract.core.errors import UserError

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
PICKLE_SUFFIXES = (".pkl", ".pickle")


def _suffix(path: Path) -> tuple[str, bool]:
    """The format suffix (``.csv`` for ``x.csv.gz``) and whether the file is gzipped."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return (suffixes[-2] if len(suffixes) > 1 else ""), True
    return (suffixes[-1] if suffixes else ""), False


def _open_text(path: Path, gz: bool):
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def _mmimdb_root(path: Path) -> Path | None:
    if path.is_dir() and (path / "split.json").is_file():
        return path
    if path.name == "split.json" and path.is_file():
        return path.parent
    return None


def read_records(path: Path, allow_pickle: bool = False) -> tuple[list[dict], list[str]]:
    """Rows as dicts and the column names as found (first 1,000 rows)."""
    root = _mmimdb_root(path)
    if root is not None:
        rows = read_mmimdb(root)
        return rows, ["id", "plot", "genres", "poster", "split"]
    suffix, gz = _suffix(path)
    try:
        if suffix in (".csv", ".tsv"):
            with _open_text(path, gz) as fh:
                reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
                rows = list(reader)
                return rows, list(reader.fieldnames or [])
        if suffix == ".jsonl":
            rows = []
            with _open_text(path, gz) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as exc:
                            raise UserError(f"{path}:{n}: not a JSON object ({exc.msg}); fix or remove that line") from None
        elif suffix == ".json":
            with _open_text(path, gz) as fh:
                raw = json.load(fh)
            if isinstance(raw, dict):
                lists = [v for v in raw.values() if isinstance(v, list)]
                raw = lists[0] if len(lists) == 1 else raw.get("movies", raw.get("results"))
            rows = raw
        elif suffix in PICKLE_SUFFIXES and not gz:
            rows = _unpickle(path, allow_pickle)
        else:
            raise UserError(f"{path}: unknown label file type; use .csv, .tsv, .json or .jsonl (optionally .gz), "
                            ".pkl with --allow-pickle, or an MM-IMDb folder with split.json")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
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
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except (pickle.UnpicklingError, AttributeError, ImportError, IndexError) as exc:
        raise UserError(f"cannot unpickle {path} ({type(exc).__name__}: {exc})") from None
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict("records")
    rows = list(obj) if isinstance(obj, (list, tuple)) else obj
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows) and not any("id" in r for r in rows[:1000]):
        # TMDB result lists saved without ids: number the movies by position, as the seed notebooks do
        rows = [{"id": str(i), **r} for i, r in enumerate(rows)]
    return rows


def read_mmimdb(root: Path) -> list[dict]:
    """MM-IMDb movies as rows ``{id, plot, genres, poster, split}`` (``dev`` becomes the validation split)."""
    try:
        split = json.loads((root / "split.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {root / 'split.json'}: {exc}") from None
    if not isinstance(split, dict):
        raise UserError(f"{root / 'split.json'}: expected {{'train': [ids], 'dev': [ids], 'test': [ids]}}")
    data = root / "dataset" if (root / "dataset").is_dir() else root
    rows, missing = [], []
    for name, ids in split.items():
        for movie_id in ids:
            movie_id = str(movie_id)
            meta = data / f"{movie_id}.json"
            try:
                raw = json.loads(meta.read_text(encoding="utf-8"))
            except FileNotFoundError:
                missing.append(movie_id)
                continue
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"cannot read {meta}: {exc}") from None
            plot = raw.get("plot") or ""
            if isinstance(plot, list):
                plot = plot[0] if plot else ""
            poster = next((str(p) for p in (data / f"{movie_id}.jpeg", data / f"{movie_id}.jpg") if p.is_file()), "")
            rows.append({"id": movie_id, "plot": str(plot), "genres": list(raw.get("genres") or []),
                         "poster": poster, "split": name})
    if missing:
        log.warning("%s: %d movies of split.json have no dataset/<id>.json and are skipped (first: %s)",
                    root, len(missing), ", ".join(missing[:5]))
    return rows
