"""A trained genre model with everything needed to use it: config, genre order, thresholds, text descriptor.

Checkpoints are plain ``torch.save`` dicts of tensors, numbers, strings and lists, loaded with
``weights_only=True`` (no code runs on load).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.genre.decision import DecisionRule
from retrieval.genre.metrics import multilabel_report, top_k

log = logging.getLogger(__name__)

FORMAT = "buscador-genre/1"


@dataclass
class GenreClassifier:
    """A trained :class:`retrieval.genre.models.GenreNet` plus its genre list, thresholds and inputs."""

    net: object
    cfg: object
    genres: list[str]
    thresholds: np.ndarray
    descriptor: object | None
    features: dict | None
    no_train_positive: list[str] = field(default_factory=list)
    split_ids: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    dims: dict = field(default_factory=dict)
    labels_path: str = ""
    decision: DecisionRule | None = None

    def __post_init__(self):
        if self.decision is None:
            self.decision = DecisionRule("thresholds", np.asarray(self.thresholds, np.float32))

    @property
    def uses_poster(self) -> bool:
        return self.cfg.model != "text"

    @property
    def uses_text(self) -> bool:
        return self.cfg.model != "poster"

    def predict_proba(self, poster: np.ndarray | None = None, texts: list[str] | None = None, device: str = "cpu") -> np.ndarray:
        """Probabilities ``(n, G) float32`` from poster features ``(n, Dp) float32`` and/or overviews."""
        from retrieval.genre.models import Batches, predict_proba

        if self.uses_poster:
            if poster is None:
                raise UserError(f"this {self.cfg.model} model needs a poster (--poster or --features)")
            if poster.shape[1] != self.dims["poster"]:
                raise UserError(f"poster features are {poster.shape[1]}-d but the model was trained on {self.dims['poster']}-d ones")
        if self.uses_text and texts is None:
            raise UserError(f"this {self.cfg.model} model needs overview text (--overview)")
        text = self.descriptor.transform(list(texts)) if self.uses_text else None
        n = len(poster) if poster is not None else len(texts)
        self.net.to(device)
        probs = predict_proba(self.net, Batches(poster if self.uses_poster else None, text, device), np.arange(n))
        self.net.cpu()
        return probs

    def decide(self, probs: np.ndarray, k: int | None = None) -> np.ndarray:
        """0/1 predictions: the decision rule chosen on validation, or the ``k`` most probable genres."""
        return top_k(probs, k) if k else self.decision.apply(probs)

    def check_features(self, info: dict) -> None:
        """Refuse poster features of another dimension, backbone, weights or preprocessing, naming both."""
        from extract.compat import check_same_space

        if not self.uses_poster or self.features is None:
            return
        check_same_space(self.features, info, "the genre model was trained on", str(info["path"]),
                         "use poster features made like the training ones, or retrain with "
                         f"`cli.py genres train --features {info['path']}`")

    def save(self, path: str | os.PathLike) -> Path:
        import torch

        from extract.core.files import atomic_path

        blob = {
            "format": FORMAT, "config": asdict(self.cfg), "genres": list(self.genres),
            "thresholds": [float(t) for t in self.thresholds], "state_dict": self.net.state_dict(),
            "descriptor": self.descriptor.state() if self.descriptor is not None else None,
            "features": self.features, "no_train_positive": list(self.no_train_positive),
            "split_ids": self.split_ids, "history": self.history, "train_seconds": float(self.train_seconds),
            "dims": dict(self.dims), "labels_path": self.labels_path, "decision": self.decision.state(),
        }
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        return Path(path)


def load_classifier(path: str | os.PathLike):
    """Load a checkpoint written by :meth:`GenreClassifier.save` (a :class:`GenreClassifier`) or by
    ``genres train --fine-tune`` (a :class:`retrieval.genre.tuned.FineTunedPoster`)."""
    import torch

    from retrieval.genre.config import GenreConfig
    from retrieval.genre.inputs import text_input_from_state
    from retrieval.genre.models import EnsembleNet, GenreNet

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with `cli.py genres train`")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to replace
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(f"cannot read {path} as a genre checkpoint ({type(exc).__name__}: {first}); pass a file "
                        "written by `cli.py genres train`") from None
    from retrieval.genre.tuned import FORMAT as FINETUNED

    if isinstance(blob, dict) and blob.get("format") == FINETUNED:
        from retrieval.genre.tuned import load_finetuned

        return load_finetuned(blob, path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a genre checkpoint (format {blob.get('format') if isinstance(blob, dict) else None!r}, "
                        f"expected {FORMAT} or {FINETUNED})")
    cfg = GenreConfig(**blob["config"])
    dims = blob["dims"]
    def member():
        return GenreNet(cfg.model, len(blob["genres"]), dims["poster"], dims["text"], cfg.hidden, cfg.dropout)

    net = EnsembleNet([member() for _ in range(cfg.folds)]) if cfg.folds else member()
    net.load_state_dict(blob["state_dict"])
    net.eval()
    desc = text_input_from_state(blob["descriptor"]) if blob["descriptor"] is not None else None
    return GenreClassifier(
        net=net, cfg=cfg, genres=list(blob["genres"]), thresholds=np.asarray(blob["thresholds"], np.float32),
        descriptor=desc, features=blob["features"], no_train_positive=list(blob["no_train_positive"]),
        split_ids=blob["split_ids"], history=blob["history"], train_seconds=blob["train_seconds"], dims=dims,
        labels_path=blob["labels_path"],
        decision=DecisionRule.from_state(blob["decision"]) if blob.get("decision") else None,
    )


def evaluate(
    clf: GenreClassifier,
    labels_path: str | os.PathLike | None = None,
    features_path: str | os.PathLike | None = None,
    split: str = "test",
    k: int | None = None,
    allow_pickle: bool = False,
    device: str = "cpu",
    genre_ids: str | None = None,
    columns: dict | None = None,
) -> dict:
    """Score a model on a label file (default: the one it was trained on) and one split (test, val or all).

    Labels are encoded with the model's genre list; ``test``/``val`` select the movies recorded in the
    checkpoint for that split. ``columns`` overrides the label columns saved in the model's config
    (``text_field``, ``id_column``, ``genres_column``).
    """
    from retrieval.genre.data import joined, read_label_set
    from retrieval.genre.tuned import FineTunedPoster, evaluate_finetuned

    if isinstance(clf, FineTunedPoster):
        return evaluate_finetuned(clf, labels_path, features_path, split, k, allow_pickle, device, genre_ids, columns)
    labels_path = labels_path or clf.labels_path
    if features_path is None and clf.uses_poster:
        features_path = (clf.features or {}).get("path")
    col = {"text_field": clf.cfg.text_field, "id_column": clf.cfg.id_column, "genres_column": clf.cfg.genres_column,
           **(columns or {})}
    labels = read_label_set(labels_path, col["text_field"], clf.genres, genre_ids, allow_pickle, col["id_column"],
                            col["genres_column"])
    poster = None
    if clf.uses_poster:
        from extract.store import open_features

        ff = open_features(features_path)
        clf.check_features({"path": str(features_path), "dim": ff.dim, "fingerprint": ff.fingerprint, "config": ff.config})
        labels, rows = joined(labels, ff.ids)
    if split != "all":
        wanted = set(clf.split_ids.get(split, []))
        keep = [i for i, m in enumerate(labels.ids) if m in wanted]
        if not keep:
            raise UserError(f"none of the movies in {labels_path} is in the model's {split} split; pass --split all to score every movie")
        labels = labels.subset(keep)
        if clf.uses_poster:
            rows = rows[keep]
    if clf.uses_poster:
        poster = ff.load(rows)
    probs = clf.predict_proba(poster, labels.texts, device=device)
    report = multilabel_report(labels.Y, clf.decide(probs, k), clf.genres, exclude=clf.no_train_positive)
    report.update({"split": split, "model": clf.cfg.model,
                   "decision": f"top-{k}" if k else clf.decision.describe()})
    return report


def predict_movie(
    clf, poster: str | None = None, overview: str | None = None, top: int = 3, device: str = "auto"
) -> list[dict]:
    """Top genres for one movie: ``[{"genre", "probability", "threshold", "predicted"}]``, most probable first.

    The poster's features are extracted on the fly with the backbone recorded in the training features; a
    fine-tuned model (:class:`retrieval.genre.tuned.FineTunedPoster`) runs the poster through its own backbone.
    """
    from extract.core.devices import resolve_device
    from retrieval.genre.tuned import FineTunedPoster

    device = resolve_device(device)
    feats = None
    if isinstance(clf, FineTunedPoster):
        if poster is None:
            raise UserError("this fine-tuned poster model needs --poster IMAGE")
        probs = clf.predict_images([poster], device=device)[0]
    elif clf.uses_poster:
        if poster is None:
            raise UserError(f"this {clf.cfg.model} model needs --poster IMAGE")
        try:
            from extract.features import embed_images
        except ImportError as exc:
            raise UserError(f"extracting poster features needs extract.features, which is not available ({exc})") from None
        config = (clf.features or {}).get("config", {})
        if not config.get("model") or not config.get("weights"):
            raise UserError(f"the model's poster features ({(clf.features or {}).get('path')}) record no backbone, so a new "
                            "poster cannot be embedded like them; train on features made by `cli.py extract`")
        feats, failed = embed_images([poster], config, device)
        if failed or len(feats) != 1:
            why = failed[0][1] if failed and isinstance(failed[0], (tuple, list)) else failed
            raise UserError(f"cannot read poster {poster}: {why}")
        feats = np.asarray(feats, np.float32)
    if not isinstance(clf, FineTunedPoster):
        if clf.uses_text and not (overview or "").strip():
            raise UserError(f"this {clf.cfg.model} model needs --overview TEXT")
        probs = clf.predict_proba(feats, [overview or ""], device=device)[0]
    order = np.argsort(-probs, kind="stable")[: max(1, top)]
    chosen = clf.decide(probs[None, :])[0]
    return [
        {"genre": clf.genres[j], "probability": float(probs[j]), "threshold": float(clf.thresholds[j]),
         "predicted": bool(chosen[j])}
        for j in order
    ]
