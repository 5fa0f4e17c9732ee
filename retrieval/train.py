"""Train a caption -> image-space regressor on cached image features, evaluating every split each epoch.

Each epoch trains over shuffled batches of the ``train`` split, then ranks every other split's images
for each of its captions (:mod:`retrieval.metrics`) and logs loss, mean rank, recall@1/5/10, MRR and the
rank histogram per split to an optional tensorboardX writer. The checkpoint with the best validation
MRR is kept (:mod:`retrieval.checkpoint`); training stops after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from extract.core.arrays import normalize_rows
from extract.core.devices import resolve_device
from extract.core.errors import UserError
from extract.store import open_features
from retrieval.checkpoint import save_checkpoint
from retrieval.config import TrainConfig
from retrieval.datasets import SplitData, load_splits
from retrieval.descriptors import ENCODER_KINDS, make_descriptor
from retrieval.evaluate import split_ranks
from retrieval.losses import compute_loss
from retrieval.metrics import rank_metrics
from retrieval.regressors import make_regressor, regressor_config, state_to_numpy
from retrieval.text import prepare_vectors

log = logging.getLogger(__name__)


class _Inputs:
    """Regressor inputs of one split: a matrix ``(n, d)`` (dense, or CSR for sparse descriptors such as tf-idf:
    made dense one batch at a time), or word ids + lengths + a vector table (GRU)."""

    def __init__(self, descriptor, texts: Sequence[str], sequence: bool):
        self.sequence = sequence
        if sequence:
            self.ids, self.lengths, self.table = descriptor.index(texts)
        elif getattr(descriptor, "sparse", False):
            self.x = descriptor.transform_sparse(texts)
        else:
            self.x = descriptor.transform(texts)
        self.n = len(texts)

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
        if not self.sequence:
            x = self.x[idx]
            return (torch.from_numpy(x if isinstance(x, np.ndarray) else x.toarray()).to(device),)
        lengths = self.lengths[idx]
        x = self.table[self.ids[idx, : int(lengths.max())]]
        return torch.from_numpy(x).to(device), torch.from_numpy(lengths)


@dataclass
class Targets:
    """Target normalisation fitted on the training images; maps raw features to targets and back."""

    norm: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, norm: str, xb: np.ndarray) -> Targets:
        if norm != "standardise":
            return cls(norm)
        return cls(norm, xb.mean(axis=0), np.maximum(xb.std(axis=0), 1e-6))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.norm == "l2":
            return normalize_rows(x, copy=True)
        if self.norm == "standardise":
            return (x - self.mean) / self.std
        return x

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return y * self.std + self.mean if self.norm == "standardise" else y

    def arrays(self) -> dict[str, np.ndarray]:
        return {} if self.mean is None else {"target/mean": self.mean.astype(np.float32), "target/std": self.std.astype(np.float32)}


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    best: dict  # metrics per split at the best epoch
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0


def _predict(model, inputs: _Inputs, device: torch.device, batch: int = 1024) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, inputs.n, batch):
            idx = np.arange(start, min(start + batch, inputs.n))
            outs.append(model(*inputs.batch(idx, device)).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _pick_val(splits: dict[str, SplitData], val_split: str | None) -> str:
    if val_split:
        if val_split not in splits:
            raise UserError(f"validation split {val_split!r} not found; splits are {', '.join(sorted(splits))}")
        return val_split
    others = sorted(s for s in splits if s != "train" and splits[s].texts)
    if "val" in others:
        return "val"
    if not others:
        log.warning("no validation split: choosing the best epoch on the training split")
        return "train"
    return others[0]


def train(config: TrainConfig, *args, threads: int | None = None, **kwargs) -> TrainResult:
    """Train ``config`` (see :func:`_train` for the arguments); ``threads`` sets torch's CPU threads meanwhile.

    On a busy machine one thread is often several times faster than torch's default of one per core.
    """
    if not threads:
        return _train(config, *args, **kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(config, *args, **kwargs)
    finally:
        torch.set_num_threads(before)


def _train(
    config: TrainConfig,
    features: str | os.PathLike,
    captions: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    vectors: str | os.PathLike | None = None,
    vectors_limit: int | None = None,
    val_split: str | None = None,
    encoder_cache: str | os.PathLike | None = None,
    writer=None,
    quiet: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``config`` on the ``train`` split of ``captions`` against ``features``; write the best checkpoint to ``out``."""
    t0 = time.perf_counter()
    out = Path(out)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    ff = open_features(features)
    splits = load_splits(captions, ff.ids)
    if "train" not in splits or not splits["train"].texts:
        raise UserError(f"no usable 'train' split among {', '.join(sorted(splits)) or 'the caption sources'}")
    val = _pick_val(splits, val_split)
    xb = ff.load()
    train_split = splits["train"]
    wv = None
    if config.descriptor not in ("tfidf", *ENCODER_KINDS):
        if vectors is None:
            raise UserError(f"descriptor {config.descriptor!r} needs word vectors: pass --vectors (make them with `cli.py vectors train`)")
        wv = prepare_vectors(vectors, out.parent, vectors_limit)
    descriptor = make_descriptor(config.descriptor, wv, fold_accents=config.fold_accents, max_len=config.max_len,
                                 ngrams=config.tfidf_ngrams, max_features=config.tfidf_max_features,
                                 cache_path=encoder_cache or out.with_name(f"{config.descriptor}-cache.h5"))
    t_enc = time.perf_counter()
    descriptor.fit(train_split.texts)
    sequence = config.regressor == "gru"
    inputs = {name: _Inputs(descriptor, s.texts, sequence) for name, s in splits.items() if s.texts}
    encode_seconds = time.perf_counter() - t_enc
    targets = Targets.fit(config.target_norm, xb[np.unique(train_split.gallery_rows)])
    y_train = torch.from_numpy(targets.forward(xb[train_split.image_rows]).astype(np.float32))
    image_ids = torch.from_numpy(train_split.image_rows)
    model = make_regressor(config.regressor, descriptor.dim, ff.dim, config.hidden, config.layers, config.dropout).to(device)
    opt_cls = torch.optim.Adam if config.optimiser == "adam" else torch.optim.SGD
    extra = {"momentum": 0.9} if config.optimiser == "sgd" else {}
    optimiser = opt_cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **extra)
    base_config = {
        "descriptor": config.descriptor, "descriptor_config": descriptor.config, "regressor": config.regressor,
        "regressor_config": regressor_config(config.regressor, model), "loss": config.loss,
        "target_norm": config.target_norm, "metric": config.metric, "feature_dim": ff.dim,
        "features_path": str(ff.path), "features_model": ff.config.get("model"), "features_fingerprint": ff.fingerprint,
        "vectors_path": str(wv.path.resolve()) if wv else None, "vectors_fingerprint": wv.fingerprint if wv else None,
        "val_split": val, "train": config.to_dict(),
    }
    history: list[dict] = []
    best_mrr, best_epoch, best, stale = -1.0, 0, {}, 0
    n = train_split.gt.size
    for epoch in range(1, config.epochs + 1):
        te = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        total, batches = 0.0, range(0, n, config.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=quiet or not sys.stderr.isatty())
        for start in bar:
            idx = order[start : start + config.batch_size]
            pred = model(*inputs["train"].batch(idx, device))
            loss = compute_loss(config.loss, pred, y_train[idx].to(device), config.margin, config.metric, image_ids[idx].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            value = loss.item()
            total += value * len(idx)
            bar.set_postfix(loss=f"{value:.4f}")
        record = {"epoch": epoch, "train_loss": total / n, "splits": {}}
        for name, split in splits.items():
            if name == "train" or name not in inputs:
                continue
            pred = _predict(model, inputs[name], device)
            with torch.no_grad():
                y = torch.from_numpy(targets.forward(xb[split.image_rows]).astype(np.float32))
                eval_loss = float(compute_loss(config.loss, torch.from_numpy(pred), y, config.margin, config.metric,
                                               torch.from_numpy(split.image_rows)))
            r = split_ranks(targets.inverse(pred), xb, split, config.metric)
            record["splits"][name] = {**rank_metrics(r), "loss": eval_loss}
            if writer is not None:
                _log_split(writer, name, epoch, record["splits"][name], r)
        if writer is not None:
            writer.add_scalar("train/loss", record["train_loss"], epoch)
        record["seconds"] = time.perf_counter() - te
        history.append(record)
        score = record["splits"].get(val, {}).get("mrr", -record["train_loss"])
        improved = score > best_mrr
        record["best"] = improved
        if improved:
            best_mrr, best_epoch, best, stale = score, epoch, record["splits"], 0
            arrays = {f"weights/{k}": v for k, v in state_to_numpy(model).items()}
            arrays.update({f"descriptor/{k}": v for k, v in descriptor.state().items()})
            arrays.update(targets.arrays())
            save_checkpoint(out, arrays, {**base_config, "best_epoch": epoch, "best": best}, history)
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch({**record, "val": val})
        if stale >= config.patience:
            log.info("early stop after %d epochs without a better %s MRR", stale, val)
            break
    _rewrite_history(out, history)
    return TrainResult(out, best_epoch, best, history, time.perf_counter() - t0, encode_seconds)


def _log_split(writer, name: str, epoch: int, m: dict, r: np.ndarray) -> None:
    writer.add_scalar(f"{name}/loss", m["loss"], epoch)
    writer.add_scalar(f"{name}/mean_position", m["mean_rank"], epoch)
    for key in ("recall@1", "recall@5", "recall@10", "mrr"):
        writer.add_scalar(f"{name}/{key}", m[key], epoch)
    writer.add_histogram(f"{name}/rank_histogram", r, epoch)


def _rewrite_history(out: Path, history: list[dict]) -> None:
    """Store the full history (including epochs after the best one) in the best checkpoint."""
    from retrieval.checkpoint import read_checkpoint

    arrays, config, _ = read_checkpoint(out)
    save_checkpoint(out, arrays, config, history)


def summary_line(record: dict) -> str:
    """One line per epoch: train loss and the validation split's R@1/5/10, MRR, mean rank."""
    v = record["splits"].get(record.get("val"), {})
    parts = [f"epoch {record['epoch']:3d}", f"train loss {record['train_loss']:.4f}"]
    if v:
        parts.append(f"{record['val']}: loss {v['loss']:.4f} R@1 {v['recall@1']:.3f} R@5 {v['recall@5']:.3f} "
                     f"R@10 {v['recall@10']:.3f} MRR {v['mrr']:.3f} mean rank {v['mean_rank']:.1f}")
    parts.append(f"{record['seconds']:.1f}s" + (" *" if record.get("best") else ""))
    return "  ".join(parts)


def run_name(config: TrainConfig) -> str:
    """tensorboardX run name ``{descriptor}-{regressor}-{YYYYmmddHHMMSS}``."""
    return f"{config.descriptor}-{config.regressor}-{time.strftime('%Y%m%d%H%M%S')}"
