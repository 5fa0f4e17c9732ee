"""Demo movies: file format, genre counts and imbalance, overviews, and complementary genre signal
in posters and overviews (a trivial fused classifier beats each modality alone)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from retrieval.demo.corpus import DemoConfig, generate_demo
from retrieval.demo.draw import noise_bank
from retrieval.demo.movie_text import SENTENCES_EN
from retrieval.demo.movies import GENRES, draw_poster, sample_genres, sample_movie

MOVIES = [sample_movie(np.random.default_rng([2, i]), f"m{i:05d}") for i in range(2000)]


@pytest.fixture(scope="module")
def movie_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("movies") / "demo"
    generate_demo(out, DemoConfig(seed=9, n_train=5, n_val=0, n_test=0, n_movies=60, image_size=64))
    return out / "movies"


def test_csv_and_jsonl_agree_and_posters_exist(movie_dir):
    with open(movie_dir / "movies.csv", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["id", "title", "overview", "genres", "poster"]
        rows = list(reader)
    records = [json.loads(line) for line in (movie_dir / "movies.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(records) == 60
    for row, rec in zip(rows, records):
        assert rec == {**row, "genres": row["genres"].split("|")}
        assert 1 <= len(rec["genres"]) <= 3 and set(rec["genres"]) <= set(GENRES)
        assert rec["poster"] == f"posters/{rec['id']}.jpg"
        with Image.open(movie_dir / rec["poster"]) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (200, 300), "RGB")
        assert rec["title"] and rec["overview"]
    assert len({r["id"] for r in rows}) == 60


def test_genres_are_one_to_three_and_imbalanced_like_real_data():
    counts = Counter(g for m in MOVIES for g in m.genres)
    sizes = Counter(len(m.genres) for m in MOVIES)
    assert set(counts) == set(GENRES)
    assert set(sizes) == {1, 2, 3} and sizes[1] > sizes[3]
    assert [g for g, _ in counts.most_common(2)] == ["Drama", "Comedia"]
    assert counts["Drama"] > 6 * counts["Documental"] and counts["Drama"] > 4 * counts["Fantasía"]
    assert all(list(m.genres) == [g for g in GENRES if g in m.genres] for m in MOVIES)
    assert sample_genres(np.random.default_rng(5)) == sample_genres(np.random.default_rng(5))


def test_overviews_have_two_to_four_sentences_and_some_are_english():
    english_markers = {"the", "of", "and", "is", "with", "for", "one", "an", "from", "in", "to", "at"}
    spanish_markers = {"el", "la", "los", "las", "un", "una", "en", "y", "que", "su", "con"}
    assert not {w for s in SENTENCES_EN.values() for t in s for w in re.findall(r"[a-z]+", t.lower())} & spanish_markers
    n_english = 0
    for m in MOVIES:
        sentences = re.findall(r"[.!?](?:\s|$)", m.overview)
        assert 2 <= len(sentences) <= 4, m.overview
        words = set(re.findall(r"\w+", m.overview.lower()))
        assert bool(words & english_markers) == m.english, m.overview
        assert bool(words & spanish_markers) or m.english, m.overview
        n_english += m.english
    assert 0.1 <= n_english / len(MOVIES) <= 0.2


def _poster_features(img) -> np.ndarray:
    a = (np.asarray(img) // 64).reshape(-1, 3).astype(np.int64)
    hist = np.bincount(a[:, 0] * 16 + a[:, 1] * 4 + a[:, 2], minlength=64) / a.shape[0]
    return np.r_[np.sqrt(hist), np.asarray(img.resize((6, 9)), np.float64).ravel() / 255]


def _micro_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    return 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def test_poster_and_text_carry_complementary_genre_signal():
    """Ridge one-vs-rest on colour histograms / bag of words / both; micro-F1 on held-out movies."""
    n, n_train = 450, 300
    movies = MOVIES[:n]
    noise = noise_bank(2, 120)
    P = np.stack([_poster_features(draw_poster(m, (80, 120), np.random.default_rng([2, i, 1]), noise))
                  for i, m in enumerate(movies)])
    words = [re.findall(r"\w+", m.overview.lower()) for m in movies]
    vocab = {w: j for j, w in enumerate(sorted({w for ws in words[:n_train] for w in ws}))}
    T = np.zeros((n, len(vocab)))
    for i, ws in enumerate(words):
        T[i, [vocab[w] for w in ws if w in vocab]] = 1
    Y = np.array([[g in m.genres for g in GENRES] for m in movies])

    def f1(F):
        mu, sd = F[:n_train].mean(0), F[:n_train].std(0) + 1e-6
        Z = np.c_[(F - mu) / sd, np.ones(n)]
        W = np.linalg.solve(Z[:n_train].T @ Z[:n_train] + 100 * np.eye(Z.shape[1]), Z[:n_train].T @ Y[:n_train])
        S = Z @ W
        t = max(np.linspace(0.1, 0.6, 11), key=lambda t: _micro_f1(S[:n_train] > t, Y[:n_train]))
        return _micro_f1(S[n_train:] > t, Y[n_train:])

    most_frequent = np.zeros_like(Y[n_train:])
    most_frequent[:, GENRES.index("Drama")] = True
    baseline = _micro_f1(most_frequent, Y[n_train:])
    poster, text, both = f1(P), f1(T), f1(np.c_[P, T])
    assert poster > baseline + 0.15 and text > baseline + 0.15
    assert both > max(poster, text) + 0.02, (poster, text, both)


def test_posters_are_deterministic_and_depend_on_genre():
    movie = MOVIES[0]
    a = draw_poster(movie, (80, 120), np.random.default_rng(1), noise_bank(2, 120))
    b = draw_poster(movie, (80, 120), np.random.default_rng(1), noise_bank(2, 120))
    assert a.tobytes() == b.tobytes()
    romance = [m for m in MOVIES if m.poster_genres == ("Romance",)][:15]
    terror = [m for m in MOVIES if m.poster_genres == ("Terror",)][:15]
    mean = {name: np.mean([np.asarray(draw_poster(m, (40, 60), np.random.default_rng(i)), np.float64).mean((0, 1))
                           for i, m in enumerate(group)], axis=0) for name, group in (("romance", romance), ("terror", terror))}
    assert mean["romance"].sum() > mean["terror"].sum() + 200  # pink posters are much brighter than dark-red ones
