"""Demo scenes: a seeded scene model of objects in a setting, with colours, sizes, positions, relations.

A :class:`Scene` is the ground truth of one demo image: the setting (``playa``, ``parque``...), a main
subject, an optional second object related to it (``junto a``, ``encima de``...) and an optional sun or
moon. Positions are laid out here so that the drawing (:mod:`retrieval.demo.draw`) and the captions
(:mod:`retrieval.demo.captions`) both read the same facts. Coordinates are fractions of the image side:
``box = (x0, y0, x1, y1)``, ``x, y`` its centre, y growing downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SETTINGS: tuple[str, ...] = ("playa", "parque", "calle", "nieve", "noche", "campo", "lago")
WATER_SETTINGS = frozenset({"playa", "lago"})

#: Ground objects; ``ciclista`` is a person riding a bicycle (drawn as one figure).
KINDS: tuple[str, ...] = (
    "persona", "ciclista", "bicicleta", "perro", "gato", "coche", "arbol", "casa", "pelota", "barco",
)
SKY_KINDS: tuple[str, ...] = ("sol", "luna")

COLORS: dict[str, tuple[int, int, int]] = {
    "rojo": (205, 35, 35),
    "azul": (35, 75, 205),
    "verde": (40, 150, 55),
    "amarillo": (245, 210, 35),
    "negro": (28, 28, 30),
    "blanco": (246, 246, 246),
    "marrón": (125, 75, 35),
    "gris": (128, 128, 132),
    "naranja": (245, 135, 25),
    "rosa": (240, 125, 180),
}
_ALL = tuple(COLORS)
KIND_COLORS: dict[str, tuple[str, ...]] = {
    "persona": _ALL,
    "ciclista": _ALL,
    "bicicleta": _ALL,
    "perro": ("marrón", "negro", "blanco", "gris"),
    "gato": ("negro", "blanco", "gris", "naranja", "marrón"),
    "coche": ("rojo", "azul", "verde", "amarillo", "negro", "blanco", "gris", "naranja"),
    "arbol": ("verde", "amarillo", "naranja", "rojo"),
    "casa": ("blanco", "amarillo", "rojo", "azul", "rosa", "gris", "naranja", "verde"),
    "pelota": ("rojo", "azul", "amarillo", "verde", "blanco", "naranja", "rosa"),
    "barco": ("blanco", "rojo", "azul", "amarillo", "verde", "negro"),
    "sol": ("amarillo",),
    "luna": ("blanco",),
}

SIZES: dict[str, float] = {"pequeño": 0.68, "mediano": 0.9, "grande": 1.15}
_SMALLER = {"grande": "mediano", "mediano": "pequeño", "pequeño": "pequeño"}

#: (width, height) of one instance at scale 1, as fractions of the image side.
_DIMS: dict[str, tuple[float, float]] = {
    "persona": (0.18, 0.48), "ciclista": (0.50, 0.50), "bicicleta": (0.48, 0.28),
    "perro": (0.38, 0.25), "gato": (0.20, 0.26), "coche": (0.52, 0.24), "arbol": (0.36, 0.60),
    "casa": (0.40, 0.44), "pelota": (0.15, 0.15), "barco": (0.44, 0.38), "sol": (0.17, 0.17),
    "luna": (0.16, 0.16),
}
#: Range of the objects' ground line (bottom edge) per setting; boats float in the water band.
_GROUND: dict[str, tuple[float, float]] = {
    "playa": (0.74, 0.96), "parque": (0.66, 0.96), "calle": (0.74, 0.96), "nieve": (0.66, 0.96),
    "noche": (0.70, 0.96), "campo": (0.66, 0.96), "lago": (0.86, 0.97),
}
_WATER: dict[str, tuple[float, float]] = {"playa": (0.52, 0.56), "lago": (0.58, 0.72)}

RELATIONS: tuple[str, ...] = (
    "junto a", "a la izquierda de", "a la derecha de", "delante de", "detrás de", "encima de", "debajo de",
)
_SIDE_RELATIONS = ("junto a", "a la izquierda de", "a la derecha de")
_ON_TOP_SUBJECTS = frozenset({"gato", "perro", "pelota"})
_ON_TOP_OBJECTS = frozenset({"coche", "casa", "barco"})
_UNDER_TREE = frozenset({"persona", "ciclista", "bicicleta", "perro", "gato", "pelota", "coche"})
_PLURAL_KINDS = frozenset({"persona", "perro", "gato", "pelota", "arbol", "coche", "casa", "barco"})
_GAP = 0.03  # between the two instances of a plural object


@dataclass(frozen=True)
class SceneObject:
    """One object (or a group of ``count`` identical ones) with its colour name, size name and box."""

    kind: str
    color: str
    size: str
    box: tuple[float, float, float, float]
    count: int = 1

    @property
    def x(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def y(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Relation:
    """``objects[subject] <relation> objects[object]``, e.g. 0 ``junto a`` 1."""

    subject: int
    relation: str
    object: int


@dataclass(frozen=True)
class Scene:
    """Ground truth of one demo image. ``objects[0]`` is the subject; draw ``objects`` in ``order``."""

    setting: str
    objects: tuple[SceneObject, ...]
    relations: tuple[Relation, ...]
    order: tuple[int, ...]

    @property
    def subject(self) -> SceneObject:
        return self.objects[0]

    @property
    def person_on_bicycle(self) -> bool:
        return any(o.kind == "ciclista" for o in self.objects)

    def to_json(self, image_id: str, split: str) -> dict:
        """The scenes.jsonl record: id, split, objects (kind/color/size/x/y/count/box), setting, relations."""
        return {
            "id": image_id,
            "split": split,
            "setting": self.setting,
            "objects": [
                {"kind": o.kind, "color": o.color, "size": o.size, "x": round(o.x, 3), "y": round(o.y, 3),
                 "count": o.count, "box": [round(v, 3) for v in o.box]}
                for o in self.objects
            ],
            "relations": [
                {"subject": r.subject, "relation": r.relation, "object": r.object} for r in self.relations
            ],
            "person_on_bicycle": self.person_on_bicycle,
        }


def object_dims(kind: str, size: str, count: int = 1) -> tuple[float, float]:
    """(width, height) of an object group as fractions of the image side."""
    w, h = _DIMS[kind]
    s = SIZES[size]
    return (w * s * count + _GAP * (count - 1), h * s)


def _pick(rng: np.random.Generator, items) -> str:
    items = tuple(items)
    return items[int(rng.integers(len(items)))]


def _pick_size(rng: np.random.Generator) -> str:
    return _pick(rng, ("pequeño", "mediano", "mediano", "grande"))


def _relation_for(rng: np.random.Generator, subj: str, obj: str, setting: str) -> str | None:
    """A relation that can be drawn plausibly between two kinds, or None."""
    water = setting in WATER_SETTINGS
    if "barco" in (subj, obj) and subj != obj:
        if obj == "barco" and subj in _ON_TOP_SUBJECTS and rng.random() < 0.3:
            return "encima de"
        # One floats, the other stands on the shore: the shore one is in front.
        return "delante de" if obj == "barco" else "detrás de"
    options = list(_SIDE_RELATIONS) * 2 + ["delante de", "detrás de"]
    if subj in _ON_TOP_SUBJECTS and obj in _ON_TOP_OBJECTS - {"barco"}:
        options += ["encima de"] * 3
    if obj == "arbol" and subj in _UNDER_TREE:
        options += ["debajo de"] * 3
    if water and subj == obj == "barco":
        options = list(_SIDE_RELATIONS)
    return _pick(rng, options)


def _ground_band(setting: str, kind: str) -> tuple[float, float]:
    return _WATER[setting] if kind == "barco" else _GROUND[setting]


def _box_at(cx: float, bottom: float, w: float, h: float) -> tuple[float, float, float, float]:
    return (cx - w / 2, bottom - h, cx + w / 2, bottom)


def _free_x(rng: np.random.Generator, w: float) -> float:
    lo, hi = 0.02 + w / 2, 0.98 - w / 2
    return float(rng.uniform(lo, hi)) if hi > lo else 0.5


def _layout_pair(rng, setting, s_kind, s_size, s_count, o_kind, o_size, relation):
    """Boxes (subject, object) and drawing order for a related pair; None when it does not fit."""
    sw, sh = object_dims(s_kind, s_size, s_count)
    ow, oh = object_dims(o_kind, o_size)
    s_lo, s_hi = _ground_band(setting, s_kind)
    o_lo, o_hi = _ground_band(setting, o_kind)
    if relation in _SIDE_RELATIONS:
        gap = float(rng.uniform(0.0, 0.04)) if relation == "junto a" else float(rng.uniform(0.08, 0.18))
        total = sw + gap + ow
        if total > 0.96:
            return None
        left = float(rng.uniform(0.02, 0.98 - total))
        subj_left = rng.random() < 0.5 if relation == "junto a" else relation == "a la izquierda de"
        if subj_left:
            s_cx, o_cx = left + sw / 2, left + sw + gap + ow / 2
        else:
            o_cx, s_cx = left + ow / 2, left + ow + gap + sw / 2
        s_bottom = float(rng.uniform(max(s_lo, o_lo), min(s_hi, o_hi)))
        o_bottom = s_bottom + float(rng.uniform(-0.01, 0.01))
        return _box_at(s_cx, s_bottom, sw, sh), _box_at(o_cx, o_bottom, ow, oh), (1, 0)
    if relation in ("delante de", "detrás de"):
        front_is_subject = relation == "delante de"
        fw, fh, bw, bh = (sw, sh, ow, oh) if front_is_subject else (ow, oh, sw, sh)
        f_lo, f_hi = (s_lo, s_hi) if front_is_subject else (o_lo, o_hi)
        b_lo, b_hi = (o_lo, o_hi) if front_is_subject else (s_lo, s_hi)
        b_bottom = float(rng.uniform(b_lo, min(b_hi, f_hi - 0.06))) if b_lo == f_lo else float(rng.uniform(b_lo, b_hi))
        f_bottom = float(rng.uniform(max(f_lo, b_bottom + 0.05), f_hi)) if b_lo == f_lo else float(rng.uniform(f_lo, f_hi))
        b_cx = _free_x(rng, bw)
        shift = (fw + bw) / 2 * float(rng.uniform(0.35, 0.6)) * (1 if rng.random() < 0.5 else -1)
        f_cx = float(np.clip(b_cx + shift, 0.02 + fw / 2, 0.98 - fw / 2))
        front, back = _box_at(f_cx, f_bottom, fw, fh), _box_at(b_cx, b_bottom, bw, bh)
        return (front, back, (1, 0)) if front_is_subject else (back, front, (0, 1))
    if relation == "encima de":
        o_cx, o_bottom = _free_x(rng, ow), float(rng.uniform(o_lo, o_hi))
        o_box = _box_at(o_cx, o_bottom, ow, oh)
        top = {"barco": o_bottom - 0.3 * oh, "casa": o_box[1] + 0.12 * oh}.get(o_kind, o_box[1] + 0.02 * oh)
        spread = 0.05 if o_kind == "casa" else 0.2
        s_cx = float(np.clip(o_cx + rng.uniform(-spread, spread) * ow, 0.02 + sw / 2, 0.98 - sw / 2))
        s_box = _box_at(s_cx, top, sw, sh)
        return (s_box, o_box, (1, 0)) if s_box[1] > 0.01 else None
    if relation == "debajo de":
        o_cx, o_bottom = _free_x(rng, ow), float(rng.uniform(o_lo, o_hi - 0.02))
        o_box = _box_at(o_cx, o_bottom, ow, oh)
        s_cx = float(np.clip(o_cx + rng.uniform(-0.3, 0.3) * ow, 0.02 + sw / 2, 0.98 - sw / 2))
        s_box = _box_at(s_cx, o_bottom + float(rng.uniform(0.0, 0.03)), sw, sh)
        return (s_box, o_box, (1, 0)) if sh < 0.75 * oh else None
    raise ValueError(f"unknown relation {relation!r}")


def sample_scene(rng: np.random.Generator, cyclist: bool = False) -> Scene:
    """Draw one random scene; ``cyclist=True`` makes the subject a person riding a bicycle."""
    setting = _pick(rng, SETTINGS)
    if cyclist:
        s_kind = "ciclista"
    else:
        kinds = [k for k in KINDS if k != "ciclista" and (k != "barco" or setting in WATER_SETTINGS)]
        s_kind = _pick(rng, kinds)
    s_color, s_size = _pick(rng, KIND_COLORS[s_kind]), _pick_size(rng)
    s_count = 2 if s_kind in _PLURAL_KINDS and rng.random() < 0.12 else 1
    objects: list[SceneObject] = []
    relations: list[Relation] = []
    order: list[int] = []
    if rng.random() < 0.8:
        o_kinds = [k for k in KINDS if k != "ciclista" and (k != "barco" or setting in WATER_SETTINGS)]
        o_kind = _pick(rng, o_kinds)
        o_color, o_size = _pick(rng, KIND_COLORS[o_kind]), _pick_size(rng)
        relation = _relation_for(rng, s_kind, o_kind, setting)
        if relation in ("encima de", "debajo de"):
            s_count = 1
        if relation == "debajo de":
            o_size, s_size = "grande", _pick(rng, ("pequeño", "mediano"))
        placed = None
        for _ in range(4):
            placed = _layout_pair(rng, setting, s_kind, s_size, s_count, o_kind, o_size, relation)
            if placed is not None and min(placed[0][1], placed[1][1]) > 0.0:
                break
            placed = None
            s_size, o_size = _SMALLER[s_size], _SMALLER[o_size]
            s_count = 1
        if placed is not None:
            s_box, o_box, pair_order = placed
            objects = [SceneObject(s_kind, s_color, s_size, s_box, s_count), SceneObject(o_kind, o_color, o_size, o_box)]
            relations = [Relation(0, relation, 1)]
            order = list(pair_order)
    if not objects:
        sw, sh = object_dims(s_kind, s_size, s_count)
        lo, hi = _ground_band(setting, s_kind)
        lo = min(max(lo, sh + 0.01), hi)
        objects = [SceneObject(s_kind, s_color, s_size, _box_at(_free_x(rng, sw), float(rng.uniform(lo, hi)), sw, sh), s_count)]
        order = [0]
    sky = "luna" if setting == "noche" else "sol"
    if rng.random() < (0.75 if sky == "luna" else 0.35):
        w, h = object_dims(sky, "mediano")
        cx = float(rng.uniform(0.12, 0.88))
        objects.append(SceneObject(sky, KIND_COLORS[sky][0], "mediano", _box_at(cx, float(rng.uniform(0.2, 0.3)), w, h)))
        order.insert(0, len(objects) - 1)
    return Scene(setting, tuple(objects), tuple(relations), tuple(order))


def split_code(split: str) -> int:
    """A stable integer for a split name, used in the per-image seeds (``[seed, code, stream, i]``)."""
    return sum(ord(c) * 31**i for i, c in enumerate(split)) % (2**31)


def split_scenes(seed: int, split: str, n: int, cyclist_share: float = 0.09) -> list[Scene]:
    """The ``n`` scenes of one split; scene i depends only on (seed, split, i) and the cyclist quota.

    Exactly ``round(cyclist_share * n)`` scenes (at least one when n >= 5) show a person on a bicycle.
    """
    code = split_code(split)
    n_cyc = max(round(cyclist_share * n), 1 if n >= 5 else 0)
    cyclists = set(np.random.default_rng([seed, code, 0]).permutation(n)[:n_cyc].tolist())
    return [sample_scene(np.random.default_rng([seed, code, 1, i]), cyclist=i in cyclists) for i in range(n)]
