"""Overview text -> ``(n, d) float32`` model inputs, through the shared text descriptors.

Every kind of :mod:`retrieval.descriptors` with a fixed-size output is built by
:func:`retrieval.descriptors.make_descriptor`: ``tfidf`` (words), ``centroid`` / ``centroid-tfidf`` (word vectors,
an exported ``.kv`` set passed as ``path``), and the sentence encoders ``use-multilingual`` / ``e5-small`` (an
:class:`~retrieval.descriptors.EncoderDescriptor` whose outputs are cached in ``cache/<kind>.h5`` when a cache
folder is given, with one progress bar over the texts it encodes). ``regressor`` is a trained text regressor
checkpoint (``path``) mapping overviews into the 2048-d image space.

Descriptors combine with ``+``: ``e5-small+tfidf`` is a :class:`CombinedInput` whose output is the blocks side by
side, each standardised on the training overviews (sentence encoders and word-vector means per dimension; tf-idf
as it is, already l2-normalised) and scaled to a mean squared row norm of 1, so no block drowns the others
whatever its dimension.

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


def check_descriptor(name: str) -> str:
    """``name`` if it is a descriptor or a ``+``-combination of different ones, else a :class:`UserError`."""
    parts = name.split("+")
    bad = [p for p in parts if p not in TEXT_DESCRIPTORS]
    if bad or not name:
        raise UserError(f"unknown text descriptor {', '.join(bad) or name!r}; choose one of {', '.join(TEXT_DESCRIPTORS)} "
                        "or join several with + (e.g. e5-small+tfidf)")
    if len(set(parts)) != len(parts):
        raise UserError(f"descriptor {name!r} names the same part twice")
    return name


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


class CombinedInput:
    """Several descriptors side by side (``kind`` = their names joined by ``+``), each block standardised and
    scaled on the training overviews to a mean squared row norm of 1."""

    fitted_on_texts = True
    standardize = False  # already standardised per block; the model applies one overall scale

    def __init__(self, kind: str, path: str | None = None, cache: str | None = None, progress: bool = False):
        names = check_descriptor(kind).split("+")
        needs_path = [n for n in names if n in (*VECTOR_KINDS, "regressor")]
        if len(needs_path) > 1:
            raise UserError(f"descriptor {kind!r} combines {' and '.join(needs_path)}, which would both need --text-encoder")
        self.kind, self.path, self.cache = kind, path, cache
        self.parts = [TextInput(n, path if n in needs_path else None, cache, progress) for n in names]
        self.mean: list[np.ndarray] = []
        self.std: list[np.ndarray] = []
        self.scale: list[float] = []

    @property
    def dim(self) -> int:
        return sum(p.dim for p in self.parts)

    def fit(self, texts: list[str]) -> CombinedInput:
        self.mean, self.std, self.scale = [], [], []
        for part in self.parts:
            x = part.fit(texts).transform(texts).astype(np.float64)
            per_dim = part.standardize and len(x) > 1
            mean = x.mean(axis=0) if per_dim else np.zeros(x.shape[1])
            std = np.maximum(x.std(axis=0), 1e-6) if per_dim else np.ones(x.shape[1])
            norm = float(np.sqrt((((x - mean) / std) ** 2).sum(axis=1).mean())) if len(x) else 0.0
            self.mean.append(mean.astype(np.float32))
            self.std.append(std.astype(np.float32))
            self.scale.append(1.0 / norm if norm > 0 else 1.0)
        return self

    def transform(self, texts: list[str]) -> np.ndarray:
        """``(n, dim) float32``: the standardised, scaled blocks of every part, in the order of ``kind``."""
        texts = list(texts)
        blocks = [(p.transform(texts) - m) / s * np.float32(c) for p, m, s, c in zip(self.parts, self.mean, self.std, self.scale)]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def state(self) -> dict:
        return {"kind": self.kind, "path": self.path, "cache": self.cache, "dim": self.dim,
                "parts": [p.state() for p in self.parts], "scale": [float(c) for c in self.scale],
                "arrays": _to_plain({**{f"mean{i}": m for i, m in enumerate(self.mean)},
                                     **{f"std{i}": s for i, s in enumerate(self.std)}})}


def make_text_input(kind: str, path: str | None = None, cache: str | None = None, progress: bool = False):
    """A :class:`TextInput`, or a :class:`CombinedInput` for ``a+b`` names."""
    if "+" in kind:
        return CombinedInput(kind, path, cache, progress)
    return TextInput(kind, path, cache, progress)


def text_input_from_state(state: dict):
    """Rebuild a fitted :class:`TextInput` or :class:`CombinedInput`; refuses vectors, encoders or regressors other
    than the saved ones."""
    if "parts" in state:
        out = CombinedInput(state["kind"], state.get("path"), state.get("cache"))
        out.parts = [text_input_from_state(p) for p in state["parts"]]
        arrays = _from_plain(state["arrays"])
        out.mean = [arrays[f"mean{i}"] for i in range(len(out.parts))]
        out.std = [arrays[f"std{i}"] for i in range(len(out.parts))]
        out.scale = [float(c) for c in state["scale"]]
        return out
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
