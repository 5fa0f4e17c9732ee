"""Demo movies: imbalanced multi-genre records with drawn posters and Spanish/English overviews.

Each movie has 1-3 genres, sampled with real-world-like imbalance (Drama and Comedia common, Fantasía
and Documental rare). Each genre of a movie independently shows on the poster (palette + motif: hearts
for Romance, planets for Ciencia ficción, explosions for Acción...) and/or in the overview (genre-typical
sentences), so the two modalities carry partial, complementary signal. Noise on top: distractor motifs,
palette jitter, misleading palettes, off-genre sentences, neutral filler, ~15% English overviews.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retrieval.demo.draw import add_noise, gradient, jitter
from retrieval.demo.movie_text import movie_overview, movie_title

GENRES: tuple[str, ...] = (
    "Drama", "Comedia", "Acción", "Suspense", "Romance", "Crimen", "Aventura", "Terror",
    "Ciencia ficción", "Animación", "Fantasía", "Documental",
)
#: relative frequency of each genre among a movie's genres
GENRE_WEIGHTS: tuple[float, ...] = (0.42, 0.34, 0.18, 0.15, 0.14, 0.12, 0.11, 0.09, 0.08, 0.06, 0.05, 0.04)
#: background top, background bottom, accent colour per genre
PALETTES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "Drama": ((55, 65, 85), (125, 135, 155), (205, 205, 215)),
    "Comedia": ((255, 225, 70), (255, 165, 40), (225, 45, 120)),
    "Acción": ((40, 40, 45), (205, 85, 20), (255, 205, 0)),
    "Suspense": ((20, 30, 40), (75, 95, 105), (225, 225, 225)),
    "Romance": ((250, 185, 205), (220, 95, 135), (200, 20, 60)),
    "Crimen": ((15, 15, 15), (65, 65, 65), (250, 210, 0)),
    "Aventura": ((95, 155, 205), (205, 165, 95), (60, 115, 50)),
    "Terror": ((12, 5, 5), (70, 0, 0), (205, 0, 0)),
    "Ciencia ficción": ((5, 10, 40), (30, 45, 115), (0, 220, 255)),
    "Animación": ((120, 220, 255), (255, 240, 120), (255, 90, 200)),
    "Fantasía": ((60, 20, 95), (155, 85, 195), (255, 220, 120)),
    "Documental": ((235, 230, 215), (200, 195, 180), (60, 60, 60)),
}
_LOG_WEIGHTS = np.log(np.asarray(GENRE_WEIGHTS))
P_POSTER, P_TEXT = 0.75, 0.75  # chance that a genre of a movie shows on the poster / in the overview


@dataclass(frozen=True)
class Movie:
    """A demo movie; ``poster_genres``/``text_genres`` say which of its genres each modality shows."""

    id: str
    title: str
    overview: str
    genres: tuple[str, ...]
    poster_genres: tuple[str, ...]
    text_genres: tuple[str, ...]
    english: bool

    def to_json(self) -> dict:
        """The movies.jsonl record (genres as a list, poster path relative to ``movies/``)."""
        return {"id": self.id, "title": self.title, "overview": self.overview, "genres": list(self.genres),
                "poster": f"posters/{self.id}.jpg"}


def sample_genres(rng: np.random.Generator) -> tuple[str, ...]:
    """1-3 distinct genres in GENRES order; Documental stands alone."""
    u = rng.random()
    k = 1 if u < 0.45 else 2 if u < 0.85 else 3
    # weighted sampling without replacement: the k largest log-weight + Gumbel keys
    keys = _LOG_WEIGHTS + rng.gumbel(size=len(GENRES))
    names = {GENRES[i] for i in np.argsort(-keys)[:k]}
    if "Documental" in names:
        names = {"Documental"}
    return tuple(g for g in GENRES if g in names)


def sample_movie(rng: np.random.Generator, movie_id: str) -> Movie:
    genres = sample_genres(rng)
    poster = tuple(g for g in genres if rng.random() < P_POSTER)
    text = tuple(g for g in genres if rng.random() < P_TEXT)
    english = bool(rng.random() < 0.15)
    others = [g for g in GENRES if g not in genres]
    off_genre = others[int(rng.integers(len(others)))] if rng.random() < 0.2 else None
    overview = movie_overview(rng, text, english, off_genre)
    return Movie(movie_id, movie_title(rng), overview, genres, poster, text, english)


# ---- poster motifs: each draws one genre-typical object centred at (cx, cy) with radius r ------------


def _star(d, cx, cy, r, fill, points=5, inner=0.45, angle=0.0):
    pts = []
    for i in range(points * 2):
        rr = r if i % 2 == 0 else r * inner
        a = angle + math.pi * i / points
        pts.append((cx + rr * math.sin(a), cy - rr * math.cos(a)))
    d.polygon(pts, fill=fill)


def _heart(d, cx, cy, r, fill):
    d.ellipse((cx - r, cy - r * 0.7, cx, cy + r * 0.3), fill=fill)
    d.ellipse((cx, cy - r * 0.7, cx + r, cy + r * 0.3), fill=fill)
    d.polygon([(cx - r * 0.97, cy), (cx + r * 0.97, cy), (cx, cy + r)], fill=fill)


def _m_drama(d, cx, cy, r, acc, rng):
    d.ellipse((cx - r * 0.45, cy - r, cx + r * 0.45, cy - r * 0.1), fill=(30, 30, 40))
    d.chord((cx - r, cy - r * 0.1, cx + r, cy + r * 1.4), 180, 360, fill=(30, 30, 40))
    d.ellipse((cx + r * 0.1, cy - r * 0.5, cx + r * 0.22, cy - r * 0.3), fill=(150, 200, 255))
    for _ in range(12):
        x, y = cx + rng.uniform(-2, 2) * r, cy + rng.uniform(-2, 1) * r
        d.line((x, y, x - 3, y + r * 0.35), fill=acc, width=1)


def _m_comedia(d, cx, cy, r, acc, rng):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 235, 0), outline=(90, 60, 0), width=2)
    for ex in (cx - r * 0.35, cx + r * 0.35):
        d.ellipse((ex - r * 0.1, cy - r * 0.4, ex + r * 0.1, cy - r * 0.1), fill=(40, 30, 0))
    d.chord((cx - r * 0.6, cy - r * 0.3, cx + r * 0.6, cy + r * 0.7), 0, 180, fill=(180, 20, 40))
    for _ in range(8):
        x, y = cx + rng.uniform(-1.8, 1.8) * r, cy + rng.uniform(-1.8, 1.8) * r
        d.rectangle((x, y, x + 4, y + 4), fill=acc)


def _m_accion(d, cx, cy, r, acc, rng):
    _star(d, cx, cy, r * 1.2, (255, 120, 0), points=11, inner=0.5, angle=rng.uniform(0, 1))
    _star(d, cx, cy, r * 0.8, acc, points=9, inner=0.55, angle=rng.uniform(0, 1))
    d.ellipse((cx - r * 0.25, cy - r * 0.25, cx + r * 0.25, cy + r * 0.25), fill=(255, 255, 220))


def _m_suspense(d, cx, cy, r, acc, rng):
    d.ellipse((cx - r * 1.2, cy - r * 0.55, cx + r * 1.2, cy + r * 0.55), fill=acc)
    d.ellipse((cx - r * 0.5, cy - r * 0.5, cx + r * 0.5, cy + r * 0.5), fill=(40, 90, 110))
    d.ellipse((cx - r * 0.2, cy - r * 0.2, cx + r * 0.2, cy + r * 0.2), fill=(0, 0, 0))


def _m_romance(d, cx, cy, r, acc, rng):
    _heart(d, cx, cy, r, acc)
    for _ in range(3):
        s = r * rng.uniform(0.2, 0.4)
        _heart(d, cx + rng.uniform(-1.6, 1.6) * r, cy + rng.uniform(-1.6, 1.6) * r, s, (255, 120, 170))


def _m_crimen(d, cx, cy, r, acc, rng):
    for off in (-0.35, 0.35):
        y = cy + off * r
        d.polygon([(cx - 2.5 * r, y - 0.12 * r - r), (cx + 2.5 * r, y - 0.12 * r + r),
                   (cx + 2.5 * r, y + 0.12 * r + r), (cx - 2.5 * r, y + 0.12 * r - r)], fill=acc)
    for k in range(4):
        rr = r * (0.2 + 0.12 * k)
        d.arc((cx - rr, cy - rr, cx + rr, cy + rr), 200, 520, fill=(230, 230, 230), width=2)


def _m_aventura(d, cx, cy, r, acc, rng):
    d.polygon([(cx - 1.6 * r, cy + r), (cx - 0.3 * r, cy - r), (cx + 0.8 * r, cy + r)], fill=acc)
    d.polygon([(cx - 0.2 * r, cy + r), (cx + 0.9 * r, cy - 0.4 * r), (cx + 1.8 * r, cy + r)], fill=(95, 80, 60))
    d.polygon([(cx - 0.55 * r, cy - 0.55 * r), (cx - 0.3 * r, cy - r), (cx - 0.05 * r, cy - 0.55 * r)], fill=(250, 250, 250))
    _star(d, cx + 1.2 * r, cy - 1.3 * r, r * 0.35, (200, 40, 40), points=4, inner=0.3)


def _m_terror(d, cx, cy, r, acc, rng):
    d.ellipse((cx - r * 0.8, cy - r, cx + r * 0.8, cy + r * 0.5), fill=(235, 230, 215))
    d.rectangle((cx - r * 0.45, cy + r * 0.3, cx + r * 0.45, cy + r * 0.8), fill=(235, 230, 215))
    for ex in (cx - r * 0.35, cx + r * 0.35):
        d.ellipse((ex - r * 0.22, cy - r * 0.4, ex + r * 0.22, cy), fill=(0, 0, 0))
    for _ in range(6):
        x = cx + rng.uniform(-2, 2) * r
        d.line((x, cy - 2.5 * r, x, cy - 2.5 * r + rng.uniform(0.3, 1.2) * r), fill=acc, width=4)


def _m_scifi(d, cx, cy, r, acc, rng):
    for _ in range(25):
        x, y = cx + rng.uniform(-3, 3) * r, cy + rng.uniform(-3, 3) * r
        d.point((x, y), fill=(255, 255, 255))
    d.ellipse((cx - r * 1.5, cy - r * 0.35, cx + r * 1.5, cy + r * 0.35), outline=acc, width=3)
    d.ellipse((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8), fill=(150, 80, 200))
    d.arc((cx - r * 1.5, cy - r * 0.35, cx + r * 1.5, cy + r * 0.35), 0, 180, fill=acc, width=3)


def _m_animacion(d, cx, cy, r, acc, rng):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=acc)
    for ex in (cx - r * 0.4, cx + r * 0.4):
        d.ellipse((ex - r * 0.3, cy - r * 0.55, ex + r * 0.3, cy + r * 0.1), fill=(255, 255, 255))
        d.ellipse((ex - r * 0.12, cy - r * 0.3, ex + r * 0.12, cy - r * 0.05), fill=(0, 0, 0))
    d.arc((cx - r * 0.5, cy, cx + r * 0.5, cy + r * 0.6), 20, 160, fill=(0, 0, 0), width=3)
    for col in ((60, 200, 90), (90, 120, 255)):
        x, y = cx + rng.uniform(-2, 2) * r, cy + rng.uniform(-2, 2) * r
        d.ellipse((x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3), fill=col)


def _m_fantasia(d, cx, cy, r, acc, rng):
    col = (40, 20, 60)
    d.rectangle((cx - r, cy - r * 0.2, cx + r, cy + r), fill=col)
    for tx in (cx - r, cx - r * 0.15, cx + r * 0.7):
        d.rectangle((tx, cy - r * 0.8, tx + r * 0.3, cy), fill=col)
        d.polygon([(tx - r * 0.08, cy - r * 0.8), (tx + r * 0.15, cy - r * 1.3), (tx + r * 0.38, cy - r * 0.8)], fill=col)
    for _ in range(5):
        _star(d, cx + rng.uniform(-2, 2) * r, cy + rng.uniform(-2.2, -0.8) * r, r * 0.15, acc, points=4, inner=0.3)


def _m_documental(d, cx, cy, r, acc, rng):
    d.rectangle((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=acc)
    d.rectangle((cx - r * 0.5, cy - r * 0.85, cx - r * 0.1, cy - r * 0.6), fill=acc)
    d.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=(180, 180, 190))
    d.ellipse((cx - r * 0.25, cy - r * 0.25, cx + r * 0.25, cy + r * 0.25), fill=(20, 20, 30))
    for k in range(4):
        h = r * rng.uniform(0.3, 1.0)
        x = cx - r + k * r * 0.55
        d.rectangle((x, cy + 1.6 * r - h, x + r * 0.35, cy + 1.6 * r), fill=(90, 110, 140))


_MOTIFS = {
    "Drama": _m_drama, "Comedia": _m_comedia, "Acción": _m_accion, "Suspense": _m_suspense,
    "Romance": _m_romance, "Crimen": _m_crimen, "Aventura": _m_aventura, "Terror": _m_terror,
    "Ciencia ficción": _m_scifi, "Animación": _m_animacion, "Fantasía": _m_fantasia,
    "Documental": _m_documental,
}


@lru_cache(maxsize=4096)
def _title_mask(title: str, width: int, band: int) -> Image.Image:
    """The title rendered once as a (width, band) "L" mask, centred."""
    mask = Image.new("L", (width, band), 0)
    font = ImageFont.load_default(size=max(8, band // 3))
    ImageDraw.Draw(mask).text((width // 2, band // 2), title, fill=255, font=font, anchor="mm")
    return mask


def draw_poster(movie: Movie, size: tuple[int, int], rng: np.random.Generator,
                noise: Image.Image | None = None) -> Image.Image:
    """Poster of ``movie`` as a (width, height) RGB image: palette and motifs of its poster genres."""
    W, H = size
    others = [g for g in GENRES if g not in movie.genres]
    lead = movie.poster_genres[0] if movie.poster_genres and rng.random() > 0.1 else others[int(rng.integers(len(others)))]
    top, bottom, _ = PALETTES[lead]
    img = gradient(jitter(top, rng, 18), jitter(bottom, rng, 18), W, H)
    d = ImageDraw.Draw(img)
    motifs = list(movie.poster_genres)
    if rng.random() < 0.3:
        motifs.append(others[int(rng.integers(len(others)))])
    for k, g in enumerate(motifs):
        r = W * (rng.uniform(0.2, 0.28) if k == 0 else rng.uniform(0.1, 0.17))
        cx, cy = W * rng.uniform(0.3, 0.7), H * rng.uniform(0.25, 0.7)
        _MOTIFS[g](d, cx, cy, r, jitter(PALETTES[g][2], rng, 12), rng)
    band = int(H * 0.13)
    d.rectangle((0, H - band, W, H), fill=(15, 15, 20))
    mask = _title_mask(movie.title, W, band)
    img.paste((240, 240, 240), (0, H - band), mask)
    return img if noise is None else add_noise(img, noise, rng)
