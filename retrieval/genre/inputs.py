"""Overview text -> ``(n, d) float32`` model inputs, through the shared text descriptors.

Every kind of :mod:`retrieval.descriptors` with a fixed-size output is built by
:func:`retrieval.descriptors.make_descriptor`: ``tfidf`` (words), ``centroid`` / ``centroid-tfidf`` (word vectors,
an exported ``.kv`` set passed as ``path``), and the sentence encoders ``use-multilingual`` / ``e5-small`` (an
:class:`~retrieval.descriptors.EncoderDescriptor` whose outputs are cached in ``cache/<kind>.h5`` when a cache
folder is given, with one progress bar over the texts it encodes). ``regressor`` is a trained text regressor
checkpoint (``path``) mapping overviews into the 2048-d image space.

:meth:`TextInput.state` is plain lists, tensors and strings, so genre checkpoints load with
``torch.load(weights_only=True)``; :func:`text_input_from_state` rebuilds the fitted input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.descriptors import ENCODER_KINDS, WORD_KINDS

log = logging.getLogger(__name__)

DESCRIPTOR_KINDS = tuple(k for k in WORD_KINDS if k != "sequence") + ENCODER_KINDS  # one vector per overview
TEXT_DESCRIPTORS = (*DESCRIPTOR_KINDS, "regressor")
VECTOR_KINDS = ("centroid", "centroid-tfidf")
UNSCALED_KINDS = ("tfidf",)  # sparse, already l2-normalised: not standardised per dimension
TFIDF_OPTIONS = {"ngrams": 1, "max_features": 20000}


def _to_plain(arrays: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: (v.tolist() if v.dtype.kind in "US" else torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items()}


def _from_plain(arrays: dict) -> dict[str, np.ndarray]:
    return {k: (np.array(v, dtype=str) if isinstance(v, list) else v.numpy()) for k, v in arrays.items()}


class TextInput:
    """One overview descriptor: ``fit(texts)`` on training overviews, then ``transform(texts) -> (n, dim) float32``."""

    def __init__(self, kind: str, path: str | None = None, cache: str | None = None, progress: bool = False):
        """``path``: word vectors or regressor checkpoint; ``cache``: folder for sentence-encoder caches."""
        if kind not in TEXT_DESCRIPTORS:
            raise UserError(f"unknown text descriptor {kind!r}; choose one of {', '.join(TEXT_DESCRIPTORS)}")
        if kind in (*VECTOR_KINDS, "regressor") and not path:
            what = "a text regressor checkpoint" if kind == "regressor" else "exported word vectors (.kv)"
            raise UserError(f"--descriptor {kind} needs --text-encoder PATH ({what})")
        self.kind, self.path, self.cache, self.progress = kind, path, cache, progress
        self._impl = None
        self._dim = 0

    @property
    def fitted_on_texts(self) -> bool:
        """Whether ``fit`` learns from the training overviews (else its output does not depend on the split)."""
        return self.kind in WORD_KINDS

    def _build(self):
        if self._impl is None:
            if self.kind == "regressor":
                from retrieval.query import load_text_encoder

                self._impl = load_text_encoder(self.path)
            else:
                from retrieval.descriptors import make_descriptor
                from retrieval.text import open_vectors

                vectors = open_vectors(self.path) if self.kind in VECTOR_KINDS else None
                options = dict(TFIDF_OPTIONS) if self.kind == "tfidf" else {}
                if self.kind in ENCODER_KINDS:
                    options = {"cache_path": Path(self.cache) / f"{self.kind}.h5" if self.cache else None,
                               "progress": self.progress}
                self._impl = make_descriptor(self.kind, vectors, **options)
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
        if self.kind != "regressor":
            impl.fit(list(texts))
        self._dim = int(impl.dim)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """``(n, dim) float32``; an overview with no known word is a zero row (counted in the log), never NaN."""
        impl = self._build()
        texts = list(texts)
        out = impl.encode(texts) if self.kind == "regressor" else impl.transform(texts)
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(texts), self._dim or out.shape[1]) or not np.isfinite(out).all():
            raise UserError(f"the {self.kind} descriptor gave {out.shape} or non-finite values for {len(texts)} overviews")
        return out

    def _identity(self) -> dict:
        impl = self._build()
        if self.kind != "regressor":
            return dict(impl.config)
        return {k: impl.config.get(k) for k in ("descriptor", "regressor", "feature_dim", "features_fingerprint")}

    def state(self) -> dict:
        arrays = self._impl.state() if self.kind != "regressor" else {}
        return {"kind": self.kind, "path": self.path, "cache": self.cache, "dim": self._dim,
                "identity": self._identity(), "arrays": _to_plain(arrays)}


def text_input_from_state(state: dict) -> TextInput:
    """Rebuild a fitted :class:`TextInput`; refuses vectors, encoders or regressors other than the saved ones."""
    out = TextInput(state["kind"], state.get("path"), state.get("cache"))
    saved = state["identity"]
    if out.kind in WORD_KINDS:
        from retrieval.descriptors import restore_descriptor
        from retrieval.text import open_vectors

        vectors = open_vectors(state["path"]) if out.kind in VECTOR_KINDS else None
        out._impl = restore_descriptor(saved, _from_plain(state["arrays"]), vectors)
    else:
        here = out._identity()
        for key, value in saved.items():
            if here.get(key) != value:
                raise UserError(f"the genre model was trained with {out.kind} {key}={value!r} but {here.get(key)!r} is "
                                f"installed/at {out.path}; retrain or use the matching one")
    out._dim = int(state["dim"])
    return out
