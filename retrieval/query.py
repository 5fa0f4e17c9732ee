"""Query-time text encoding: a trained checkpoint turns Spanish text into vectors in the image feature space.

Importing this module and encoding with it needs numpy only: the checkpoint is an ``.npz``
(:mod:`retrieval.checkpoint`), word vectors are a memory-mapped export (:func:`retrieval.text.open_vectors`),
and the MLP and GRU forward passes are written here in numpy (tests check them against torch), as is the
tf-idf transform (from the exported terms and idf; tests check it against scikit-learn). So a cold
``cli.py search`` pays neither ``import torch`` nor ``import sklearn`` nor ``import gensim``; gensim is
loaded only when a FastText vector set must build a vector for an unknown word from its subwords.

``TextEncoder.encode`` returns vectors in the space of the raw image features (standardised targets are
mapped back with the training mean/std), to be compared with ``config["metric"]`` (``"cosine"`` or ``"l2"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from extract.core.arrays import normalize_rows
from extract.core.errors import UserError
from retrieval.checkpoint import check_features, group, read_checkpoint
from retrieval.descriptors import WORD_KINDS, restore_descriptor
from retrieval.text import WordVectors, open_vectors

log = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def mlp_forward(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """``fc2(relu(fc1(x)))`` (dropout is off at inference): ``(n, in) -> (n, out) float32``."""
    h = x @ w["fc1.weight"].T + w["fc1.bias"]
    np.maximum(h, 0.0, out=h)
    return (h @ w["fc2.weight"].T + w["fc2.bias"]).astype(np.float32, copy=False)


def gru_forward(w: dict[str, np.ndarray], x: np.ndarray, lengths: np.ndarray, layers: int) -> np.ndarray:
    """Stacked GRU over zero-padded ``x (n, T, d)``, as ``torch.nn.GRU`` over packed sequences.

    Returns the top layer's hidden state at each sequence's last step, projected by ``proj`` when the
    checkpoint has one: ``(n, out) float32``.
    """
    n, steps, _ = x.shape
    lengths = np.asarray(lengths, np.int64)
    seq = x.astype(np.float32, copy=False)
    h = None
    for layer in range(layers):
        w_ih, w_hh = w[f"gru.weight_ih_l{layer}"], w[f"gru.weight_hh_l{layer}"]
        b_ih, b_hh = w[f"gru.bias_ih_l{layer}"], w[f"gru.bias_hh_l{layer}"]
        hidden = w_hh.shape[1]
        gi = seq @ w_ih.T + b_ih  # (n, T, 3H), gates ordered r, z, n as in torch
        h = np.zeros((n, hidden), np.float32)
        outs = np.zeros((n, steps, hidden), np.float32)
        for t in range(steps):
            gh = h @ w_hh.T + b_hh
            r = _sigmoid(gi[:, t, :hidden] + gh[:, :hidden])
            z = _sigmoid(gi[:, t, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            cand = np.tanh(gi[:, t, 2 * hidden :] + r * gh[:, 2 * hidden :])
            new = (1.0 - z) * cand + z * h
            live = (t < lengths)[:, None]
            h = np.where(live, new, h)
            outs[:, t] = np.where(live, new, 0.0)
        seq = outs
    if "proj.weight" in w:
        h = h @ w["proj.weight"].T + w["proj.bias"]
    return h.astype(np.float32, copy=False)


class TextEncoder:
    """A trained caption -> image-space encoder. ``config`` says how it was made and how to search with it.

    Keys of ``config`` include ``descriptor``, ``regressor``, ``loss``, ``vectors_path``,
    ``vectors_fingerprint``, ``feature_dim``, ``target_norm`` (``l2``/``standardise``/``none``),
    ``metric`` (``cosine``/``l2``), ``features_model`` and ``features_fingerprint``.
    """

    def __init__(self, config: dict, arrays: dict[str, np.ndarray], vectors: WordVectors | None, history=None):
        self.config = config
        self.history = history or []
        self.weights = {k: v.astype(np.float32, copy=False) for k, v in group(arrays, "weights").items()}
        self.descriptor = restore_descriptor(config["descriptor_config"], group(arrays, "descriptor"), vectors)
        target = group(arrays, "target")
        self.mean, self.std = target.get("mean"), target.get("std")

    @property
    def dim(self) -> int:
        return int(self.config["feature_dim"])

    @property
    def metric(self) -> str:
        return self.config["metric"]

    def describe(self, texts: Sequence[str]):
        """The descriptor's input to the regressor (``(n, d)``, or ``(x (n, T, d), lengths)`` for sequences)."""
        if self.config["regressor"] == "gru":
            ids, lengths, table = self.descriptor.index(texts)
            return table[ids], lengths
        return self.descriptor.transform(texts)

    def forward(self, described) -> np.ndarray:
        """Regressor output in the target space (before undoing the normalisation): ``(n, D) float32``."""
        if self.config["regressor"] == "gru":
            x, lengths = described
            return gru_forward(self.weights, x, lengths, int(self.config["regressor_config"]["layers"]))
        return mlp_forward(self.weights, described)

    def encode(self, texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
        """Encode texts into the image feature space: ``(n, D) float32``, compare with ``self.metric``.

        Texts are described ``batch_size`` at a time, so a large vocabulary (tf-idf) never needs an
        ``(n, V)`` dense matrix for the whole list.
        """
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            out[start : start + len(chunk)] = self._encode(chunk)
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        y = self.forward(self.describe(texts))
        norm = self.config["target_norm"]
        if norm == "standardise":
            y = y * self.std + self.mean
        elif norm == "l2":
            y = normalize_rows(y, copy=True)
        return y.astype(np.float32, copy=False)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` outside the vocabulary (ignored, or built from subwords with FastText vectors)."""
        return self.descriptor.unknown_words(text)

    def check_features(self, feature_file) -> None:
        """Refuse a :class:`~extract.store.FeatureFile` of another dimension or backbone model."""
        check_features(self.config, feature_file)


def _find_vectors(config: dict, ckpt: Path, vectors: str | os.PathLike | None) -> WordVectors | None:
    if config["descriptor"] not in WORD_KINDS or config["descriptor"] == "tfidf":
        return None
    if vectors is not None:
        return open_vectors(vectors)
    recorded = Path(config["vectors_path"])
    for candidate in (recorded, ckpt.parent / recorded.name):
        if candidate.exists():
            return open_vectors(candidate)
    raise UserError(f"the word vectors this checkpoint was trained with ({recorded}) are not there; pass --vectors PATH")


def load_text_encoder(ckpt_path: str | os.PathLike, vectors: str | os.PathLike | None = None) -> TextEncoder:
    """Load a checkpoint written by ``cli.py train`` (numpy only). ``vectors`` overrides the recorded path.

    Vectors whose fingerprint or dimension differ from the checkpoint's are refused, naming both.
    """
    ckpt_path = Path(ckpt_path)
    arrays, config, history = read_checkpoint(ckpt_path)
    wv = _find_vectors(config, ckpt_path, vectors)
    return TextEncoder(config, arrays, wv, history)
