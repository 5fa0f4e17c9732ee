"""Poster images through a backbone and a genre head; a fine-tuned poster model loaded for use.

:func:`backbone_blocks` lists a backbone's blocks, :func:`image_probabilities` scores poster files through a
backbone and a head (shared by fine-tuning in :mod:`retrieval.genre.finetune` and by the loaded model).

:func:`load_finetuned` rebuilds the backbone that made the training feature file
(:func:`extract.features.backbone_from_config`, which refuses other weights), loads the fine-tuned blocks' and the
head's weights from a ``buscador-genre-finetuned/1`` checkpoint, and gives a :class:`FineTunedPoster` that scores
poster images: each image is preprocessed exactly like feature extraction (the weights' resize and centre crop).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from retrieval.genre.decision import DecisionRule
from retrieval.genre.metrics import multilabel_report, top_k

log = logging.getLogger(__name__)

FORMAT = "buscador-genre-finetuned/1"


def backbone_blocks(module) -> list:
    """The backbone's blocks in forward order: containers (Sequential, ModuleList) are opened down to the
    modules they hold; only blocks that take part in the forward pass (their parameters get a gradient) count."""
    import torch
    from torch import nn

    def open_(m):
        kids = [c for c in m.children() if any(True for _ in c.parameters())]
        for child in kids:
            if isinstance(child, (nn.Sequential, nn.ModuleList)) or (len(kids) == 1 and any(True for _ in child.children())):
                yield from open_(child)  # a container, or a wrapper around one network
            else:
                yield child

    blocks = list(open_(module))
    was_training = module.training
    module.eval()
    module.zero_grad(set_to_none=True)
    probe = next(module.parameters())
    size = 64
    module(torch.zeros(1, 3, size, size, device=probe.device, dtype=probe.dtype)).float().sum().backward()
    used = [b for b in blocks if any(p.grad is not None for p in b.parameters())]
    module.zero_grad(set_to_none=True)
    module.train(was_training)
    return used


class _Posters:
    """A torch Dataset of poster images -> ``(3, S, S) uint8`` tensors (augmented when ``train``)."""

    def __init__(self, paths: list[str], preprocessing, train: bool, max_pixels: int, decoder=None):
        from torchvision.transforms import v2

        self.paths, self.preprocessing, self.train, self.max_pixels = paths, preprocessing, train, max_pixels
        self.decoder = decoder  # the feature file's decoder (library, JPEG scaling, resampler): as extraction did
        self.augment = v2.Compose([
            v2.RandomResizedCrop(int(preprocessing.crop), scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.2, 0.2, 0.2),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        from extract.images import load_image, prepare_image

        if not self.train:
            arr, reason = prepare_image(self.paths[i], self.preprocessing, self.max_pixels, self.decoder)
            if arr is None:
                raise UserError(f"cannot read poster {self.paths[i]}: {reason}")
            return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), i
        im, reason = load_image(self.paths[i], self.max_pixels)
        if im is None:
            raise UserError(f"cannot read poster {self.paths[i]}: {reason}")
        x = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return self.augment(x), i


def _loader(paths, preprocessing, train, max_pixels, batch_size, seed, workers, decoder=None):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(_Posters(paths, preprocessing, train, max_pixels, decoder), batch_size=batch_size,
                                       shuffle=train,
                                       num_workers=workers, generator=gen)


def image_probabilities(module, net, bb, paths: list[str], n_genres: int, max_pixels: int, batch_size: int = 32,
                        workers: int = 0) -> np.ndarray:
    """``(len(paths), G) float32`` genre probabilities of poster images through ``module`` (the backbone, in eval
    mode) and ``net`` (the head), each image preprocessed exactly like feature extraction."""
    import torch

    out = []
    with torch.no_grad():
        for x, _ in _loader(paths, bb.preprocessing, False, max_pixels, batch_size, 0, workers, bb.decoder):
            out.append(torch.sigmoid(net(module(bb.normalize(x).contiguous()).flatten(1))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, n_genres), np.float32)


class FineTunedPoster:
    """Poster images -> genre probabilities through a fine-tuned backbone and its head."""

    uses_poster = True
    uses_text = False

    def __init__(self, blob: dict, path: str | os.PathLike):
        from retrieval.genre.config import GenreConfig

        self.path = str(path)
        self.cfg = GenreConfig(**blob["config"])
        self.genres = list(blob["genres"])
        self.feature_config = dict(blob["feature_config"])
        self.n_blocks = int(blob["n_blocks"])
        self.decision = DecisionRule.from_state(blob["decision"])
        self.thresholds = self.decision.thresholds
        self.split_ids = blob.get("split_ids", {})
        self.history = blob.get("history", [])
        self.labels_path = blob.get("labels_path", "")
        self.features = blob.get("features")
        self.no_train_positive = list(blob.get("no_train_positive", []))
        self._blob = blob
        self._parts = None

    def _build(self, device: str):
        """The backbone module, head and :class:`~extract.backbone.Backbone` on ``device`` (built once)."""
        import torch

        from extract.core.devices import resolve_device
        from extract.features import backbone_from_config
        from retrieval.genre.models import head

        dev = resolve_device(device)
        if self._parts is None or self._parts[2].device != dev:
            bb = backbone_from_config(self.feature_config, str(dev))
            module = bb.module.float().to(memory_format=torch.contiguous_format)
            blocks = backbone_blocks(module)
            if self.n_blocks > len(blocks) or len(self._blob["blocks"]) != self.n_blocks:
                raise UserError(f"{self.path} holds {len(self._blob['blocks'])} fine-tuned blocks of "
                                f"{self.feature_config.get('model')}, which has {len(blocks)}: a different backbone")
            try:
                for block, state in zip(blocks[len(blocks) - self.n_blocks:], self._blob["blocks"]):
                    block.load_state_dict(state)
                net = head(bb.dim, len(self.genres), self.cfg.hidden, self.cfg.dropout)
                net.load_state_dict(self._blob["head"])
            except RuntimeError as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise UserError(f"{self.path} does not fit {self.feature_config.get('model')} ({first}); retrain it with "
                                "`cli.py genres train --fine-tune N`") from None
            module.eval()
            self._parts = (module, net.to(dev).eval(), bb)
        return self._parts

    def predict_images(self, paths: list[str], device: str = "cpu", batch_size: int = 32) -> np.ndarray:
        """``(len(paths), G) float32`` probabilities of poster image files (an unreadable one is a UserError)."""
        module, net, bb = self._build(device)
        max_pixels = int(self.feature_config.get("max_pixels", 89478485))
        return image_probabilities(module, net, bb, [str(p) for p in paths], len(self.genres), max_pixels, batch_size)

    def decide(self, probs: np.ndarray, k: int | None = None) -> np.ndarray:
        """0/1 predictions: the decision rule chosen on validation, or the ``k`` most probable genres."""
        return top_k(probs, k) if k else self.decision.apply(probs)


def load_finetuned(blob: dict, path: str | os.PathLike) -> FineTunedPoster:
    """A :class:`FineTunedPoster` from a checkpoint dict already read with ``weights_only=True``."""
    missing = [k for k in ("config", "genres", "feature_config", "n_blocks", "head", "blocks", "decision") if k not in blob]
    if missing:
        raise UserError(f"{path} is a damaged fine-tuned genre checkpoint (no {', '.join(missing)}); retrain it")
    return FineTunedPoster(blob, path)


def evaluate_finetuned(clf: FineTunedPoster, labels_path=None, features_path=None, split: str = "test",
                       k: int | None = None, allow_pickle: bool = False, device: str = "cpu",
                       genre_ids: str | None = None, columns: dict | None = None) -> dict:
    """:func:`retrieval.genre.checkpoint.evaluate` for a fine-tuned model: the posters are the images of the
    feature file (its image root + the joined feature ids; default: the training feature file), run through the
    fine-tuned backbone (the cached feature values are not used)."""
    from extract.store import open_features
    from retrieval.genre.data import joined, read_label_set

    labels_path = labels_path or clf.labels_path
    features_path = features_path or (clf.features or {}).get("path")
    if not features_path:
        raise UserError(f"{clf.path} records no feature file; pass --features FILE.h5 (made by `cli.py extract` on the posters)")
    col = {"text_field": clf.cfg.text_field, "id_column": clf.cfg.id_column, "genres_column": clf.cfg.genres_column,
           **(columns or {})}
    labels = read_label_set(labels_path, col["text_field"], clf.genres, genre_ids, allow_pickle, col["id_column"],
                            col["genres_column"])
    ff = open_features(features_path)
    root = ff.config.get("image_root")
    if not root:
        raise UserError(f"{features_path} records no image root; re-extract it with `cli.py extract`")
    labels, rows = joined(labels, ff.ids)
    if split != "all":
        wanted = set(clf.split_ids.get(split, []))
        keep = [i for i, m in enumerate(labels.ids) if m in wanted]
        if not keep:
            raise UserError(f"none of the movies in {labels_path} is in the model's {split} split; pass --split all to "
                            "score every movie")
        labels, rows = labels.subset(keep), rows[keep]
    ids = list(ff.ids)
    probs = clf.predict_images([str(Path(root) / ids[r]) for r in rows], device=device)
    report = multilabel_report(labels.Y, clf.decide(probs, k), clf.genres, exclude=clf.no_train_positive)
    report.update({"split": split, "model": f"poster (last {clf.n_blocks} blocks fine-tuned)",
                   "decision": f"top-{k}" if k else clf.decision.describe()})
    return report
