import gzip

import numpy as np
import pytest
from text_fixtures import make_keyed_vectors

from extract.core.errors import UserError
from retrieval.text import (
    convert_vectors,
    is_exported,
    load_vectors,
    open_vectors,
    sniff_format,
    tokenize,
    train_vectors,
)

SPANISH = [
    "Un niño montando en bicicleta, ¡junto a la señora!",
    "¿Qué está haciendo el pingüino? Comiendo 3 peces...",
    "ÁRBOL grande—y un camión (rojo) en la montaña; año 2019",
    "",
]


def test_tokenize_spanish_keeps_accents_and_enye():
    assert tokenize(SPANISH[0]) == ["un", "niño", "montando", "en", "bicicleta", "junto", "a", "la", "señora"]
    assert tokenize(SPANISH[1]) == ["qué", "está", "haciendo", "el", "pingüino", "comiendo", "peces"]
    assert tokenize(SPANISH[2], fold_accents=True)[:2] == ["arbol", "grande"]
    assert "camion" in tokenize(SPANISH[2], fold_accents=True) and "año" in tokenize(SPANISH[2])
    assert tokenize(SPANISH[3]) == []
    # decomposed accents (NFD input) give the same tokens as composed ones
    assert tokenize("nin\u0303o esta\u0301") == ["niño", "está"]


def test_tokenize_agrees_with_gensim():
    from gensim.utils import tokenize as gensim_tokenize

    for text in SPANISH:
        for fold in (False, True):
            assert tokenize(text, fold_accents=fold) == list(gensim_tokenize(text, lowercase=True, deacc=fold))


WORDS = ["perro", "niño", "señora", "bicicleta", "árbol", "el", "de"]


def _write_word2vec_text(path, words, vecs, header=True, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        if header:
            fh.write(f"{len(words)} {vecs.shape[1]}\n")
        for w, v in zip(words, vecs):
            fh.write(w + " " + " ".join(f"{x:.6f}" for x in v) + "\n")


@pytest.mark.parametrize("fmt", ["word2vec", "word2vec-gz", "glove", "word2vec-bin", "kv"])
def test_every_format_round_trips_through_the_export(tmp_path, fmt):
    kv = make_keyed_vectors(WORDS, dim=5, seed=3)
    vecs = np.round(kv.vectors, 6)
    src = {"word2vec": tmp_path / "v.vec", "word2vec-gz": tmp_path / "v.vec.gz", "glove": tmp_path / "g.txt",
           "word2vec-bin": tmp_path / "v.bin", "kv": tmp_path / "native.kv"}[fmt]
    if fmt == "word2vec":
        _write_word2vec_text(src, WORDS, vecs)
    elif fmt == "word2vec-gz":
        _write_word2vec_text(src, WORDS, vecs, opener=gzip.open)
    elif fmt == "glove":
        _write_word2vec_text(src, WORDS, vecs, header=False)
    elif fmt == "word2vec-bin":
        kv.save_word2vec_format(str(src), binary=True)
        vecs = kv.vectors
    else:
        kv.save(str(src))
        vecs = kv.vectors
    assert sniff_format(src) == fmt.replace("-gz", "")
    if fmt == "kv":  # a gensim native file is a pickle: only with allow_pickle
        with pytest.raises(UserError, match="which is a pickle"):
            convert_vectors(src, tmp_path / "out.kv")
    out = convert_vectors(src, tmp_path / "out.kv", allow_pickle=fmt == "kv")
    assert is_exported(out)
    wv = open_vectors(out)
    assert wv.words == WORDS
    np.testing.assert_allclose(np.asarray(wv.matrix), vecs, atol=1e-6)
    assert isinstance(wv.matrix, np.memmap)
    # the exported .kv also loads with gensim (memory-mapped) and gives the same vectors
    again = load_vectors(out)
    np.testing.assert_allclose(again["señora"], vecs[WORDS.index("señora")], atol=1e-6)
    # limit keeps the first words of text and binary files
    if fmt != "kv":
        assert load_vectors(src, limit=3).index_to_key == WORDS[:3]


def test_fasttext_bin_gives_subword_vectors_for_unknown_words(tmp_path):
    from gensim.models import FastText
    from gensim.models.fasttext import save_facebook_model

    sentences = [["el", "perro", "corre", "en", "el", "parque"], ["un", "perrito", "juega"]] * 20
    model = FastText(sentences, vector_size=8, min_count=1, epochs=2, seed=0, workers=1, bucket=1000)
    save_facebook_model(model, str(tmp_path / "ft.bin"))
    assert sniff_format(tmp_path / "ft.bin") == "fasttext-bin"
    wv = open_vectors(convert_vectors(tmp_path / "ft.bin", tmp_path / "ft.kv"))
    assert wv.subword and "perros" not in wv.index
    vec = wv.oov_vector("perros")
    np.testing.assert_allclose(vec, model.wv["perros"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(wv.matrix[wv.index["perro"]]), model.wv["perro"], rtol=1e-5, atol=1e-6)


def test_train_vectors_is_seeded_and_fingerprinted(tmp_path):
    sents = [tokenize(t) for t in ["un perro en la playa", "una señora en bicicleta", "un niño con un perro"] * 10]
    a = open_vectors(train_vectors(sents, tmp_path / "a.kv", kind="word2vec", dim=8, epochs=3, seed=1))
    b = open_vectors(train_vectors(sents, tmp_path / "b.kv", kind="word2vec", dim=8, epochs=3, seed=1))
    c = open_vectors(train_vectors(sents, tmp_path / "c.kv", kind="word2vec", dim=8, epochs=3, seed=2))
    assert "señora" in a.index and a.dim == 8
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_bad_vector_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_vectors(tmp_path / "nope.vec")
    bad = tmp_path / "bad.vec"
    bad.write_text("2 3\nperro 0.1 0.2\n", encoding="utf-8")
    with pytest.raises(UserError, match="cannot read"):
        load_vectors(bad)
    with pytest.raises(UserError, match="vectors convert"):
        open_vectors(bad)
