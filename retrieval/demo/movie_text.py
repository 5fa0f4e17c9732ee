"""Text of the demo movies: titles and 2-4 sentence overviews from genre-typical sentences plus filler.

Spanish sentences by default, English for some movies; ``{n}`` is a character name, ``{p}`` a place.
"""

from __future__ import annotations

import numpy as np

SENTENCES_ES: dict[str, tuple[str, ...]] = {
    "Drama": (
        "{n} debe enfrentarse a la pérdida de su familia.",
        "Tras la muerte de su padre, {n} regresa a {p} para reconciliarse con su pasado.",
        "Una historia íntima sobre el dolor, la culpa y el perdón.",
        "{n} lucha por mantener unida a su familia en tiempos difíciles.",
        "Una enfermedad obliga a {n} a replantearse toda su vida.",
    ),
    "Comedia": (
        "{n} se mete en un lío tras otro durante una boda desastrosa.",
        "Una divertida historia llena de malentendidos y situaciones absurdas.",
        "{n} y su torpe amigo intentan organizar la fiesta más loca del año.",
        "Las risas están aseguradas cuando {n} se hace pasar por su jefe.",
        "Una comedia disparatada sobre un viaje que sale fatal.",
    ),
    "Acción": (
        "{n}, un ex soldado, debe detener a un grupo de mercenarios armados.",
        "Persecuciones, explosiones y tiroteos sacuden {p}.",
        "Un agente de élite lucha contra el reloj para evitar un atentado.",
        "{n} se enfrenta a toda una banda en una pelea a muerte.",
    ),
    "Suspense": (
        "{n} descubre que alguien vigila su casa en secreto.",
        "Un misterio inquietante en el que nadie es lo que parece.",
        "Cada pista acerca a {n} a una verdad peligrosa.",
        "Una llamada anónima desata una tensa cuenta atrás.",
    ),
    "Romance": (
        "{n} se enamora perdidamente de un desconocido en {p}.",
        "Una historia de amor imposible entre dos almas gemelas.",
        "Un beso bajo la lluvia cambia para siempre el corazón de {n}.",
        "{n} y su primer amor se reencuentran diez años después.",
    ),
    "Crimen": (
        "El detective {n} investiga una serie de asesinatos en {p}.",
        "Una banda de ladrones planea el robo del siglo.",
        "{n} se infiltra en la mafia para desmantelar una red de narcotráfico.",
        "La policía sigue la pista de un asesino despiadado.",
    ),
    "Aventura": (
        "{n} emprende un viaje épico en busca de un tesoro perdido.",
        "Una expedición a través de la selva y las montañas más altas.",
        "{n} explora una isla desconocida llena de peligros.",
        "Un mapa antiguo lleva a {n} a una aventura inolvidable.",
    ),
    "Terror": (
        "Una casa encantada esconde un espíritu maligno.",
        "{n} oye gritos cada noche en el sótano de su nueva casa.",
        "Un demonio acecha a un grupo de jóvenes en el bosque.",
        "La sangre y el miedo se apoderan de {p} cuando cae la noche.",
    ),
    "Ciencia ficción": (
        "En el año 3000, {n} viaja a un planeta lejano.",
        "Una nave espacial recibe una señal de una civilización alienígena.",
        "Un robot con inteligencia artificial se rebela contra sus creadores.",
        "{n} descubre una máquina del tiempo en su laboratorio.",
    ),
    "Animación": (
        "Un pequeño dragón animado sueña con aprender a volar.",
        "Los juguetes de {n} cobran vida cuando nadie los mira.",
        "Una colorida aventura animada para toda la familia.",
        "Un conejo parlanchín y sus amigos cantan y bailan sin parar.",
    ),
    "Fantasía": (
        "{n} hereda un reino mágico y un anillo encantado.",
        "Un mago y un elfo buscan una espada legendaria.",
        "Dragones, hechizos y profecías en un mundo encantado.",
        "Una bruja concede a {n} tres deseos que cambiarán su destino.",
    ),
    "Documental": (
        "Este documental recorre la historia real de {p}.",
        "Entrevistas y material de archivo muestran la vida de los pescadores.",
        "Una mirada a la naturaleza y a los animales salvajes del planeta.",
        "El documental investiga las causas del cambio climático.",
    ),
}
SENTENCES_EN: dict[str, tuple[str, ...]] = {
    "Drama": ("{n} must face the loss of a family.", "A quiet story about grief, guilt and forgiveness."),
    "Comedia": ("{n} stumbles from one hilarious mess to another at a wedding.",
                "A funny tale of misunderstandings and absurd situations."),
    "Acción": ("{n}, a former soldier, must stop a gang of armed mercenaries.",
               "Car chases, explosions and shootouts shake {p}."),
    "Suspense": ("{n} discovers that someone is secretly watching.", "A tense mystery where nobody is who they seem."),
    "Romance": ("{n} falls madly in love with a stranger in {p}.", "An impossible love story between two soulmates."),
    "Crimen": ("Detective {n} investigates a string of murders in {p}.", "A gang of thieves plans the robbery of the century."),
    "Aventura": ("{n} sets out on an epic journey to find a lost treasure.", "An expedition across jungles and mountains."),
    "Terror": ("A haunted house hides an evil spirit.", "A demon stalks a group of teenagers in the woods."),
    "Ciencia ficción": ("In the year 3000, {n} travels to a distant planet.",
                        "A spaceship receives a signal from an alien civilization."),
    "Animación": ("A little animated dragon dreams of flying.", "A colorful animated adventure for the whole family."),
    "Fantasía": ("{n} learns of being heir to a magical kingdom.", "A wizard and an elf search for a legendary sword."),
    "Documental": ("This documentary traces the true history of {p}.",
                   "Interviews and archive footage show the life of fishermen."),
}
FILLER_ES = (
    "La película transcurre en {p}.", "{n} tiene treinta años y vive en {p}.", "Basada en una novela de éxito.",
    "Todo cambia un verano.", "Nada volverá a ser igual.", "La historia sigue a {n} durante un año.",
    "Con un reparto coral y una banda sonora memorable.", "Nadie esperaba lo que iba a ocurrir.",
)
FILLER_EN = (
    "The film is set in {p}.", "{n} is thirty years old and lives in {p}.", "Based on a best-selling novel.",
    "Everything changes one summer.", "Nothing will ever be the same.", "The story follows {n} for a year.",
)
NAMES = ("Lucía", "Mateo", "Carmen", "Diego", "Sofía", "Javier", "Elena", "Pablo", "Marta", "Andrés", "Julia",
         "Tomás", "Inés", "Raúl", "Valeria", "Hugo", "Clara", "Nicolás", "Paula", "Iván")
PLACES = ("Madrid", "Buenos Aires", "Valparaíso", "Sevilla", "Bogotá", "un pueblo de montaña", "la costa",
          "Ciudad de México", "Lima", "Barcelona", "una isla remota", "Montevideo")
_TITLE_WORDS_M = ("secreto", "viaje", "silencio", "último verano", "camino", "invierno", "regreso", "horizonte")
_TITLE_WORDS_F = ("noche", "ciudad", "promesa", "huella", "sombra", "isla", "casa", "frontera", "memoria")
_TITLE_SUFFIX = ("", "", " de {n}", " perdido", " del sur", " en {p}", " eterno")


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _fill(text: str, rng: np.random.Generator) -> str:
    return text.format(n=_pick(rng, NAMES), p=_pick(rng, PLACES))


def movie_title(rng: np.random.Generator) -> str:
    """A neutral Spanish title, e.g. "La sombra del sur" (titles carry no genre signal)."""
    if rng.random() < 0.5:
        head = "El " + _pick(rng, _TITLE_WORDS_M)
        suffix = _pick(rng, _TITLE_SUFFIX)
    else:
        head = "La " + _pick(rng, _TITLE_WORDS_F)
        suffix = _pick(rng, _TITLE_SUFFIX).replace("perdido", "perdida").replace("eterno", "eterna")
    return _fill(head + suffix, rng)


def movie_overview(rng: np.random.Generator, genres: tuple[str, ...], english: bool,
                   off_genre: str | None = None) -> str:
    """2-4 sentences: one or two per genre in ``genres``, an optional ``off_genre`` sentence, filler."""
    table, filler = (SENTENCES_EN, FILLER_EN) if english else (SENTENCES_ES, FILLER_ES)
    picked: list[str] = []
    for k, g in enumerate(genres):
        options = list(table[g])
        rng.shuffle(options)
        picked.extend(options[: 2 if k == 0 and rng.random() < 0.4 else 1])
    if off_genre is not None:
        picked.append(_pick(rng, table[off_genre]))
    picked = picked[:4]
    target = max(len(picked), int(rng.integers(2, 5)))
    fill = list(filler)
    rng.shuffle(fill)
    picked.extend(fill[: target - len(picked)])
    rng.shuffle(picked)
    return " ".join(_fill(s, rng) for s in picked)
