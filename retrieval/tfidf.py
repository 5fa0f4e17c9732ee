"""The tf-idf descriptor: fitted with scikit-learn, transformed with numpy alone for queries."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from extract.core.errors import UserError
from retrieval.text import tokenize

log = logging.getLogger(__name__)


def warn_empty(kind: str, n_empty: int, n: int) -> None:
    if n_empty:
        log.warning("%s: %d of %d captions have no known words; they are encoded as zero vectors", kind, n_empty, n)


def _ngrams(tokens: list[str], n: int) -> list[str]:
    """Word 1..``n``-grams joined by a space, as scikit-learn's word analyzer makes them."""
    return [" ".join(tokens[i : i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1)]


def make_vectorizer(fold_accents: bool, ngrams: int = 1, tfidf: bool = False, **options):
    """A scikit-learn ``CountVectorizer`` (or ``TfidfVectorizer``) over the tokens of :func:`retrieval.text.tokenize`."""
    from functools import partial

    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    cls = TfidfVectorizer if tfidf else CountVectorizer
    return cls(tokenizer=partial(tokenize, fold_accents=fold_accents), lowercase=False, token_pattern=None,
               ngram_range=(1, ngrams), dtype=np.float32, **options)


def fit_vectorizer(vectorizer, texts: Sequence[str]):
    """``vectorizer.fit_transform(texts)``; an empty vocabulary is a :class:`UserError`."""
    try:
        return vectorizer.fit_transform(list(texts))
    except ValueError as exc:  # no word at all, or min_df/max_df leave no term
        raise UserError(f"cannot fit tf-idf on {len(texts)} training captions ({exc}); "
                        "use more captions or a lower min_df / higher max_df") from None


class Tfidf:
    """L2-normalised tf-idf of word 1..``ngrams``-grams, ``V`` terms fixed by ``fit``.

    ``fit`` is scikit-learn's ``TfidfVectorizer`` (smooth idf ``ln((1 + n) / (1 + df)) + 1``, raw counts,
    l2 norm) over the tokens of :func:`retrieval.text.tokenize`. What a query needs (the terms in column
    order and their idf) is exported by :meth:`state`; :meth:`transform` recomputes the same vectors from
    it with numpy alone, so a restored descriptor never imports scikit-learn. :meth:`transform_sparse`
    gives the ``(n, V)`` CSR matrix for training on large vocabularies.
    """

    kind = "tfidf"
    sparse = True

    def __init__(self, ngrams: int = 3, min_df: int = 2, max_df: float = 0.8, max_features: int | None = 20000,
                 fold_accents: bool = False):
        self.ngrams, self.min_df, self.max_df, self.max_features = ngrams, min_df, max_df, max_features
        self.fold_accents = fold_accents
        self.terms: dict[str, int] = {}
        self.idf = np.zeros(0, np.float32)
        self.n_empty = 0
        self._vectorizer = None  # the fitted TfidfVectorizer (training only; never saved)

    @property
    def dim(self) -> int:
        return len(self.terms)

    @property
    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "ngrams": self.ngrams, "min_df": self.min_df, "max_df": self.max_df,
                "max_features": self.max_features, "fold_accents": self.fold_accents}

    def _tokens(self, text: str) -> list[str]:
        return tokenize(text, fold_accents=self.fold_accents)

    def fit(self, texts: Sequence[str]) -> Tfidf:
        vectorizer = make_vectorizer(self.fold_accents, self.ngrams, tfidf=True, min_df=self.min_df, max_df=self.max_df,
                                 max_features=self.max_features)
        fit_vectorizer(vectorizer, texts)
        self.load_state({"terms": vectorizer.get_feature_names_out(), "idf": vectorizer.idf_})
        self._vectorizer = vectorizer
        return self

    def state(self) -> dict[str, np.ndarray]:
        """``terms`` (V,) str in column order and ``idf`` (V,) float32: all a query transform needs."""
        return {"terms": np.array(list(self.terms), dtype=str), "idf": self.idf}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.terms = {str(t): i for i, t in enumerate(arrays["terms"])}
        self.idf = np.asarray(arrays["idf"], np.float32)
        self._vectorizer = None

    def unknown_words(self, text: str) -> list[str]:
        return [t for t in self._tokens(text) if t not in self.terms]

    def _counts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` int64, one entry per occurrence of a known n-gram (numpy only)."""
        if not self.terms:
            raise UserError("the tf-idf descriptor is not fitted; call fit() on the training captions first")
        get = self.terms.get
        cols_per_text = [[c for c in map(get, _ngrams(self._tokens(t), self.ngrams)) if c is not None] for t in texts]
        rows = np.repeat(np.arange(len(texts)), [len(c) for c in cols_per_text])
        cols = np.fromiter((c for cs in cols_per_text for c in cs), np.int64, len(rows))
        return rows, cols

    def _count_empty(self, sizes: np.ndarray) -> None:
        """``sizes``: each row's norm or number of stored entries (zero for a caption with no known term)."""
        self.n_empty = int(np.sum(sizes == 0))
        warn_empty(self.kind, self.n_empty, len(sizes))

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Dense ``(n, V) float32`` (numpy only; equal to the fitted ``TfidfVectorizer.transform``)."""
        rows, cols = self._counts(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        np.add.at(out, (rows, cols), self.idf[cols])
        norms = np.linalg.norm(out, axis=1)
        np.divide(out, norms[:, None], out=out, where=norms[:, None] > 0)
        self._count_empty(norms)
        return out

    def transform_sparse(self, texts: Sequence[str]):
        """``scipy.sparse`` CSR ``(n, V) float32``: the same values as :meth:`transform`, never dense."""
        if self._vectorizer is not None:
            x = self._vectorizer.transform(list(texts)).astype(np.float32).tocsr()
        else:
            import scipy.sparse
            from sklearn.preprocessing import normalize

            rows, cols = self._counts(texts)
            x = scipy.sparse.csr_matrix((self.idf[cols], (rows, cols)), shape=(len(texts), self.dim), dtype=np.float32)
            x = normalize(x, copy=False)
        self._count_empty(np.diff(x.indptr))
        return x


