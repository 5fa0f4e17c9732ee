"""Save and load an index folder: ``index.faiss`` plus the ``index.json`` sidecar that says how it was made.

The sidecar records the factory string, metric, normalisation, N, d, build time, default search
parameters, the feature file's path, fingerprint and extraction config, and the size and sha256 of every
data file in the folder (``index.faiss``, and ``index.ivfdata`` for on-disk inverted lists).

The folder is written as one unit: everything goes into a hidden staging folder beside it, is fsynced,
and the staging folder then takes the old one's place in a single rename (an atomic exchange where the
kernel offers one). The feature-file and query-model checks are :mod:`extract.compat`'s. Loading checks the sidecar's fields and types, the data files' sizes and checksums,
and the index against the sidecar, so a half-written, mixed or damaged folder is refused, never searched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from extract.compat import FeatureIdentity, check_same_file, check_same_space
from extract.core.errors import UserError
from extract.core.files import fsync_dir, locked
from extract.core.hashing import sha256_file
from indexes.params import set_search_params

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index.json"
IVFDATA_FILE = "index.ivfdata"
DATA_FILES = (INDEX_FILE, IVFDATA_FILE)
FORMAT_VERSION = 2
_OWN_FILES = {INDEX_FILE, SIDECAR_FILE, IVFDATA_FILE}
# field -> type(s) it must have in index.json (bool is not an int here, "1280" is not a number)
_FIELDS = {"factory": str, "metric": str, "normalize": bool, "n": int, "d": int, "features": dict, "files": dict}
_OPTIONAL = {"search_params": dict, "calibration": (dict, type(None)), "build_seconds": (int, float)}
_FEATURE_FIELDS = {"path": str, "fingerprint": str}


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


def rebuild_hint(folder: str | os.PathLike, meta: dict | None = None) -> str:
    """The command that rebuilds ``folder`` (with the feature file the sidecar names, when it is readable)."""
    feats = (meta or {}).get("features") if isinstance(meta, dict) else None
    path = feats.get("path") if isinstance(feats, dict) and isinstance(feats.get("path"), str) else "FEATURES.h5"
    return f"`cli.py index build {path} {folder}`"


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Refuse, before any work, an output folder that cannot be written or that holds files of other kinds.

    The folder is replaced as a whole when the index is saved, so a folder with anything but an index's own
    files in it is refused rather than emptied.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; pass a folder for the index")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in _OWN_FILES)
        if others:
            raise UserError(f"{out} holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                            "the index folder is replaced whole, so pass a new or empty folder")
    parent = out.resolve().parent
    probe_dir = parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write the index folder {out}: {probe_dir} is not writable ({exc.strerror}); "
                        "pass an OUT_DIR in a folder you can write to") from None
    return out


def _file_entry(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where the kernel cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(staging: Path, out: Path) -> None:
    """Put the complete ``staging`` folder at ``out`` in one step; the old folder (if any) is then removed."""
    if not out.exists():
        os.replace(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging)  # now holds the old index
    else:  # no atomic exchange: rename the old folder aside first; a kill between leaves it under .old
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


def save_index(index, meta: dict, out_dir: str | os.PathLike, ivfdata: str | os.PathLike | None = None) -> Path:
    """Write ``OUT_DIR/index.faiss`` + ``OUT_DIR/index.json`` as one unit; returns ``OUT_DIR``.

    ``ivfdata`` is the on-disk inverted-list file an index with ``OnDiskInvertedLists`` refers to; it is
    moved into the folder as ``index.ivfdata`` (and found there at load time).
    """
    import faiss

    out = check_writable(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.new")
    with locked(out.with_name(f".{out.name}.lock")):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            meta = dict(meta, format_version=FORMAT_VERSION)
            feats = dict(meta["features"])
            feats["relpath"] = os.path.relpath(feats["path"], out.resolve())
            meta["features"] = feats
            if ivfdata is not None:
                os.replace(ivfdata, staging / IVFDATA_FILE)
            faiss.write_index(index, str(staging / INDEX_FILE))
            meta["files"] = {name: _file_entry(staging / name) for name in DATA_FILES if (staging / name).exists()}
            (staging / SIDECAR_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n",
                                                encoding="utf-8")
            for name in meta["files"]:
                _fsync(staging / name)
            _fsync(staging / SIDECAR_FILE)
            fsync_dir(staging)
            _swap_in(staging, out)
        except (OSError, RuntimeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc).strip().splitlines() or ["error"])[-1]
            raise UserError(f"cannot write the index folder {out} ({why}); free space or pass another OUT_DIR; "
                            "the previous index, if any, is unchanged") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _type_name(t) -> str:
    names = {str: "a string", bool: "true/false", int: "an integer", float: "a number", dict: "an object",
             type(None): "null"}
    return " or ".join(names[x] for x in (t if isinstance(t, tuple) else (t,)))


def _bad_field(where: str, key: str, value, want) -> str | None:
    types = want if isinstance(want, tuple) else (want,)
    ok = any(type(value) is t or (t is dict and isinstance(value, dict)) for t in types)
    if ok:
        return None
    shown = "null" if value is None else f"the string {value!r}" if isinstance(value, str) else json.dumps(value)[:40]
    return f"{where}{key!r} must be {_type_name(want)}, found {shown}"


def validate_sidecar(meta, side: Path) -> dict:
    """Check the fields and types of a parsed sidecar; a problem is a one-line :class:`UserError`."""
    folder = side.parent
    if not isinstance(meta, dict):
        raise UserError(f"{side} is not a JSON object; rebuild the index with {rebuild_hint(folder)}")
    missing = [k for k in _FIELDS if k not in meta]
    if missing == ["files"] and meta.get("format_version", 1) < FORMAT_VERSION:
        raise UserError(f"{side} was written by an older buscador without file checksums; "
                        f"rebuild the index with {rebuild_hint(folder, meta)}")
    if missing:
        raise UserError(f"{side} lacks {', '.join(missing)}; rebuild the index with {rebuild_hint(folder, meta)}")
    problems = [_bad_field("", k, meta[k], t) for k, t in _FIELDS.items()]
    problems += [_bad_field("", k, meta[k], t) for k, t in _OPTIONAL.items() if k in meta]
    if isinstance(meta["features"], dict):
        problems += [f"'features' lacks {k!r}" if k not in meta["features"] else
                     _bad_field("features.", k, meta["features"][k], t) for k, t in _FEATURE_FIELDS.items()]
    if isinstance(meta["files"], dict):
        if INDEX_FILE not in meta["files"]:
            problems.append(f"'files' lacks {INDEX_FILE!r}")
        for name, entry in meta["files"].items():
            if not isinstance(entry, dict):
                problems.append(_bad_field("files.", name, entry, dict))
                continue
            problems += [_bad_field(f"files.{name}.", k, entry.get(k), t) for k, t in (("size", int), ("sha256", str))]
    problems = [p for p in problems if p]
    if not problems and meta["metric"] not in ("cosine", "ip", "l2"):
        problems.append(f"'metric' must be cosine, ip or l2, found {meta['metric']!r}")
    if not problems and (meta["n"] < 0 or meta["d"] <= 0):
        problems.append(f"'n' and 'd' must be positive, found {meta['n']} x {meta['d']}")
    if problems:
        raise UserError(f"{side}: {problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                        f"rebuild the index with {rebuild_hint(folder, meta)}")
    return meta


def read_sidecar(index_dir: str | os.PathLike) -> dict:
    """The parsed, validated ``index.json`` of an index folder; missing or malformed is a :class:`UserError`."""
    folder = Path(index_dir)
    side = folder / SIDECAR_FILE
    if not side.is_file():
        if not folder.exists():
            raise UserError(f"index folder {folder} does not exist; build it with {rebuild_hint(folder)}")
        raise UserError(f"{side} is missing; rebuild the index with {rebuild_hint(folder)}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{side} is not valid JSON ({exc}); rebuild the index with {rebuild_hint(folder)}") from None
    except OSError as exc:
        raise UserError(f"cannot read {side} ({exc.strerror})") from None
    return validate_sidecar(meta, side)


def verify_files(folder: str | os.PathLike, meta: dict) -> None:
    """Refuse data files whose size or sha256 differ from the sidecar's (damaged, or from another build)."""
    folder = Path(folder)
    for name, entry in meta["files"].items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path} is missing; rebuild the index with {rebuild_hint(folder, meta)}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise UserError(f"{path} is {size} bytes but {SIDECAR_FILE} says {entry['size']}: the file is damaged or "
                            f"from another build; rebuild the index with {rebuild_hint(folder, meta)}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"{path} has sha256 {digest[:16]} but {SIDECAR_FILE} says {entry['sha256'][:16]}: its bytes "
                            f"changed after the build; rebuild the index with {rebuild_hint(folder, meta)}")


def load_index(index_dir: str | os.PathLike, mmap: bool = True, verify: bool = True) -> LoadedIndex:
    """Read an index folder. With ``mmap`` the vectors/codes are memory-mapped where faiss supports it;
    on-disk lists (``index.ivfdata``) are always mapped, read-only.

    The data files are checked against the sidecar's sizes and checksums first (``verify``), and the
    search parameters recorded at build time (``nprobe``/``efSearch``) are applied.
    """
    import faiss

    folder = Path(index_dir)
    meta = read_sidecar(folder)
    path = folder / INDEX_FILE
    if verify:
        verify_files(folder, meta)
    elif not path.is_file():
        raise UserError(f"{path} is missing; rebuild the index with {rebuild_hint(folder, meta)}")
    on_disk = IVFDATA_FILE in meta["files"]
    # on-disk lists: read their offsets only, then map the folder's own index.ivfdata (indexes.ondisk.map_lists)
    flags = faiss.IO_FLAG_SKIP_IVF_DATA if on_disk else 0
    index = None
    if mmap:
        try:
            index = faiss.read_index(str(path), flags | faiss.IO_FLAG_MMAP | getattr(faiss, "IO_FLAG_MMAP_IFC", 0)
                                     | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            log.debug("faiss cannot memory-map %s; reading it whole", path)
    if index is None:
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            why = (str(exc).strip().splitlines() or ["unreadable"])[-1]
            raise UserError(f"{path} is not a readable faiss index ({why}); rebuild it with {rebuild_hint(folder, meta)}") from None
    if on_disk:
        from indexes.ondisk import map_lists

        map_lists(index, folder / IVFDATA_FILE)
    if index.ntotal != meta["n"] or index.d != meta["d"]:
        raise UserError(
            f"{path} holds {index.ntotal} x {index.d} vectors but {SIDECAR_FILE} says {meta['n']} x {meta['d']}; "
            f"the folder mixes two builds, rebuild it with {rebuild_hint(folder, meta)}"
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
