"""Draw a demo :class:`~retrieval.demo.scenes.Scene` with PIL: a textured background per setting, then
recognisable objects (a person has head, body and limbs; a bicycle two wheels and a frame; a cyclist
rides one), then mild noise (colour jitter, additive pixel noise) so no two images are
trivially identical. Everything comes from the ``rng`` passed in, so a seed fixes every pixel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from retrieval.demo.scenes import COLORS, SETTINGS, Scene, SceneObject

_SKIN = ((250, 215, 180), (225, 175, 130), (170, 115, 75), (105, 70, 45))
_TROUSERS = ((40, 45, 70), (60, 60, 60), (90, 70, 50))
#: sky top, sky bottom, ground (or water), ground line (fraction of the side) per setting
_PALETTE = {
    "playa": ((95, 170, 235), (180, 220, 245), (235, 212, 155), 0.57),
    "parque": ((110, 175, 235), (195, 225, 245), (85, 165, 70), 0.44),
    "calle": ((150, 175, 200), (200, 210, 220), (72, 72, 78), 0.70),
    "nieve": ((185, 200, 215), (225, 232, 240), (244, 247, 252), 0.48),
    "noche": ((8, 12, 35), (30, 40, 85), (28, 38, 40), 0.64),
    "campo": ((95, 160, 230), (185, 215, 240), (212, 180, 80), 0.48),
    "lago": ((120, 180, 235), (200, 225, 245), (80, 150, 75), 0.80),
}


def jitter(rgb, rng: np.random.Generator, amount: int = 10) -> tuple[int, int, int]:
    """``rgb`` with each channel moved by a random integer in [-amount, amount], clipped to 0..255."""
    return tuple(min(255, max(0, int(c) + int(v))) for c, v in zip(rgb, rng.integers(-amount, amount + 1, 3)))


_jit = jitter


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c * f))) for c in rgb)


def gradient(top, bottom, width: int, height: int) -> Image.Image:
    """A (width, height) RGB image fading vertically from colour ``top`` to ``bottom``."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    rows = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(np.round(rows).astype(np.uint8)[:, None, :]).resize((width, height), Image.NEAREST)


def _background(setting: str, S: int, rng: np.random.Generator) -> Image.Image:
    sky_top, sky_bottom, ground, line = _PALETTE[setting]
    g = int(line * S)
    img = gradient(_jit(sky_top, rng), _jit(sky_bottom, rng), S, g).crop((0, 0, S, S))
    d = ImageDraw.Draw(img)
    d.rectangle((0, g, S, S), fill=_jit(ground, rng, 8))
    # A few fixed decor layouts per setting: the background says the setting and varies little, so
    # what changes between pictures of one setting is what the captions talk about.
    layout = np.random.default_rng([SETTINGS.index(setting), int(rng.integers(_DECOR_LAYOUTS))])
    _DECOR[setting](d, S, g, layout)
    return img


def _decor_playa(d, S, g, rng):
    top = int(0.40 * S)
    d.rectangle((0, top, S, g), fill=_jit((30, 105, 185), rng))
    for _ in range(10):
        x, y = rng.integers(0, S), rng.integers(top + 3, g - 2)
        d.line((x, y, x + S // 16, y), fill=(225, 240, 250), width=1)
    d.rectangle((0, g, S, g + S // 40), fill=(205, 185, 135))
    for _ in range(60):
        x, y = rng.integers(0, S), rng.integers(g, S)
        d.point((int(x), int(y)), fill=(200, 175, 120))


def _decor_parque(d, S, g, rng):
    for x in range(-S // 10, S + S // 10, S // 9):
        r = int(S * rng.uniform(0.04, 0.07))
        d.ellipse((x, g - r, x + 2 * r, g + r // 2), fill=(45, 110, 50))
    x0 = int(S * rng.uniform(0.3, 0.6))
    d.polygon([(x0, g), (x0 + S // 14, g), (x0 + S // 4, S), (x0 - S // 10, S)], fill=(205, 190, 150))
    for _ in range(40):
        x, y = int(rng.integers(0, S)), int(rng.integers(g, S))
        d.line((x, y, x + 1, y - 3), fill=(60, 135, 55))


def _decor_calle(d, S, g, rng):
    x = 0
    while x < S:
        w, top = int(S * rng.uniform(0.14, 0.24)), int(S * rng.uniform(0.08, 0.32))
        col = _jit((150, 142, 135), rng, 10)
        d.rectangle((x, top, x + w, int(0.6 * S)), fill=col)
        for wy in range(top + 6, int(0.57 * S), 12):
            for wx in range(x + 5, x + w - 6, 11):
                d.rectangle((wx, wy, wx + 5, wy + 6), fill=(215, 225, 235))
        x += w + 2
    d.rectangle((0, int(0.6 * S), S, g), fill=(178, 178, 172))
    y = int(0.84 * S)
    for x in range(0, S, S // 8):
        d.rectangle((x, y, x + S // 16, y + 2), fill=(235, 235, 235))


def _decor_nieve(d, S, g, rng):
    for _ in range(3):
        cx, h = int(rng.integers(0, S)), int(S * rng.uniform(0.12, 0.22))
        d.polygon([(cx - h * 2, g), (cx, g - h), (cx + h * 2, g)], fill=(175, 185, 200))
        d.polygon([(cx - h // 2, g - h + h // 4), (cx, g - h), (cx + h // 2, g - h + h // 4)], fill=(250, 250, 252))
    for _ in range(6):
        x, y = int(rng.integers(0, S)), int(rng.integers(g, S))
        d.ellipse((x, y, x + S // 5, y + S // 25), fill=(222, 230, 242))
    for _ in range(70):
        x, y = int(rng.integers(0, S)), int(rng.integers(0, S))
        d.ellipse((x, y, x + 2, y + 2), fill=(255, 255, 255))


def _decor_noche(d, S, g, rng):
    for _ in range(45):
        x, y = int(rng.integers(0, S)), int(rng.integers(0, g - 4))
        d.point((x, y), fill=(255, 255, 215))
        if rng.random() < 0.3:
            d.point((x + 1, y), fill=(220, 220, 200))
    pts = [(0, g)] + [(x, g - int(S * rng.uniform(0.02, 0.08))) for x in range(0, S + S // 6, S // 6)] + [(S, g)]
    d.polygon(pts, fill=(18, 24, 30))


def _decor_campo(d, S, g, rng):
    for cx in (int(S * rng.uniform(0.1, 0.4)), int(S * rng.uniform(0.6, 0.9))):
        d.ellipse((cx - S // 3, g - S // 12, cx + S // 3, g + S // 12), fill=(95, 150, 70))
    d.rectangle((0, g, S, S), fill=_jit((212, 180, 80), rng, 8))
    vx = S * rng.uniform(0.3, 0.7)
    for i in range(-6, 14):
        d.line((vx, g, vx + i * S / 8 - S / 4, S), fill=(170, 130, 60), width=1)


def _decor_lago(d, S, g, rng):
    top = int(0.40 * S)
    d.rectangle((0, top, S, g), fill=_jit((55, 120, 170), rng))
    for x in range(0, S, S // 14):
        h = int(S * rng.uniform(0.03, 0.07))
        d.polygon([(x, top), (x + S // 28, top - h), (x + S // 14, top)], fill=(35, 85, 45))
    for _ in range(12):
        x, y = int(rng.integers(0, S)), int(rng.integers(top + 4, g - 2))
        d.line((x, y, x + S // 12, y), fill=(140, 190, 220))
    for _ in range(10):
        x = int(rng.integers(0, S))
        d.line((x, g + 2, x + 2, g - S // 20), fill=(60, 110, 50), width=2)


_DECOR_LAYOUTS = 3
_DECOR = {
    "playa": _decor_playa, "parque": _decor_parque, "calle": _decor_calle, "nieve": _decor_nieve,
    "noche": _decor_noche, "campo": _decor_campo, "lago": _decor_lago,
}


def _line(d, p, q, fill, w):
    d.line((p[0], p[1], q[0], q[1]), fill=fill, width=max(1, int(w)))


def _figure(d, hip, shoulder, r, shirt, skin, trousers, feet, hands, lw):
    """A person from joints: head above the shoulder, torso hip->shoulder, legs to ``feet``, arms to ``hands``."""
    for foot in feet:
        knee = ((hip[0] + foot[0]) / 2 + lw, (hip[1] + foot[1]) / 2)
        _line(d, hip, knee, trousers, lw * 1.2)
        _line(d, knee, foot, trousers, lw * 1.1)
    _line(d, hip, shoulder, shirt, lw * 3.4)
    for hand in hands:
        _line(d, shoulder, hand, shirt, lw)
    hx, hy = shoulder[0], shoulder[1] - r * 1.1
    d.ellipse((hx - r, hy - r, hx + r, hy + r), fill=skin)
    d.chord((hx - r, hy - r, hx + r, hy + r * 0.3), 180, 360, fill=(50, 35, 25))


def _draw_persona(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, r, lw = (x0 + x1) / 2, 0.1 * h, max(2, 0.045 * h)
    hip, shoulder = (cx, y0 + 0.58 * h), (cx, y0 + 0.24 * h)
    trousers = _TROUSERS[int(rng.integers(len(_TROUSERS)))]
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    feet = ((cx - 0.3 * w, y1), (cx + 0.3 * w, y1))
    hands = ((x0, y0 + 0.55 * h), (x1, y0 + 0.5 * h))
    _figure(d, hip, shoulder, r, rgb, skin, trousers, feet, hands, lw)


def _bike(d, x0, x1, ground, rgb, flip):
    """A bicycle between x0 and x1 standing on ``ground``; returns (seat, handlebar, pedal) points."""
    w = x1 - x0
    r = 0.22 * w
    lw = max(2, 0.035 * w)
    rear, front = (x0 + r, ground - r), (x1 - r, ground - r)
    if flip:
        rear, front = front, rear
    sgn = 1 if not flip else -1
    crank = ((rear[0] + front[0]) / 2 - sgn * 0.04 * w, ground - r)
    seat = (crank[0] - sgn * 0.1 * w, ground - 2.15 * r)
    bar = (front[0] - sgn * 0.1 * w, ground - 2.3 * r)
    for c in (rear, front):
        d.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), outline=(25, 25, 25), width=max(2, int(lw * 0.8)))
        d.ellipse((c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2), fill=(90, 90, 90))
    for p, q in ((rear, crank), (crank, seat), (seat, rear), (crank, bar), (seat, bar), (bar, front)):
        _line(d, p, q, rgb, lw)
    _line(d, (seat[0] - sgn * 0.05 * w, seat[1]), (seat[0] + sgn * 0.04 * w, seat[1]), (20, 20, 20), lw * 1.3)
    _line(d, bar, (bar[0] - sgn * 0.04 * w, bar[1] - 0.04 * w), (20, 20, 20), lw)
    return seat, bar, crank


def _draw_bicicleta(d, box, rgb, rng, flip):
    _bike(d, box[0], box[2], box[3], rgb, flip)


def _draw_ciclista(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    seat, bar, crank = _bike(d, x0, x1, y1, rgb, flip)
    h = y1 - y0
    sgn = -1 if flip else 1
    shoulder = (seat[0] + sgn * 0.12 * (x1 - x0), y0 + 0.28 * h)
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    pedals = ((crank[0] + sgn * 0.06 * (x1 - x0), crank[1] + 0.04 * h), (crank[0] - sgn * 0.05 * (x1 - x0), crank[1] - 0.03 * h))
    _figure(d, seat, shoulder, 0.085 * h, rgb, skin, _TROUSERS[0], pedals, (bar,), max(2, 0.04 * h))


def _draw_perro(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dark, lw = _shade(rgb, 0.7) if sum(rgb) > 150 else (70, 70, 70), max(2, 0.09 * h)
    bx0, bx1 = (x0 + 0.22 * w, x1 - 0.12 * w) if flip else (x0 + 0.12 * w, x1 - 0.22 * w)
    for lx in (bx0 + 0.08 * w, bx0 + 0.22 * w, bx1 - 0.2 * w, bx1 - 0.07 * w):
        _line(d, (lx, y0 + 0.55 * h), (lx, y1), rgb, lw * 1.4)
    d.ellipse((bx0, y0 + 0.28 * h, bx1, y0 + 0.72 * h), fill=rgb, outline=dark)
    hx = x0 + 0.14 * w if flip else x1 - 0.14 * w
    tx = bx1 if flip else bx0
    _line(d, (tx, y0 + 0.4 * h), (tx + (0.12 if flip else -0.12) * w, y0 + 0.1 * h), rgb, lw)
    r = 0.24 * h
    d.ellipse((hx - r, y0, hx + r, y0 + 2 * r), fill=rgb, outline=dark)
    ex = hx - 0.6 * r if not flip else hx + 0.6 * r
    d.ellipse((ex - r * 0.35, y0 + 0.1 * h, ex + r * 0.35, y0 + 0.55 * h), fill=dark)
    nx = hx + (-r if flip else r)
    d.ellipse((nx - 2, y0 + r - 2, nx + 2, y0 + r + 2), fill=(10, 10, 10))


def _draw_gato(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, dark = (x0 + x1) / 2, _shade(rgb, 0.7) if sum(rgb) > 150 else (75, 75, 80)
    tail_x = x1 if not flip else x0
    _line(d, (cx, y1 - 0.1 * h), (tail_x, y0 + 0.35 * h), rgb, max(2, 0.08 * w))
    d.ellipse((x0 + 0.12 * w, y0 + 0.38 * h, x1 - 0.12 * w, y1), fill=rgb, outline=dark)
    r = 0.2 * h
    hy = y0 + 0.1 * h + r
    d.polygon([(cx - r, hy - 0.3 * r), (cx - 0.8 * r, hy - 1.6 * r), (cx - 0.1 * r, hy - 0.8 * r)], fill=rgb)
    d.polygon([(cx + r, hy - 0.3 * r), (cx + 0.8 * r, hy - 1.6 * r), (cx + 0.1 * r, hy - 0.8 * r)], fill=rgb)
    d.ellipse((cx - r, hy - r, cx + r, hy + r), fill=rgb, outline=dark)
    for ex in (cx - 0.4 * r, cx + 0.4 * r):
        d.ellipse((ex - 2, hy - 2, ex + 2, hy + 2), fill=(90, 180, 60))


def _draw_coche(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    dark = _shade(rgb, 0.6)
    off = 0.12 * w if flip else 0.0
    d.polygon([(x0 + 0.22 * w + off, y0 + 0.42 * h), (x0 + 0.32 * w + off, y0), (x0 + 0.66 * w + off, y0),
               (x0 + 0.78 * w + off, y0 + 0.42 * h)], fill=rgb, outline=dark)
    for a, b in ((0.34, 0.48), (0.51, 0.65)):
        d.rectangle((x0 + a * w + off, y0 + 0.1 * h, x0 + b * w + off, y0 + 0.4 * h), fill=(170, 210, 235))
    d.rounded_rectangle((x0, y0 + 0.4 * h, x1, y1 - 0.12 * h), radius=max(1, int(0.12 * h)), fill=rgb, outline=dark)
    r = 0.2 * h
    for cx in (x0 + 0.22 * w, x1 - 0.22 * w):
        d.ellipse((cx - r, y1 - 2 * r, cx + r, y1), fill=(20, 20, 20))
        d.ellipse((cx - r / 2, y1 - 1.5 * r, cx + r / 2, y1 - 0.5 * r), fill=(160, 160, 160))


def _draw_arbol(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    d.rectangle((cx - 0.08 * w, y0 + 0.45 * h, cx + 0.08 * w, y1), fill=(100, 65, 35))
    dark = _shade(rgb, 0.75)
    for (ax, ay, ar) in ((0.5, 0.3, 0.3), (0.3, 0.4, 0.22), (0.7, 0.4, 0.22), (0.5, 0.15, 0.2)):
        r = ar * w * 1.05
        d.ellipse((x0 + ax * w - r, y0 + ay * h - r * 0.95, x0 + ax * w + r, y0 + ay * h + r * 0.95), fill=rgb, outline=dark)


def _draw_casa(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d.rectangle((x0 + 0.08 * w, y0 + 0.4 * h, x1 - 0.08 * w, y1), fill=rgb, outline=_shade(rgb, 0.65))
    d.polygon([(x0, y0 + 0.42 * h), ((x0 + x1) / 2, y0), (x1, y0 + 0.42 * h)], fill=(140, 55, 40))
    dx = x0 + (0.62 if flip else 0.22) * w
    d.rectangle((dx, y0 + 0.68 * h, dx + 0.16 * w, y1), fill=(95, 60, 30))
    wx = x0 + (0.2 if flip else 0.58) * w
    d.rectangle((wx, y0 + 0.52 * h, wx + 0.2 * w, y0 + 0.72 * h), fill=(175, 215, 240), outline=(250, 250, 250))


def _draw_pelota(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    line = (250, 250, 250) if sum(rgb) < 600 else (40, 40, 40)
    d.ellipse(box, fill=rgb, outline=_shade(rgb, 0.6))
    d.arc((x0 - 0.3 * (x1 - x0), y0, x1 - 0.3 * (x1 - x0), y1), 300, 60, fill=line, width=2)


def _draw_barco(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    mast = x0 + (0.55 if flip else 0.45) * w
    _line(d, (mast, y1 - 0.35 * h), (mast, y0), (90, 60, 30), max(2, 0.025 * w))
    tip = x0 + 0.12 * w if not flip else x1 - 0.12 * w
    d.polygon([(mast, y0 + 0.04 * h), (mast, y1 - 0.4 * h), (tip, y1 - 0.4 * h)], fill=(250, 248, 235), outline=(180, 180, 170))
    d.polygon([(x0, y1 - 0.36 * h), (x1, y1 - 0.36 * h), (x1 - 0.14 * w, y1), (x0 + 0.14 * w, y1)], fill=rgb, outline=_shade(rgb, 0.6))


def _draw_sol(d, box, rgb, rng, flip):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    for a in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        _line(d, (cx + 1.1 * r * np.cos(a), cy + 1.1 * r * np.sin(a)), (cx + 1.5 * r * np.cos(a), cy + 1.5 * r * np.sin(a)), rgb, 2)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)


def _draw_luna(d, box, rgb, rng, flip):
    x0, y0, x1, _ = box
    d.ellipse(box, fill=(242, 240, 220))
    w = x1 - x0
    for fx, fy, fr in ((0.35, 0.35, 0.12), (0.6, 0.6, 0.09), (0.62, 0.3, 0.06)):
        d.ellipse((x0 + (fx - fr) * w, y0 + (fy - fr) * w, x0 + (fx + fr) * w, y0 + (fy + fr) * w), fill=(205, 205, 190))


_DRAW = {
    "persona": _draw_persona, "ciclista": _draw_ciclista, "bicicleta": _draw_bicicleta, "perro": _draw_perro,
    "gato": _draw_gato, "coche": _draw_coche, "arbol": _draw_arbol, "casa": _draw_casa, "pelota": _draw_pelota,
    "barco": _draw_barco, "sol": _draw_sol, "luna": _draw_luna,
}


def _draw_object(d, obj: SceneObject, S: int, rng: np.random.Generator) -> None:
    rgb = _jit(COLORS[obj.color], rng, 12)
    flip = bool(rng.random() < 0.5)
    x0, y0, x1, y1 = (v * S for v in obj.box)
    w = (x1 - x0 - 0.03 * S * (obj.count - 1)) / obj.count
    for i in range(obj.count):
        left = x0 + i * (w + 0.03 * S)
        _DRAW[obj.kind](d, (left, y0, left + w, y1), rgb, rng, flip)


_NOISE_OFFSET = 16  # noise is stored shifted by this much, so one saturating add applies signed noise


@lru_cache(maxsize=4)
def noise_bank(seed: int, size: int) -> Image.Image:
    """(2*size, 2*size) RGB pixel noise, sigma 5, stored as ``noise + 16`` clipped to 0..32.

    Each picture adds a random window of it and subtracts 16 in the same saturating operation.
    """
    noise = np.random.default_rng([seed, 7]).normal(0, 5, (2 * size, 2 * size, 3))
    return Image.fromarray(np.clip(np.round(noise) + _NOISE_OFFSET, 0, 2 * _NOISE_OFFSET).astype(np.uint8))


def add_noise(img: Image.Image, noise: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` plus a random window of a :func:`noise_bank` (saturating at 0 and 255)."""
    w, h = img.size
    ox, oy = int(rng.integers(0, noise.width - w + 1)), int(rng.integers(0, noise.height - h + 1))
    return ImageChops.add(img, noise.crop((ox, oy, ox + w, oy + h)), offset=-_NOISE_OFFSET)


def draw_scene(scene: Scene, size: int, rng: np.random.Generator, noise: Image.Image | None = None) -> Image.Image:
    """Render ``scene`` as a ``size``x``size`` RGB image; ``noise`` comes from :func:`noise_bank`."""
    img = _background(scene.setting, size, rng)
    d = ImageDraw.Draw(img)
    for i in scene.order:
        _draw_object(d, scene.objects[i], size, rng)
    return img if noise is None else add_noise(img, noise, rng)
