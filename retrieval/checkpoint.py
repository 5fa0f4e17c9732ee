"""Text-encoder checkpoints: one ``.npz`` file readable with numpy alone (no torch, no pickle).

Layout (``numpy.load(path)`` lists it)::

    weights/<name>      regressor parameters, named as in the torch ``state_dict``
    descriptor/<name>   what the descriptor learnt (tf-idf terms and idf, ...)
    target/mean, target/std   per-dimension statistics of the training features (standardised targets)
    __config__          JSON: descriptor, regressor, loss, target normalisation, metric, feature dim,
                        the feature file's model and fingerprint, the word vectors' path and fingerprint,
                        and the full training config
    __history__         JSON: one record per epoch (loss and metrics per split)

Training writes it with torch tensors converted to numpy; query-time encoding (:mod:`retrieval.query`)
reads it without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from extract.core.files import atomic_path

FORMAT = "buscador-text-encoder/1"


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], config: dict, history: list[dict]) -> Path:
    """Write ``arrays`` + ``config`` + ``history`` atomically to ``path`` (``.npz``)."""
    path = Path(path)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    payload["__config__"] = np.array(json.dumps({**config, "format": FORMAT}, sort_keys=True, default=str))
    payload["__history__"] = np.array(json.dumps(history, default=str))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **payload)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict, list[dict]]:
    """``(arrays, config, history)`` of a checkpoint; a missing or foreign file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with `cli.py train`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read checkpoint {path} ({exc}); is it a buscador text-encoder checkpoint?") from None
    if "__config__" not in arrays:
        raise UserError(f"{path} is not a buscador text-encoder checkpoint (no __config__ entry)")
    config = json.loads(str(arrays.pop("__config__")))
    history = json.loads(str(arrays.pop("__history__", np.array("[]"))))
    if config.get("format") != FORMAT:
        raise UserError(f"{path} has format {config.get('format')!r}; this version reads {FORMAT}")
    return arrays, config, history


def group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays under ``prefix/``, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p) :]: v for k, v in arrays.items() if k.startswith(p)}


def check_features(config: dict, feature_file) -> None:
    """Refuse a feature file whose dimension or backbone model differs from the one the checkpoint was trained on."""
    dim, model = config["feature_dim"], config.get("features_model")
    if feature_file.dim != dim:
        raise UserError(
            f"the checkpoint maps text to {dim}-d features (trained on {config.get('features_path')}, model {model}) "
            f"but {feature_file.path} holds {feature_file.dim}-d features; use features from the same backbone"
        )
    other = feature_file.config.get("model")
    if model and other and other != model:
        raise UserError(
            f"the checkpoint was trained on {model} features ({config.get('features_path')}) but {feature_file.path} "
            f"was made with {other}; use features from the same backbone or retrain"
        )
