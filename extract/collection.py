"""What a (re-)run of extraction must do: the listed images against what the output file already holds.

Every stored row records its source image's size, mtime and sha256 (:mod:`extract.store`). A re-run
extracts new images, re-extracts images whose bytes changed (size or mtime differ and the sha256 too),
retries failed images whose file changed, and reports rows whose file is gone (dropped with ``--prune``).
The checks here need no model, so a run with nothing to do never loads one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from extract.core.errors import UserError
from extract.core.hashing import sha256_file
from extract.fingerprints import recorded
from extract.images import ImageList
from extract.parts import StoredState
from extract.store import NO_SOURCE, SourceStat, storable_id

BAD_NAME = "file name is not valid UTF-8; rename the file to extract it"


def source_stat(path: str | os.PathLike) -> SourceStat:
    """``(size, mtime_ns, sha256)`` of a source image, or ``(-1, -1, "")`` when it cannot be read."""
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns), sha256_file(path)
    except OSError:
        return NO_SOURCE


def read_source(path: str | os.PathLike) -> tuple[bytes | None, SourceStat]:
    """A source image's bytes (read once, for hashing and decoding both) and its ``(size, mtime_ns, sha256)``.

    ``(None, (-1, -1, ""))`` when it cannot be read; the decoder then names the fault from the path.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None, NO_SOURCE
    return data, (len(data), int(st.st_mtime_ns), hashlib.sha256(data).hexdigest())


@dataclass
class Plan:
    """The listed ids sorted by what this run does with them (each list in listing order)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # stored rows whose image changed: extracted again
    retry: list[str] = field(default_factory=list)  # failed images whose file changed: tried again
    unchanged: int = 0
    gone: list[str] = field(default_factory=list)  # stored ids whose file no longer exists
    bad_names: list[tuple[str, str]] = field(default_factory=list)  # (storable id, reason), recorded as failed

    @property
    def todo(self) -> list[str]:
        return self.new + self.changed + self.retry


def plan_run(listing: ImageList, ids: list[str], state: StoredState) -> Plan:
    """Compare ``ids`` (a prefix of ``listing`` with ``--limit``) with the stored ``state``."""
    plan = Plan()
    for i in ids:
        sid = storable_id(i)
        if sid != i:
            if sid in state.entries:
                plan.unchanged += 1
            else:
                plan.bad_names.append((sid, BAD_NAME))
            continue
        entry = state.entries.get(i)
        if entry is None:
            plan.new.append(i)
            continue
        (size, mtime_ns, sha), ok = entry
        if size < 0:  # recorded before sources were: nothing to compare with
            plan.unchanged += 1
            continue
        try:
            st = os.stat(listing.root / i)
            same = (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
        except OSError:
            same = False
        if same or (sha and source_stat(listing.root / i)[2] == sha):
            plan.unchanged += 1
        else:
            (plan.changed if ok else plan.retry).append(i)
    listed = {storable_id(i) for i in listing.ids}
    plan.gone = [i for i in state.entries if i not in listed and not (listing.root / i).exists()]
    return plan


def check_root(state: StoredState, listing: ImageList, out: Path) -> None:
    """Refuse to add images under another image root: ids are paths relative to the root."""
    old = (state.config or {}).get("image_root")
    new = str(listing.root.resolve())
    if old and old != new:
        raise UserError(f"{state.where} holds ids relative to the image root {old} but this run's root is {new}; "
                        f"pass --root {old} to add to {out.name}, or write to another output file")


def check_options(state: StoredState, model: str, weights: str, image_size: int | None,
                  dtype: str = "float32") -> None:
    """Without loading a model: refuse options that differ from the stored ones (model, weights, size, dtype)."""
    cfg = state.config
    if cfg is None:
        return
    kind = weights if weights in ("imagenet", "none") else "file"
    asked = {"model": model, "weights": kind, "dtype": dtype}
    if image_size is not None:
        asked["image_size"] = int(image_size)
    for key, value in asked.items():
        theirs = recorded(cfg, key)
        if theirs is not None and theirs != value:
            raise UserError(f"{state.where} was made with {key}={theirs!r} but this run has {key}={value!r}; "
                            "use the same options to resume, or pass another output file")


def calibration_files(root: Path, ids: list[str]) -> dict[str, str]:
    """sha256 of each BatchNorm calibration image, so a resume can tell when they changed."""
    return {i: source_stat(root / i)[2] for i in ids}


def check_calibration(config: dict, root: Path) -> None:
    """Refuse to rebuild a random-init network whose calibration images changed or are gone, naming them."""
    recorded = config.get("bn_calibration_files") or {}
    gone = [i for i in config.get("bn_calibration_ids") or [] if not (root / i).is_file()]
    changed = [i for i, sha in recorded.items() if i not in gone and source_stat(root / i)[2] != sha]
    if gone or changed:
        what = "; ".join(x for x in (
            f"{len(changed)} changed ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})" if changed else "",
            f"{len(gone)} are gone ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''})" if gone else "") if x)
        n = len(config.get("bn_calibration_ids") or [])
        raise UserError(f"with --weights none the network is calibrated on {n} images under {root}, and {what} since "
                        "the features were made: the new rows would come from another network. Restore those images, "
                        "or extract into another output file")
