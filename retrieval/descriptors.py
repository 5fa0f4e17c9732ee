"""Caption descriptors: fixed-size vectors (or word-vector sequences) that the regressors map to the image space.

Every descriptor has ``fit(texts)`` (a no-op where nothing is learnt), ``transform(texts) -> (n, dim)
float32``, ``dim``, ``config`` (a JSON-able dict saved in checkpoints), ``state()`` (the numpy arrays
it learnt, saved next to the regressor weights) and ``unknown_words(text)``. Kinds, by name:

- ``centroid``: mean of the word vectors of the caption's tokens;
- ``centroid-tfidf``: the same mean weighted by each word's idf on the training captions;
- ``tfidf``: l2-normalised tf-idf over word 1..3-grams (fitted with scikit-learn's ``TfidfVectorizer``;
  sparse for training, a numpy transform for queries);
- ``sequence``: the caption's word vectors in order, for the GRU (``transform`` gives ``(n, T, d)``);
- ``use-multilingual``, ``e5-small``: pretrained sentence encoders from :mod:`retrieval.encoders` (optional
  packages; their outputs are cached on disk during training).

A caption with no known word (empty, or all out of vocabulary) becomes a zero vector, never NaN; the
number of such captions is logged as a warning and kept in ``n_empty``. Transforming needs numpy
only (scikit-learn is imported by ``fit`` of the tf-idf kinds, gensim for FastText subword vectors).
A descriptor with ``sparse = True`` also has ``transform_sparse(texts)``: a ``scipy.sparse`` CSR matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from extract.core.errors import UserError
from retrieval.text import WordVectors, tokenize
from retrieval.tfidf import Tfidf, fit_vectorizer, make_vectorizer, warn_empty

log = logging.getLogger(__name__)

WORD_KINDS = ("centroid", "centroid-tfidf", "tfidf", "sequence")
ENCODER_KINDS = ("use-multilingual", "e5-small")
KINDS = WORD_KINDS + ENCODER_KINDS
_CHUNK = 2048


class _Pretrained:
    """A descriptor that learns nothing from the training captions: ``fit`` is a no-op, ``state`` is empty."""

    def fit(self, texts: Sequence[str]):
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass


class _WordDescriptor(_Pretrained):
    """Shared parts of the descriptors built on word vectors."""

    kind = ""

    def __init__(self, vectors: WordVectors, fold_accents: bool = False):
        self.vectors = vectors
        self.fold_accents = fold_accents
        self.n_empty = 0

    @property
    def dim(self) -> int:
        return self.vectors.dim

    @property
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "fold_accents": self.fold_accents,
            "vectors_path": str(self.vectors.path),
            "vectors_fingerprint": self.vectors.fingerprint,
            "vectors_dim": self.vectors.dim,
        }

    def _tokens(self, text: str) -> list[str]:
        return tokenize(text, fold_accents=self.fold_accents)

    def _lookup(self, tokens: list[str], extra: list[np.ndarray], extra_index: dict[str, int]) -> tuple[list[int], list[str]]:
        """Rows of the tokens that have a vector, and those tokens.

        A vocabulary word is its row; a word with only a subword vector gets row ``V + j``, its vector
        appended to ``extra``.
        """
        index, base = self.vectors.index, len(self.vectors)
        rows, kept = [], []
        for t in tokens:
            r = index.get(t)
            if r is None:
                r = extra_index.get(t)
                if r is None:
                    vec = self.vectors.oov_vector(t)
                    if vec is None:
                        continue
                    r = extra_index[t] = base + len(extra)
                    extra.append(vec)
            rows.append(r)
            kept.append(t)
        return rows, kept

    def unknown_words(self, text: str) -> list[str]:
        """Tokens of ``text`` outside the vectors' vocabulary.

        With FastText vectors these still get a vector built from their subwords; otherwise they are ignored.
        """
        index = self.vectors.index
        return [t for t in self._tokens(text) if t not in index]

    def _weights(self, tokens: list[str]) -> np.ndarray | None:
        return None  # plain mean

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Weighted mean of each caption's word vectors: ``(n, d) float32``, zeros for captions with no known word."""
        out = np.zeros((len(texts), self.dim), np.float32)
        self.n_empty = 0
        for start in range(0, len(texts), _CHUNK):
            self._transform_chunk(texts[start : start + _CHUNK], out[start : start + _CHUNK])
        warn_empty(self.kind, self.n_empty, len(texts))
        return out

    def _transform_chunk(self, texts: Sequence[str], out: np.ndarray) -> None:
        tokenized = [self._tokens(t) for t in texts]
        tokens = [t for toks in tokenized for t in toks]
        get = self.vectors.index.get
        rows = np.fromiter((get(t, -1) for t in tokens), np.int64, len(tokens))
        seg = np.repeat(np.arange(len(texts)), [len(toks) for toks in tokenized])
        extra: list[np.ndarray] = []
        unknown = np.flatnonzero(rows < 0)
        if len(unknown) and self.vectors.subword:  # FastText: vectors for unknown words from their subwords
            found = {t: self.vectors.oov_vector(t) for t in {tokens[i] for i in unknown}}
            slot = {}
            for t, vec in found.items():
                if vec is not None:
                    slot[t] = len(self.vectors) + len(extra)
                    extra.append(vec)
            for i in unknown:
                rows[i] = slot.get(tokens[i], -1)
        keep = rows >= 0
        w = self._weights(tokens)
        w = np.ones(int(keep.sum()), np.float32) if w is None else w[keep]
        seg, rows = seg[keep], rows[keep]
        denom = np.bincount(seg, weights=w, minlength=len(texts))
        nonempty = denom > 0
        self.n_empty += int(len(texts) - np.count_nonzero(np.bincount(seg, minlength=len(texts))))
        if not len(rows):
            return
        used, col = np.unique(rows, return_inverse=True)
        base = len(self.vectors)
        table = np.asarray(self.vectors.matrix[used[used < base]], np.float32)
        if extra:
            table = np.concatenate([table, np.stack(extra)[used[used >= base] - base]])
        if len(texts) > 64:  # sparse (caption x word) weights times the word vectors
            import scipy.sparse

            weights = scipy.sparse.csr_matrix((w, (seg, col)), shape=(len(texts), len(used)))
        else:
            weights = np.zeros((len(texts), len(used)), np.float32)
            np.add.at(weights, (seg, col), w)
        sums = np.asarray(weights @ table, np.float32)
        out[nonempty] = sums[nonempty] / denom[nonempty, None].astype(np.float32)


class Centroid(_WordDescriptor):
    """Mean word vector of a caption: ``(n, d) float32``."""

    kind = "centroid"


class CentroidTfidf(_WordDescriptor):
    """Mean word vector weighted by idf on the training captions (words unseen there get the largest idf)."""

    kind = "centroid-tfidf"

    def __init__(self, vectors: WordVectors, fold_accents: bool = False):
        super().__init__(vectors, fold_accents)
        self.idf: dict[str, float] = {}
        self.default_idf = 1.0

    def fit(self, texts: Sequence[str]) -> CentroidTfidf:
        vectorizer = make_vectorizer(self.fold_accents, binary=True)
        df = np.asarray(fit_vectorizer(vectorizer, texts).sum(axis=0), np.float64).ravel()  # documents containing each word
        idf = np.log2(len(texts) / df)  # as gensim's TfidfModel
        self.load_state({"idf_terms": vectorizer.get_feature_names_out(), "idf": idf.astype(np.float32)})
        return self

    def state(self) -> dict[str, np.ndarray]:
        terms = sorted(self.idf)
        return {"idf_terms": np.array(terms, dtype=str), "idf": np.array([self.idf[t] for t in terms], np.float32)}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.idf = {str(t): float(v) for t, v in zip(arrays["idf_terms"], arrays["idf"])}
        self.default_idf = max(self.idf.values(), default=1.0)

    def _weights(self, tokens: list[str]) -> np.ndarray:
        get, default = self.idf.get, self.default_idf
        return np.fromiter((get(t, default) for t in tokens), np.float32, len(tokens))


class WordSequence(_WordDescriptor):
    """A caption's word vectors in order (unknown words dropped), at most ``max_len`` of them."""

    kind = "sequence"

    def __init__(self, vectors: WordVectors, fold_accents: bool = False, max_len: int = 32):
        super().__init__(vectors, fold_accents)
        self.max_len = max_len

    @property
    def config(self) -> dict:
        return {**super().config, "max_len": self.max_len}

    def index(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids (n, T) int64, lengths (n,) int64, table (K, d) float32)``; ``table[ids]`` is the padded sequence.

        Row 0 of ``table`` is the zero padding; an empty caption has length 1 (a single zero vector).
        """
        extra: list[np.ndarray] = []
        extra_index: dict[str, int] = {}
        rows_per_text = [self._lookup(self._tokens(t), extra, extra_index)[0][: self.max_len] for t in texts]
        lengths = np.array([len(r) for r in rows_per_text], np.int64)
        self.n_empty = int(np.sum(lengths == 0))
        warn_empty(self.kind, self.n_empty, len(texts))
        used = sorted({r for rows in rows_per_text for r in rows})
        remap = {r: j + 1 for j, r in enumerate(used)}
        table = np.zeros((len(used) + 1, self.dim), np.float32)
        base = len(self.vectors)
        vocab_rows = [r for r in used if r < base]
        if vocab_rows:
            table[[remap[r] for r in vocab_rows]] = self.vectors.matrix[vocab_rows]
        for r in used:
            if r >= base:
                table[remap[r]] = extra[r - base]
        ids = np.zeros((len(texts), max(1, int(lengths.max(initial=1)))), np.int64)
        for i, rows in enumerate(rows_per_text):
            ids[i, : len(rows)] = [remap[r] for r in rows]
        return ids, np.maximum(lengths, 1), table

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Zero-padded sequences ``(n, T, d) float32``; the lengths come from :meth:`index`."""
        ids, _, table = self.index(texts)
        return table[ids]


class EncoderDescriptor(_Pretrained):
    """A sentence encoder (:mod:`retrieval.encoders`) used as a fixed descriptor; ``cache_path`` caches its outputs,
    ``progress`` shows one progress bar over the texts it encodes (on a terminal)."""

    def __init__(self, name: str, cache_path=None, progress: bool = False):
        from retrieval.encoders import SentenceDescriptor

        self._inner = SentenceDescriptor(name, cache_path, progress=progress)
        self.kind = name
        self.n_empty = 0

    @property
    def dim(self) -> int:
        return int(self._inner.dim)

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "encoder_fingerprint": self._inner.encoder.fingerprint}

    def unknown_words(self, text: str) -> list[str]:
        return []

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.asarray(self._inner.transform(list(texts)), np.float32)
        self.n_empty = int(np.sum(~out.any(axis=1)))
        return out


def make_descriptor(kind: str, vectors: WordVectors | None = None, **options):
    """A new, unfitted descriptor by name (see :data:`KINDS`). Word kinds except ``tfidf`` need ``vectors``."""
    fold = bool(options.get("fold_accents", False))
    if kind in ENCODER_KINDS:
        return EncoderDescriptor(kind, options.get("cache_path"), bool(options.get("progress", False)))
    if kind == "tfidf":
        keys = ("ngrams", "min_df", "max_df", "max_features")
        return Tfidf(fold_accents=fold, **{k: options[k] for k in keys if k in options})
    if kind not in WORD_KINDS:
        raise UserError(f"unknown descriptor {kind!r}; use one of {', '.join(KINDS)}")
    if vectors is None:
        raise UserError(f"descriptor {kind!r} needs word vectors: pass --vectors PATH (make them with `cli.py vectors train`)")
    if kind == "sequence":
        return WordSequence(vectors, fold, max_len=int(options.get("max_len", 32)))
    return (Centroid if kind == "centroid" else CentroidTfidf)(vectors, fold)


def restore_descriptor(config: dict, arrays: dict[str, np.ndarray], vectors: WordVectors | None):
    """Rebuild a fitted descriptor from a checkpoint's ``config`` and ``arrays``; vectors must match."""
    kind = config["kind"]
    if "vectors_fingerprint" in config:
        if vectors is None:
            raise UserError(f"descriptor {kind!r} needs the word vectors it was trained with ({config['vectors_path']})")
        if vectors.fingerprint != config["vectors_fingerprint"] or vectors.dim != config["vectors_dim"]:
            raise UserError(
                f"the checkpoint was trained with vectors {config['vectors_path']} ({config['vectors_dim']}-d, "
                f"fingerprint {config['vectors_fingerprint']}) but {vectors.path} is {vectors.dim}-d, "
                f"fingerprint {vectors.fingerprint}; pass the vectors used for training"
            )
    desc = make_descriptor(kind, vectors, **{k: v for k, v in config.items() if k not in ("kind", "dim")})
    if kind in ENCODER_KINDS and desc.config["encoder_fingerprint"] != config["encoder_fingerprint"]:
        raise UserError(f"the checkpoint was trained with encoder {kind} fingerprint {config['encoder_fingerprint']} "
                        f"but the installed one is {desc.config['encoder_fingerprint']}")
    desc.load_state(arrays)
    if desc.dim != config["dim"]:
        raise UserError(f"descriptor {kind!r} is {desc.dim}-d here but {config['dim']}-d in the checkpoint")
    return desc
