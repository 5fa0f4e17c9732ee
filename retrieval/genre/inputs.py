"""Overview text -> model inputs: bag-of-words / tf-idf (gensim), sentence encoders, the text regressor.

Every descriptor has ``fit(texts)``, ``transform(texts) -> (n, d) float32`` (a scipy CSR matrix for the
sparse bag-of-words kinds), ``dim``, ``config`` and ``state()``; :func:`descriptor_from_state` rebuilds a
fitted descriptor from ``state()`` (plain dicts, so checkpoints load without unpickling code).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import numpy as np

from extract.errors import UserError

log = logging.getLogger(__name__)

SPARSE_KINDS = ("tfidf", "bow")
ENCODER_KINDS = ("use-multilingual", "e5-small")
TEXT_DESCRIPTORS = (*SPARSE_KINDS, "centroid", *ENCODER_KINDS, "regressor")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; accents and ñ are kept (``retrieval.text.tokenize`` when available)."""
    try:
        from retrieval.text import tokenize as shared
    except ImportError:
        from gensim.utils import simple_preprocess

        return simple_preprocess(text, deacc=False, min_len=2, max_len=30)
    return list(shared(text))


class BagOfWords:
    """Sparse bag-of-words counts or tf-idf over a gensim Dictionary fitted on the training overviews."""

    def __init__(self, kind: str = "tfidf", no_below: int = 2, no_above: float = 0.7, keep_n: int = 20000):
        if kind not in SPARSE_KINDS:
            raise ValueError(kind)
        self.kind, self.no_below, self.no_above, self.keep_n = kind, no_below, no_above, keep_n
        self._dictionary = None
        self._tfidf = None

    @property
    def config(self) -> dict:
        return {"name": self.kind, "no_below": self.no_below, "no_above": self.no_above, "keep_n": self.keep_n}

    @property
    def dim(self) -> int:
        return len(self._dictionary) if self._dictionary is not None else 0

    def fit(self, texts: list[str]) -> BagOfWords:
        from gensim.corpora import Dictionary

        docs = [tokenize(t) for t in texts]
        d = Dictionary(docs)
        if len(docs) >= 20:
            d.filter_extremes(no_below=self.no_below, no_above=self.no_above, keep_n=self.keep_n)
        if len(d) == 0:
            raise UserError(f"the {len(texts)} training overviews have no usable words; check --text-field")
        self._set(d)
        return self

    def _set(self, dictionary) -> None:
        from gensim.models import TfidfModel

        self._dictionary = dictionary
        self._tfidf = TfidfModel(dictionary=dictionary) if self.kind == "tfidf" else None

    def transform(self, texts: list[str]):
        """``(n, V)`` float32 CSR; an overview with no known word is an all-zero row (counted in the log)."""
        from gensim.matutils import corpus2csc

        if self._dictionary is None:
            raise RuntimeError("fit the descriptor first")
        bows = [self._dictionary.doc2bow(tokenize(t)) for t in texts]
        empty = sum(1 for b in bows if not b)
        if empty:
            log.info("%d of %d overviews have no word in the vocabulary (all-zero rows)", empty, len(texts))
        if self._tfidf is not None:
            bows = [self._tfidf[b] for b in bows]
        return corpus2csc(bows, num_terms=self.dim, num_docs=len(texts), dtype=np.float32).T.tocsr()

    def state(self) -> dict:
        d = self._dictionary
        return {**self.config, "token2id": dict(d.token2id), "dfs": {int(k): int(v) for k, v in d.dfs.items()},
                "num_docs": int(d.num_docs), "num_pos": int(d.num_pos)}

    @classmethod
    def from_state(cls, state: dict) -> BagOfWords:
        from gensim.corpora import Dictionary

        out = cls(state["name"], state["no_below"], state["no_above"], state["keep_n"])
        d = Dictionary()
        d.token2id = dict(state["token2id"])
        d.dfs = {int(k): int(v) for k, v in state["dfs"].items()}
        d.num_docs, d.num_pos = state["num_docs"], state["num_pos"]
        out._set(d)
        return out


class PretrainedText:
    """A fixed (pretrained) text encoder: a sentence encoder by name, or the text regressor checkpoint."""

    def __init__(self, name: str, path: str | None = None):
        self.name, self.path = name, path
        self._encoder = None
        self._dim = 0

    @property
    def config(self) -> dict:
        return {"name": self.name, "path": self.path}

    @property
    def dim(self) -> int:
        return self._dim

    def _load(self):
        if self._encoder is None:
            if self.name == "regressor":
                if not self.path:
                    raise UserError("--descriptor regressor needs --text-encoder CKPT (a trained text regressor)")
                self._encoder = _import("retrieval.query", "--descriptor regressor").load_text_encoder(self.path)
            elif self.name == "centroid":
                module = _import("retrieval.descriptors", "--descriptor centroid")
                self._encoder = module.make_descriptor("centroid", vectors=self.path)
            else:
                self._encoder = _import("retrieval.encoders", f"--descriptor {self.name}").get_encoder(self.name)
        return self._encoder

    def fit(self, texts: list[str]) -> PretrainedText:
        self._dim = int(self.transform(texts[:1]).shape[1])
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        enc = self._load()
        out = enc.transform(texts) if hasattr(enc, "transform") else enc.encode(texts)
        out = np.asarray(out, dtype=np.float32)
        if not np.isfinite(out).all():
            raise UserError(f"the {self.name} descriptor returned non-finite values for some overviews")
        self._dim = int(out.shape[1])
        return out

    def state(self) -> dict:
        return {**self.config, "dim": self._dim}

    @classmethod
    def from_state(cls, state: dict) -> PretrainedText:
        out = cls(state["name"], state.get("path"))
        out._dim = int(state.get("dim", 0))
        return out


def _import(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{what} needs {module}, which is not available here ({exc}); use --descriptor tfidf") from None


def make_text_descriptor(name: str, path: str | None = None) -> BagOfWords | PretrainedText:
    """A text descriptor by name (one of ``TEXT_DESCRIPTORS``); ``path`` = vectors or regressor checkpoint."""
    if name in SPARSE_KINDS:
        return BagOfWords(name)
    if name in TEXT_DESCRIPTORS:
        return PretrainedText(name, path)
    raise UserError(f"unknown text descriptor {name!r}; choose one of {', '.join(TEXT_DESCRIPTORS)}")


def descriptor_from_state(state: dict) -> BagOfWords | PretrainedText:
    """Rebuild a fitted descriptor saved with ``state()``."""
    if state["name"] in SPARSE_KINDS:
        return BagOfWords.from_state(state)
    return PretrainedText.from_state(state)
