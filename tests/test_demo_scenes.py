"""Demo scenes: the layout obeys the relations, captions say only what the scene holds (in correct
Spanish), and the words determine the pixels (a caption-to-image ridge retrieves far above chance)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from retrieval.demo.captions import (
    NOUNS,
    SETTING_PHRASES,
    color_word,
    noun_phrase,
    scene_captions,
)
from retrieval.demo.draw import draw_scene, noise_bank
from retrieval.demo.scenes import (
    COLORS,
    KIND_COLORS,
    SETTINGS,
    SceneObject,
    sample_scene,
    split_scenes,
)

SCENES = split_scenes(11, "train", 600)
CAPTIONS = [scene_captions(s, np.random.default_rng([11, i])) for i, s in enumerate(SCENES)]

_COLOR_FORMS = {form: c for c in COLORS for g in "mf" for pl in (False, True) for form in (color_word(c, g, pl),)}
_NOUN_KINDS: dict[str, set[str]] = {}
for _kind, _synonyms in NOUNS.items():
    for _sing, _plur, _ in _synonyms:
        for _w in (_sing, _plur):
            _NOUN_KINDS.setdefault(_w, set()).add(_kind)
_NOUN_KINDS["ciclista"] = {"ciclista"}
for _w in ("bicicleta", "bici", "persona", "hombre", "mujer"):
    _NOUN_KINDS[_w] = _NOUN_KINDS[_w] | {"ciclista"}
_SETTING_WORDS = {"playa": {"playa", "mar"}, "parque": {"parque"}, "calle": {"calle", "ciudad"},
                  "nieve": {"nieve", "nevado"}, "noche": {"noche"}, "campo": {"campo"}, "lago": {"lago"}}
_RELATION_WORDS = {"izquierda": "a la izquierda de", "derecha": "a la derecha de", "encima": "encima de",
                   "tejado": "encima de", "debajo": "debajo de", "delante": "delante de", "frente": "delante de",
                   "detrás": "detrás de", "tras": "detrás de"}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def test_scenes_are_deterministic_and_cyclist_quota_holds():
    again = split_scenes(11, "train", 600)
    assert again == SCENES
    assert split_scenes(12, "train", 600) != SCENES
    assert sum(s.person_on_bicycle for s in SCENES) == 54  # round(0.09 * 600)
    assert all(sum(s.person_on_bicycle for s in split_scenes(0, "val", n)) >= 1 for n in (5, 12, 150))
    assert {s.setting for s in SCENES} == set(SETTINGS)


def test_layout_obeys_relations_and_stays_in_the_picture():
    seen = set()
    for s in SCENES:
        for o in s.objects:
            assert -1e-9 <= o.box[0] < o.box[2] <= 1 + 1e-9 and -1e-9 <= o.box[1] < o.box[3] <= 1 + 1e-9
            assert o.color in KIND_COLORS[o.kind]
        for r in s.relations:
            a, b, rel = s.objects[r.subject], s.objects[r.object], r.relation
            seen.add(rel)
            first = s.order.index(r.subject) < s.order.index(r.object)
            if rel == "a la izquierda de":
                assert a.box[2] + 0.07 < b.box[0]
            elif rel == "a la derecha de":
                assert b.box[2] + 0.07 < a.box[0]
            elif rel == "junto a":
                gap = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
                assert 0 <= gap <= 0.04 + 1e-9 and abs(a.box[3] - b.box[3]) <= 0.01 + 1e-9
            elif rel == "encima de":
                assert b.box[0] <= a.x <= b.box[2] and a.box[3] <= b.box[3] - 0.25 * (b.box[3] - b.box[1])
                assert not first
            elif rel == "debajo de":
                assert b.kind == "arbol" and a.box[3] >= b.box[3] and a.box[1] > b.box[1]
            elif rel == "delante de":
                assert a.box[3] > b.box[3] and not first
            elif rel == "detrás de":
                assert a.box[3] < b.box[3] and first
    assert seen == {"a la izquierda de", "a la derecha de", "junto a", "encima de", "debajo de",
                    "delante de", "detrás de"}


def test_captions_name_only_what_the_scene_holds():
    subject_colour_mentions = 0
    for s, caps in zip(SCENES, CAPTIONS):
        assert len(caps) == 5 and len(set(caps)) == 5
        kinds = {o.kind for o in s.objects}
        colours = {o.color for o in s.objects if o.kind not in ("sol", "luna")}
        subject_words = {w for w, k in _NOUN_KINDS.items() if s.subject.kind in k}
        for c in caps:
            assert c[0].isupper() and c.endswith(".")
            words = _words(c)
            assert {_COLOR_FORMS[w] for w in words if w in _COLOR_FORMS} <= colours, (c, s)
            for w in words:
                if w in _NOUN_KINDS:
                    assert _NOUN_KINDS[w] & kinds, (w, c, s)
            assert subject_words & set(words), (c, s)
            named = {k for k, ws in _SETTING_WORDS.items() if ws & set(words)}
            assert named == {s.setting}, (c, s)
            assert ("sol" in words) <= ("sol" in kinds) and ("luna" in words) <= ("luna" in kinds)
            relations = {_RELATION_WORDS[w] for w in words if w in _RELATION_WORDS}
            assert relations <= {r.relation for r in s.relations}, (c, s)
            subject_colour_mentions += any(_COLOR_FORMS.get(w) == s.subject.color for w in words)
    assert subject_colour_mentions >= 0.7 * 5 * len(SCENES)


def test_captions_keep_spanish_agreement_and_accents():
    text = "\n".join(c for caps in CAPTIONS for c in caps)
    words = set(_words(text))
    assert {"árbol", "balón", "marrón"} <= words and not {"arbol", "balon", "marron"} & words
    assert " de el " not in text and " a el " not in text and "del árbol" in text and "al lado" in text
    assert not re.search(r"\b(una|la) \w+ (rojo|blanco|negro|amarillo)s?\b", text)
    assert not re.search(r"\b(un|el) \w+ (roja|blanca|negra|amarilla)s?\b", text)
    assert not re.search(r"\bdos \w+ (rojo|roja|blanco|blanca|azul|verde|marrón|gris|naranja|rosa)\b", text)
    assert re.search(r"\bdos \w+ (rojos|rojas|blancos|blancas|azules|verdes|marrones|grises|naranjas|rosas)\b", text)


@pytest.mark.parametrize("color, gender, plural, expected", [
    ("rojo", "f", True, "rojas"), ("marrón", "m", True, "marrones"), ("gris", "f", False, "gris"),
    ("amarillo", "m", False, "amarillo"), ("azul", "m", True, "azules"), ("blanco", "f", False, "blanca"),
])
def test_color_word_agrees(color, gender, plural, expected):
    assert color_word(color, gender, plural) == expected


def test_noun_phrase_agrees_in_number_and_gender():
    houses = SceneObject("casa", "rojo", "grande", (0.1, 0.1, 0.5, 0.5), count=2)
    phrases = {noun_phrase(houses, np.random.default_rng(i), color=True, size=False)[0] for i in range(40)}
    assert phrases >= {"dos casas rojas", "dos viviendas rojas"} and all(p.startswith("dos ") for p in phrases)
    cyclist = SceneObject("ciclista", "blanco", "mediano", (0.1, 0.1, 0.5, 0.5))
    for i in range(20):
        text, _ = noun_phrase(cyclist, np.random.default_rng(i), color=True, size=False)
        assert re.search(r"bicicleta blanca|vestid[oa] de blanco|camiseta blanca", text) and ("bici" in text or "ciclista" in text)


def test_every_setting_phrase_is_used():
    text = "\n".join(c.lower() for caps in CAPTIONS for c in caps)
    for setting, phrases in SETTING_PHRASES.items():
        assert all(p in text for p in set(phrases)), setting


def _colour_features(img) -> np.ndarray:
    """Colour histogram (4 bins a channel) and an 8x8 thumbnail: (64 + 192,) float64."""
    a = (np.asarray(img) // 64).reshape(-1, 3).astype(np.int64)
    hist = np.bincount(a[:, 0] * 16 + a[:, 1] * 4 + a[:, 2], minlength=64) / a.shape[0]
    return np.r_[np.sqrt(hist), np.asarray(img.resize((8, 8)), np.float64).ravel() / 255]


def test_words_determine_pixels():
    """Setting from pixels by nearest centroid, and caption -> image retrieval by a bag-of-words ridge."""
    n, n_train, size = 300, 200, 64
    scenes = split_scenes(5, "signal", n)
    noise = noise_bank(5, size)
    X = np.stack([_colour_features(draw_scene(s, size, np.random.default_rng([5, i]), noise))
                  for i, s in enumerate(scenes)])
    settings = np.array([SETTINGS.index(s.setting) for s in scenes])
    centroids = np.stack([X[:n_train][settings[:n_train] == k].mean(0) for k in range(len(SETTINGS))])
    predicted = ((X[n_train:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == settings[n_train:]).mean() >= 0.9  # chance is 1/7

    captions = [scene_captions(s, np.random.default_rng([5, i, 1])) for i, s in enumerate(scenes)]
    vocab = {w: j for j, w in enumerate(sorted({w for caps in captions[:n_train] for c in caps for w in _words(c)}))}

    def bow(rows):
        B = np.zeros((sum(len(c) for c in rows), len(vocab)))
        for r, c in enumerate(c for caps in rows for c in caps):
            B[r, [vocab[w] for w in _words(c) if w in vocab]] = 1
        return B

    mu, sd = X[:n_train].mean(0), X[:n_train].std(0) + 1e-6
    Z = (X - mu) / sd
    B = bow(captions[:n_train])
    W = np.linalg.solve(B.T @ B + 10 * np.eye(len(vocab)), B.T @ np.repeat(Z[:n_train], 5, axis=0))
    Q = bow(captions[n_train:]) @ W
    G = Z[n_train:]
    S = (Q / np.linalg.norm(Q, axis=1, keepdims=True)) @ (G / np.linalg.norm(G, axis=1, keepdims=True)).T
    truth = np.repeat(np.arange(n - n_train), 5)
    ranks = (S > S[np.arange(len(S)), truth][:, None]).sum(1) + 1
    assert (ranks <= 5).mean() >= 0.3  # chance is 5/100


def test_sample_scene_is_a_pure_function_of_the_rng():
    a = sample_scene(np.random.default_rng(99), cyclist=True)
    b = sample_scene(np.random.default_rng(99), cyclist=True)
    assert a == b and a.person_on_bicycle and a.subject.kind == "ciclista"
