"""Labels to poster feature rows: the join on ids, poster paths and file stems, over the best id column."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import numpy as np

from extract.core.errors import UserError
from retrieval.genre.labels import LabelSet

log = logging.getLogger(__name__)


def preview(items: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (f", ... ({len(items) - k} more)" if len(items) > k else "")


def _path_keys(p: str) -> list[str]:
    """A path and every shorter tail of it, each with and without its extension (longest first)."""
    parts = PurePosixPath(p.replace("\\", "/")).parts
    keys = []
    for k in range(len(parts)):
        tail = "/".join(parts[k:])
        keys += [tail, str(PurePosixPath(tail).with_suffix(""))] if PurePosixPath(tail).suffix else [tail]
    return keys


def _feature_index(feature_ids: list[str]) -> dict[str, int]:
    """Every tail of every feature id (with and without extension) -> its row; -1 where a key is ambiguous."""
    index: dict[str, int] = {}
    for row, fid in enumerate(feature_ids):
        for key in dict.fromkeys(_path_keys(fid)):
            index[key] = row if index.get(key, row) == row else -1
    for row, fid in enumerate(feature_ids):  # an exact id always wins over a shared tail
        index[fid] = row
    return index


def _join_rows(ids: list[str], posters: list[str], index: dict[str, int]) -> np.ndarray:
    rows = np.full(len(ids), -1, np.int64)
    for i, (movie_id, poster) in enumerate(zip(ids, posters)):
        keys = [movie_id, *(_path_keys(movie_id) if movie_id else []), *(_path_keys(poster) if poster else [])]
        for key in keys:
            if index.get(key, -1) >= 0:
                rows[i] = index[key]
                break
    return rows


def join_features(labels: LabelSet, feature_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Feature row of each movie, or -1; and the ids that did not join.

    A movie joins a feature id when its id or its poster path, or any tail of either (with or without its
    extension, so on the file stem), equals a tail of the feature id (the image path relative to the image
    root): id ``"42"``, id ``"posters/42.png"`` or poster ``movies/posters/42.jpg`` all join feature id
    ``"42.jpg"``. A key that matches several feature ids is ambiguous and skipped.
    """
    rows = _join_rows(labels.ids, labels.posters, _feature_index(list(feature_ids)))
    missing = [labels.ids[i] for i in np.flatnonzero(rows < 0)]
    return rows, missing


def best_id_column(labels: LabelSet, feature_ids: list[str]) -> LabelSet:
    """``labels`` identified by whichever id column (its own or one of ``alt_ids``) joins most feature ids."""
    if not labels.alt_ids:
        return labels
    index = _feature_index(list(feature_ids))
    counts = {labels.id_column: int((_join_rows(labels.ids, labels.posters, index) >= 0).sum())}
    for name, values in labels.alt_ids.items():
        counts[name] = int((_join_rows(values, [""] * len(values), index) >= 0).sum())
    best = max(counts, key=lambda c: (counts[c], c == labels.id_column))
    if best != labels.id_column and counts[best] > counts[labels.id_column]:
        log.info("joining poster features on column %r (%d movies) rather than %r (%d)", best, counts[best],
                 labels.id_column, counts[labels.id_column])
        return labels.with_id_column(best)
    return labels


def _no_join_message(labels: LabelSet, feature_ids: list[str]) -> str:
    sides = [f"{labels.id_column}: {preview(labels.ids, 3)}"]
    sides += [f"{name}: {preview(values, 3)}" for name, values in labels.alt_ids.items()]
    posters = [p for p in labels.posters if p]
    if posters:
        sides.append(f"poster paths: {preview(posters, 2)}")
    return (
        f"none of the {len(labels)} movies in {labels.source} joins the {len(feature_ids)} feature ids; "
        f"candidate id columns {'; '.join(sides)}; feature ids look like {preview(list(feature_ids), 3)}. "
        "Pick the column named like the images with --id-column, or extract features from the poster folder "
        "the label file points to"
    )


def joined(labels: LabelSet, feature_ids: list[str]) -> tuple[LabelSet, np.ndarray]:
    """Keep the movies that have poster features (joined on the best id column); warn with the count and the
    first missing ids."""
    labels = best_id_column(labels, feature_ids)
    rows, missing = join_features(labels, feature_ids)
    keep = np.flatnonzero(rows >= 0)
    if keep.size == 0:
        raise UserError(_no_join_message(labels, feature_ids))
    if missing:
        log.warning(
            "%d of %d movies have no poster features and are skipped: %s",
            len(missing), len(labels), preview(missing),
        )
    return labels.subset(keep), rows[keep]
