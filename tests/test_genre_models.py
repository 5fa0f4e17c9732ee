"""Genre models learn a planted signal from poster features and overview words; checkpoints round-trip."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from extract.store import write_features

GENRES = ["Drama", "Comedia", "Acción", "Terror", "Romance"]
RATES = [0.5, 0.35, 0.3, 0.2, 0.15]
WORDS = {g: [g.lower() + s for s in ("uno", "dos", "tres")] for g in GENRES}
FILLER = [f"pal{a}{b}" for a in "abcdefghij" for b in "klmnop"]


def write_movies(folder, n: int = 300, dim: int = 32, seed: int = 0):
    """A movie CSV and poster features where posters carry genres 0-2 and overviews genres 2-4.

    Returns (labels_csv, features_h5, Y).
    """
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, len(GENRES))) < RATES).astype(np.uint8)
    Y[Y.sum(axis=1) == 0, 0] = 1
    planted = rng.normal(size=(len(GENRES), dim)) * 1.5
    planted[3:] = 0  # posters say nothing about the last two genres
    xb = rng.normal(size=(n, dim)) + Y @ planted
    rows = []
    for i in range(n):
        words = list(rng.choice(FILLER, 8))
        for j, g in enumerate(GENRES):
            if j >= 2 and Y[i, j] and rng.random() < 0.85:  # overviews say nothing about the first two
                words += list(rng.choice(WORDS[g], 2))
        rng.shuffle(words)
        names = "|".join(g for j, g in enumerate(GENRES) if Y[i, j])
        rows.append({"id": f"m{i}", "title": f"Película {i}", "overview": " ".join(words), "genres": names,
                     "poster": f"posters/m{i}.jpg"})
    labels = folder / "movies.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    feats = folder / "posters.h5"
    write_features(feats, [f"m{i}.jpg" for i in range(n)], xb.astype(np.float32), {"model": "planted", "dim": dim})
    return labels, feats, Y


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("movies")
    labels, feats, _ = write_movies(folder, n=600)
    from retrieval.genre.train import prepare

    return prepare(labels, feats, seed=0)


def _test_micro_f1(prep, clf) -> float:
    from retrieval.genre.metrics import multilabel_report

    test = prep.rows("test")
    probs = clf.predict_proba(prep.poster[test], [prep.labels.texts[i] for i in test])
    return multilabel_report(prep.labels.Y[test], clf.decide(probs), prep.labels.genres)["micro_f1"]


@pytest.fixture(scope="module")
def scores(movies):
    from retrieval.genre.baselines import most_frequent
    from retrieval.genre.metrics import multilabel_report
    from retrieval.genre.train import GenreConfig, fit

    out, models = {}, {}
    for kind in ("poster", "text", "concat", "late", "gmu"):
        clf = fit(movies, GenreConfig(model=kind, epochs=30, hidden=32, batch_size=128, lr=3e-3, seed=0), device="cpu")
        out[kind], models[kind] = _test_micro_f1(movies, clf), clf
    test, train = movies.rows("test"), movies.rows("train")
    base = most_frequent(movies.labels.Y[train], len(test))
    out["frequent"] = multilabel_report(movies.labels.Y[test], base, movies.labels.genres)["micro_f1"]
    return out, models


@pytest.mark.parametrize("kind", ["poster", "text", "concat", "late", "gmu"])
def test_each_model_learns_planted_signal(scores, kind):
    f1, _ = scores
    assert f1[kind] > f1["frequent"] + 0.15, f1


@pytest.mark.parametrize("kind", ["concat", "late", "gmu"])
def test_fusion_beats_each_modality_when_they_are_complementary(scores, kind):
    f1, _ = scores
    assert f1[kind] > max(f1["poster"], f1["text"]), f1


def test_checkpoint_round_trip_gives_same_probabilities(scores, movies, tmp_path):
    from retrieval.genre.checkpoint import load_classifier

    _, models = scores
    clf = models["gmu"]
    clf.save(tmp_path / "gmu.pt")
    back = load_classifier(tmp_path / "gmu.pt")
    rows = movies.rows("test")[:20]
    texts = [movies.labels.texts[i] for i in rows]
    np.testing.assert_allclose(back.predict_proba(movies.poster[rows], texts), clf.predict_proba(movies.poster[rows], texts), atol=1e-6)
    assert back.genres == clf.genres and np.array_equal(back.thresholds, clf.thresholds)
    assert back.cfg == clf.cfg


def test_pos_weights_follow_imbalance_and_cap():
    from retrieval.genre.train import pos_weights

    Y = np.zeros((100, 3), np.uint8)
    Y[:50, 0] = 1
    Y[:2, 1] = 1
    w = pos_weights(Y, "auto", cap=10.0)
    assert w.tolist() == [1.0, 10.0, 1.0]  # 50/50 -> 1; 98/2 capped; no positive -> 1
    assert pos_weights(Y, "none").tolist() == [1.0, 1.0, 1.0]
    assert pos_weights(Y, "3").tolist() == [3.0, 3.0, 3.0]


def test_gmu_gate_is_a_per_dimension_weight():
    import torch

    from retrieval.genre.models import GMU

    torch.manual_seed(0)
    gmu = GMU(4, 6, 3, hidden=5, dropout=0.0)
    logits, z = gmu(torch.randn(7, 4), torch.randn(7, 6), return_gate=True)
    assert logits.shape == (7, 3) and z.shape == (7, 5)
    assert bool(((z > 0) & (z < 1)).all())


def test_regressor_descriptor_feeds_the_text_encoder_output(movies, tmp_path):
    """A text-regressor checkpoint (tf-idf -> MLP -> feature space) as the overview descriptor."""
    from retrieval.checkpoint import save_checkpoint
    from retrieval.descriptors import make_descriptor
    from retrieval.genre.checkpoint import load_classifier
    from retrieval.genre.inputs import TextInput
    from retrieval.genre.train import GenreConfig, fit

    texts = movies.labels.texts
    tfidf = make_descriptor("tfidf", None, ngrams=1).fit(texts)
    rng = np.random.default_rng(0)
    w = {"fc1.weight": rng.normal(size=(16, tfidf.dim)), "fc1.bias": rng.normal(size=16),
         "fc2.weight": rng.normal(size=(6, 16)), "fc2.bias": rng.normal(size=6)}
    arrays = {f"weights/{k}": v.astype(np.float32) for k, v in w.items()}
    arrays.update({f"descriptor/{k}": v for k, v in tfidf.state().items()})
    config = {"descriptor": "tfidf", "regressor": "mlp", "descriptor_config": tfidf.config, "feature_dim": 6,
              "target_norm": "none", "metric": "l2"}
    ckpt = save_checkpoint(tmp_path / "regressor.npz", arrays, config, [])

    x = tfidf.transform(texts[:5])
    expected = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"].T + w["fc2.bias"]
    got = TextInput("regressor", str(ckpt)).fit(texts).transform(texts[:5])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

    clf = fit(movies, GenreConfig(model="gmu", descriptor="regressor", descriptor_path=str(ckpt), epochs=3, hidden=16), device="cpu")
    assert clf.dims["text"] == 6
    clf.save(tmp_path / "genre.pt")
    back = load_classifier(tmp_path / "genre.pt")
    rows = movies.rows("test")[:10]
    sub = [texts[i] for i in rows]
    np.testing.assert_allclose(back.predict_proba(movies.poster[rows], sub), clf.predict_proba(movies.poster[rows], sub), atol=1e-6)
