"""No command runs code from a data file: a pickle that writes a marker when loaded is offered everywhere."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from text_fixtures import make_corpus, one_thread  # noqa: F401  (fixture)

from cli import cli
from extract.core.errors import UserError
from retrieval.config import TrainConfig
from retrieval.text import open_vectors, train_vectors
from retrieval.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    c = make_corpus(root)
    cfg = TrainConfig(epochs=2, hidden=16, batch_size=32, patience=2)
    train(cfg, c["features"], [root], root / "m.npz", vectors=c["vectors"], quiet=True)
    from indexes.build import IndexConfig, build_index_dir

    build_index_dir(c["features"], root / "index", IndexConfig(factory="Flat"), quiet=True)
    c["marker"] = root / "MARKER"
    (root / "evil").mkdir()
    for name in ("evil.kv", "evil.pkl", "evil.npz", "evil.pt", "evil.h5", "evil.txt", "evil/train_captions.txt"):
        (root / name).write_bytes(pickle.dumps(_Evil(c["marker"])))
    from PIL import Image

    (root / "imgs").mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "imgs" / "a.png")
    return c


def _commands(r: Path) -> dict[str, list[str]]:
    feats, caps, ck, ix = str(r / "features.h5"), str(r), str(r / "m.npz"), str(r / "index")
    return {
        "vectors convert": ["vectors", "convert", str(r / "evil.kv"), str(r / "out.kv")],
        "vectors convert txt": ["vectors", "convert", str(r / "evil.txt"), str(r / "out2.kv")],
        "vectors train": ["vectors", "train", str(r / "evil" / "train_captions.txt"), str(r / "out3.kv")],
        "train --vectors": ["train", "--features", feats, "--captions", caps, "--vectors", str(r / "evil.kv"),
                            "--out", str(r / "x.npz"), "--no-tensorboard", "--epochs", "1"],
        "train --features": ["train", "--features", str(r / "evil.h5"), "--captions", caps, "--out", str(r / "y.npz")],
        "train --captions": ["train", "--features", feats, "--captions", str(r / "evil"), "--out", str(r / "z.npz")],
        "evaluate ckpt": ["evaluate", str(r / "evil.npz"), "--features", feats, "--captions", caps],
        "evaluate --vectors": ["evaluate", ck, "--features", feats, "--captions", caps, "--vectors", str(r / "evil.kv")],
        "search --model": ["search", "perro", "--index", ix, "--model", str(r / "evil.npz")],
        "search --features": ["search", "--id", "train/0000.jpg", "--index", ix, "--features", str(r / "evil.h5")],
        "search --queries-file": ["search", "--index", ix, "--model", ck, "--queries-file", str(r / "evil.txt")],
        "search --truth": ["search", "perro", "--index", ix, "--model", ck, "--truth", str(r / "evil.txt")],
        "index build": ["index", "build", str(r / "evil.h5"), str(r / "ix2")],
        "extract list": ["extract", str(r / "evil.txt"), str(r / "e.h5")],
        "extract --weights": ["extract", str(r / "imgs"), str(r / "e2.h5"), "--model", "resnet18", "--weights",
                              str(r / "evil.pt"), "--image-size", "32", "--workers", "0"],
        "import-vectors": ["import-vectors", str(r / "evil.txt"), str(r / "evil.pkl"), str(r / "i.h5")],
        "verify": ["verify", str(r / "evil.h5")],
        "genres evaluate": ["genres", "evaluate", str(r / "evil.pt")],
        "genres predict": ["genres", "predict", str(r / "evil.pt"), "--overview", "una película"],
        "genres train --labels": ["genres", "train", "--labels", str(r / "evil.pkl"), "--model", "text",
                                  "--out", str(r / "g.pt")],
    }


@pytest.mark.parametrize("name", list(_commands(Path("."))))
def test_no_command_unpickles_a_user_file(ws, name):
    result = CliRunner().invoke(cli, _commands(ws["root"])[name])
    assert not ws["marker"].exists(), f"{name} ran code from a pickle"
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output


def test_allow_pickle_is_what_lets_a_kv_pickle_load(ws):
    """The control: with --allow-pickle the same file does run (so the test above can see a load)."""
    r = ws["root"]
    result = CliRunner().invoke(cli, ["vectors", "convert", str(r / "evil.kv"), str(r / "out.kv"), "--allow-pickle"])
    assert ws["marker"].exists(), result.output
    ws["marker"].unlink()
    assert result.exit_code != 0  # what it unpickled is not word vectors


def test_search_with_subword_vectors_beside_the_checkpoint_never_loads_the_kv(tmp_path, ws):
    """A FastText set's unknown words come from the exported n-grams; the gensim .kv beside it is never read."""
    from gensim.models import KeyedVectors

    sentences = [t.lower().rstrip(".").split() for t in (ws["root"] / "train_captions.txt").read_text().split("\n")
                 for t in [t.partition("\t")[2]] if t]
    vec = train_vectors(sentences, tmp_path / "vectors.kv", kind="fasttext", dim=12, epochs=2)
    gensim_kv = KeyedVectors.load(str(vec))  # our own file, for the reference
    shutil.copy(vec, tmp_path / "own.kv")
    wv = open_vectors(vec)
    assert "perrito" not in wv.index
    np.testing.assert_allclose(wv.oov_vector("perrito"), gensim_kv.get_vector("perrito"), rtol=1e-5, atol=1e-6)
    for extra in tmp_path.glob("vectors.kv.vectors*.npy"):
        extra.unlink()  # gensim's own side arrays are not part of the export
    vec.write_bytes(pickle.dumps(_Evil(ws["marker"])))
    wv = open_vectors(vec)
    np.testing.assert_allclose(wv.oov_vector("perrito"), gensim_kv.get_vector("perrito"), rtol=1e-5, atol=1e-6)
    assert not ws["marker"].exists()


def test_an_export_missing_its_ngrams_is_refused_naming_the_file(tmp_path, ws):
    vec = train_vectors([["perro", "gato"], ["gato", "casa"]] * 5, tmp_path / "v.kv", kind="fasttext", dim=4, epochs=1)
    (tmp_path / "v.kv.ngrams.npy").unlink()
    with pytest.raises(UserError, match=r"v.kv lacks v.kv.ngrams.npy; copy every file of the set"):
        open_vectors(vec)
