"""The search path `serve` shares with `cli.py search`: ids by file name or stem, whole-wall --timings, sheet labels."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import time
import types

import numpy as np
import pytest
from click.testing import CliRunner
from indexes_fakes import fake_embed_images
from PIL import Image, ImageDraw

from cli import cli
from extract.core.errors import UserError
from extract.store import write_features
from indexes.build import IndexConfig, build_index_dir
from retrieval.search import IdResolver, answer, timing_line
from retrieval.sheet import THUMB, fit_label

IDS = ["poster_thumbs/tt0173716.jpg", "a/x.png", "b/x.png", "c/y.png", "c/y2.png", "d/z.tar.gz"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    xb = np.eye(len(IDS), 8, dtype=np.float32) + 0.01
    write_features(root / "f.h5", IDS, xb, {"model": "planted"})
    build_index_dir(root / "f.h5", root / "index", IndexConfig(factory="Flat"), quiet=True)
    return root / "index"


def test_resolver_by_id_name_stem_and_near_matches():
    r = IdResolver(IDS)
    assert [r.resolve(t) for t in ("poster_thumbs/tt0173716.jpg", "tt0173716.jpg", "tt0173716", "y", "y2.png", "z.tar",
                                   "z.tar.gz")] == [IDS[0], IDS[0], IDS[0], "c/y.png", "c/y2.png", "d/z.tar.gz", "d/z.tar.gz"]
    with pytest.raises(UserError, match=r"id 'x.png' matches 2 images \(a/x.png, b/x.png\); give the full id"):
        r.resolve("x.png")
    with pytest.raises(UserError, match="matches 2 images"):
        r.resolve("x")
    with pytest.raises(UserError, match=r"id 'tt0173717' is not in f.h5; did you mean 'poster_thumbs/tt0173716.jpg'\?"):
        r.resolve("tt0173717", "f.h5")
    with pytest.raises(UserError, match=r"id 'tt017' is not in the feature file; did you mean 'poster_thumbs/tt0173716.jpg'\?"):
        r.resolve("tt017")
    with pytest.raises(UserError, match="ids are image paths relative to the image root"):
        r.resolve("qqqqqqqqqqqqqq")


def test_search_id_cli_accepts_name_and_stem(index):
    for given in ("tt0173716", "tt0173716.jpg", "poster_thumbs/tt0173716.jpg"):
        r = CliRunner().invoke(cli, ["search", "--index", str(index), "--id", given, "-k", "2"])
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[0] == f"query: {IDS[0]}" and r.output.splitlines()[2].split()[2] == IDS[0]
    r = CliRunner().invoke(cli, ["search", "--index", str(index), "--id", "x"])
    assert r.exit_code == 1 and r.output.startswith("Error: id 'x' matches 2 images (a/x.png, b/x.png)")


class _SlowFeatures(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import extract.features`` take 0.3 s (as torch + torchvision do, only longer) and embed by colour."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "extract.features" else None

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        time.sleep(0.3)
        module.embed_images = fake_embed_images


def test_image_query_timings_count_the_backbone_import(tmp_path, monkeypatch):
    from indexes_fakes import make_corpus

    import extract

    features, _, _ = make_corpus(tmp_path)
    build_index_dir(features, tmp_path / "index", IndexConfig(factory="Flat"), quiet=True)
    monkeypatch.delitem(sys.modules, "extract.features", raising=False)
    monkeypatch.delattr(extract, "features", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_SlowFeatures(), *sys.meta_path])
    q = tmp_path / "q.png"
    Image.new("RGB", (8, 8), (0, 0, 250)).save(q)
    res = answer(tmp_path / "index", images=[q], k=3, device="cpu")
    assert res.timings["imports"] >= 0.3  # the import is counted where it happens, not hidden in "encode"
    assert res.timings["encode"] < 0.3
    assert all(int(h.id[4:8]) % 3 == 2 for h in res.hits[0])


def test_timing_line_adds_up_to_the_wall_time(monkeypatch):
    import retrieval.search

    monkeypatch.setattr(retrieval.search, "process_age", lambda: 1.5)
    started = time.perf_counter() - 0.5
    line = timing_line({"imports": 0.1, "search": 0.2, "total": 0.5}, started)
    parts = {p.rsplit(" ", 2)[0]: float(p.rsplit(" ", 2)[1]) for p in line[len("timings: "):].split(", ")}
    assert list(parts) == ["imports", "search", "startup", "other", "total"]
    assert parts["startup"] == pytest.approx(1000, abs=15) and parts["total"] == pytest.approx(1500, abs=15)
    assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], abs=3)


def test_contact_sheet_labels_keep_the_telling_part():
    def chars(n):
        return lambda t: len(t) <= n

    assert fit_label("img/0001.png", chars(20)) == "img/0001.png"
    assert fit_label("poster_thumbs/tt0173716.jpg", chars(20)) == "…/tt0173716.jpg"
    assert fit_label("poster_thumbs/tt0173716.jpg", chars(13)) == "tt0173716.jpg"
    cut = fit_label("a/averyveryverylongfilename_0042.jpeg", chars(16))
    assert len(cut) <= 16 and cut.startswith("avery") and cut.endswith("042.jpeg") and "…" in cut
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for image_id in IDS + ["deep/folder/structure/of/a/collection/movie_poster_tt0173716_large.jpg"]:
        label = fit_label(image_id, lambda t: draw.textlength(t) <= THUMB)
        assert draw.textlength(label) <= THUMB and label.endswith(image_id[-6:])
