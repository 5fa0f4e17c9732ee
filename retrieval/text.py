"""Tokenisation for Spanish captions and word vectors: load any common format, export a fast one, train one.

Formats read by :func:`load_vectors` (through gensim ``KeyedVectors``):

- word2vec text (``.vec``/``.txt`` with a ``COUNT DIM`` header, e.g. ``fasttext-sbwc.vec``), also gzipped;
- GloVe text without a header (``glove-sbwc.i25.vec`` style files without the count line);
- word2vec binary (``.bin`` without the FastText magic number);
- FastText ``.bin`` (Facebook format, with subword n-grams for out-of-vocabulary words);
- an exported set (below), read without pickle;
- gensim native ``.kv`` files only with ``allow_pickle`` (``--allow-pickle``): they are pickles, and
  loading one runs whatever code the file holds.

``cli.py vectors convert`` and ``cli.py vectors train`` write an *exported* vector set ``OUT.kv``:

    OUT.kv               gensim native KeyedVectors (a pickle, for gensim users; buscador never loads it)
    OUT.kv.matrix.npy    (V, d) float32, memory-mapped at query time
    OUT.kv.words.txt     the V words in row order, UTF-8, one per line
    OUT.kv.ngrams.npy    (B, d) float32 FastText subword buckets (FastText sets only)
    OUT.kv.json          {"dim", "count", "fingerprint", "subword", "min_n", "max_n", "bucket", "files", "source"}

:func:`open_vectors` reads the export with numpy alone (no gensim import, which costs ~1.5 s), so a
query is encoded fast from a cold start; for an out-of-vocabulary word of a FastText set the n-gram
hashes come from gensim (imported then) and the vectors from ``OUT.kv.ngrams.npy``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path

log = logging.getLogger(__name__)

# gensim.utils.PAT_ALPHABETIC, r"(((?![\d])\w)+)": runs of word characters that are not digits, written
# as one character class (3x faster). Mirrored here so that tokenising a query does not import gensim;
# tests check the two agree.
_PAT_ALPHABETIC = re.compile(r"[^\W\d]+", re.UNICODE)
_FASTTEXT_MAGIC = 793712314


def deaccent(text: str) -> str:
    """Strip combining accents as ``gensim.utils.deaccent`` does ("niño" -> "nino", "está" -> "esta")."""
    norm = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in norm if unicodedata.category(ch) != "Mn"))


def tokenize(text: str, fold_accents: bool = False) -> list[str]:
    """Lower-cased word tokens of ``text``: punctuation and digits dropped, ñ and accents kept unless folded.

    Same tokens as ``gensim.utils.tokenize(text, lowercase=True, deacc=fold_accents)`` on NFC text.
    """
    text = unicodedata.normalize("NFC", text).lower()
    if fold_accents:
        text = deaccent(text)
    return _PAT_ALPHABETIC.findall(text)


# ------------------------------------------------------------------------------------------------
# Loading any format with gensim
# ------------------------------------------------------------------------------------------------


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def sniff_format(path: str | os.PathLike) -> str:
    """One of ``"kv"``, ``"fasttext-bin"``, ``"word2vec-bin"``, ``"word2vec"`` (text + header), ``"glove"``."""
    path = Path(path)
    if path.suffix == ".kv":
        return "kv"
    with _open_binary(path) as fh:
        head = fh.read(4096)
    if len(head) >= 4 and int(np.frombuffer(head[:4], "<i4")[0]) == _FASTTEXT_MAGIC:
        return "fasttext-bin"
    first = head.split(b"\n", 1)[0]
    parts = first.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        rest = head[len(first) + 1 :]
        try:
            rest.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(rest) - 4:  # not just a character cut at the end of the sniffed block
                return "word2vec-bin"
        return "word2vec-bin" if path.suffix == ".bin" else "word2vec"
    return "glove"


def refuse_pickle(path: str | os.PathLike, what: str = "a gensim native .kv file") -> None:
    """The :class:`UserError` for a pickle-based file offered without ``--allow-pickle``."""
    raise UserError(f"{path} is {what}, which is a pickle: loading it runs any code the file holds. Pass "
                    "--allow-pickle if you made it or trust it, or give the vectors as .vec/.txt/.bin (or an exported "
                    "set from `cli.py vectors convert`)")


def load_vectors(path: str | os.PathLike, limit: int | None = None, allow_pickle: bool = False):
    """Load word vectors with gensim: returns ``KeyedVectors`` (``FastTextKeyedVectors`` for FastText).

    ``limit`` keeps the first (most frequent) ``limit`` words of text/binary word2vec and GloVe files.
    An exported set is read from its numpy files; a bare gensim ``.kv`` (a pickle) only with ``allow_pickle``.
    Raises :class:`UserError` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"word vectors file {path} does not exist; pass --vectors PATH or make one with `cli.py vectors train`")
    fmt = sniff_format(path)
    if fmt == "kv" and is_exported(path):
        return _exported_as_gensim(open_vectors(path), limit)
    if fmt == "kv" and not allow_pickle:
        refuse_pickle(path)
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors

    try:
        if fmt == "kv":
            log.warning("loading %s with pickle (--allow-pickle): only do this for files you trust", path)
            kv = KeyedVectors.load(str(path), mmap="r")
        elif fmt == "fasttext-bin":
            kv = load_facebook_vectors(str(path))
        else:
            kv = KeyedVectors.load_word2vec_format(
                str(path), binary=fmt == "word2vec-bin", no_header=fmt == "glove", limit=limit, unicode_errors="replace"
            )
    except (ValueError, EOFError, OSError, UnicodeDecodeError, KeyError, AttributeError, ImportError,
            pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read {path} as {fmt} word vectors ({type(exc).__name__}: {exc})") from None
    if len(kv.index_to_key) == 0:
        raise UserError(f"{path} holds no word vectors")
    log.info("loaded %d %d-d word vectors from %s (%s)", len(kv.index_to_key), kv.vector_size, path, fmt)
    return kv


# ------------------------------------------------------------------------------------------------
# The exported set: gensim .kv + matrix.npy + words.txt + json
# ------------------------------------------------------------------------------------------------


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def vectors_fingerprint(words: Sequence[str], matrix: np.ndarray) -> str:
    """sha256 of the shape, the words in order and the float32 values (16 hex digits)."""
    h = hashlib.sha256()
    h.update(json.dumps(list(matrix.shape)).encode())
    h.update("\n".join(words).encode("utf-8"))
    h.update(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _exported_as_gensim(wv: WordVectors, limit: int | None = None):
    """A gensim ``KeyedVectors`` (``FastTextKeyedVectors`` with subwords) rebuilt from an exported set."""
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import FastTextKeyedVectors

    n = min(len(wv), limit) if limit else len(wv)
    if wv.subword and wv.ngrams is not None:
        kv = FastTextKeyedVectors(wv.dim, wv.min_n, wv.max_n, int(wv.ngrams.shape[0]))
    else:
        kv = KeyedVectors(wv.dim, count=n)
    kv.add_vectors(wv.words[:n], np.array(wv.matrix[:n], np.float32))
    if wv.subword and wv.ngrams is not None:
        kv.vectors_ngrams = np.array(wv.ngrams, np.float32)
    return kv


def export_vectors(kv, out: str | os.PathLike, source: str = "") -> Path:
    """Write ``kv`` as an exported set at ``out`` (a ``.kv`` path, see the module docstring)."""
    out = Path(out)
    if out.suffix != ".kv":
        raise UserError(f"output {out} must end in .kv")
    words = [str(w) for w in kv.index_to_key]
    bad = [w for w in words if not w or any(c.isspace() for c in w)]
    if bad:
        raise UserError(f"{len(bad)} words are empty or contain whitespace (e.g. {bad[0]!r}); they cannot be exported")
    matrix = np.ascontiguousarray(kv.vectors, dtype=np.float32)
    subword = hasattr(kv, "vectors_ngrams") and getattr(kv, "bucket", 0) > 0
    with atomic_path(out) as tmp:
        kv.save(str(tmp))
        for extra in tmp.parent.glob(tmp.name + ".*.npy"):  # gensim's separately-stored arrays
            os.replace(extra, out.with_name(out.name + extra.name[len(tmp.name) :]))
    with atomic_path(_sidecar(out, ".matrix.npy")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, matrix)
    with atomic_path(_sidecar(out, ".words.txt")) as tmp:
        tmp.write_text("\n".join(words) + "\n", encoding="utf-8")
    files = [out.name + s for s in (".matrix.npy", ".words.txt")]
    info = {
        "dim": int(matrix.shape[1]),
        "count": int(matrix.shape[0]),
        "fingerprint": vectors_fingerprint(words, matrix),
        "subword": bool(subword),
        "source": str(source),
    }
    if subword:
        with atomic_path(_sidecar(out, ".ngrams.npy")) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(kv.vectors_ngrams, dtype=np.float32))
        files.append(out.name + ".ngrams.npy")
        info.update(min_n=int(kv.min_n), max_n=int(kv.max_n), bucket=int(kv.bucket))
    info["files"] = files
    with atomic_path(_sidecar(out, ".json")) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    log.info("exported %d %d-d vectors to %s (fingerprint %s)", info["count"], info["dim"], out, info["fingerprint"])
    return out


def convert_vectors(src: str | os.PathLike, out: str | os.PathLike, limit: int | None = None,
                    allow_pickle: bool = False) -> Path:
    """Load ``src`` in any supported format and export it to ``out`` (``.kv``)."""
    if Path(out).suffix != ".kv":
        raise UserError(f"output {out} must end in .kv")
    kv = load_vectors(src, limit=limit, allow_pickle=allow_pickle)
    return export_vectors(kv, out, source=str(Path(src).resolve()))


def train_vectors(
    sentences: Sequence[list[str]],
    out: str | os.PathLike,
    kind: str = "fasttext",
    dim: int = 100,
    epochs: int = 20,
    window: int = 5,
    min_count: int = 1,
    seed: int = 0,
    source: str = "",
) -> Path:
    """Train FastText (subwords) or Word2Vec on tokenised sentences and export to ``out`` (``.kv``)."""
    if not sentences or not any(sentences):
        raise UserError("no words to train word vectors on: the caption files are empty")
    from gensim.models import FastText, Word2Vec

    if kind not in ("fasttext", "word2vec"):
        raise UserError(f"unknown vectors kind {kind!r}; use fasttext or word2vec")
    cls = FastText if kind == "fasttext" else Word2Vec
    kwargs = {"vector_size": dim, "window": window, "min_count": min_count, "epochs": epochs, "seed": seed, "workers": 1, "sg": 1}
    if kind == "fasttext":
        kwargs.update(min_n=3, max_n=5, bucket=200_000)
    model = cls(sentences=list(sentences), **kwargs)
    log.info("trained %s: %d words, %d dims, %d epochs", kind, len(model.wv.index_to_key), dim, epochs)
    return export_vectors(model.wv, out, source=source or f"{kind} trained on {len(sentences)} sentences")


@dataclass
class WordVectors:
    """An exported vector set opened with numpy alone: ``matrix`` is a read-only memory map ``(V, d) float32``."""

    path: Path
    words: list[str]
    matrix: np.ndarray
    fingerprint: str
    subword: bool
    index: dict[str, int] = field(repr=False, default_factory=dict)
    ngrams: np.ndarray | None = field(default=None, repr=False)
    min_n: int = 3
    max_n: int = 5
    _oov_cache: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.index:
            self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def oov_vector(self, word: str) -> np.ndarray | None:
        """Subword vector ``(d,) float32`` for a word outside the vocabulary (FastText sets), else ``None``."""
        if not self.subword or self.ngrams is None:
            return None
        if word not in self._oov_cache:
            from gensim.models.fasttext import (
                ft_ngram_hashes,  # the hashes only; vectors come from ngrams.npy
            )

            hashes = ft_ngram_hashes(word, self.min_n, self.max_n, int(self.ngrams.shape[0]))
            vec = np.asarray(self.ngrams[hashes], np.float32).mean(axis=0) if hashes else np.zeros(self.dim, np.float32)
            self._oov_cache[word] = vec if np.any(vec) and np.isfinite(vec).all() else None
        return self._oov_cache[word]

    def rows(self, tokens: Iterable[str]) -> list[int]:
        """Row numbers of the tokens in the vocabulary (unknown tokens skipped)."""
        index = self.index
        return [index[t] for t in tokens if t in index]


def is_exported(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.kv`` with the numpy export beside it (``.matrix.npy``, ``.words.txt``, ``.json``)."""
    path = Path(path)
    return path.suffix == ".kv" and all(_sidecar(path, s).is_file() for s in (".matrix.npy", ".words.txt", ".json"))


def open_vectors(path: str | os.PathLike) -> WordVectors:
    """Open an exported set (see :func:`export_vectors`) memory-mapped, without importing gensim."""
    path = Path(path)
    if not is_exported(path):
        if not path.exists():
            raise UserError(f"word vectors {path} do not exist; make them with `cli.py vectors train` or `cli.py vectors convert`")
        raise UserError(f"{path} is not an exported vector set; convert it once with `cli.py vectors convert {path} OUT.kv`")
    try:
        info = json.loads(_sidecar(path, ".json").read_text(encoding="utf-8"))
        missing = [name for name in info.get("files", []) if not (path.parent / name).is_file()]
        if info.get("subword") and "files" not in info:
            missing.append(path.name + ".ngrams.npy (an export made before subword vectors were exported)")
        if missing:
            raise UserError(f"the exported vector set {path} lacks {', '.join(missing)}; copy every file of the set, "
                            f"or convert again with `cli.py vectors convert SOURCE {path}`")
        matrix = np.load(_sidecar(path, ".matrix.npy"), mmap_mode="r", allow_pickle=False)
        words = _sidecar(path, ".words.txt").read_text(encoding="utf-8").split("\n")[: matrix.shape[0]]
        ngrams = np.load(_sidecar(path, ".ngrams.npy"), mmap_mode="r", allow_pickle=False) if info.get("subword") else None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the exported vector set {path} ({type(exc).__name__}: {exc}); convert again") from None
    if matrix.ndim != 2 or len(words) != matrix.shape[0] or matrix.shape[1] != info["dim"]:
        raise UserError(f"{path}: {len(words)} words for a {matrix.shape} matrix; the export is damaged, convert again")
    return WordVectors(path, words, matrix, info["fingerprint"], bool(info.get("subword")), ngrams=ngrams,
                       min_n=int(info.get("min_n", 3)), max_n=int(info.get("max_n", 5)))


def prepare_vectors(path: str | os.PathLike, out_dir: str | os.PathLike, limit: int | None = None,
                    allow_pickle: bool = False) -> WordVectors:
    """Open ``path`` if it is exported; otherwise convert it once into ``out_dir`` and open that.

    A bare gensim ``.kv`` (a pickle) is converted only with ``allow_pickle``.
    """
    path = Path(path)
    if is_exported(path):
        return open_vectors(path)
    if path.suffix == ".kv" and not allow_pickle:
        refuse_pickle(path)
    out = Path(out_dir) / (path.name.split(".")[0] + (f"-{limit}" if limit else "") + ".kv")
    if not is_exported(out):
        log.warning("converting %s to %s once (pass the .kv next time)", path, out)
        convert_vectors(path, out, limit=limit, allow_pickle=allow_pickle)
    return open_vectors(out)


def vectors_from_captions(
    sources: Sequence[str | os.PathLike], out: str | os.PathLike, fold: bool = False, **options
) -> Path:
    """Train word vectors on the captions of caption files/folders (see :mod:`retrieval.datasets`), export to ``out``.

    ``options`` go to :func:`train_vectors` (``kind``, ``dim``, ``epochs``, ``window``, ``min_count``, ``seed``).
    """
    from retrieval.datasets import find_splits, read_captions

    files = find_splits(sources)
    sentences = [tokenize(t, fold_accents=fold) for name, f in files.items() for t in read_captions(f, name).texts]
    sentences = [s for s in sentences if s]
    names = ", ".join(f"{n} ({f.name})" for n, f in files.items())
    return train_vectors(sentences, out, source=f"captions: {names}", **options)
