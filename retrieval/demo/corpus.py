"""Write the demo corpus: drawn scenes with Spanish captions and drawn movies, all from one seed.

Layout of ``OUT_DIR`` (every file is byte-identical for the same :class:`DemoConfig`)::

    images/<split>/<NNNNN>.jpg      JPEG q90, image_size x image_size; id = "train/00012.jpg"
    <split>_images_names.txt        one id per line, in order (splits: train, val, test)
    <split>_captions.txt            "id<TAB>caption", captions_per_image lines per image
    captions_<split>.json           COCO style {"images": [{"id", "file_name"}], "annotations": [{"image_id", "id", "caption"}]}
    scenes.jsonl                    one ground-truth scene per image (see ``Scene.to_json``)
    movies/posters/<movie_id>.jpg   drawn posters, poster_size (width, height)
    movies/movies.csv               id,title,overview,genres,poster (genres "|"-separated, poster relative to movies/)
    movies/movies.jsonl             the same records, genres as a list
    manifest.json                   generator version, config, counts per split, genre list and counts

Generation goes to ``OUT_DIR/.partial`` first; the entries are then moved into place and the manifest
is written last, so a folder with a manifest is always complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.demo.captions import scene_captions
from retrieval.demo.draw import draw_scene, noise_bank
from retrieval.demo.movies import GENRES, draw_poster, sample_movie
from retrieval.demo.scenes import KINDS, SETTINGS, split_code, split_scenes

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SOURCES = ("corpus.py", "scenes.py", "draw.py", "captions.py", "movies.py", "movie_text.py")
_MOVIE_STREAM = 1_000_003  # keeps movie seeds apart from every split's seeds


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the demo corpus; saved in manifest.json."""

    seed: int = 0
    n_train: int = 1000
    n_val: int = 150
    n_test: int = 150
    n_movies: int = 1200
    image_size: int = 256
    poster_size: tuple[int, int] = (200, 300)
    captions_per_image: int = 5
    version: int = GENERATOR_VERSION

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}

    def check(self) -> None:
        """Raise :class:`UserError` for option values that cannot make a corpus."""
        for name, n in [*self.split_sizes().items(), ("movies", self.n_movies)]:
            if n < 0:
                raise UserError(f"--n-{name} must be >= 0, got {n}")
        if self.n_train + self.n_val + self.n_test == 0:
            raise UserError("all splits are empty; pass --n-train/--n-val/--n-test > 0")
        if not 64 <= self.image_size <= 1024:
            raise UserError(f"--image-size must be between 64 and 1024 pixels, got {self.image_size}")
        if not 1 <= self.captions_per_image <= 10:
            raise UserError(f"captions per image must be between 1 and 10, got {self.captions_per_image}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["poster_size"] = list(self.poster_size)
        return d


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`generate_demo` did: counts per split, captions, movies, seconds, whether it skipped."""

    out_dir: Path
    images: dict[str, int]
    captions: int
    movies: int
    cyclists: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False

    def line(self) -> str:
        imgs = " / ".join(f"{n} {s}" for s, n in self.images.items())
        what = "already there, skipped" if self.skipped else f"written in {self.seconds:.1f}s"
        return (f"demo data in {self.out_dir}: {imgs} images, {self.captions} captions, "
                f"{sum(self.cyclists.values())} with a person on a bicycle, {self.movies} movies ({what})")


def source_fingerprint() -> str:
    """sha256 (16 hex digits) of the generator's source: a code change invalidates an existing demo folder."""
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def _entries() -> list[str]:
    names = ["images", "movies", "scenes.jsonl"]
    for s in SPLITS:
        names += [f"{s}_images_names.txt", f"{s}_captions.txt", f"captions_{s}.json"]
    return names


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _write_scenes(root: Path, config: DemoConfig) -> tuple[dict[str, int], int, dict[str, int]]:
    """Images, names, captions (TSV + COCO) and scenes.jsonl for every split."""
    noise = noise_bank(config.seed, config.image_size)
    counts, cyclists, number, ann_id = {}, {}, 0, 0
    scene_lines: list[str] = []
    for split in SPLITS:
        n = config.split_sizes()[split]
        code = split_code(split)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        names, tsv, coco_images, coco_anns = [], [], [], []
        scenes = split_scenes(config.seed, split, n)
        for i, scene in enumerate(scenes):
            image_id = f"{split}/{number:05d}.jpg"
            img = draw_scene(scene, config.image_size, np.random.default_rng([config.seed, code, 2, i]), noise)
            img.save(root / "images" / image_id, format="JPEG", quality=90)
            names.append(image_id)
            coco_images.append({"id": number, "file_name": image_id})
            caps = scene_captions(scene, np.random.default_rng([config.seed, code, 3, i]), config.captions_per_image)
            for caption in caps:
                ann_id += 1
                tsv.append(f"{image_id}\t{caption}")
                coco_anns.append({"image_id": number, "id": ann_id, "caption": caption})
            scene_lines.append(json.dumps(scene.to_json(image_id, split), ensure_ascii=False))
            number += 1
        _write_text(root / f"{split}_images_names.txt", "".join(f"{x}\n" for x in names))
        _write_text(root / f"{split}_captions.txt", "".join(f"{x}\n" for x in tsv))
        coco = {"images": coco_images, "annotations": coco_anns}
        _write_text(root / f"captions_{split}.json", json.dumps(coco, ensure_ascii=False))
        counts[split] = n
        cyclists[split] = sum(scene.person_on_bicycle for scene in scenes)
        log.info("demo %s: %d images", split, n)
    _write_text(root / "scenes.jsonl", "".join(f"{x}\n" for x in scene_lines))
    return counts, ann_id, cyclists


def _write_movies(root: Path, config: DemoConfig) -> Counter:
    """Posters, movies.csv and movies.jsonl; returns the count of each genre."""
    folder = root / "movies"
    (folder / "posters").mkdir(parents=True, exist_ok=True)
    w, h = config.poster_size
    noise = noise_bank(config.seed, max(w, h))
    genre_counts: Counter = Counter()
    records = []
    for i in range(config.n_movies):
        movie = sample_movie(np.random.default_rng([config.seed, _MOVIE_STREAM, 0, i]), f"m{i:05d}")
        poster = draw_poster(movie, (w, h), np.random.default_rng([config.seed, _MOVIE_STREAM, 1, i]), noise)
        poster.save(folder / "posters" / f"{movie.id}.jpg", format="JPEG", quality=90)
        genre_counts.update(movie.genres)
        records.append(movie.to_json())
    with open(folder / "movies.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "title", "overview", "genres", "poster"])
        for r in records:
            writer.writerow([r["id"], r["title"], r["overview"], "|".join(r["genres"]), r["poster"]])
    _write_text(folder / "movies.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return genre_counts


def read_manifest(out_dir: str | Path) -> dict | None:
    """The manifest of a demo folder, or None when there is none (or it is unreadable)."""
    path = Path(out_dir) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_target(out_dir: Path, manifest: dict | None) -> None:
    """Refuse a non-empty folder that holds neither a manifest nor any demo entry."""
    if not out_dir.exists() or manifest is not None:
        return
    ours = set(_entries()) | {".partial"}
    present = {p.name for p in out_dir.iterdir()}
    if present and not present & ours:
        raise UserError(f"{out_dir} is not empty and holds no demo data (no manifest.json); "
                        "pass a new or empty folder")


def generate_demo(out_dir: str | Path, config: DemoConfig = DemoConfig(), force: bool = False) -> DemoSummary:
    """Write the demo corpus into ``out_dir`` (see the module doc for the layout).

    A folder whose manifest has the same config and generator source is left as it is (``skipped=True``)
    unless ``force``; a demo folder made with other options or by another version of the generator is
    regenerated (only the demo's own entries are replaced; other files in the folder are kept).
    """
    config.check()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; pass a folder for the demo data")
    manifest = read_manifest(out_dir)
    _check_target(out_dir, manifest)
    source = source_fingerprint()
    same = manifest is not None and (manifest.get("config"), manifest.get("source")) == (config.to_json(), source)
    if same and not force:
        return DemoSummary(out_dir, manifest["images"], manifest["captions"], manifest["movies"],
                           manifest["person_on_bicycle"], skipped=True)
    if manifest is not None and not same:
        log.warning("%s holds demo data made with other options or another generator; regenerating it", out_dir)
    start = time.perf_counter()
    partial = out_dir / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    counts, n_captions, cyclists = _write_scenes(partial, config)
    genre_counts = _write_movies(partial, config)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for name in _entries():
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        (partial / name).rename(target)
    partial.rmdir()
    manifest = {
        "generator": "buscador demo-data",
        "version": GENERATOR_VERSION,
        "source": source,
        "config": config.to_json(),
        "images": counts,
        "captions": n_captions,
        "person_on_bicycle": cyclists,
        "movies": config.n_movies,
        "genres": list(GENRES),
        "genre_counts": {g: genre_counts.get(g, 0) for g in GENRES},
        "settings": list(SETTINGS),
        "kinds": list(KINDS),
    }
    _write_text(out_dir / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    seconds = time.perf_counter() - start
    return DemoSummary(out_dir, counts, n_captions, config.n_movies, cyclists, seconds)
