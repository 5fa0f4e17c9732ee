"""Combined overview descriptors (``a+b``): blocks side by side, each standardised and scaled on training texts;
an option of genres train/benchmark, saved in and loaded from checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_genre_models import FILLER, WORDS, write_movies
from text_fixtures import HashedSentenceEncoder

from cli import cli
from extract.core.errors import UserError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from gensim.models import KeyedVectors

    from retrieval.text import export_vectors

    folder = tmp_path_factory.mktemp("combined")
    labels, feats, Y = write_movies(folder, n=240)
    words = sorted({w for ws in WORDS.values() for w in ws} | set(FILLER))
    kv = KeyedVectors(8)
    kv.add_vectors(words, np.random.default_rng(5).normal(size=(len(words), 8)).astype(np.float32))
    vectors = export_vectors(kv, folder / "w.kv")
    return folder, labels, feats, Y, str(vectors)


def test_blocks_are_the_parts_standardised_and_scaled_to_unit_mean_squared_norm(data):
    from retrieval.genre.data import read_label_set
    from retrieval.genre.inputs import CombinedInput, TextInput

    _, labels, _, _, vectors = data
    texts = read_label_set(labels).texts
    train, other = texts[:180], texts[180:]
    comb = CombinedInput("centroid+tfidf", vectors).fit(train)
    got_train, got = comb.transform(train), comb.transform(other)
    # reference: each descriptor alone, standardised by hand with numpy (tf-idf is only scaled)
    cen = TextInput("centroid", vectors).fit(train)
    tf = TextInput("tfidf").fit(train)
    c_tr, c_ot = cen.transform(train).astype(np.float64), cen.transform(other).astype(np.float64)
    mu, sd = c_tr.mean(0), c_tr.std(0)
    z_tr, z_ot = (c_tr - mu) / sd, (c_ot - mu) / sd
    z_ot /= np.sqrt((z_tr ** 2).sum(1).mean())
    t_tr, t_ot = tf.transform(train).astype(np.float64), tf.transform(other).astype(np.float64)
    t_ot /= np.sqrt((t_tr ** 2).sum(1).mean())
    assert comb.dim == cen.dim + tf.dim == got.shape[1]
    np.testing.assert_allclose(got[:, : cen.dim], z_ot, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, cen.dim:], t_ot, rtol=1e-4, atol=1e-6)
    for block in (got_train[:, : cen.dim], got_train[:, cen.dim:]):
        assert (block.astype(np.float64) ** 2).sum(1).mean() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("name, message", [
    ("foo+tfidf", "unknown text descriptor 'foo'"),
    ("tfidf+tfidf", "names the same part twice"),
    ("centroid+regressor", "both need --text-encoder"),
])
def test_bad_combinations_are_refused(name, message):
    from retrieval.genre.inputs import make_text_input

    with pytest.raises(UserError, match=message):
        make_text_input(name, "x.kv")


def test_train_saves_a_combined_model_that_evaluate_and_predict_load(data):
    from retrieval.genre.checkpoint import load_classifier
    from retrieval.genre.metrics import multilabel_report
    from retrieval.genre.train import GenreConfig, fit, prepare

    folder, labels, _, _, vectors = data
    ckpt = folder / "comb.pt"
    runner = CliRunner()
    fast = ["--epochs", "15", "--hidden", "32", "--batch-size", "64", "--lr", "3e-3", "--device", "cpu", "--quiet"]
    res = runner.invoke(cli, ["genres", "train", "--labels", str(labels), "--model", "text", "--descriptor", "centroid+tfidf",
                              "--text-encoder", vectors, "--out", str(ckpt), *fast])
    assert res.exit_code == 0, res.output + repr(res.exception)
    clf = load_classifier(ckpt)
    assert clf.cfg.descriptor == "centroid+tfidf" and [p.kind for p in clf.descriptor.parts] == ["centroid", "tfidf"]
    # reference: the same model trained in memory (same seed and split) gives the same test probabilities
    prep = prepare(labels, seed=0)
    ref = fit(prep, GenreConfig(model="text", descriptor="centroid+tfidf", descriptor_path=vectors, epochs=15, hidden=32,
                                batch_size=64, lr=3e-3), device="cpu")
    test = prep.rows("test")
    texts = [prep.labels.texts[i] for i in test]
    np.testing.assert_allclose(clf.predict_proba(None, texts), ref.predict_proba(None, texts), atol=1e-5)
    report = json.loads(runner.invoke(cli, ["genres", "evaluate", str(ckpt), "--json"]).output)
    expected = multilabel_report(prep.labels.Y[test], ref.decide(ref.predict_proba(None, texts)), prep.labels.genres)
    assert report["micro_f1"] == pytest.approx(expected["micro_f1"])
    res = runner.invoke(cli, ["genres", "predict", str(ckpt), "--overview", "terroruno terrordos terrortres", "--top", "1"])
    assert res.exit_code == 0 and res.output.split()[0] == "Terror"


def test_benchmark_takes_combined_descriptors_and_refuses_unknown_parts(data, tmp_path, monkeypatch):
    _, labels, _, _, vectors = data
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--descriptors",
                              "tfidf,centroid+tfidf", "--text-encoder", vectors, "--epochs", "5", "--hidden", "16",
                              "--device", "cpu", "--quiet", "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = {(r["model"], r["inputs"]) for r in json.loads(res.output)["rows"]}
    assert {("text", "tfidf"), ("text", "centroid+tfidf")} <= rows
    res = runner.invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--models", "text", "--descriptors", "tfidf+bow"])
    assert res.exit_code == 2 and "unknown text descriptor 'bow'" in res.output


def test_benchmark_encodes_each_overview_once_across_model_kinds_repeats_and_combinations(data, tmp_path, monkeypatch):
    from retrieval import encoders
    from retrieval.genre.data import read_label_set

    _, labels, feats, _, _ = data
    fake = HashedSentenceEncoder("use-multilingual", "counting-1", dim=12)
    monkeypatch.setattr(encoders, "get_encoder", lambda name: fake)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["genres", "benchmark", "--labels", str(labels), "--features", str(feats), "--models",
                                   "text,late", "--descriptors", "use-multilingual,use-multilingual+tfidf",
                                   "--repeats", "2", "--epochs", "3", "--hidden", "16", "--device", "cpu", "--quiet",
                                   "--json"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = {(r["model"], r["inputs"]) for r in json.loads(res.output)["rows"]}
    assert {("text", "use-multilingual+tfidf"), ("late", "poster+use-multilingual")} <= rows
    distinct = {t for t in read_label_set(labels).texts if t.strip()}
    assert fake.calls == len(distinct)  # 2 model kinds x 2 descriptors x 2 repeats, one encoding of each overview
