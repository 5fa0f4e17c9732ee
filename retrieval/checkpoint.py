"""Text-encoder checkpoints: one ``.npz`` file readable with numpy alone (no torch, no pickle).

Layout (``numpy.load(path)`` lists it)::

    weights/<name>      regressor parameters, named as in the torch ``state_dict``
    descriptor/<name>   what the descriptor learnt (tf-idf terms and idf, ...)
    target/mean, target/std   per-dimension statistics of the training features (standardised targets)
    __config__          JSON: descriptor, regressor, loss, target normalisation, metric, feature dim,
                        the feature file's identity (``features``: path, fingerprint, dim, model, weights
                        and sha256, preprocessing; :mod:`extract.compat`), the word vectors' path and
                        fingerprint, and the full training config
    __history__         JSON: one record per epoch (loss and metrics per split)

Training writes it with torch tensors converted to numpy; query-time encoding (:mod:`retrieval.query`)
reads it without importing torch.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from extract.compat import FeatureIdentity, check_same_space
from extract.core.errors import UserError
from extract.core.files import atomic_path

FORMAT = "buscador-text-encoder/1"


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: dict, history: list[dict]) -> Path:
    """Write ``arrays`` + ``config`` + ``history`` atomically to ``path`` (``.npz``)."""
    path = Path(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__config__"] = np.array(json.dumps({**config, "format": FORMAT}, sort_keys=True, default=str))
    payload["__history__"] = np.array(json.dumps(history, default=str))
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **payload)
    except OSError as exc:
        why = "the disk is full" if exc.errno == 28 else (exc.strerror or str(exc))
        raise UserError(f"cannot write checkpoint {path}: {why}; an earlier checkpoint there is kept as it was") from None
    return path


_MAGIC = {b"\x89HDF": "an HDF5 file (a feature file or cache?)", b"\x80": "a Python pickle",
          b"{": "a JSON file (an index sidecar?)"}


def _kind_of(path: Path) -> str | None:
    """What a file that is not an ``.npz`` (zip) looks like, or None for a zip."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        return None
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    return "not a zip archive"


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict, list[dict]]:
    """``(arrays, config, history)`` of a checkpoint; a missing or foreign file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with `cli.py train`")
    kind = _kind_of(path)
    if kind is not None:
        raise UserError(f"{path} is {kind}, not a text-encoder checkpoint; pass the .npz written by `cli.py train`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        why = "it holds pickled objects" if "pickle" in str(exc) else f"{type(exc).__name__}: {exc}"
        raise UserError(f"cannot read checkpoint {path} ({why}); pass the .npz written by `cli.py train`") from None
    if "__config__" not in arrays:
        raise UserError(f"{path} is not a buscador text-encoder checkpoint (no __config__ entry)")
    try:
        config = json.loads(str(arrays.pop("__config__")))
        history = json.loads(str(arrays.pop("__history__", np.array("[]"))))
    except (json.JSONDecodeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} has a damaged config ({exc}); train it again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a buscador text-encoder checkpoint (its config is not a mapping)")
    if config.get("format") != FORMAT:
        raise UserError(f"{path} has format {config.get('format')!r}; this version reads {FORMAT}")
    return arrays, config, history


def group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays under ``prefix/``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)}


def check_features(config: dict, feature_file) -> None:
    """Refuse a feature file whose vectors are not in the space the checkpoint was trained on.

    Dimension, backbone, weights (sha256) and preprocessing must agree (:func:`extract.compat.check_same_space`).
    """
    made_from = FeatureIdentity.from_model_config(config)
    if made_from is None:
        return
    check_same_space(made_from, feature_file, "the checkpoint was trained on", str(feature_file.path),
                     "use features made with the same backbone, weights and preprocessing, or retrain with "
                     f"`cli.py train --features {feature_file.path}`")
