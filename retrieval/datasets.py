"""Caption files, splits, and their join to a feature file.

Caption formats:

- tab-separated ``image_id<TAB>caption``, one caption per line, several lines per image
  (``<split>_captions.txt``); blank lines are skipped, a line without a tab is an error naming file:line;
- COCO-style JSON (``captions_<split>.json``): ``images`` (``id``, ``file_name``) and ``annotations``
  (``image_id``, ``caption``); the image id used is ``file_name``.

A split's gallery — the images a caption is ranked among — is the split's ``<split>_images_names.txt``
when it sits beside the captions, else the distinct images its captions name. Caption ids are matched
to feature-file ids exactly, or else by a unique file name (``00012.jpg`` matches ``train/00012.jpg``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.core.errors import UserError

log = logging.getLogger(__name__)

_TXT = re.compile(r"^(?P<split>.+)_captions\.txt$")
_JSON = re.compile(r"^captions_(?P<split>.+)\.json$")


@dataclass(frozen=True)
class Captions:
    """Captions of one split: ``ids[i]`` is the image that ``texts[i]`` describes."""

    split: str
    path: Path
    ids: list[str]
    texts: list[str]
    gallery: list[str] | None = None  # explicit image list, when the split has one


@dataclass(frozen=True)
class SplitData:
    """A split joined to a feature file: caption ``i`` describes feature row ``gallery_rows[gt[i]]``."""

    name: str
    texts: list[str]
    gt: np.ndarray  # (n,) int64 index into gallery_rows
    gallery_rows: np.ndarray  # (m,) int64 feature-file rows
    missing: int = 0

    @property
    def image_rows(self) -> np.ndarray:
        """Feature row of each caption's image: ``(n,) int64``."""
        return self.gallery_rows[self.gt]


def _read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserError(f"{path}:{lineno}: expected 'image_id<TAB>caption', got {line[:60]!r}")
        image_id, text = line.split("\t", 1)
        if not image_id.strip():
            raise UserError(f"{path}:{lineno}: empty image id")
        ids.append(image_id.strip())
        texts.append(text.strip())
    return ids, texts


def _read_coco(path: Path) -> tuple[list[str], list[str]]:
    try:
        data = json.loads("\n".join(_read_lines(path)))
        names = {img["id"]: img["file_name"] for img in data["images"]}
        pairs = [(names[a["image_id"]], a["caption"].strip()) for a in data["annotations"]]
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not COCO captions JSON (needs images[id, file_name] and annotations[image_id, caption]; "
                        f"missing {exc})") from None
    return [p[0] for p in pairs], [p[1] for p in pairs]


def read_captions(path: str | os.PathLike, split: str | None = None) -> Captions:
    """Read a caption file (TSV or COCO JSON by extension); ``split`` defaults to the name in the file name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"caption file {path} does not exist")
    ids, texts = _read_coco(path) if path.suffix == ".json" else _read_tsv(path)
    split = split or split_name(path) or path.stem
    names = path.with_name(f"{split}_images_names.txt")
    gallery = [s.strip() for s in _read_lines(names) if s.strip()] if names.is_file() else None
    return Captions(split, path, ids, texts, gallery)


def split_name(path: Path) -> str | None:
    """``train`` for ``train_captions.txt`` or ``captions_train.json``; ``None`` for other names."""
    m = _TXT.match(path.name) or _JSON.match(path.name)
    return m.group("split") if m else None


def find_splits(sources: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Map split name -> caption file from folders (all ``<split>_captions.txt`` / ``captions_<split>.json``
    in them; TSV wins when both exist), files named that way, or ``NAME=PATH`` items."""
    found: dict[str, Path] = {}
    for src in sources:
        text = str(src)
        if "=" in text and not Path(text).exists():
            name, file = text.split("=", 1)
            found[name] = Path(file)
            continue
        p = Path(text)
        if p.is_dir():
            files = sorted(p.glob("captions_*.json")) + sorted(p.glob("*_captions.txt"))
            if not files:
                raise UserError(f"{p} holds no <split>_captions.txt or captions_<split>.json files")
            for f in files:
                found[split_name(f)] = f
        elif p.is_file():
            name = split_name(p)
            if name is None:
                raise UserError(f"cannot tell the split of {p}; name it <split>_captions.txt or pass NAME={p}")
            found[name] = p
        else:
            raise UserError(f"caption source {p} does not exist")
    for name, f in found.items():
        if not f.is_file():
            raise UserError(f"caption file {f} for split {name!r} does not exist")
    return found


def _resolver(feature_ids: Sequence[str]):
    exact = {i: r for r, i in enumerate(feature_ids)}
    by_name: dict[str, int] = {}
    dupes: set[str] = set()
    for r, i in enumerate(feature_ids):
        base = i.rsplit("/", 1)[-1]
        if base in by_name:
            dupes.add(base)
        by_name[base] = r
    for base in dupes:
        del by_name[base]

    def resolve(image_id: str) -> int | None:
        r = exact.get(image_id)
        return r if r is not None else by_name.get(image_id.rsplit("/", 1)[-1])

    return resolve


def join_features(captions: Captions, feature_ids: Sequence[str]) -> SplitData:
    """Join captions to feature rows; captions of images absent from the features are listed, counted, skipped."""
    resolve = _resolver(feature_ids)
    missing: dict[str, int] = {}
    rows, texts = [], []
    for image_id, text in zip(captions.ids, captions.texts):
        r = resolve(image_id)
        if r is None:
            missing[image_id] = missing.get(image_id, 0) + 1
        else:
            rows.append(r)
            texts.append(text)
    if missing:
        names = sorted(missing)
        log.warning("%s: %d captions name %d images missing from the features, skipped: %s%s", captions.split,
                    sum(missing.values()), len(names), ", ".join(names[:5]), " ..." if len(names) > 5 else "")
    if captions.gallery is not None:
        gallery = [r for r in (resolve(i) for i in captions.gallery) if r is not None]
        if len(gallery) < len(captions.gallery):
            log.warning("%s: %d of %d gallery images are missing from the features", captions.split,
                        len(captions.gallery) - len(gallery), len(captions.gallery))
        gallery = list(dict.fromkeys(gallery + rows))
    else:
        gallery = list(dict.fromkeys(rows))
    pos = {r: j for j, r in enumerate(gallery)}
    gt = np.array([pos[r] for r in rows], np.int64)
    return SplitData(captions.split, texts, gt, np.array(gallery, np.int64), sum(missing.values()))


def load_splits(sources: Sequence[str | os.PathLike], feature_ids: Sequence[str]) -> dict[str, SplitData]:
    """Find, read and join every split; an empty split is a warning here (and an error where it is needed)."""
    out = {}
    for name, path in find_splits(sources).items():
        data = join_features(read_captions(path, name), feature_ids)
        if not data.texts:
            log.warning("split %s (%s) has no captions whose images are in the features", name, path)
        out[name] = data
    return out
