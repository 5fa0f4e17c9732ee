"""Fine-tune the last blocks of the poster backbone on the poster images themselves (not cached features).

The backbone is the one that made the feature file (:func:`extract.features.backbone_from_config`), so the
split, the movies and the preprocessing are those of the cached-feature poster model. Training images are
augmented (random resized crop, horizontal flip, colour jitter; torchvision transforms); validation and test
images are preprocessed exactly like feature extraction (the weights' own resize and centre crop). The blocks before the last
``blocks`` stay frozen (BatchNorm in eval mode); early stopping on validation loss; the decision rule is chosen
on validation as for every genre model.

The checkpoint (``buscador-genre-finetuned/1``) holds the head, the trained blocks' weights, the backbone's
feature config, genres and decision rule; it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from extract.core.devices import resolve_device
from extract.core.errors import UserError
from retrieval.genre.config import GenreConfig
from retrieval.genre.decision import choose_rule
from retrieval.genre.metrics import multilabel_report
from retrieval.genre.tuned import FORMAT, _loader, backbone_blocks, image_probabilities

log = logging.getLogger(__name__)


def finetune(prep, image_paths: list[str], feature_config: dict, cfg: GenreConfig, blocks: int, device: str = "auto",
             quiet: bool = True, workers: int = 0) -> dict:
    """Train a poster head and the last ``blocks`` backbone blocks; return a dict with ``net`` parts, decision,
    history, seconds per epoch and test probabilities (``probs_test``, rows of ``prep.rows('test')``).

    ``image_paths[i]`` is the poster of movie ``i`` of ``prep.labels``.
    """
    import torch
    from torch import nn
    from tqdm import tqdm

    from extract.features import backbone_from_config
    from retrieval.genre.models import head
    from retrieval.genre.train import pos_weights

    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    bb = backbone_from_config(feature_config, str(dev))
    module = bb.module.float().to(memory_format=torch.contiguous_format)
    all_blocks = backbone_blocks(module)
    if blocks > len(all_blocks):
        raise UserError(f"--fine-tune {blocks}: {feature_config.get('model')} has {len(all_blocks)} blocks")
    trained = all_blocks[len(all_blocks) - blocks:]
    for p in module.parameters():
        p.requires_grad_(False)
    for b in trained:
        for p in b.parameters():
            p.requires_grad_(True)
    labels = prep.labels
    G = len(labels.genres)
    net = head(bb.dim, G, cfg.hidden, cfg.dropout).to(dev)
    train, val, test = prep.rows("train"), prep.rows("val"), prep.rows("test")
    Y = torch.from_numpy(labels.Y.astype(np.float32))
    pw = torch.from_numpy(pos_weights(labels.Y[train], cfg.pos_weight, cfg.pos_weight_cap)).to(dev)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pw)
    params = [{"params": net.parameters(), "lr": cfg.lr},
              {"params": [p for b in trained for p in b.parameters()], "lr": cfg.lr * 0.1}]
    opt = torch.optim.Adam(params, weight_decay=cfg.weight_decay)
    max_pixels = int(feature_config.get("max_pixels", 89478485))
    paths = [str(p) for p in image_paths]

    def set_mode(training: bool):
        module.eval()  # frozen blocks keep their BatchNorm statistics
        for b in trained:
            b.train(training)
        net.train(training)

    def probabilities(rows):
        set_mode(False)
        return image_probabilities(module, net, bb, [paths[r] for r in rows], G, max_pixels, cfg.batch_size, workers)

    best, best_state, stale, history = np.inf, None, 0, []
    epoch_seconds = []
    for epoch in tqdm(range(cfg.epochs), desc="fine-tune poster", disable=quiet, leave=False):
        t0 = time.perf_counter()
        set_mode(True)
        total = 0.0
        for x, idx in _loader([paths[r] for r in train], bb.preprocessing, True, max_pixels, cfg.batch_size, cfg.seed + epoch,
                              workers, bb.decoder):
            rows = train[idx.numpy()]
            logits = net(module(bb.normalize(x).contiguous()).flatten(1))
            loss = loss_fn(logits, Y[rows].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        epoch_seconds.append(time.perf_counter() - t0)
        record = {"epoch": epoch + 1, "train_loss": total / max(len(train), 1), "seconds": epoch_seconds[-1]}
        if len(val):
            pv = probabilities(val)
            pv_t = torch.from_numpy(np.clip(pv, 1e-6, 1 - 1e-6))
            record["val_loss"] = float(loss_fn(torch.logit(pv_t).to(dev), Y[val].to(dev)))
        history.append(record)
        score = record.get("val_loss", record["train_loss"])
        if score < best:
            best, stale = score, 0
            best_state = (copy.deepcopy(net.state_dict()), [copy.deepcopy(b.state_dict()) for b in trained])
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
        log.info("fine-tune epoch %d: %s", epoch + 1, record)
    net.load_state_dict(best_state[0])
    for b, state in zip(trained, best_state[1]):
        b.load_state_dict(state)
    skip = np.array([g in prep.no_train_positive for g in labels.genres])
    decision = choose_rule(probabilities(val), labels.Y[val], cfg.min_support, seed=cfg.seed, skip=skip)
    return {"head": net.cpu().state_dict(), "blocks": [b.cpu().state_dict() for b in trained], "n_blocks": blocks,
            "decision": decision, "history": history, "epoch_seconds": float(np.mean(epoch_seconds)),
            "probs_test": probabilities(test) if len(test) else np.zeros((0, G), np.float32)}


def poster_paths(prep, features_path) -> tuple[list[str], dict]:
    """The poster image of every movie of ``prep`` (the feature file's image root + the joined feature id)."""
    from extract.store import open_features
    from retrieval.genre.join import join_features

    ff = open_features(features_path)
    config = ff.config
    root = config.get("image_root")
    if not root:
        raise UserError(f"{features_path} records no image root; re-extract it with `cli.py extract` to fine-tune")
    rows, missing = join_features(prep.labels, ff.ids)
    if missing:
        raise UserError(f"{len(missing)} movies do not join {features_path}")
    ids = list(ff.ids)
    return [str(Path(root) / ids[r]) for r in rows], config


def finetune_and_save(labels_path, features_path, cfg: GenreConfig, blocks: int, out: str | os.PathLike,
                      device: str = "auto", quiet: bool = True, allow_pickle: bool = False,
                      genre_ids: str | None = None) -> str:
    """Prepare the poster dataset, fine-tune, save ``out``; return a summary with the test scores."""
    import torch

    from extract.core.files import atomic_path
    from retrieval.genre.train import prepare_for

    prep = prepare_for(cfg, labels_path, features_path, genre_ids, allow_pickle)
    paths, config = poster_paths(prep, features_path)
    res = finetune(prep, paths, config, cfg, blocks, device=device, quiet=quiet)
    test = prep.rows("test")
    blob = {"format": FORMAT, "config": asdict(cfg), "genres": list(prep.labels.genres), "feature_config": config,
            "n_blocks": blocks, "head": res["head"], "blocks": res["blocks"], "decision": res["decision"].state(),
            "history": res["history"], "labels_path": str(labels_path), "features": prep.features,
            "no_train_positive": list(prep.no_train_positive),
            "split_ids": {s: [prep.labels.ids[i] for i in prep.rows(s)] for s in ("val", "test")}}
    with atomic_path(out) as tmp:
        torch.save(blob, tmp)
    lines = [(f"saved {out}: poster model, last {blocks} backbone blocks fine-tuned, {len(res['history'])} epochs, "
             f"{res['epoch_seconds']:.1f}s per epoch"), f"decision rule: {res['decision'].describe()}"]
    if len(test):
        r = multilabel_report(prep.labels.Y[test], res["decision"].apply(res["probs_test"]), prep.labels.genres,
                              exclude=prep.no_train_positive)
        lines.append(f"test: n={r['n']} micro-F1 {r['micro_f1']:.3f} macro-F1 {r['macro_f1']:.3f} "
                     f"samples-F1 {r['samples_f1']:.3f} subset-acc {r['subset_accuracy']:.3f}")
    return "\n".join(lines)
