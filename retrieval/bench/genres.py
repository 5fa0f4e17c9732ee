"""Every genre model variant and the baselines on one dataset: one table, mean +- sd over repeated splits.

Repeat ``r`` uses split seed ``cfg.seed + r`` (seeded, stratified; or the file's own split column, where only the
training seed changes). Sentence-encoder inputs do not depend on the split, so each is computed once per run
and shared by every model kind and repeat; descriptors fitted on training overviews (tf-idf) once per repeat.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import replace

import numpy as np

from extract.core.errors import UserError
from retrieval.genre.baselines import (
    most_frequent,
    ovr_linear_svm,
    ovr_logistic_proba,
    word_features,
)
from retrieval.genre.decision import choose_rule
from retrieval.genre.kinds import MODEL_KINDS
from retrieval.genre.metrics import multilabel_report
from retrieval.genre.train import GenreConfig, fit, prepare_for, text_inputs

log = logging.getLogger(__name__)

COLUMNS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")


def _summary(name: str, inputs: str, runs: list[dict]) -> dict:
    row = {"model": name, "inputs": inputs, "repeats": len(runs)}
    for c in (*COLUMNS, "train_s"):
        vals = np.array([r[c] for r in runs], np.float64)
        row[c] = float(vals.mean())
        row[f"{c}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        row[f"{c}_runs"] = [float(v) for v in vals]
    val = [r["val_micro_f1"] for r in runs if r.get("val_micro_f1") is not None]
    row["val_micro_f1"] = float(np.mean(val)) if val else None  # the decision rule's own score on validation
    row["val_micro_f1_sd"] = float(np.std(val, ddof=1)) if len(val) > 1 else 0.0
    rules = Counter(r["decision"] for r in runs if r.get("decision"))
    row["decision"] = ", ".join(f"{k} x{v}" if len(runs) > 1 else k for k, v in rules.most_common()) or "-"
    return row


def run_benchmark(
    labels_path: str | os.PathLike,
    features_path: str | os.PathLike | None,
    descriptors: tuple[str, ...] = ("tfidf",),
    models: tuple[str, ...] = MODEL_KINDS,
    cfg: GenreConfig | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    genre_ids: str | None = None,
    repeats: int = 1,
    quiet: bool = True,
) -> dict:
    """Train and test every model kind (text-using kinds once per descriptor) plus the baselines, ``repeats`` times.

    Without ``features_path`` (or when no requested model uses posters) the dataset is text only. Thresholds
    and decision rules are chosen on each split's validation part; figures are on its test part. Returns
    ``{"rows": [...], "n": {...}, "genres": [...], "notes": [...], "config": {...}}``; each row has the mean of
    every metric, its sd (``<metric>_sd``) and the per-repeat values (``<metric>_runs``).
    """
    cfg = cfg or GenreConfig()
    if repeats < 1:
        raise UserError("--repeats must be at least 1")
    needs_poster = any(m != "text" for m in models)
    if not needs_poster:
        features_path = None
    runs: dict[tuple[str, str], list[dict]] = {}
    shared_text: dict[str, tuple] = {}
    prep = None
    for r in range(repeats):
        prep = prepare_for(cfg, labels_path, features_path, genre_ids, allow_pickle, seed=cfg.seed + r)
        _one_repeat(prep, replace(cfg, seed=cfg.seed + r), descriptors, models, device, runs, shared_text, quiet)
    labels = prep.labels
    notes = []
    if prep.no_train_positive:
        notes.append(f"excluded from macro-F1 (no positive in training): {', '.join(prep.no_train_positive)}")
    if not any(t.strip() for t in labels.texts):
        notes.append("no overview text: text models and word baselines skipped")
    if needs_poster and prep.poster is None:
        notes.append("no poster features: poster and fusion models skipped")
    n = {s: len(prep.rows(s)) for s in ("train", "val", "test")}
    rows = [_summary(name, inputs, vals) for (name, inputs), vals in runs.items()]
    return {"rows": rows, "n": n, "genres": list(labels.genres), "notes": notes, "repeats": repeats,
            "config": {k: v for k, v in vars(cfg).items() if k not in ("model", "descriptor")}}


def _one_repeat(prep, cfg: GenreConfig, descriptors, models, device, runs, shared_text, quiet) -> None:
    labels = prep.labels
    train, val, test = prep.rows("train"), prep.rows("val"), prep.rows("test")
    if len(test) == 0:
        raise UserError(f"{labels.source}: the split leaves no test movies; use more movies or a larger --test-fraction")
    texts, Y = labels.texts, labels.Y
    exclude = prep.no_train_positive
    skip = np.array([g in exclude for g in labels.genres])

    def add(name, inputs, pred, seconds, rule=None):
        report = multilabel_report(Y[test], pred, labels.genres, exclude=exclude)
        runs.setdefault((name, inputs), []).append({
            **{c: report[c] for c in COLUMNS}, "train_s": seconds,
            "decision": rule.describe().split(" ")[0] if rule is not None else "",
            "val_micro_f1": float(rule.val_micro_f1) if rule is not None else None})
        log.info("seed %d %s (%s): micro-F1 %.3f", cfg.seed, name, inputs, report["micro_f1"])

    t0 = time.perf_counter()
    add("most-frequent", "-", most_frequent(Y[train], len(test)), time.perf_counter() - t0)
    has_text = any(t.strip() for t in texts)
    if has_text:
        tr, va, te = ([texts[i] for i in rows] for rows in (train, val, test))
        for kind in ("bow", "tfidf"):
            t0 = time.perf_counter()
            add("ovr-linearsvc", kind, ovr_linear_svm(tr, Y[train], te, kind), time.perf_counter() - t0)
        t0 = time.perf_counter()
        x_tr, x_other = word_features(tr, va + te, "tfidf")
        p_val, p_test = ovr_logistic_proba(x_tr, Y[train], [x_other[: len(va)], x_other[len(va):]], C=10.0)
        rule = choose_rule(p_val, Y[val], cfg.min_support, seed=cfg.seed, skip=skip)
        add("ovr-logreg", "tfidf", rule.apply(p_test), time.perf_counter() - t0, rule)
    for model in models:
        if (model != "text" and prep.poster is None) or (model != "poster" and not has_text):
            continue
        for desc in (descriptors if model != "poster" else ("-",)):
            run_cfg = replace(cfg, model=model, descriptor=desc if desc != "-" else cfg.descriptor)
            text = None
            if model != "poster":
                key = desc if desc in shared_text else None
                if key is None:
                    t0 = time.perf_counter()
                    text = text_inputs(prep, run_cfg, progress=not quiet)
                    log.info("%s inputs for %d overviews in %.1fs", desc, len(texts), time.perf_counter() - t0)
                    if not text[0].fitted_on_texts:
                        shared_text[desc] = text
                else:
                    text = shared_text[key]
            clf = fit(prep, run_cfg, device=device, text=text)
            probs = clf.predict_proba(prep.poster[test] if prep.poster is not None else None, [texts[i] for i in test])
            inputs = {"poster": "poster", "text": desc}.get(model, f"poster+{desc}")
            add(model, inputs, clf.decide(probs), clf.train_seconds, clf.decision)


def _cell(row: dict, c: str, digits: int = 3) -> str:
    if row["repeats"] > 1:
        return f"{row[c]:.{digits}f}±{row[c + '_sd']:.{digits}f}"
    return f"{row[c]:.{digits}f}"


def format_benchmark(result: dict) -> str:
    """The benchmark result as a fixed-width table (test split; mean±sd over repeats). ``val micro`` is the
    validation micro-F1 the decision rule was chosen with (cross-fitted), beside the test figure it led to."""
    n = result["n"]
    rep = result.get("repeats", 1)
    w = 13 if rep > 1 else 8
    iw = max([22] + [len(r["inputs"]) + 1 for r in result["rows"]])
    lines = [
        (f"genre benchmark: {len(result['genres'])} genres; train {n['train']}, val {n['val']}, test {n['test']} movies; "
         f"{rep} repeat{'s' if rep > 1 else ''} (figures on test{', mean±sd' if rep > 1 else ''}; decision rules from val)"),
        (f"{'model':<14} {'inputs':<{iw}} {'micro-F1':>{w}} {'val micro':>{w}} {'macro-F1':>{w}} {'samples-F1':>{w}} "
         f"{'hamming':>{w + 1}} {'train s':>8}  decision"),
    ]
    for r in result["rows"]:
        val = _cell(r, "val_micro_f1") if r.get("val_micro_f1") is not None else "-"
        lines.append(
            f"{r['model']:<14} {r['inputs']:<{iw}} {_cell(r, 'micro_f1'):>{w}} {val:>{w}} {_cell(r, 'macro_f1'):>{w}} "
            f"{_cell(r, 'samples_f1'):>{w}} {_cell(r, 'hamming_loss', 4 if rep == 1 else 3):>{w + 1}} "
            f"{r['train_s']:8.2f}  {r['decision']}"
        )
    lines += [f"note: {x}" for x in result["notes"]]
    return "\n".join(lines)


def finetune_benchmark(
    labels_path: str | os.PathLike,
    features_path: str | os.PathLike,
    blocks: int,
    cfg: GenreConfig | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    genre_ids: str | None = None,
) -> dict:
    """Poster-only model on cached features vs the same split with the last ``blocks`` backbone blocks fine-tuned
    on the images: test micro-F1 and seconds per epoch of each, measured in the same run."""
    from retrieval.genre.finetune import finetune, poster_paths

    cfg = replace(cfg or GenreConfig(), model="poster")
    prep = prepare_for(cfg, labels_path, features_path, genre_ids, allow_pickle)
    test = prep.rows("test")
    if len(test) == 0:
        raise UserError(f"{labels_path}: the split leaves no test movies; use a larger --test-fraction")
    Y = prep.labels.Y[test]
    clf = fit(prep, cfg, device=device)
    cached = multilabel_report(Y, clf.decide(clf.predict_proba(prep.poster[test], None)), prep.labels.genres)
    paths, config = poster_paths(prep, features_path)
    res = finetune(prep, paths, config, cfg, blocks, device=device)
    tuned = multilabel_report(Y, res["decision"].apply(res["probs_test"]), prep.labels.genres)
    base = multilabel_report(Y, most_frequent(prep.labels.Y[prep.rows("train")], len(test)), prep.labels.genres)
    return {
        "n": {s: len(prep.rows(s)) for s in ("train", "val", "test")}, "blocks": blocks, "model": config.get("model"),
        "rows": [
            {"model": "most-frequent", "micro_f1": base["micro_f1"], "epoch_s": 0.0, "epochs": 0},
            {"model": "cached features", "micro_f1": cached["micro_f1"], "epoch_s": clf.train_seconds / len(clf.history),
             "epochs": len(clf.history)},
            {"model": f"fine-tuned (last {blocks} blocks)", "micro_f1": tuned["micro_f1"], "epoch_s": res["epoch_seconds"],
             "epochs": len(res["history"])},
        ],
    }


def format_finetune(result: dict) -> str:
    n = result["n"]
    lines = [f"poster genres, {result['model']}: train {n['train']}, val {n['val']}, test {n['test']} movies (test micro-F1)",
             f"{'model':<30} {'micro-F1':>8} {'s/epoch':>9} {'epochs':>6}"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<30} {r['micro_f1']:8.3f} {r['epoch_s']:9.2f} {r['epochs']:6d}")
    cached, tuned = result["rows"][1], result["rows"][2]
    if cached["epoch_s"] > 0:
        lines.append(f"fine-tuning costs {tuned['epoch_s'] / cached['epoch_s']:.0f}x the time per epoch of the cached-feature head")
    return "\n".join(lines)
