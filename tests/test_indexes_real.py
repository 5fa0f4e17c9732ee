"""Search through the real text encoder checkpoint and the real image backbone (tiny, CPU, seeded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from text_fixtures import make_corpus

from cli import cli
from indexes.build import IndexConfig, build_index_dir
from retrieval.bench.search import quality_benchmark
from retrieval.metrics import rank_metrics, ranks
from retrieval.query import load_text_encoder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from retrieval.config import TrainConfig
    from retrieval.train import train

    root = tmp_path_factory.mktemp("real")
    paths = make_corpus(root)
    cfg = TrainConfig(descriptor="centroid", regressor="mlp", loss="vse", epochs=8, hidden=64, batch_size=32, lr=3e-3,
                      device="cpu", seed=0)
    train(cfg, paths["features"], [root], root / "text-encoder.npz", vectors=paths["vectors"], quiet=True)
    build_index_dir(paths["features"], root / "index", IndexConfig(factory="Flat"), quiet=True)
    return root


def test_quality_through_flat_index_equals_exact_evaluation(trained):
    root = trained
    report = quality_benchmark(root / "features.h5", [root], root / "text-encoder.npz", "Flat")
    assert set(report["splits"]) == {"train", "val"}
    enc = load_text_encoder(root / "text-encoder.npz")
    from extract.store import open_features
    from retrieval.datasets import load_splits

    ff = open_features(root / "features.h5")
    for name, data in load_splits([root], ff.ids).items():
        exact = rank_metrics(ranks(enc.encode(data.texts), ff.load(data.gallery_rows), data.gt, enc.metric))
        assert report["splits"][name]["agree"] is True
        assert report["splits"][name]["index"] == exact
    assert report["average"]["recall@5"] == pytest.approx(np.mean([s["index"]["recall@5"] for s in report["splits"].values()]))


def test_cli_text_search_with_real_checkpoint(trained):
    root = trained
    from extract.store import open_features

    args = ["search", "--index", str(root / "index"), "--model", str(root / "text-encoder.npz"), "-k", "3"]
    query = "De foto caballo de perro playa."  # a caption of train/0000.jpg (make_corpus, seed 0)
    r = CliRunner().invoke(cli, [*args, query, "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["queries"][0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    # the exact answer: cosine of the encoded query with every stored feature, sorted here
    ff = open_features(root / "features.h5")
    q = load_text_encoder(root / "text-encoder.npz").encode([query])[0]
    scores = [float(q @ x) / float(np.linalg.norm(q) * np.linalg.norm(x)) for x in ff.load()]
    exact = sorted(range(len(scores)), key=lambda i: -scores[i])[:3]
    assert [h["id"] for h in hits] == [ff.ids[i] for i in exact]
    assert [h["score"] for h in hits] == pytest.approx([scores[i] for i in exact], abs=1e-5)
    assert "train/0000.jpg" in [h["id"] for h in hits]  # the captioned image comes back
    r = CliRunner().invoke(cli, [*args, "xyzzy plugh"])
    assert r.exit_code == 1 and "Error: no known words in 'xyzzy plugh' (unknown: xyzzy, plugh)" in r.output


def test_index_of_other_dimension_is_refused_for_the_text_model(trained, tmp_path):
    from extract.store import write_features

    other = tmp_path / "f.h5"
    write_features(other, ["a.jpg", "b.jpg"], np.eye(2, 8, dtype=np.float32), {"model": "synthetic"})
    build_index_dir(other, tmp_path / "ix", IndexConfig(factory="Flat"), quiet=True)
    r = CliRunner().invoke(cli, ["search", "--index", str(tmp_path / "ix"), "--model", str(trained / "text-encoder.npz"), "perro"])
    assert r.exit_code == 1 and "outputs 24-d vectors but the index holds 8-d ones" in r.output


def test_query_by_indexed_image_finds_itself(tmp_path):
    from extract.features import extract_features

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        im = Image.new("RGB", (48, 48), tuple(int(c) for c in rng.integers(0, 255, 3)))
        ImageDraw.Draw(im).ellipse([i * 4, 8, i * 4 + 20, 28], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(images / f"{i}.png")
    extract_features(images, tmp_path / "f.h5", model="resnet18", weights="none", image_size=32, batch_size=4,
                     workers=0, device="cpu", quiet=True)
    build_index_dir(tmp_path / "f.h5", tmp_path / "ix", IndexConfig(factory="Flat"), quiet=True)
    r = CliRunner().invoke(cli, ["search", "--index", str(tmp_path / "ix"), "--image", str(images / "5.png"), "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    top = json.loads(r.output)["queries"][0]["results"][0]
    assert top["id"] == "5.png" and top["score"] == pytest.approx(1.0, abs=1e-4)
