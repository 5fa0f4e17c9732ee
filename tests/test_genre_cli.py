"""`cli.py genres ...` through click's CliRunner: train, evaluate, predict (text and poster), benchmark, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw
from test_genre_models import write_movies

from cli import cli
from extract.store import write_features

FAST = ["--epochs", "15", "--hidden", "32", "--batch-size", "128", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def movies(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_movies")
    labels, feats, _ = write_movies(folder, n=300)
    return folder, labels, feats


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_train_evaluate_predict_text_model(movies):
    folder, labels, feats = movies
    ckpt = folder / "text.pt"
    runner = CliRunner()
    out = _ok(runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--features", str(feats), "--model", "text",
                                  "--out", str(ckpt), "--quiet", *FAST, "--batch-size", "32"]))
    assert f"saved {ckpt}" in out and "test: n=" in out
    report = json.loads(_ok(runner.invoke(cli, ["genres", "evaluate", str(ckpt), "--labels", str(labels), "--json"])))

    from retrieval.genre.checkpoint import load_classifier
    from retrieval.genre.metrics import multilabel_report
    from retrieval.genre.train import prepare

    prep, clf = prepare(labels, seed=0), load_classifier(ckpt)
    test = prep.rows("test")
    probs = clf.predict_proba(None, [prep.labels.texts[i] for i in test])
    ref = multilabel_report(prep.labels.Y[test], clf.decide(probs), clf.genres)
    assert report["n"] == len(test) and report["micro_f1"] == pytest.approx(ref["micro_f1"])
    assert {p["genre"] for p in report["per_genre"]} == set(clf.genres)

    table = _ok(runner.invoke(cli, ["genres", "evaluate", str(ckpt), "--labels", str(labels), "--top-k", "2"]))
    assert "micro-F1" in table and "top-2" in table and "Terror" in table

    out = _ok(runner.invoke(cli, ["genres", "predict", str(ckpt), "--overview", "terroruno terrordos terrortres", "--top", "3"]))
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "Terror"
    probs = [float(line.split()[1]) for line in lines]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def _poster(path, color):
    img = Image.new("RGB", (48, 64), color)
    ImageDraw.Draw(img).ellipse((8, 8, 40, 40), fill=(255 - color[0], 255 - color[1], 255 - color[2]))
    img.save(path)


def test_predict_extracts_poster_features_like_the_feature_file(tmp_path):
    """`genres predict --poster` embeds the image on the fly; the reference is the row `cli.py extract` wrote for
    the same image (the batched extraction pipeline, read back with h5py), not the on-the-fly path itself."""
    import h5py

    colors = {"Acción": (220, 30, 20), "Drama": (20, 40, 200)}
    rng = np.random.default_rng(0)
    (tmp_path / "posters").mkdir()
    rows = []
    for i in range(40):
        genre = "Acción" if i % 2 else "Drama"
        jitter = rng.integers(-20, 20, 3)
        _poster(tmp_path / "posters" / f"{i}.png", tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colors[genre], jitter)))
        rows.append(f"{i},película {i},{genre},posters/{i}.png")
    labels = tmp_path / "movies.csv"
    labels.write_text("id,overview,genres,poster\n" + "\n".join(rows) + "\n", encoding="utf-8")
    feats = tmp_path / "posters.h5"
    runner = CliRunner()
    _ok(runner.invoke(cli, ["extract", str(tmp_path / "posters"), str(feats), "--model", "resnet18", "--weights", "none",
                            "--image-size", "32", "--device", "cpu", "--quiet", "--workers", "0"]))
    with h5py.File(feats, "r") as fh:
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in fh["ids"][:]]
        row3 = np.asarray(fh["features"][ids.index("3.png")], np.float32)
    ckpt = tmp_path / "poster.pt"
    _ok(runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--features", str(feats), "--model", "poster",
                            "--out", str(ckpt), "--quiet", "--device", "cpu", *FAST]))
    out = _ok(runner.invoke(cli, ["genres", "predict", str(ckpt), "--poster", str(tmp_path / "posters" / "3.png"),
                                  "--top", "2", "--device", "cpu"]))

    from retrieval.genre.checkpoint import load_classifier

    clf = load_classifier(ckpt)
    expected = clf.predict_proba(row3[None, :], None)[0]
    got = {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}
    assert set(got) == set(clf.genres)
    for g, p in got.items():
        assert p == pytest.approx(float(expected[clf.genres.index(g)]), abs=2e-3)
    result = runner.invoke(cli, ["genres", "predict", str(ckpt), "--overview", "sin cartel"])
    assert result.exit_code == 1 and "needs --poster" in result.output


def test_text_only_benchmark_needs_no_feature_file_and_repeats_are_per_seed_runs(movies, tmp_path, monkeypatch):
    _, labels, _ = movies
    monkeypatch.chdir(tmp_path)  # no workspace posters.h5 here
    args = ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--json", "--device", "cpu", *FAST]
    both = json.loads(_ok(CliRunner().invoke(cli, [*args, "--repeats", "2"])))
    assert both["repeats"] == 2 and both["n"]["test"] > 0
    singles = [json.loads(_ok(CliRunner().invoke(cli, [*args, "--seed", str(s)]))) for s in (0, 1)]
    for row in both["rows"]:
        ref = [next(r for r in one["rows"] if (r["model"], r["inputs"]) == (row["model"], row["inputs"])) for one in singles]
        vals = [r["micro_f1"] for r in ref]
        assert row["micro_f1"] == pytest.approx(np.mean(vals)) and row["micro_f1_sd"] == pytest.approx(np.std(vals, ddof=1))
    names = [(r["model"], r["inputs"]) for r in both["rows"]]
    assert names == [("most-frequent", "-"), ("ovr-linearsvc", "bow"), ("ovr-linearsvc", "tfidf"), ("ovr-logreg", "tfidf"),
                     ("text", "tfidf")]


def test_split_fractions_are_options(movies):
    _, labels, _ = movies
    out = _ok(CliRunner().invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--device", "cpu",
                                       "--val-fraction", "0.2", "--test-fraction", "0.3", "--json", *FAST]))
    n = json.loads(out)["n"]
    assert sum(n.values()) == 300 and abs(n["val"] - 60) <= 8 and abs(n["test"] - 90) <= 8  # stratified: near, not exact


def test_benchmark_json_has_every_variant_and_baseline(movies):
    _, labels, feats = movies
    out = _ok(CliRunner().invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--features", str(feats), "--json",
                                       "--device", "cpu", "--models", "poster,late", *FAST]))
    result = json.loads(out[out.index("{"):])
    names = [(r["model"], r["inputs"]) for r in result["rows"]]
    assert names == [("most-frequent", "-"), ("ovr-linearsvc", "bow"), ("ovr-linearsvc", "tfidf"), ("ovr-logreg", "tfidf"),
                     ("poster", "poster"), ("late", "poster+tfidf")]
    for r in result["rows"]:
        assert all(np.isfinite(r[k]) and 0 <= r[k] <= 1 for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss"))
    frequent = result["rows"][0]["micro_f1"]
    assert result["rows"][-1]["micro_f1"] > frequent


@pytest.mark.parametrize("content, message", [
    ("name,plot\nx,y\n", "expected an id column"),
    ("id,overview,genres\n1,a,\n", "none of its 1 movies has a known genre"),
])
def test_bad_label_files_give_one_error_line(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(cli, ["genres", "train", "--labels", str(bad), "--model", "text", "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and result.output.startswith("Error:")


def test_features_that_join_no_movie_and_a_foreign_checkpoint(tmp_path, movies):
    _, labels, _ = movies
    feats = tmp_path / "other.h5"
    write_features(feats, ["zz1.jpg", "zz2.jpg"], np.zeros((2, 4), np.float32), {"model": "planted"})
    runner = CliRunner()
    result = runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--features", str(feats), "--model", "poster",
                                 "--out", str(tmp_path / "p.pt")])
    assert result.exit_code == 1 and "none of the 300 movies" in result.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = runner.invoke(cli, ["genres", "evaluate", str(junk)])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_predict_refuses_features_without_a_recorded_backbone(tmp_path, movies):
    _, labels, feats = movies  # planted features: config has no backbone weights
    ckpt = tmp_path / "p.pt"
    runner = CliRunner()
    _ok(runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--features", str(feats), "--model", "poster",
                            "--out", str(ckpt), "--quiet", "--epochs", "2"]))
    img = tmp_path / "x.png"
    _poster(img, (10, 20, 30))
    result = runner.invoke(cli, ["genres", "predict", str(ckpt), "--poster", str(img)])
    assert result.exit_code == 1 and "record no backbone" in result.output and "Traceback" not in result.output


def test_text_only_dataset_in_every_command_without_any_feature_file(tmp_path, monkeypatch):
    """A label file with overviews and no posters: train, evaluate, predict and benchmark need no --features."""
    labels, _, _ = write_movies(tmp_path, n=200)
    (tmp_path / "posters.h5").unlink()
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # no workspace, no posters.h5
    runner = CliRunner()
    ckpt = work / "t.pt"
    out = _ok(runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--model", "text", "--out", str(ckpt),
                                  "--quiet", "--device", "cpu", *FAST]))
    assert "test: n=" in out
    report = json.loads(_ok(runner.invoke(cli, ["genres", "evaluate", str(ckpt), "--labels", str(labels), "--json"])))
    assert report["n"] > 0 and report["model"] == "text"
    out = _ok(runner.invoke(cli, ["genres", "predict", str(ckpt), "--overview", "terroruno terrordos", "--top", "5"]))
    from retrieval.genre.checkpoint import load_classifier

    clf = load_classifier(ckpt)
    expected = clf.predict_proba(None, ["terroruno terrordos"])[0]
    got = {line.split()[0]: float(line.split()[1]) for line in out.strip().splitlines()}
    assert got == {g: pytest.approx(float(p), abs=1e-3) for g, p in zip(clf.genres, expected)}
    result = json.loads(_ok(runner.invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--json",
                                                "--device", "cpu", *FAST])))
    text = next(r for r in result["rows"] if r["model"] == "text")
    assert text["decision"].split(" ")[0] in ("global", "thresholds", "top-1", "top-2", "top-3")  # the rule chosen on val
    vals = {r["model"]: r["val_micro_f1"] for r in result["rows"]}
    assert vals["most-frequent"] is None and vals["ovr-linearsvc"] is None  # no rule chosen on validation
    assert 0 < vals["text"] <= 1 and 0 < vals["ovr-logreg"] <= 1
    table = _ok(runner.invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--device", "cpu",
                                    *FAST]))
    header, *rows = [line for line in table.splitlines() if line.startswith(("model", "most-frequent", "text "))]
    assert header.split()[2:4] == ["micro-F1", "val"] and rows[0].split()[3] == "-"
    assert rows[1].split()[3] == f"{vals['text']:.3f}"  # seeded: the same run gives the same validation figure
    result = runner.invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--test-fraction", "0"])
    assert result.exit_code == 1 and "leaves no test movies" in result.output and "--test-fraction" in result.output
