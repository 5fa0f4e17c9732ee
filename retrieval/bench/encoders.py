"""Speed of the sentence encoders on Spanish captions: load time, captions/s bare, through a cold and a warm cache.

The baseline is the package's own forward call on the whole list, measured in the same run; every other
figure is also given as a ratio to it, since the machines are shared and absolute numbers drift.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from extract.core.errors import UserError
from retrieval.encoder_cache import cached_encode
from retrieval.encoders import ENCODER_NAMES, get_encoder

log = logging.getLogger(__name__)

_SUBJECTS = (
    "Un perro marrón", "Una niña pequeña", "Un hombre mayor", "Dos mujeres jóvenes", "Un gato negro",
    "Un grupo de ciclistas", "Una jirafa", "Un niño con gorra", "Tres caballos", "Una pareja de ancianos",
    "Un jugador de fútbol", "Una vaca blanca", "Un cocinero", "Un surfista", "Una señora con paraguas",
    "Un autobús rojo", "Un tren de pasajeros", "Una moto", "Un avión pequeño", "Un elefante",
)
_ACTIONS = (
    "camina", "corre", "está sentado", "descansa", "juega", "espera", "aparece", "se detiene",
    "mira a la cámara", "cruza la calle", "come algo", "posa para una foto", "salta", "avanza despacio",
)
_PLACES = (
    "en la playa", "junto a un lago", "en un parque lleno de árboles", "en una calle de la ciudad",
    "frente a un edificio antiguo", "en medio de un campo verde", "sobre la nieve", "en una cocina moderna",
    "cerca de la estación", "en un mercado al aire libre", "bajo un puente", "en la orilla del río",
    "dentro de un museo", "en una plaza con fuentes", "al lado de una carretera",
)
_DETAILS = (
    "", "al atardecer", "mientras llueve", "en un día soleado", "con montañas al fondo", "por la noche",
    "rodeado de gente", "con una pelota", "junto a una bicicleta", "bajo un cielo nublado",
    "con un sombrero de paja", "cerca de unas flores amarillas",
)


def spanish_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct caption-like Spanish sentences, drawn reproducibly from a small grammar."""
    total = len(_SUBJECTS) * len(_ACTIONS) * len(_PLACES) * len(_DETAILS)
    if n > total:
        raise UserError(f"at most {total} generated captions; pass --n {total} or less, or --captions FILE")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        parts = [rng.choice(p) for p in (_SUBJECTS, _ACTIONS, _PLACES, _DETAILS)]
        text = " ".join(p for p in parts if p) + "."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def read_captions(path: str | os.PathLike, n: int) -> list[str]:
    """The first ``n`` distinct non-empty captions of a file: one per line, optionally ``name<TAB>caption``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8") from None
    seen: dict[str, None] = {}
    for line in lines:
        text = line.split("\t", 1)[-1].strip()
        if text:
            seen.setdefault(text, None)
        if len(seen) == n:
            break
    if not seen:
        raise UserError(f"{path} holds no captions (expected one per line, or name<TAB>caption)")
    return list(seen)


def _load(name: str):
    return get_encoder(name).load()


def _timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t0


def benchmark_encoders(names: Sequence[str], captions: Sequence[str], repeat: int = 2) -> list[dict]:
    """One row per encoder: cold load time, first-call time, and captions/s bare, wrapped, cold and warm cache.

    The four throughput measurements are interleaved ``repeat`` times and the fastest of each is kept, so a
    burst of load from other processes hurts one figure less than it would otherwise.
    """
    captions = list(captions)
    n = len(captions)
    rows = []
    for name in names:
        encoder, load_s = _timed(_load, name)
        _, first_s = _timed(encoder.forward, captions[:1])
        best = {"bare": float("inf"), "encode": float("inf"), "cold": float("inf"), "warm": float("inf")}
        warm_loaded = False
        with tempfile.TemporaryDirectory(prefix="buscador-encode-") as tmp:
            for r in range(max(1, repeat)):
                cache = Path(tmp) / f"cache-{r}.h5"
                times = {
                    "bare": _timed(encoder.forward, captions)[1],
                    "encode": _timed(encoder.encode, captions)[1],
                    "cold": _timed(cached_encode, encoder, captions, cache)[1],
                }
                fresh = get_encoder(name)  # a warm cache must answer without loading the model
                times["warm"] = _timed(cached_encode, fresh, captions, cache)[1]
                warm_loaded |= fresh.loaded
                best = {k: min(best[k], times[k]) for k in best}
            cache_mb = cache.stat().st_size / 2**20
        rows.append(
            {
                "encoder": name,
                "dim": encoder.dim,
                "fingerprint": encoder.fingerprint,
                "captions": n,
                "repeat": max(1, repeat),
                "load_s": load_s,
                "first_call_s": first_s,
                "bare_per_s": n / best["bare"],
                "encode_per_s": n / best["encode"],
                "cold_cache_per_s": n / best["cold"],
                "warm_cache_per_s": n / best["warm"],
                "encode_ratio": best["bare"] / best["encode"],
                "cold_cache_ratio": best["bare"] / best["cold"],
                "warm_cache_ratio": best["bare"] / best["warm"],
                "warm_cache_loaded_model": warm_loaded,
                "cache_mb": cache_mb,
            }
        )
        log.info("benchmarked %s on %d captions", name, n)
    return rows


def encode_benchmark(
    encoder: str = "all", n: int = 500, captions: str | os.PathLike | None = None, repeat: int = 2
) -> list[dict]:
    """Benchmark one encoder (or ``"all"``) on ``n`` captions read from a file or generated in Spanish."""
    names = list(ENCODER_NAMES) if encoder == "all" else [encoder]
    texts = read_captions(captions, n) if captions is not None else spanish_captions(n)
    return benchmark_encoders(names, texts, repeat)


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`benchmark_encoders` rows (ratios are to the bare forward)."""
    head = (
        f"{'encoder':<18}{'dim':>5}{'load s':>8}{'1st s':>7}{'bare/s':>9}"
        f"{'encode/s':>16}{'cold cache/s':>18}{'warm cache/s':>22}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['encoder']:<18}{r['dim']:>5}{r['load_s']:>8.2f}{r['first_call_s']:>7.3f}{r['bare_per_s']:>9.1f}"
            f"{r['encode_per_s']:>9.1f} ({r['encode_ratio']:.2f}x)"
            f"{r['cold_cache_per_s']:>9.1f} ({r['cold_cache_ratio']:.2f}x)"
            f"{r['warm_cache_per_s']:>11.0f} ({r['warm_cache_ratio']:.0f}x)"
        )
    if rows:
        lines.append(
            f"captions: {rows[0]['captions']} distinct, best of {rows[0].get('repeat', 1)} runs; "
            "ratios are to the bare forward of the same run"
        )
    return "\n".join(lines)
