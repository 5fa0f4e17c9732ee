"""Faults and swapped artifacts end in one clear line, never in a silent wrong answer or a lost checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from text_fixtures import make_corpus, one_thread  # noqa: F401  (fixture)

from cli import cli
from extract.core.errors import UserError
from extract.store import open_features, write_features
from retrieval.config import TrainConfig
from retrieval.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 3, "hidden": 16, "batch_size": 32, "patience": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    c = make_corpus(root)
    train(TrainConfig(**FAST), c["features"], [root], root / "m.npz", vectors=c["vectors"], quiet=True)
    return c


def _one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _swapped(corpus, tmp_path, how: str):
    """A feature file with the training file's ids and shape but other content."""
    ff = open_features(corpus["features"])
    xb = ff.load()
    cfg = dict(ff.config)
    if how == "shuffled":
        xb = xb[np.random.default_rng(0).permutation(len(xb))]
    elif how == "other backbone":
        cfg["model"] = "resnet34"
        xb = xb[:, ::-1].copy()
    return write_features(tmp_path / f"{how.replace(' ', '-')}.h5", ff.ids, xb, cfg)


@pytest.mark.parametrize("how", ["shuffled", "other backbone"])
def test_a_swapped_feature_file_with_the_same_ids_and_shape_is_refused_by_the_index(corpus, tmp_path, how):
    from indexes.build import IndexConfig, build_index_dir

    build_index_dir(corpus["features"], tmp_path / "index", IndexConfig(factory="Flat"), quiet=True)
    swapped = _swapped(corpus, tmp_path, how)
    assert open_features(swapped).fingerprint != open_features(corpus["features"]).fingerprint
    line = _one_line(CliRunner().invoke(cli, ["search", "--id", "train/0001.jpg", "--index", str(tmp_path / "index"),
                                              "--features", str(swapped)]))
    assert "the index was built from features with fingerprint" in line and "cli.py index build" in line


def test_the_text_encoder_refuses_features_of_another_backbone(corpus, tmp_path):
    swapped = _swapped(corpus, tmp_path, "other backbone")
    line = _one_line(CliRunner().invoke(cli, ["evaluate", str(corpus["root"] / "m.npz"), "--features", str(swapped),
                                              "--captions", str(corpus["root"])]))
    assert "trained on synthetic image features" in line and "holds resnet34 features (model 'synthetic' vs 'resnet34')" in line


def test_the_genre_model_refuses_features_of_other_weights():
    from retrieval.genre.checkpoint import GenreClassifier

    clf = GenreClassifier.__new__(GenreClassifier)
    clf.cfg = type("C", (), {"model": "late"})()
    clf.features = {"path": "posters.h5", "dim": 8, "fingerprint": "a" * 16,
                    "config": {"model": "resnet18", "weights": "file", "weights_sha256": "11" * 32}}
    same = dict(clf.features, path="other.h5", fingerprint="b" * 16)
    clf.check_features(same)  # other images, same space: fine
    with pytest.raises(UserError, match=r"weights_sha256 '1111.*' vs '2222.*'.*cli.py genres train --features x.h5"):
        clf.check_features(dict(same, path="x.h5", config=dict(same["config"], weights_sha256="22" * 32)))


def test_evaluate_of_a_feature_file_says_what_it_is(corpus):
    line = _one_line(CliRunner().invoke(cli, ["evaluate", str(corpus["features"]), "--features", str(corpus["features"]),
                                              "--captions", str(corpus["root"])]))
    assert "is an HDF5 file" in line and "not a text-encoder checkpoint" in line and "pickle" not in line


def test_nan_in_training_features_is_refused_before_training_naming_file_and_row(corpus, tmp_path):
    import h5py

    bad = tmp_path / "nan.h5"
    bad.write_bytes(corpus["features"].read_bytes())
    with h5py.File(bad, "r+") as f:
        f["features"][7, 3] = np.nan
    calls = []
    with pytest.raises(UserError, match=r"nan.h5 row 7 \(id 'train/0007.jpg'\) holds NaN or inf"):
        train(TrainConfig(**FAST), bad, [corpus["root"]], tmp_path / "x.npz", vectors=corpus["vectors"], quiet=True,
              on_epoch=calls.append)
    assert not calls and not (tmp_path / "x.npz").exists()
    from retrieval.evaluate import evaluate

    with pytest.raises(UserError, match=r"nan.h5 row 7 \(id 'train/0007.jpg'\) holds NaN or inf"):
        evaluate(corpus["root"] / "m.npz", bad, [corpus["root"]])


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("boundary", ["after epoch 1", "after the last epoch", "while saving"])
def test_a_killed_retrain_leaves_the_previous_checkpoint_untouched(corpus, tmp_path, monkeypatch, boundary):
    import retrieval.checkpoint as ckpt

    out = tmp_path / "m.npz"
    train(TrainConfig(**FAST), corpus["features"], [corpus["root"]], out, vectors=corpus["vectors"], quiet=True)
    before = out.read_bytes()

    def on_epoch(record):
        if boundary == "after epoch 1" or (boundary == "after the last epoch" and record["epoch"] == FAST["epochs"]):
            raise _Killed

    if boundary == "while saving":
        real = np.savez

        def half_then_die(fh, **arrays):
            real(fh, **arrays)
            fh.truncate(100)
            raise _Killed

        monkeypatch.setattr(ckpt.np, "savez", half_then_die)
    with pytest.raises(_Killed):
        train(TrainConfig(**dict(FAST, lr=1e-7)), corpus["features"], [corpus["root"]], out, vectors=corpus["vectors"],
              quiet=True, on_epoch=on_epoch)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_train_writes_its_runs_next_to_out_not_in_the_current_folder(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models" / "m.npz"
    result = CliRunner().invoke(cli, ["train", "--features", str(corpus["features"]), "--captions", str(corpus["root"]),
                                      "--vectors", str(corpus["vectors"]), "--out", str(out), "--epochs", "1",
                                      "--hidden", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists() and any((tmp_path / "models" / "runs").iterdir())


@pytest.mark.parametrize("query", ["!!! ¿? ...", "123 456", "¡¡!! 42"])
@pytest.mark.parametrize("encoder", ["centroid", "sentence"])
def test_queries_without_a_word_are_refused_for_every_descriptor(corpus, query, encoder):
    from retrieval.query import load_text_encoder
    from retrieval.search import encode_texts

    class SentenceLike:  # USE / e5 style: no vocabulary, so no word is ever "unknown"
        def unknown_words(self, text):
            return []

        def encode(self, texts):
            return np.ones((len(texts), 4), np.float32)

    enc = load_text_encoder(corpus["root"] / "m.npz") if encoder == "centroid" else SentenceLike()
    with pytest.raises(UserError, match="no words in"):
        encode_texts(enc, [query])
    xq, keep = encode_texts(enc, [query, "un perro en la playa"])
    assert keep == [1] and len(xq) == 1


def test_genre_cells_written_as_unquoted_lists_are_lists(tmp_path):
    from retrieval.genre.data import read_label_set

    f = tmp_path / "m.csv"
    f.write_text('id,overview,genres\n1,a,"[Drama, Comedia]"\n2,b,"(Acción)"\n3,c,"[\'Drama\']"\n', encoding="utf-8")
    ls = read_label_set(f)
    got = {i: sorted(g for g, v in zip(ls.genres, row) if v) for i, row in zip(ls.ids, ls.Y)}
    assert got == {"1": ["Comedia", "Drama"], "2": ["Acción"], "3": ["Drama"]}


def test_contact_sheet_folder_is_checked_before_anything_loads(tmp_path):
    line = _one_line(CliRunner().invoke(cli, ["search", "perro", "--index", str(tmp_path / "no-index"),
                                              "--contact-sheet", "/sys/sheet.png"]))
    assert "cannot write /sys/sheet.png: folder /sys is not writable" in line


def test_genres_train_keeps_its_cache_next_to_out(tmp_path):
    from retrieval.commands.genres import _train_cfg

    opts = {"descriptor": "tfidf", "text_encoder": None, "hidden": 8, "dropout": 0.1, "epochs": 1, "batch_size": 8,
            "lr": 1e-3, "weight_decay": 1e-4, "pos_weight": "none", "min_support": 10, "val_fraction": 0.1,
            "test_fraction": 0.1, "seed": 0, "text_field": "overview", "id_column": None, "genres_column": None}
    cfg = _train_cfg("text", dict(opts), str(tmp_path / "m" / "g.pt"))
    assert cfg.text_cache == str(tmp_path / "m" / "cache")


def test_flipped_bytes_in_a_text_checkpoint_are_refused(tmp_path):
    from retrieval.checkpoint import read_checkpoint, save_checkpoint

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    data = save_checkpoint(tmp_path / "m.npz", {"weights/fc1.weight": w}, {"descriptor": "centroid"}, []).read_bytes()
    silent = []
    for off in range(0, len(data), max(1, len(data) // 150)):
        bad = bytearray(data)
        bad[off] ^= 0xFF
        (tmp_path / "x.npz").write_bytes(bytes(bad))
        try:
            arrays, config, _ = read_checkpoint(tmp_path / "x.npz")
        except UserError as exc:
            assert "\n" not in str(exc)
            continue
        if not (np.array_equal(arrays.get("weights/fc1.weight"), w) and config.get("descriptor") == "centroid"):
            silent.append(off)
    assert not silent
