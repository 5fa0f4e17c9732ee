"""The demo corpus on disk: determinism, file formats that agree with each other, skip/regenerate, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from extract.core.errors import UserError
from retrieval.demo.corpus import SPLITS, DemoConfig, generate_demo, read_manifest

SMALL = DemoConfig(seed=3, n_train=40, n_val=12, n_test=12, n_movies=40, image_size=64)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    generate_demo(out, SMALL)
    return out


def test_same_seed_gives_identical_bytes_and_another_seed_differs(demo_dir, tmp_path):
    generate_demo(tmp_path / "again", SMALL)
    reference = _tree_hashes(demo_dir)
    assert _tree_hashes(tmp_path / "again") == reference
    assert len(reference) == 40 + 12 + 12 + 40 + 3 * 3 + 1 + 2 + 1  # images, posters, per-split files, ...

    other = DemoConfig(**{**SMALL.__dict__, "seed": 4})
    generate_demo(tmp_path / "other", other)
    hashes = _tree_hashes(tmp_path / "other")
    assert hashes.keys() == reference.keys()
    for name in ("images/train/00000.jpg", "train_captions.txt", "movies/movies.csv", "movies/posters/m00000.jpg"):
        assert hashes[name] != reference[name], name


def test_names_captions_and_coco_agree(demo_dir):
    number = 0
    for split, n in SMALL.split_sizes().items():
        names = (demo_dir / f"{split}_images_names.txt").read_text(encoding="utf-8").splitlines()
        assert len(names) == n and len(set(names)) == n
        assert names == [f"{split}/{i:05d}.jpg" for i in range(number, number + n)]
        for name in names:
            with Image.open(demo_dir / "images" / name) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
        lines = (demo_dir / f"{split}_captions.txt").read_text(encoding="utf-8").splitlines()
        pairs = [line.split("\t") for line in lines]
        assert all(len(p) == 2 and p[1].strip() for p in pairs)
        by_image: dict[str, list[str]] = {}
        for image_id, caption in pairs:
            by_image.setdefault(image_id, []).append(caption)
        assert list(by_image) == names  # every caption names an image of the split, in order
        assert all(len(c) == 5 and len(set(c)) == 5 for c in by_image.values())

        coco = json.loads((demo_dir / f"captions_{split}.json").read_text(encoding="utf-8"))
        assert [im["file_name"] for im in coco["images"]] == names
        id_to_name = {im["id"]: im["file_name"] for im in coco["images"]}
        assert [(id_to_name[a["image_id"]], a["caption"]) for a in coco["annotations"]] == [tuple(p) for p in pairs]
        number += n
    all_ann = [a["id"] for s in SPLITS for a in json.loads((demo_dir / f"captions_{s}.json").read_text())["annotations"]]
    assert len(set(all_ann)) == len(all_ann)


def test_scenes_jsonl_matches_images_and_cyclists_exist_in_every_split(demo_dir):
    scenes = [json.loads(line) for line in (demo_dir / "scenes.jsonl").read_text(encoding="utf-8").splitlines()]
    names = [n for s in SPLITS for n in (demo_dir / f"{s}_images_names.txt").read_text().splitlines()]
    assert [s["id"] for s in scenes] == names
    captions: dict[str, list[str]] = {}
    for s in SPLITS:
        for line in (demo_dir / f"{s}_captions.txt").read_text(encoding="utf-8").splitlines():
            image_id, caption = line.split("\t")
            captions.setdefault(image_id, []).append(caption.lower())
    manifest = read_manifest(demo_dir)
    for split in SPLITS:
        riders = [s for s in scenes if s["split"] == split and s["person_on_bicycle"]]
        assert len(riders) >= 1 and manifest["person_on_bicycle"][split] == len(riders)
        for s in riders:
            assert any(o["kind"] == "ciclista" for o in s["objects"])
            assert all("bicicleta" in c or "ciclista" in c for c in captions[s["id"]])
            assert sum("bicicleta" in c for c in captions[s["id"]]) >= 2
    for s in scenes:
        assert set(s) >= {"id", "split", "objects", "setting", "relations", "person_on_bicycle"}
        for o in s["objects"]:
            assert set(o) >= {"kind", "color", "size", "x", "y"} and 0 <= o["x"] <= 1 and 0 <= o["y"] <= 1


def test_manifest_records_config_and_counts(demo_dir):
    manifest = read_manifest(demo_dir)
    assert manifest["config"] == SMALL.to_json()
    assert manifest["images"] == {"train": 40, "val": 12, "test": 12}
    assert manifest["captions"] == 5 * 64 and manifest["movies"] == 40
    with open(demo_dir / "movies" / "movies.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    counted = {g: sum(g in r["genres"].split("|") for r in rows) for g in manifest["genres"]}
    assert counted == manifest["genre_counts"]


def test_same_options_skip_and_other_options_regenerate_keeping_foreign_files(tmp_path):
    out = tmp_path / "demo"
    config = DemoConfig(seed=1, n_train=12, n_val=5, n_test=5, n_movies=6, image_size=64)
    first = generate_demo(out, config)
    assert not first.skipped
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = generate_demo(out, config)
    assert again.skipped and again.images == first.images and again.captions == first.captions
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    (out / "features.h5").write_bytes(b"made by a later stage")
    smaller = DemoConfig(seed=1, n_train=8, n_val=5, n_test=5, n_movies=6, image_size=64)
    result = generate_demo(out, smaller)
    assert not result.skipped and result.images["train"] == 8
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == [f"{i:05d}.jpg" for i in range(8)]
    assert (out / "features.h5").read_bytes() == b"made by a later stage"
    assert not (out / ".partial").exists()
    fresh = tmp_path / "fresh"
    generate_demo(fresh, smaller)
    expected = _tree_hashes(fresh)
    assert {k: v for k, v in _tree_hashes(out).items() if k != "features.h5"} == expected


def test_refuses_a_folder_that_holds_other_things(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no demo data"):
        generate_demo(tmp_path, DemoConfig(n_train=5, n_val=5, n_test=5, n_movies=2, image_size=64))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("field, value, message", [
    ("image_size", 8, "--image-size"), ("n_train", -1, "--n-train"), ("n_movies", -2, "--n-movies"),
])
def test_bad_options_are_user_errors(tmp_path, field, value, message):
    config = DemoConfig(**{**DemoConfig().__dict__, field: value})
    with pytest.raises(UserError, match=message):
        generate_demo(tmp_path / "x", config)
    assert not (tmp_path / "x").exists()


def test_cli_prints_one_summary_line_then_skips(tmp_path):
    runner = CliRunner()
    args = ["demo-data", str(tmp_path / "d"), "--n-train", "10", "--n-val", "5", "--n-test", "5",
            "--n-movies", "4", "--image-size", "64", "--seed", "2"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "10 train / 5 val / 5 test images" in result.output
    assert "100 captions" in result.output and "4 movies" in result.output
    second = runner.invoke(cli, args)
    assert second.exit_code == 0 and "skipped" in second.output


def test_cli_bad_input_is_one_error_line(tmp_path):
    (tmp_path / "f").write_text("x")
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "d"), "--image-size", "10"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: --image-size must be between 64 and 1024 pixels, got 10"]
    result = CliRunner().invoke(cli, ["demo-data", str(tmp_path / "f")])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_changed_generator_regenerates(tmp_path, monkeypatch):
    from retrieval.demo import corpus as demo

    config = DemoConfig(seed=1, n_train=6, n_val=5, n_test=5, n_movies=3, image_size=64)
    generate_demo(tmp_path / "d", config)
    assert generate_demo(tmp_path / "d", config).skipped
    monkeypatch.setattr(demo, "source_fingerprint", lambda: "another-version")
    assert not generate_demo(tmp_path / "d", config).skipped
    assert read_manifest(tmp_path / "d")["source"] == "another-version"
    assert generate_demo(tmp_path / "d", config).skipped
