"""A tiny collection for the serve tests: 30 drawn images, a Flat index, a real text model and a genre model.

The corpus is :func:`indexes_fakes.make_corpus` (image ``img/NNNN.png`` shows concept ``N % 3``:
bicicleta, perro, barco, drawn in that concept's colour). The text model is trained here for a few
epochs on captions naming each image's concept; the genre model is a text-only one trained on the
planted movies of ``test_genre_models``. Query images are embedded by colour (``fake_embed_images``),
since the corpus records a backbone it has no weights for.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
from indexes_fakes import CONCEPTS, fake_embed_images, make_corpus

FILLER = ("una", "un", "persona", "en", "el", "foto", "de", "con")
CAPTIONS = {0: "una persona en bicicleta", 1: "un perro en el parque", 2: "un barco en el mar"}


def _captions(root: Path, ids: list[str]) -> None:
    rng = np.random.default_rng(1)
    for split, rows in (("train", range(24)), ("val", range(24, 30))):
        lines = []
        for i in rows:
            for _ in range(3):
                words = CAPTIONS[i % 3].split() + list(rng.choice(FILLER, 2))
                lines.append(f"{ids[i]}\t{' '.join(words)}")
        (root / f"{split}_captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


_BUILT: dict[str, dict] = {}


def collection(tmp_path_factory) -> dict:
    """:func:`build_collection` once per test session (shared by the API and browser tests)."""
    if "c" not in _BUILT:
        _BUILT["c"] = build_collection(tmp_path_factory.mktemp("serve"))
    return _BUILT["c"]


def build_collection(root: Path, genres: bool = True) -> dict:
    """Write the corpus, index, text model (and genre model) under ``root``; return their paths."""
    import torch
    from text_fixtures import make_keyed_vectors

    from indexes.build import IndexConfig, build_index_dir
    from retrieval.config import TrainConfig
    from retrieval.text import export_vectors
    from retrieval.train import train

    features, ids, xb = make_corpus(root)
    build_index_dir(features, root / "index", IndexConfig(factory="Flat"), quiet=True)
    _captions(root, ids)
    words = sorted(set(CONCEPTS) | set(FILLER) | {w for c in CAPTIONS.values() for w in c.split()})
    vectors = export_vectors(make_keyed_vectors(words, dim=12, seed=3), root / "vectors.kv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(descriptor="centroid", regressor="mlp", loss="cosine", hidden=32, epochs=40, patience=40,
                          batch_size=16, lr=3e-3, device="cpu")
        model = train(cfg, features, [root], root / "text-encoder.npz", vectors=vectors, quiet=True).checkpoint
        out = {"root": root, "features": features, "ids": ids, "xb": xb, "index": root / "index", "model": model}
        if genres:
            from click.testing import CliRunner
            from test_genre_models import write_movies

            from cli import cli

            labels, feats, _ = write_movies(root, n=300)
            ckpt = root / "genre-text.pt"
            r = CliRunner().invoke(cli, ["genres", "train", "--labels", str(labels), "--features", str(feats), "--model",
                                         "text", "--out", str(ckpt), "--quiet", "--epochs", "60", "--hidden", "32",
                                         "--batch-size", "128", "--lr", "3e-3"])
            assert r.exit_code == 0, r.output
            out["genres"] = ckpt
    finally:
        torch.set_num_threads(threads)
    return out


def fake_features_module() -> types.SimpleNamespace:
    """Stands in for ``extract.features``: a backbone that embeds a drawn image by its colour."""
    from extract.features import MATCH_KEYS

    return types.SimpleNamespace(MATCH_KEYS=MATCH_KEYS, backbone_from_config=lambda config, device="cpu": "colour",
                                 embed_images=lambda paths, backbone: fake_embed_images(paths, {}))


def install_fake_backbone(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "extract.features", fake_features_module())


def png_bytes(colour, size=(20, 20)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def brute_force(xb: np.ndarray, q: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Top-``k`` rows by cosine, the reference every ranking is checked against."""
    xn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    s = xn @ (q / np.linalg.norm(q))
    order = np.argsort(-s, kind="stable")[:k]
    return [int(i) for i in order], s[order]
