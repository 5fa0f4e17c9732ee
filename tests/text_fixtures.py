"""Small seeded text/image corpora with a planted caption -> image mapping, for the text-side tests.

Each image shows ``k`` concepts out of a small vocabulary; its feature vector is a fixed random linear
map of the sum of its concepts' word vectors plus noise. Its captions name the concepts in random
order among filler words, so a caption's centroid determines its image up to noise.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from extract.store import write_features
from retrieval.text import export_vectors

CONCEPTS = ["perro", "gato", "niño", "bicicleta", "árbol", "montaña", "playa", "coche", "pelota", "mesa",
            "caballo", "señora", "calle", "río", "pájaro", "tren"]
FILLER = ["una", "un", "la", "el", "de", "con", "en", "foto"]


def make_keyed_vectors(words, dim=12, seed=0):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(seed)
    kv = KeyedVectors(dim)
    kv.add_vectors(list(words), rng.standard_normal((len(words), dim)).astype(np.float32))
    return kv


def make_corpus(root: Path, n_images=(60, 20), captions_per_image=3, dim=12, feat_dim=24, noise=0.05, seed=0):
    """Write features.h5, train/val caption files and vectors.kv under ``root``; return their paths."""
    rng = np.random.default_rng(seed)
    kv = make_keyed_vectors(CONCEPTS + FILLER, dim, seed)
    vectors = export_vectors(kv, root / "vectors.kv")
    proj = rng.standard_normal((dim, feat_dim)).astype(np.float32)
    ids, feats = [], []
    for split, count in zip(("train", "val"), n_images):
        lines = []
        for i in range(count):
            image_id = f"{split}/{i:04d}.jpg"
            concepts = list(rng.choice(CONCEPTS, size=3, replace=False))
            x = sum(kv[c] for c in concepts) @ proj
            ids.append(image_id)
            feats.append(x + noise * rng.standard_normal(feat_dim))
            for _ in range(captions_per_image):
                words = concepts + list(rng.choice(FILLER, size=3))
                rng.shuffle(words)
                text = " ".join(words).capitalize() + "."
                lines.append(f"{image_id}\t{text}")
        (root / f"{split}_captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    features = write_features(root / "features.h5", ids, np.array(feats, np.float32), {"model": "synthetic"})
    return {"features": features, "vectors": vectors, "root": root}


@pytest.fixture
def one_thread():
    """Tiny models train fastest on one torch thread (and it is fair to a shared machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class HashedSentenceEncoder:
    """Stands in for a pretrained sentence encoder: hashed word vectors summed, deterministic; ``calls``
    counts the texts it has encoded."""

    def __init__(self, name, fingerprint="fake-1", dim=16):
        self.name, self.dim, self.fingerprint = name, dim, fingerprint
        self.calls = 0

    def encode(self, texts, **_):
        from retrieval.text import tokenize

        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in tokenize(t):
                out[i] += np.random.default_rng(zlib.crc32(w.encode("utf-8"))).standard_normal(self.dim)
        return out
