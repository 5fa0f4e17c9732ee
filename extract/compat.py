"""Artifact compatibility: which feature file an artifact was made from, and whether another one fits it.

Every artifact made from image features (index sidecar, text-encoder checkpoint, genre model) records a
:class:`FeatureIdentity` of its feature file: path, fingerprint (content + config, see
:mod:`extract.store`), dim, row count, backbone model, weights and their sha256, preprocessing, and the
storage dtype (float16 values are float32 ones rounded: the same space, but another file).
Loaders compare it with what they are handed:

- :func:`check_same_file`: the very same rows (an index: row ``i`` of the index is row ``i`` of the file);
- :func:`check_same_space`: vectors of the same space (same dim, backbone, weights, preprocessing), e.g. a
  text encoder trained on one collection searching another collection made with the same backbone.

A mismatch is a :class:`UserError` that names both sides and the command that fixes it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from extract.core.errors import UserError
from extract.fingerprints import recorded
from extract.store import FeatureFile

log = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("image_size", "resize", "resize_size", "crop_size", "interpolation", "mean", "std",
                      "preprocessing", "decoder")
# What makes two feature files the same space: the network (and its random init / calibration) and its input.
SPACE_KEYS = ("model", "weights", "weights_sha256", "seed", "bn_calibration_sha", *PREPROCESSING_KEYS)


@dataclass(frozen=True)
class FeatureIdentity:
    """What an artifact records about the feature file it was made from."""

    path: str
    fingerprint: str | None
    dim: int | None
    count: int | None = None
    model: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    preprocessing: dict = field(default_factory=dict)
    space: dict = field(default_factory=dict)
    dtype: str | None = None

    @classmethod
    def of(cls, ff: FeatureFile) -> FeatureIdentity:
        """The identity of an opened feature file."""
        return cls.from_config(str(ff.path), ff.fingerprint, ff.dim, ff.config, len(ff))

    @classmethod
    def from_config(cls, path: str, fp: str | None, dim: int | None, config: Mapping, count: int | None = None):
        config = dict(config or {})
        return cls(
            path=str(path), fingerprint=fp, dim=None if dim is None else int(dim), count=count,
            model=config.get("model"), weights=config.get("weights"), weights_sha256=config.get("weights_sha256"),
            preprocessing={k: config[k] for k in PREPROCESSING_KEYS if config.get(k) is not None},
            space={k: config[k] for k in SPACE_KEYS if config.get(k) is not None},
            dtype=str(recorded(config, "dtype")) if config.get("model") is not None or "dtype" in config else None,
        )

    def record(self) -> dict:
        """A JSON-able dict to store in an artifact (read back by :meth:`from_record`)."""
        return asdict(self)

    @classmethod
    def from_record(cls, rec: Mapping) -> FeatureIdentity:
        """Read a stored identity: a :meth:`record`, or an older ``{path, fingerprint, dim|model, config}`` dict."""
        rec = dict(rec or {})
        if "space" in rec:
            known = {k: rec.get(k) for k in cls.__dataclass_fields__}
            known["preprocessing"] = dict(known.get("preprocessing") or {})
            known["space"] = dict(known.get("space") or {})
            return cls(**known)
        config = dict(rec.get("config") or {})
        if rec.get("model") is not None:
            config.setdefault("model", rec["model"])
        dim = rec.get("dim", config.get("dim"))
        return cls.from_config(rec.get("path", "?"), rec.get("fingerprint"), dim, config, rec.get("n"))

    @classmethod
    def from_model_config(cls, config: Mapping) -> FeatureIdentity | None:
        """The training features of a model config (text-encoder checkpoint): its ``features`` record, or
        the flat ``feature_dim`` / ``features_model`` / ``features_fingerprint`` keys of older checkpoints."""
        config = dict(config or {})
        rec = config.get("features")
        if isinstance(rec, Mapping):
            return cls.from_record(rec)
        if not any(config.get(k) is not None for k in ("feature_dim", "features_model", "features_fingerprint")):
            return None
        model = config.get("features_model")
        return cls(path=str(config.get("features_path") or "?"), fingerprint=config.get("features_fingerprint"),
                   dim=config.get("feature_dim"), model=model, space={"model": model} if model else {})

    def label(self) -> str:
        """``resnet18 (imagenet weights, 512-d)``-style description."""
        bits = [b for b in (f"{self.weights} weights" if self.weights else "",
                            f"{self.dim}-d" if self.dim is not None else "",
                            "stored as float16" if self.dtype == "float16" else "") if b]
        if self.model is None:
            return ", ".join(bits)
        return self.model + (f" ({', '.join(bits)})" if bits else "")


def _as_identity(x) -> FeatureIdentity:
    if isinstance(x, FeatureIdentity):
        return x
    if isinstance(x, FeatureFile):
        return FeatureIdentity.of(x)
    if hasattr(x, "config") and hasattr(x, "dim") and not isinstance(x, Mapping):  # feature-file-like
        return FeatureIdentity.from_config(str(x.path), getattr(x, "fingerprint", None), x.dim, x.config, len(x))
    return FeatureIdentity.from_record(x)


def check_same_file(made_from, other, artifact: str, fix: str) -> None:
    """Refuse ``other`` unless it is the very feature file ``artifact`` was made from (same fingerprint).

    ``made_from`` and ``other`` are identities, stored records or opened feature files. ``artifact`` reads
    like "the index in workspace/index"; ``fix`` is the command that makes them agree.
    """
    a, b = _as_identity(made_from), _as_identity(other)
    if a.fingerprint != b.fingerprint:
        other_bits = ", ".join(x for x in (b.label(), _first_difference(a, b) or _dtype_difference(a, b)) if x)
        raise UserError(f"{artifact} was built from features with fingerprint {a.fingerprint} ({a.path}, {a.label()}) "
                        f"but {b.path} has fingerprint {b.fingerprint}" + (f" ({other_bits})" if other_bits else "")
                        + f"; {fix}")


def check_same_space(made_from, other, artifact: str, other_name: str, fix: str) -> None:
    """Refuse ``other`` unless its vectors live in the space ``artifact`` was made for.

    Same dim, and every :data:`SPACE_KEYS` entry recorded on both sides equal. ``artifact`` reads like
    "the text encoder was trained on"; ``other_name`` like "features.h5" or "the index". Another feature
    file of the same space (other images) is fine and only logged.
    """
    a, b = _as_identity(made_from), _as_identity(other)
    where = f" ({a.path})" if a.path not in ("", "?", "None") else ""
    if a.dim is not None and b.dim is not None and int(a.dim) != int(b.dim):
        raise UserError(f"{artifact} {a.dim}-d {a.model or ''} features{where} but {other_name} holds "
                        f"{b.dim}-d {b.model or ''} ones; {fix}".replace("  ", " "))
    differs = _first_difference(a, b)
    if differs:
        raise UserError(f"{artifact} {a.model} image features{where} but {other_name} holds {b.model} features "
                        f"({differs}); {fix}")
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        log.info("%s features %s (%s); %s holds features %s of the same space", artifact, a.fingerprint, a.path,
                 other_name, b.fingerprint)


def _first_difference(a: FeatureIdentity, b: FeatureIdentity) -> str:
    for key in SPACE_KEYS:
        va, vb = a.space.get(key), b.space.get(key)
        if va is not None and vb is not None and _norm(va) != _norm(vb):
            return f"{key} {_short(va)} vs {_short(vb)}"
    return ""


def _dtype_difference(a: FeatureIdentity, b: FeatureIdentity) -> str:
    return f"dtype {a.dtype} vs {b.dtype}" if a.dtype and b.dtype and a.dtype != b.dtype else ""


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]
