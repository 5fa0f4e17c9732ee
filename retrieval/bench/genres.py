"""Every genre model variant and the baselines on one dataset and one split: one table."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

from retrieval.genre.baselines import most_frequent, ovr_linear_svm
from retrieval.genre.kinds import MODEL_KINDS
from retrieval.genre.metrics import multilabel_report
from retrieval.genre.train import GenreConfig, fit, prepare

log = logging.getLogger(__name__)

_COLUMNS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")


def _row(name: str, inputs: str, report: dict, seconds: float) -> dict:
    return {"model": name, "inputs": inputs, **{c: report[c] for c in _COLUMNS}, "train_s": seconds}


def run_benchmark(
    labels_path: str | os.PathLike,
    features_path: str | os.PathLike | None,
    descriptors: tuple[str, ...] = ("tfidf",),
    models: tuple[str, ...] = MODEL_KINDS,
    cfg: GenreConfig | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    genre_ids: str | None = None,
) -> dict:
    """Train and test every model kind (text-using kinds once per descriptor) plus the baselines.

    All rows share one split (seeded, stratified) and thresholds tuned on its validation part; figures
    are on the test part. Returns ``{"rows": [...], "n": {...}, "genres": [...], "notes": [...]}``.
    """
    cfg = cfg or GenreConfig()
    prep = prepare(labels_path, features_path, cfg.text_field, seed=cfg.seed, val_fraction=cfg.val_fraction,
                   test_fraction=cfg.test_fraction, genre_ids_path=genre_ids, allow_pickle=allow_pickle)
    labels = prep.labels
    train, test = prep.rows("train"), prep.rows("test")
    if len(test) == 0:
        from extract.core.errors import UserError

        raise UserError(f"{labels_path}: the split leaves no test movies; use more movies or a larger --test-fraction")
    texts = labels.texts
    Y_test = labels.Y[test]
    exclude = prep.no_train_positive

    def score(pred):
        return multilabel_report(Y_test, pred, labels.genres, exclude=exclude)

    rows = []
    t0 = time.perf_counter()
    rows.append(_row("most-frequent", "-", score(most_frequent(labels.Y[train], len(test))), time.perf_counter() - t0))
    if any(t.strip() for t in texts):
        for kind in ("bow", "tfidf"):
            t0 = time.perf_counter()
            pred = ovr_linear_svm([texts[i] for i in train], labels.Y[train], [texts[i] for i in test], kind)
            rows.append(_row("ovr-linearsvc", kind, score(pred), time.perf_counter() - t0))
    else:
        log.warning("no overview text in %s: text models and word baselines are skipped", labels_path)
        models = tuple(m for m in models if m == "poster")
    for model in models:
        if model != "text" and prep.poster is None:
            continue
        for desc in (descriptors if model != "poster" else ("-",)):
            run_cfg = replace(cfg, model=model, descriptor=desc if desc != "-" else cfg.descriptor)
            clf = fit(prep, run_cfg, device=device)
            probs = clf.predict_proba(prep.poster[test] if prep.poster is not None else None, [texts[i] for i in test])
            inputs = {"poster": "poster", "text": desc}.get(model, f"poster+{desc}")
            rows.append(_row(model, inputs, score(clf.decide(probs)), clf.train_seconds))
            log.info("%s (%s): micro-F1 %.3f", model, inputs, rows[-1]["micro_f1"])
    notes = []
    if exclude:
        notes.append(f"excluded from macro-F1 (no positive in training): {', '.join(exclude)}")
    n = {s: len(prep.rows(s)) for s in ("train", "val", "test")}
    return {"rows": rows, "n": n, "genres": list(labels.genres), "notes": notes,
            "config": {k: v for k, v in vars(cfg).items() if k not in ("model", "descriptor")}}


def format_benchmark(result: dict) -> str:
    """The benchmark result as a fixed-width table (test split)."""
    n = result["n"]
    lines = [
        (f"genre benchmark: {len(result['genres'])} genres; train {n['train']}, val {n['val']}, test {n['test']} movies "
        "(figures on test; thresholds from val)"),
        f"{'model':<14} {'inputs':<24} {'micro-F1':>8} {'macro-F1':>8} {'samples-F1':>10} {'subset-acc':>10} {'hamming':>8} {'train s':>8}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['model']:<14} {r['inputs']:<24} {r['micro_f1']:8.3f} {r['macro_f1']:8.3f} {r['samples_f1']:10.3f} "
            f"{r['subset_accuracy']:10.3f} {r['hamming_loss']:8.4f} {r['train_s']:8.2f}"
        )
    lines += [f"note: {x}" for x in result["notes"]]
    return "\n".join(lines)
