"""Spanish captions for demo scenes: several phrasings per image, each built from the scene's own facts.

Every caption names only what the picture shows: the subject (with its colour and size when
mentioned), the related object and the relation, the setting, the sun or moon. Phrasings vary by
synonyms, word order, point of view ("un árbol con un perro al lado") and which attributes they keep,
with Spanish gender/number agreement ("una casa roja", "dos perros marrones", "vestida de rojo").
"""

from __future__ import annotations

import numpy as np

from retrieval.demo.scenes import Scene, SceneObject

#: kind -> synonyms as (singular, plural, gender); the common word is repeated to make it the most frequent.
NOUNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "persona": (("persona", "personas", "f"), ("persona", "personas", "f"), ("hombre", "hombres", "m"),
                ("mujer", "mujeres", "f")),
    "bicicleta": (("bicicleta", "bicicletas", "f"), ("bicicleta", "bicicletas", "f"), ("bici", "bicis", "f")),
    "perro": (("perro", "perros", "m"), ("perro", "perros", "m"), ("perro", "perros", "m"), ("can", "canes", "m")),
    "gato": (("gato", "gatos", "m"), ("gato", "gatos", "m"), ("gato", "gatos", "m"), ("minino", "mininos", "m")),
    "coche": (("coche", "coches", "m"), ("coche", "coches", "m"), ("coche", "coches", "m"), ("automóvil", "automóviles", "m"),
              ("auto", "autos", "m")),
    "arbol": (("árbol", "árboles", "m"),),
    "casa": (("casa", "casas", "f"), ("casa", "casas", "f"), ("vivienda", "viviendas", "f")),
    "pelota": (("pelota", "pelotas", "f"), ("pelota", "pelotas", "f"), ("pelota", "pelotas", "f"), ("balón", "balones", "m")),
    "barco": (("barco", "barcos", "m"), ("barco", "barcos", "m"), ("barco", "barcos", "m"), ("velero", "veleros", "m"),
              ("barca", "barcas", "f")),
}
#: kind -> verbs as (singular, plural); "#" is a participle ending that agrees with the noun.
VERBS: dict[str, tuple[tuple[str, str], ...]] = {
    "persona": (("camina", "caminan"), ("pasea", "pasean"), ("está de pie", "están de pie"), ("espera", "esperan")),
    "ciclista": (("pedalea", "pedalean"), ("circula", "circulan"), ("avanza", "avanzan"), ("pasea", "pasean")),
    "bicicleta": (("está aparcad#", "están aparcad#"), ("está apoyad#", "están apoyad#")),
    "perro": (("corre", "corren"), ("juega", "juegan"), ("pasea", "pasean"), ("está sentad#", "están sentad#")),
    "gato": (("descansa", "descansan"), ("está sentad#", "están sentad#"), ("duerme", "duermen")),
    "coche": (("está aparcad#", "están aparcad#"), ("circula", "circulan"), ("espera", "esperan")),
    "arbol": (("crece", "crecen"), ("se alza", "se alzan")),
    "casa": (("se levanta", "se levantan"), ("se ve", "se ven")),
    "pelota": (("está", "están"), ("descansa", "descansan")),
    "barco": (("navega", "navegan"), ("flota", "flotan"), ("está anclad#", "están anclad#")),
}
_MOVING = frozenset({"persona", "ciclista", "perro"})
SETTING_PHRASES: dict[str, tuple[str, ...]] = {
    "playa": ("en la playa", "en la playa", "en una playa", "junto al mar", "en la arena de la playa"),
    "parque": ("en el parque", "en el parque", "en un parque", "en el césped de un parque"),
    "calle": ("en la calle", "en la calle", "en una calle de la ciudad", "en la ciudad"),
    "nieve": ("en la nieve", "en la nieve", "en un paisaje nevado", "sobre la nieve"),
    "noche": ("de noche", "de noche", "por la noche", "bajo el cielo estrellado de la noche"),
    "campo": ("en el campo", "en el campo", "en un campo de trigo", "en medio del campo"),
    "lago": ("en el lago", "en el lago", "a orillas de un lago", "en la orilla del lago"),
}
_THROUGH = {"playa": "por la playa", "parque": "por el parque", "calle": "por la calle",
            "nieve": "por la nieve", "campo": "por el campo"}
SKY_PHRASES = {"sol": ("en un día soleado", "bajo el sol", "con el sol en el cielo"),
               "luna": ("bajo la luna", "con la luna llena en el cielo", "a la luz de la luna")}
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "junto a": ("junto a", "junto a", "al lado de"),
    "a la izquierda de": ("a la izquierda de",),
    "a la derecha de": ("a la derecha de",),
    "delante de": ("delante de", "delante de", "frente a"),
    "detrás de": ("detrás de", "detrás de", "tras"),
    "encima de": ("encima de", "encima de", "sobre"),
    "debajo de": ("debajo de", "debajo de", "bajo"),
}
#: the relation seen from the object: "un árbol con un perro al lado"
_INVERSE = {"junto a": "al lado", "a la izquierda de": "a su izquierda", "a la derecha de": "a su derecha",
            "delante de": "delante", "detrás de": "detrás", "encima de": "encima", "debajo de": "debajo"}
_CYCLIST = (("una persona en bicicleta", "f"), ("una persona en bicicleta", "f"), ("un ciclista", "m"),
            ("una persona montando en bicicleta", "f"), ("un hombre en bicicleta", "m"),
            ("una mujer en bicicleta", "f"), ("alguien en bicicleta", "m"))
_CYCLIST_COLOR = (("una persona en bicicleta vestida de {c}", "f"), ("una persona en bicicleta con camiseta {a}", "f"),
                  ("una persona en una bicicleta {a}", "f"), ("un ciclista con una bicicleta {a}", "m"),
                  ("una persona vestida de {c} que monta una bicicleta {a}", "f"),
                  ("un ciclista vestido de {c}", "m"), ("una bicicleta {a} con su ciclista", "f"))
_GENDERED = {"rojo": "roj", "blanco": "blanc", "negro": "negr", "amarillo": "amarill"}
_PLURAL = {"azul": "azules", "verde": "verdes", "marrón": "marrones", "gris": "grises", "naranja": "naranjas",
           "rosa": "rosas"}
_ZONES = ("en el lado izquierdo de la foto", "en el centro de la foto", "en el lado derecho de la foto")


def color_word(color: str, gender: str, plural: bool = False) -> str:
    """Colour adjective agreeing with a noun: ("rojo", "f", True) -> "rojas"; ("marrón", "m", True) -> "marrones"."""
    if color in _GENDERED:
        return _GENDERED[color] + ("o" if gender == "m" else "a") + ("s" if plural else "")
    return _PLURAL[color] if plural else color


def _ending(gender: str, plural: bool) -> str:
    return ("o" if gender == "m" else "a") + ("s" if plural else "")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _article(gender: str, count: int, definite: bool) -> str:
    if count == 2:
        return "los dos" if definite else "dos"
    return ("el" if gender == "m" else "la") if definite else ("un" if gender == "m" else "una")


def _join(prep: str, np_: str) -> str:
    """Spanish contractions: "junto a" + "el coche" -> "junto al coche"; "delante de" + "el" -> "delante del"."""
    words = prep.split()
    if np_.startswith("el ") and words and words[-1] in ("a", "de"):
        return " ".join(words[:-1] + ["al" if words[-1] == "a" else "del", np_[3:]])
    return f"{prep} {np_}"


def noun_phrase(obj: SceneObject, rng: np.random.Generator, color: bool, size: bool,
                definite: bool = False) -> tuple[str, str]:
    """(phrase, gender) naming ``obj``, e.g. ("un perro marrón grande", "m"), ("dos casas rojas", "f")."""
    if obj.kind == "ciclista":
        if color:
            text, g = _pick(rng, _CYCLIST_COLOR)
            return text.format(a=color_word(obj.color, "f"), c=obj.color), g
        return _pick(rng, _CYCLIST)
    sing, plur, g = _pick(rng, NOUNS[obj.kind])
    pl = obj.count > 1
    size_word = ""
    if size and obj.size != "mediano":
        size_word = "grande" + ("s" if pl else "") if obj.size == "grande" else "pequeñ" + _ending(g, pl)
    before = size_word and obj.kind != "persona" and rng.random() < 0.5
    words = [_article(g, obj.count, definite)]
    if before:
        words.append("gran" if size_word == "grande" else size_word)
    words.append(plur if pl else sing)
    if size_word and not before and (obj.kind == "persona" or not color):
        words.append(size_word)
    if color:
        if obj.kind == "persona":
            words.append(_pick(rng, (
                f"vestid{_ending(g, pl)} de {obj.color}",
                f"con camiseta{'s' if pl else ''} {color_word(obj.color, 'f', pl)}",
                f"con ropa {color_word(obj.color, 'f')}",
            )))
        elif rng.random() < 0.2:
            words.append(f"de color {obj.color}")
        else:
            words.append(color_word(obj.color, g, pl))
        if size_word and not before and obj.kind != "persona":
            words.append(size_word)
    return " ".join(words), g


def _verb(kind: str, gender: str, plural: bool, rng: np.random.Generator) -> str:
    sing, plur = _pick(rng, VERBS[kind])
    return (plur if plural else sing).replace("#", _ending(gender, plural))


def _setting(scene: Scene, rng: np.random.Generator, moving: bool = False) -> str:
    if moving and scene.subject.kind in _MOVING and scene.setting in _THROUGH and rng.random() < 0.35:
        return _THROUGH[scene.setting]
    return _pick(rng, SETTING_PHRASES[scene.setting])


def _sky(scene: Scene, rng: np.random.Generator) -> str:
    for o in scene.objects:
        if o.kind in SKY_PHRASES:
            return " " + _pick(rng, SKY_PHRASES[o.kind])
    return ""


def _pair(scene: Scene) -> tuple[SceneObject, str, SceneObject] | None:
    if not scene.relations:
        return None
    r = scene.relations[0]
    return scene.objects[r.subject], r.relation, scene.objects[r.object]


def _relation_phrase(relation: str, obj: SceneObject, rng: np.random.Generator) -> str:
    definite = rng.random() < 0.3
    o_np, _ = noun_phrase(obj, rng, color=rng.random() < 0.6, size=rng.random() < 0.3, definite=definite)
    if relation == "encima de" and obj.kind == "casa" and rng.random() < 0.4:
        return _join("en el tejado de", o_np)
    return _join(_pick(rng, RELATION_PHRASES[relation]), o_np)


def _t_full(scene, rng):
    subj, relation, obj = _pair(scene)
    s_np, g = noun_phrase(subj, rng, color=True, size=rng.random() < 0.5)
    verb = _verb(subj.kind, g, subj.count > 1, rng)
    return f"{s_np} {verb} {_relation_phrase(relation, obj, rng)} {_setting(scene, rng)}"


def _t_hay(scene, rng):
    subj, relation, obj = _pair(scene)
    s_np, _ = noun_phrase(subj, rng, color=rng.random() < 0.8, size=rng.random() < 0.3)
    return f"hay {s_np} {_relation_phrase(relation, obj, rng)} {_setting(scene, rng)}"


def _t_setting_first(scene, rng):
    subj, relation, obj = _pair(scene)
    s_np, g = noun_phrase(subj, rng, color=rng.random() < 0.7, size=False)
    verb = _verb(subj.kind, g, subj.count > 1, rng)
    return f"{_setting(scene, rng)}, {s_np} {verb} {_relation_phrase(relation, obj, rng)}"


def _t_inverse(scene, rng):
    subj, relation, obj = _pair(scene)
    o_np, _ = noun_phrase(obj, rng, color=rng.random() < 0.8, size=rng.random() < 0.3)
    s_np, _ = noun_phrase(subj, rng, color=rng.random() < 0.7, size=False)
    return f"{o_np} con {s_np} {_INVERSE[relation]} {_setting(scene, rng)}"


def _t_photo(scene, rng):
    s_np, _ = noun_phrase(scene.subject, rng, color=True, size=rng.random() < 0.6)
    lead = _pick(rng, ("foto de", "una foto de", "imagen de", "una imagen de"))
    return f"{lead} {s_np} {_setting(scene, rng)}{_sky(scene, rng)}"


def _t_short(scene, rng):
    subj = scene.subject
    s_np, g = noun_phrase(subj, rng, color=rng.random() < 0.5, size=False)
    verb = _verb(subj.kind, g, subj.count > 1, rng)
    return f"{s_np} {verb} {_setting(scene, rng, moving=True)}"


def _t_zone(scene, rng):
    subj = scene.subject
    s_np, _ = noun_phrase(subj, rng, color=True, size=rng.random() < 0.4)
    zone = _ZONES[0 if subj.x < 0.36 else 2 if subj.x > 0.64 else 1]
    return f"{s_np} {zone} {_setting(scene, rng)}"


_PAIR_TEMPLATES = (_t_full, _t_hay, _t_setting_first, _t_inverse)
_ANY_TEMPLATES = (_t_photo, _t_short, _t_zone)


def scene_captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` distinct Spanish captions of ``scene`` (first letter capitalised, final full stop)."""
    templates = list(_ANY_TEMPLATES) + (list(_PAIR_TEMPLATES) * 2 if scene.relations else [_t_photo, _t_short])
    captions: list[str] = []
    for _ in range(20 * n):
        text = templates[int(rng.integers(len(templates)))](scene, rng)
        text = text[0].upper() + text[1:] + "."
        if text not in captions:
            captions.append(text)
        if len(captions) == n:
            break
    return captions
