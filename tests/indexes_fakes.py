"""Small seeded corpora with planted answers for the index/search tests (not a test module itself)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from extract.store import write_features
from retrieval.text import tokenize

CONCEPTS = ("bicicleta", "perro", "barco")
COLOURS = ((200, 30, 30), (30, 160, 30), (30, 30, 200))
DIM = 16


def concept_vector(c: int) -> np.ndarray:
    v = np.full(DIM, 0.05, np.float32)
    v[c * 4 : c * 4 + 4] = 1.0
    return v


def make_corpus(root: Path, n: int = 30, seed: int = 0) -> tuple[Path, list[str], np.ndarray]:
    """Images ``img/NNNN.png`` (concept i % 3, drawn in that concept's colour), features.h5 and scenes.jsonl."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = root / "images"
    (images / "img").mkdir(parents=True, exist_ok=True)
    ids, rows = [], []
    with open(root / "scenes.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            c = i % 3
            image_id = f"img/{i:04d}.png"
            Image.new("RGB", (24, 24), COLOURS[c]).save(images / image_id)
            ids.append(image_id)
            rows.append(concept_vector(c) + rng.random(DIM).astype(np.float32) * 0.3)
            fh.write(json.dumps({"id": image_id, "person_on_bicycle": c == 0}) + "\n")
    xb = np.stack(rows)
    config = {"model": "resnet152", "image_root": str(images), "image_size": 24}
    write_features(root / "features.h5", ids, xb, config)
    return root / "features.h5", ids, xb


class FakeTextEncoder:
    """Same attributes as ``retrieval.query.TextEncoder``: known words map to planted concept directions."""

    def __init__(self, dim: int = DIM, model: str = "resnet152"):
        self.config = {"metric": "cosine", "feature_dim": dim, "features_model": model}
        self.vocab = {w: concept_vector(c) for c, w in enumerate(CONCEPTS)}
        self.vocab.update({w: np.full(DIM, 0.01, np.float32) for w in ("una", "un", "persona", "en", "el")})

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in tokenize(text) if w not in self.vocab]  # the real descriptors' tokens

    def encode(self, texts):
        out = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            for w in tokenize(t):
                out[i] += self.vocab.get(w, 0)
        return out


def fake_embed_images(paths, config, device="auto"):
    """Stand-in for ``extract.features.embed_images``: the concept of a drawn image from its colour."""
    from PIL import Image

    rows, failed = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                rgb = im.convert("RGB").getpixel((0, 0))
        except OSError as exc:
            failed.append((p, f"cannot decode: {exc.__class__.__name__}"))
            continue
        rows.append(concept_vector(int(np.argmax(rgb))))
    return (np.stack(rows) if rows else np.zeros((0, DIM), np.float32)), failed
