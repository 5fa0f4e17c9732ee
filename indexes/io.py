"""Save and load an index directory: ``index.faiss`` plus the ``index.json`` sidecar that says how it was made.

The sidecar records the factory string, metric, normalisation, N, d, build time, default search
parameters, and the feature file's path, fingerprint (content + config) and extraction config. Loading
checks the index against its sidecar, against the feature file (same fingerprint) and against the query
model (same dimension and extraction model), and refuses a mismatch naming both values.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from extract.compat import FeatureIdentity, check_same_file, check_same_space
from extract.core.errors import UserError
from extract.core.files import atomic_path
from indexes.params import set_search_params

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index.json"
FORMAT_VERSION = 1
_REQUIRED = ("factory", "metric", "normalize", "n", "d", "features")


@dataclass
class LoadedIndex:
    """An index read from disk, its sidecar, and the directory it came from."""

    index: object
    meta: dict
    path: Path

    @property
    def features_path(self) -> Path:
        """The feature file the index was built from (relative paths resolve against the index folder)."""
        feats = self.meta["features"]
        rel = feats.get("relpath")
        if rel and (self.path / rel).exists():
            return (self.path / rel).resolve()
        return Path(feats["path"])


def save_index(index, meta: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``OUT_DIR/index.faiss`` and ``OUT_DIR/index.json`` atomically; returns ``OUT_DIR``."""
    import faiss

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, format_version=FORMAT_VERSION)
    feats = dict(meta["features"])
    feats["relpath"] = os.path.relpath(feats["path"], out.resolve())
    meta["features"] = feats
    with atomic_path(out / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(out / SIDECAR_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return out


def read_sidecar(index_dir: str | os.PathLike) -> dict:
    """The parsed ``index.json`` of an index folder; missing or malformed is a :class:`UserError`."""
    folder = Path(index_dir)
    side = folder / SIDECAR_FILE
    if not side.is_file():
        if not folder.exists():
            raise UserError(f"index folder {folder} does not exist; build it with `cli.py index build FEATURES.h5 {folder}`")
        raise UserError(f"{side} is missing; rebuild the index with `cli.py index build FEATURES.h5 {folder}`")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{side} is not valid JSON ({exc}); rebuild the index") from None
    missing = [k for k in _REQUIRED if k not in meta] if isinstance(meta, dict) else list(_REQUIRED)
    if missing:
        raise UserError(f"{side} lacks {', '.join(missing)}; rebuild the index")
    return meta


def load_index(index_dir: str | os.PathLike, mmap: bool = True) -> LoadedIndex:
    """Read an index folder. With ``mmap`` the vectors/codes are memory-mapped where faiss supports it.

    The search parameters recorded at build time (``nprobe``/``efSearch``) are applied.
    """
    import faiss

    folder = Path(index_dir)
    meta = read_sidecar(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing; rebuild the index with `cli.py index build FEATURES.h5 {folder}`")
    index = None
    if mmap:
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            log.debug("faiss cannot memory-map %s; reading it whole", path)
    if index is None:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            why = (str(exc).strip().splitlines() or ["unreadable"])[-1]
            raise UserError(f"{path} is not a readable faiss index ({why}); rebuild it") from None
    if index.ntotal != meta["n"] or index.d != meta["d"]:
        raise UserError(
            f"{path} holds {index.ntotal} x {index.d} vectors but {SIDECAR_FILE} says {meta['n']} x {meta['d']}; "
            "the folder mixes two builds, rebuild it"
        )
    if meta.get("search_params"):
        set_search_params(index, meta["search_params"])
    return LoadedIndex(index, meta, folder)


def check_features(meta: dict, fingerprint: str, path: str | os.PathLike) -> None:
    """Refuse a feature file whose fingerprint differs from the one the index was built from."""
    other = {"path": str(path), "fingerprint": fingerprint}
    check_same_file(meta["features"], other, "the index",
                    f"rebuild the index with `cli.py index build {path} INDEX_DIR`, or pass the matching feature file")


def check_query_model(meta: dict, model_config: dict, dim: int | None = None, what: str = "the query model") -> None:
    """Refuse a query encoder whose output dimension, image model, weights or preprocessing differ from the index.

    ``model_config`` is the encoder's config (its training features as recorded by :mod:`extract.compat`);
    ``dim`` overrides the dimension it records. A different feature file of the same space (a regressor
    trained on other images of the same backbone) is fine.
    """
    made_from = FeatureIdentity.from_model_config(model_config)
    if dim is None and made_from is not None:
        dim = made_from.dim
    if dim is not None and int(dim) != int(meta["d"]):
        raise UserError(f"{what} outputs {dim}-d vectors but the index holds {meta['d']}-d ones; "
                        "use a model trained on the same image features, or rebuild the index")
    if made_from is not None:
        check_same_space(made_from, meta["features"], f"{what} was trained on", "the index",
                         "use a model trained on features of the same backbone, or rebuild the index from such features")
    metric = model_config.get("metric")
    if metric is not None and metric != meta["metric"]:
        raise UserError(f"{what} is meant to be compared by {metric} but the index uses {meta['metric']}; "
                        f"rebuild the index with --metric {metric}")
