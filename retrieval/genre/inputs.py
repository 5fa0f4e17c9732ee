"""Overview text -> ``(n, d) float32`` model inputs, through the shared text descriptors.

Kinds: ``tfidf`` (words), ``centroid`` / ``centroid-tfidf`` (word vectors, an exported ``.kv``
set passed as ``path``) from :mod:`retrieval.descriptors`; ``use-multilingual`` / ``e5-small`` sentence
encoders from :mod:`retrieval.encoders` (outputs cached in ``cache/<kind>.h5`` when a cache folder is given); and
``regressor``: a trained text regressor checkpoint (``path``) mapping overviews into the 2048-d image space.

:meth:`TextInput.state` is plain lists, tensors and strings, so genre checkpoints load with
``torch.load(weights_only=True)``; :func:`text_input_from_state` rebuilds the fitted input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from extract.core.errors import UserError

log = logging.getLogger(__name__)

WORD_KINDS = ("tfidf", "centroid", "centroid-tfidf")
ENCODER_KINDS = ("use-multilingual", "e5-small")
TEXT_DESCRIPTORS = (*WORD_KINDS, *ENCODER_KINDS, "regressor")
UNSCALED_KINDS = ("tfidf",)  # sparse, already l2-normalised: not standardised per dimension
TFIDF_OPTIONS = {"ngrams": 1, "max_features": 20000}


def _to_plain(arrays: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: (v.tolist() if v.dtype.kind in "US" else torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items()}


def _from_plain(arrays: dict) -> dict[str, np.ndarray]:
    return {k: (np.array(v, dtype=str) if isinstance(v, list) else v.numpy()) for k, v in arrays.items()}


class TextInput:
    """One overview descriptor: ``fit(texts)`` on training overviews, then ``transform(texts) -> (n, dim) float32``."""

    def __init__(self, kind: str, path: str | None = None, cache: str | None = None):
        """``path``: word vectors or regressor checkpoint; ``cache``: folder for sentence-encoder caches."""
        if kind not in TEXT_DESCRIPTORS:
            raise UserError(f"unknown text descriptor {kind!r}; choose one of {', '.join(TEXT_DESCRIPTORS)}")
        if kind in ("centroid", "centroid-tfidf", "regressor") and not path:
            what = "a text regressor checkpoint" if kind == "regressor" else "exported word vectors (.kv)"
            raise UserError(f"--descriptor {kind} needs --text-encoder PATH ({what})")
        self.kind, self.path, self.cache = kind, path, cache
        self._impl = None
        self._dim = 0

    def _build(self):
        if self._impl is None:
            if self.kind in WORD_KINDS:
                from retrieval.descriptors import make_descriptor
                from retrieval.text import open_vectors

                vectors = open_vectors(self.path) if self.kind != "tfidf" else None
                self._impl = make_descriptor(self.kind, vectors, **(TFIDF_OPTIONS if self.kind == "tfidf" else {}))
            elif self.kind in ENCODER_KINDS:
                from retrieval.encoders import get_encoder

                self._impl = get_encoder(self.kind)
            else:
                from retrieval.query import load_text_encoder

                self._impl = load_text_encoder(self.path)
        return self._impl

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def standardize(self) -> bool:
        """Whether the model should standardise this input per dimension."""
        return self.kind not in UNSCALED_KINDS

    def fit(self, texts: list[str]) -> TextInput:
        impl = self._build()
        if self.kind in WORD_KINDS:
            impl.fit(list(texts))
            self._dim = int(impl.dim)
        else:
            self._dim = int(impl.dim)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """``(n, dim) float32``; an overview with no known word is a zero row (counted in the log), never NaN."""
        impl = self._build()
        texts = list(texts)
        if self.kind in ENCODER_KINDS and self.cache:
            from retrieval.encoder_cache import cached_encode

            out = cached_encode(impl, texts, Path(self.cache) / f"{self.kind}.h5")
        elif self.kind in WORD_KINDS:
            out = impl.transform(texts)
        else:
            out = impl.encode(texts)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(texts), self._dim or out.shape[1]) or not np.isfinite(out).all():
            raise UserError(f"the {self.kind} descriptor gave {out.shape} or non-finite values for {len(texts)} overviews")
        return out

    def _identity(self) -> dict:
        impl = self._build()
        if self.kind in WORD_KINDS:
            return dict(impl.config)
        if self.kind in ENCODER_KINDS:
            return {"fingerprint": impl.fingerprint}
        return {k: impl.config.get(k) for k in ("descriptor", "regressor", "feature_dim", "features_fingerprint")}

    def state(self) -> dict:
        arrays = self._impl.state() if self.kind in WORD_KINDS else {}
        return {"kind": self.kind, "path": self.path, "cache": self.cache, "dim": self._dim,
                "identity": self._identity(), "arrays": _to_plain(arrays)}


def text_input_from_state(state: dict) -> TextInput:
    """Rebuild a fitted :class:`TextInput`; refuses vectors, encoders or regressors other than the saved ones."""
    out = TextInput(state["kind"], state.get("path"), state.get("cache"))
    saved = state["identity"]
    if out.kind in WORD_KINDS:
        from retrieval.descriptors import restore_descriptor
        from retrieval.text import open_vectors

        vectors = open_vectors(state["path"]) if out.kind != "tfidf" else None
        out._impl = restore_descriptor(saved, _from_plain(state["arrays"]), vectors)
    else:
        here = out._identity()
        for key, value in saved.items():
            if here.get(key) != value:
                raise UserError(f"the genre model was trained with {out.kind} {key}={value!r} but {here.get(key)!r} is "
                                f"installed/at {out.path}; retrain or use the matching one")
    out._dim = int(state["dim"])
    return out
