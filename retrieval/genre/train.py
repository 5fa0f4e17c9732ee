"""Train a genre model on cached poster features and/or overview descriptors.

:func:`prepare` loads labels, joins them to the poster features and fixes the split once;
:func:`fit` trains one model kind on it (BCE with logits, per-genre positive weights, early stopping on
validation loss) and chooses its decision rule on validation (:mod:`retrieval.genre.decision`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from extract.core.devices import resolve_device
from extract.core.errors import UserError
from retrieval.genre.config import GenreConfig
from retrieval.genre.data import read_label_set
from retrieval.genre.decision import choose_rule
from retrieval.genre.inputs import TextInput, make_text_input
from retrieval.genre.join import joined
from retrieval.genre.labels import LabelSet
from retrieval.genre.metrics import micro_f1, multilabel_report
from retrieval.genre.split import (
    SPLIT_NAMES,
    codes_from_names,
    split_masks,
    stratified_split,
)

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Labels joined to poster features, with a fixed split. ``poster`` is ``(n, D) float32`` or None."""

    labels: LabelSet
    poster: np.ndarray | None
    codes: np.ndarray
    features: dict | None = None
    no_train_positive: list[str] = field(default_factory=list)

    def rows(self, split: str) -> np.ndarray:
        return split_masks(self.codes)[split]


def prepare(
    labels_path: str | os.PathLike,
    features_path: str | os.PathLike | None = None,
    text_field: str = "overview",
    genres: list[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    genre_ids_path: str | None = None,
    allow_pickle: bool = False,
    id_column: str | None = None,
    genres_column: str | None = None,
) -> Prepared:
    """Load labels (and poster features, joined by id), and split seeded and stratified unless the file has a split column.

    Without ``features_path`` the dataset is text only (every movie is kept, whether or not it has a poster).
    """
    labels = read_label_set(labels_path, text_field, genres, genre_ids_path, allow_pickle, id_column, genres_column)
    poster, info = None, None
    if features_path is not None:
        from extract.store import open_features

        ff = open_features(features_path)
        labels, rows = joined(labels, ff.ids)
        poster = ff.load(rows)
        if not np.isfinite(poster).all():
            raise UserError(f"{features_path} holds non-finite feature values; re-extract it")
        info = {"path": str(features_path), "dim": ff.dim, "fingerprint": ff.fingerprint, "config": ff.config}
    if labels.splits is not None:
        codes = codes_from_names(labels.splits)
    else:
        fr = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        codes = stratified_split(labels.Y, fr, seed)
    counts = {s: int((codes == k).sum()) for k, s in enumerate(SPLIT_NAMES)}
    log.info("%d movies, %d genres; split %s", len(labels), len(labels.genres), counts)
    if counts["train"] == 0:
        raise UserError(f"{labels.source}: the split leaves no training movies ({counts}); use more movies or smaller "
                        "--val-fraction/--test-fraction")
    train_pos = labels.Y[codes == 0].sum(axis=0)
    missing = [g for g, c in zip(labels.genres, train_pos) if c == 0]
    if missing:
        log.warning(
            "%d genres have no positive example in training; their threshold is the global one and they are left out "
            "of macro-F1: %s", len(missing), ", ".join(missing),
        )
    return Prepared(labels, poster, codes, info, missing)


def prepare_for(cfg: GenreConfig, labels_path, features_path=None, genre_ids: str | None = None,
                allow_pickle: bool = False, seed: int | None = None) -> Prepared:
    """:func:`prepare` with the label columns and split fractions of ``cfg`` (and its seed unless ``seed``)."""
    return prepare(labels_path, features_path, cfg.text_field, seed=cfg.seed if seed is None else seed,
                   val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, genre_ids_path=genre_ids,
                   allow_pickle=allow_pickle, id_column=cfg.id_column, genres_column=cfg.genres_column)


def pos_weights(Y: np.ndarray, mode: str = "auto", cap: float = 10.0) -> np.ndarray:
    """Per-genre positive weights ``(G,) float32``: ``auto`` = negatives/positives, ``sqrt`` = its square root
    (both capped at ``cap``, never below 1), ``none`` = 1, or one number for every genre.

    ``auto`` makes a rare genre's positives weigh as much as its negatives, which pushes every probability up
    (a model that predicts most genres for every movie); the default ``none`` keeps probabilities calibrated and
    leaves the imbalance to the decision rule chosen on validation.
    """
    g = Y.shape[1]
    if mode == "none":
        return np.ones(g, np.float32)
    if mode not in ("auto", "sqrt"):
        return np.full(g, float(mode), np.float32)
    pos = Y.sum(axis=0).astype(np.float64)
    ratio = (Y.shape[0] - pos) / np.maximum(pos, 1)
    if mode == "sqrt":
        ratio = np.sqrt(ratio)
    return np.where(pos > 0, np.clip(ratio, 1.0, cap), 1.0).astype(np.float32)


def text_inputs(prep: Prepared, cfg: GenreConfig, progress: bool = False) -> tuple[TextInput, np.ndarray]:
    """The overview descriptor of ``cfg`` fitted on the training movies and every movie's ``(n, d) float32`` input."""
    descriptor = make_text_input(cfg.descriptor, cfg.descriptor_path, cfg.text_cache, progress=progress)
    descriptor.fit([prep.labels.texts[i] for i in prep.rows("train")])
    return descriptor, descriptor.transform(prep.labels.texts)


def fit(prep: Prepared, cfg: GenreConfig, device: str = "auto", writer=None, quiet: bool = True,
        text: tuple[TextInput, np.ndarray] | None = None):
    """Train ``cfg.model`` on ``prep``; return a :class:`retrieval.genre.checkpoint.GenreClassifier`.

    The epoch with the lowest validation loss is kept (training stops after ``cfg.patience`` epochs
    without improvement); then the decision rule is chosen on validation. ``writer`` is an optional
    tensorboardX SummaryWriter (train/val loss, val micro-F1 at the 0.5 threshold, per epoch). ``text`` is
    a fitted descriptor and its inputs from :func:`text_inputs` (computed here when not given).
    """
    import torch
    from tqdm import tqdm

    from retrieval.genre.checkpoint import GenreClassifier
    from retrieval.genre.models import Batches, GenreNet, predict_logits, predict_proba

    if cfg.folds:
        return _fit_folds(prep, cfg, device, quiet, text)
    device = resolve_device(device)
    torch.manual_seed(cfg.seed)
    labels = prep.labels
    train, val = prep.rows("train"), prep.rows("val")
    uses_text = cfg.model != "poster"
    if cfg.model != "text" and prep.poster is None:
        raise UserError(f"--model {cfg.model} needs poster features; pass --features FILE.h5")
    descriptor = None
    if uses_text:
        descriptor, text = text if text is not None else text_inputs(prep, cfg, progress=not quiet)
    else:
        text = None
    scale_text = descriptor is not None and descriptor.standardize
    d_p = prep.poster.shape[1] if prep.poster is not None and cfg.model != "text" else 0
    d_t = text.shape[1] if text is not None else 0
    net = GenreNet(cfg.model, len(labels.genres), d_p, d_t, cfg.hidden, cfg.dropout)
    batches = Batches(prep.poster if d_p else None, text, device)
    net.to(device)  # before fitting the normalisers: their statistics come from inputs already on the device
    tp, tt = batches(train)
    net.fit_normalizers(tp, tt, text_per_dim=scale_text)
    Y = torch.from_numpy(labels.Y.astype(np.float32)).to(device)
    pw = torch.from_numpy(pos_weights(labels.Y[train], cfg.pos_weight, cfg.pos_weight_cap)).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pw)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    skip = np.array([g in prep.no_train_positive for g in labels.genres])
    best, best_state, best_epoch, history, stale = -np.inf, None, 0, [], 0
    t0 = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc=f"genre {cfg.model}", disable=quiet, leave=False):
        net.train()
        total = 0.0
        for chunk in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
            rows = train[chunk.numpy()]
            p, t = batches(rows)
            logits = net(p, t)
            loss = loss_fn(logits, Y[rows])
            if net.branch_logits:
                loss = loss + 0.5 * sum(loss_fn(b, Y[rows]) for b in net.branch_logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(rows)
        record = {"epoch": epoch + 1, "train_loss": total / len(train)}
        if len(val):
            logits = predict_logits(net, batches, val)
            record["val_loss"] = float(loss_fn(logits, Y[val]))
            record["val_micro_f1"] = micro_f1(labels.Y[val], (logits >= 0).cpu().numpy())
        history.append(record)
        if writer is not None:
            for k, v in record.items():
                if k != "epoch":
                    writer.add_scalar(f"{cfg.model}/{k}", v, epoch + 1)
        score = -record.get("val_loss", record["train_loss"])
        if score > best:
            best, best_state, best_epoch, stale = score, copy.deepcopy(net.state_dict()), epoch + 1, 0
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    if best_state is None:
        raise UserError(f"genre training of {cfg.model} never produced a finite loss (diverged); lower --lr")
    net.load_state_dict(best_state)
    if len(val):
        decision = choose_rule(predict_proba(net, batches, val), labels.Y[val], cfg.min_support, seed=cfg.seed, skip=skip)
    else:
        from retrieval.genre.decision import DecisionRule

        log.warning("no validation movies: the decision rule is a 0.5 threshold; pass --val-fraction to tune it")
        decision = DecisionRule("global", np.full(len(labels.genres), 0.5, np.float32))
    seconds = time.perf_counter() - t0
    log.info("%s: best epoch %d of %d (validation loss %.4f), %.1fs; decision rule %s", cfg.model, best_epoch,
             len(history), -best, seconds, decision.describe())
    split_ids = {s: [labels.ids[i] for i in prep.rows(s)] for s in ("val", "test")}
    return GenreClassifier(
        net=net.cpu(), cfg=cfg, genres=list(labels.genres), thresholds=decision.thresholds, descriptor=descriptor,
        features=prep.features, no_train_positive=list(prep.no_train_positive), split_ids=split_ids,
        history=history, train_seconds=seconds, dims={"poster": d_p, "text": d_t}, labels_path=labels.source,
        decision=decision,
    )


def _fit_folds(prep: Prepared, cfg: GenreConfig, device: str, quiet: bool, text):
    """A cross-fitted ensemble: ``cfg.folds`` models, model ``k`` trained on the train+val movies outside fold
    ``k`` and early-stopped on fold ``k``; the decision rule is chosen on the out-of-fold probabilities of every
    train+val movie (many more than the validation split alone), and predictions average the members'
    probabilities. The test split is never used. The text descriptor is the one fitted on the training split."""
    from dataclasses import replace

    from retrieval.genre.checkpoint import GenreClassifier
    from retrieval.genre.models import EnsembleNet

    labels = prep.labels
    pool = np.flatnonzero(prep.codes != 2)
    if len(pool) < 2 * cfg.folds:
        raise UserError(f"--folds {cfg.folds} needs at least {2 * cfg.folds} training and validation movies, not {len(pool)}")
    fold = np.random.default_rng(cfg.seed).permutation(len(pool)) % cfg.folds
    if cfg.model != "poster" and text is None:
        text = text_inputs(prep, cfg, progress=not quiet)
    oof = np.zeros((len(pool), len(labels.genres)), np.float32)
    nets, history, seconds, clf = [], [], 0.0, None
    for k in range(cfg.folds):
        codes = prep.codes.copy()
        codes[pool[fold != k]], codes[pool[fold == k]] = 0, 1
        part = Prepared(labels, prep.poster, codes, prep.features, prep.no_train_positive)
        clf = fit(part, replace(cfg, folds=0, seed=cfg.seed + 1000 * k), device=device, quiet=quiet, text=text)
        held = pool[fold == k]
        oof[fold == k] = clf.predict_proba(prep.poster[held] if clf.uses_poster else None,
                                           [labels.texts[i] for i in held] if clf.uses_text else None)
        nets.append(clf.net)
        history += [{**h, "fold": k + 1} for h in clf.history]
        seconds += clf.train_seconds
    skip = np.array([g in prep.no_train_positive for g in labels.genres])
    decision = choose_rule(oof, labels.Y[pool], cfg.min_support, seed=cfg.seed, skip=skip)
    log.info("%s: %d-fold ensemble, %.1fs; decision rule %s", cfg.model, cfg.folds, seconds, decision.describe())
    return GenreClassifier(
        net=EnsembleNet(nets).eval(), cfg=cfg, genres=list(labels.genres), thresholds=decision.thresholds,
        descriptor=clf.descriptor, features=prep.features, no_train_positive=list(prep.no_train_positive),
        split_ids={s: [labels.ids[i] for i in prep.rows(s)] for s in ("val", "test")}, history=history,
        train_seconds=seconds, dims=clf.dims, labels_path=labels.source, decision=decision,
    )


def train_and_save(
    labels_path: str | os.PathLike,
    features_path: str | os.PathLike | None,
    cfg: GenreConfig,
    out: str | os.PathLike,
    device: str = "auto",
    logdir: str | None = None,
    quiet: bool = True,
    allow_pickle: bool = False,
    genre_ids: str | None = None,
) -> str:
    """Prepare, train, save the checkpoint to ``out``; return a short summary with the validation and test scores."""
    prep = prepare_for(cfg, labels_path, features_path, genre_ids, allow_pickle)
    writer = None
    if logdir:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir)
    try:
        clf = fit(prep, cfg, device=device, writer=writer, quiet=quiet)
    finally:
        if writer is not None:
            writer.close()
    clf.save(out)
    lines = [f"saved {out}: {cfg.model} model, {len(clf.genres)} genres, {len(clf.history)} epochs, {clf.train_seconds:.1f}s",
             f"decision rule: {clf.decision.describe()}"]
    for split in ("val", "test") if not cfg.folds else ("test",):  # a cross-fitted ensemble trains on val
        rows = prep.rows(split)
        if len(rows):
            poster = prep.poster[rows] if prep.poster is not None else None
            probs = clf.predict_proba(poster, [prep.labels.texts[i] for i in rows])
            r = multilabel_report(prep.labels.Y[rows], clf.decide(probs), clf.genres, exclude=clf.no_train_positive)
            lines.append(f"{split}: n={r['n']} micro-F1 {r['micro_f1']:.3f} macro-F1 {r['macro_f1']:.3f} "
                         f"samples-F1 {r['samples_f1']:.3f} subset-acc {r['subset_accuracy']:.3f}")
    return "\n".join(lines)
