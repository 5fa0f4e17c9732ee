"""Retrieval benchmark: every backbone x descriptor x regressor x loss on one corpus, trained and evaluated in one run.

Backbones are feature files of the same images made with different image models (one ``features`` path
or several); the backbone of each row is read from its file's config.

For each combination the encoder is trained on ``train`` (best epoch by validation MRR) and evaluated on
the test split through the query path (:mod:`retrieval.evaluate`, numpy only), reporting R@1/5/10, MRR,
median rank, training time and end-to-end caption encoding speed. Caption encoding speed of the centroid
descriptor is also measured against a baseline in the same run: the per-caption gensim loop
(``KeyedVectors.get_mean_vector`` on each caption's tokens).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from extract.store import open_features
from retrieval.config import TrainConfig
from retrieval.datasets import find_splits, read_captions
from retrieval.descriptors import ENCODER_KINDS, make_descriptor
from retrieval.evaluate import evaluate
from retrieval.query import load_text_encoder
from retrieval.text import load_vectors, open_vectors, tokenize

log = logging.getLogger(__name__)

DEFAULT_COMBOS = [(d, "mlp") for d in ("centroid", "centroid-tfidf", "tfidf")] + [("sequence", "gru")]
LOSSES = ("mse", "cosine", "vse")


def _encoders_available(names: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        try:
            make_descriptor(name)
            out.append(name)
        except UserError as exc:
            log.warning("skipping descriptor %s: %s", name, exc)
    return out


def encoding_speed(vectors: str | os.PathLike, texts: Sequence[str], min_captions: int = 20000) -> dict:
    """Centroid captions/s (ours, numpy on the memory-mapped export) vs the per-caption gensim loop, same captions."""
    texts = list(texts)
    reps = max(1, -(-min_captions // max(1, len(texts))))
    big = texts * reps
    desc = make_descriptor("centroid", open_vectors(vectors))
    desc.transform(big[:1000])  # warm the memory map
    t = time.perf_counter()
    ours = desc.transform(big)
    ours_s = time.perf_counter() - t
    kv = load_vectors(vectors)  # gensim KeyedVectors rebuilt from the export (never unpickled)
    sample = big[: min(len(big), 5000)]
    t = time.perf_counter()
    ref = []
    for text in sample:
        tokens = [w for w in tokenize(text) if w in kv.key_to_index]
        ref.append(kv.get_mean_vector(tokens, pre_normalize=False) if tokens else np.zeros(kv.vector_size, np.float32))
    base_s = time.perf_counter() - t
    np.testing.assert_allclose(np.array(ref, np.float32), ours[: len(sample)], rtol=1e-4, atol=1e-5)
    ours_rate, base_rate = len(big) / ours_s, len(sample) / base_s
    return {"captions": len(big), "centroid_captions_per_s": ours_rate, "gensim_loop_captions_per_s": base_rate,
            "speedup": ours_rate / base_rate}


def backbone_name(features: str | os.PathLike) -> str:
    """``model/weights`` recorded in a feature file's config (the file name for imported features)."""
    cfg = open_features(features).config
    if "model" not in cfg:
        return Path(features).stem
    return f"{cfg['model']}/{cfg.get('weights', '?')}"


def run_benchmark(
    features: str | os.PathLike | Sequence[str | os.PathLike],
    captions: Sequence[str | os.PathLike],
    vectors: str | os.PathLike | None,
    epochs: int = 15,
    gru_epochs: int = 8,
    hidden: int | None = None,
    gru_hidden: int | None = None,
    test_split: str | None = None,
    descriptors: Sequence[str] | None = None,
    losses: Sequence[str] = LOSSES,
    base: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> dict:
    """Train and evaluate every combination on each feature file; returns ``{"rows": [...], "encoding": {...}, ...}``."""
    from retrieval.train import train

    feature_files = [features] if isinstance(features, str | os.PathLike) else list(features)
    backbones = [backbone_name(f) for f in feature_files]

    splits = find_splits(captions)
    test = test_split or ("test" if "test" in splits else next((s for s in sorted(splits) if s not in ("train", "val")), None))
    if test is None or test not in splits:
        raise UserError(f"no test split among {', '.join(sorted(splits))}; pass --test-split NAME")
    combos = [(d, r) for d, r in DEFAULT_COMBOS if descriptors is None or d in descriptors]
    wanted_encoders = ENCODER_KINDS if descriptors is None else [d for d in descriptors if d in ENCODER_KINDS]
    combos += [(d, "mlp") for d in _encoders_available(wanted_encoders)]
    if vectors is None:
        combos = [(d, r) for d, r in combos if d == "tfidf" or d in ENCODER_KINDS]
        log.warning("no --vectors: benchmarking only descriptors that need no word vectors")
    base = base or TrainConfig()
    tmp = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="buscador-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    test_texts = read_captions(splits[test], test).texts
    rows = []
    for b, (feats, backbone) in enumerate(zip(feature_files, backbones)):
        for desc, reg in combos:
            for loss in losses:
                cfg = base.with_(descriptor=desc, regressor=reg, loss=loss, epochs=gru_epochs if reg == "gru" else epochs,
                                 hidden=hidden if reg == "mlp" else gru_hidden)
                ckpt = tmp / f"b{b}-{desc}-{reg}-{loss}.npz"
                result = train(cfg, feats, captions, ckpt, vectors=vectors, quiet=True, threads=threads)
                metrics = evaluate(ckpt, feats, captions, splits=[test])[test]
                encoder = load_text_encoder(ckpt)
                t = time.perf_counter()
                encoder.encode(test_texts)
                enc_s = time.perf_counter() - t
                row = {"backbone": backbone, "descriptor": desc, "regressor": reg, "loss": loss,
                       "best_epoch": result.best_epoch,
                       **{k: metrics.get(k) for k in ("recall@1", "recall@5", "recall@10", "mrr", "median_rank", "n")},
                       "train_s": result.seconds, "encode_captions_per_s": len(test_texts) / max(enc_s, 1e-9)}
                log.info("%s", row)
                rows.append(row)
    encoding = encoding_speed(vectors, test_texts) if vectors is not None else {}
    return {"test_split": test, "rows": rows, "encoding": encoding, "checkpoints": str(tmp)}


def format_rows(rows: list[dict]) -> str:
    """The benchmark table as text (one row per combination, best MRR first)."""
    cols = [("backbone", "backbone"), ("descriptor", "descriptor"), ("regressor", "regressor"), ("loss", "loss"), ("recall@1", "R@1"),
            ("recall@5", "R@5"), ("recall@10", "R@10"), ("mrr", "MRR"), ("median_rank", "med.rank"),
            ("best_epoch", "epoch"), ("train_s", "train s"), ("encode_captions_per_s", "enc capt/s")]
    table = [[h for _, h in cols]]
    for r in sorted(rows, key=lambda r: -(r["mrr"] or 0)):
        table.append([_cell(r[k]) for k, _ in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in table)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str | int):
        return str(v)
    return f"{v:.3f}" if v < 10 else f"{v:.0f}"
