import logging

import numpy as np
import pytest
from text_fixtures import make_keyed_vectors

from extract.core.errors import UserError
from retrieval.descriptors import KINDS, make_descriptor, restore_descriptor
from retrieval.text import export_vectors, open_vectors, tokenize

WORDS = ["perro", "niño", "señora", "bicicleta", "árbol", "playa", "el", "la", "en", "un"]


@pytest.fixture
def wv(tmp_path):
    return open_vectors(export_vectors(make_keyed_vectors(WORDS, dim=6, seed=1), tmp_path / "w.kv"))


def _mean(wv, text, weights=None):
    toks = [t for t in tokenize(text) if t in wv.index]
    vecs = np.array([wv.matrix[wv.index[t]] for t in toks])
    w = np.ones(len(toks)) if weights is None else np.array([weights[t] for t in toks])
    return (vecs * w[:, None]).sum(0) / w.sum()


def test_centroid_is_the_mean_of_known_words_and_empty_is_zero(wv, caplog):
    texts = ["El perro en la playa.", "Un zzz perro qqq", "", "xyzzy plugh", "Niño, señora; árbol!"]
    d = make_descriptor("centroid", wv)
    with caplog.at_level(logging.WARNING):
        x = d.fit(texts).transform(texts)
    assert x.shape == (5, 6) and x.dtype == np.float32 and np.isfinite(x).all()
    for i in (0, 1, 4):
        np.testing.assert_allclose(x[i], _mean(wv, texts[i]), rtol=1e-5, atol=1e-6)
    assert not x[2].any() and not x[3].any()
    assert d.n_empty == 2
    assert "2 of 5 captions have no known words" in caplog.text
    assert d.unknown_words("Un zzz perro qqq") == ["zzz", "qqq"]


def test_centroid_sparse_and_dense_paths_agree_with_reference(wv, monkeypatch):
    import retrieval.descriptors as mod

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS + ["oov"], size=int(rng.integers(0, 6)))) for _ in range(150)]
    whole = make_descriptor("centroid", wv).transform(texts)  # > 64 captions: scipy.sparse product
    monkeypatch.setattr(mod, "_CHUNK", 7)  # <= 64 captions per chunk: dense product
    np.testing.assert_allclose(make_descriptor("centroid", wv).transform(texts), whole, rtol=1e-5, atol=1e-6)
    for text, row in zip(texts, whole):
        ref = _mean(wv, text) if any(t in wv.index for t in tokenize(text)) else np.zeros(6)
        np.testing.assert_allclose(row, ref, rtol=1e-5, atol=1e-6)


def test_centroid_uses_fasttext_subwords_for_unknown_words(tmp_path):
    from gensim.models import FastText

    sents = [["el", "perro", "corre"], ["la", "perrita", "duerme"]] * 10
    model = FastText(sents, vector_size=6, min_count=1, epochs=1, seed=0, workers=1, bucket=500)
    wv = open_vectors(export_vectors(model.wv, tmp_path / "ft.kv"))
    x = make_descriptor("centroid", wv).transform(["el perrito", "el"] * 40)
    np.testing.assert_allclose(x[0], (model.wv["el"] + model.wv["perrito"]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[1], model.wv["el"], rtol=1e-5, atol=1e-6)


def test_centroid_tfidf_weights_by_idf(wv):
    train = ["el perro", "el niño", "el árbol", "la playa"]
    d = make_descriptor("centroid-tfidf", wv).fit(train)
    n = len(train)
    idf = {t: np.log2(n / sum(t in tokenize(s) for s in train)) for t in ["el", "perro", "niño", "árbol", "la", "playa"]}
    idf["señora"] = max(idf.values())  # unseen in training: the largest idf
    x = d.transform(["el perro señora"])
    np.testing.assert_allclose(x[0], _mean(wv, "el perro señora", idf), rtol=1e-5, atol=1e-6)
    assert not d.transform([""]).any()


def _grams(text, n):
    toks = tokenize(text)
    return [" ".join(toks[i : i + k]) for k in range(1, n + 1) for i in range(len(toks) - k + 1)]


def test_tfidf_ngrams_reference_and_restore(wv):
    train = ["un perro en la playa", "un niño en la playa", "una señora en bicicleta", "un perro y un niño"] * 3
    d = make_descriptor("tfidf", min_df=2, max_df=0.7, ngrams=2).fit(train)
    assert "en la" in d.terms and "un perro" in d.terms
    assert "en" not in d.terms and "un" not in d.terms  # in 9 of 12 captions: above max_df
    x = d.transform(["un perro en la playa", "nada conocido"])
    assert x.shape == (2, d.dim) and not x[1].any() and d.n_empty == 1
    # reference, counted here: smooth idf ln((1 + n) / (1 + df)) + 1 from document counts, counts x idf, l2-normalised
    n = len(train)
    df = {g: sum(g in _grams(s, 2) for s in train) for g in d.terms}
    idf = {g: np.log((1 + n) / (1 + df[g])) + 1 for g in d.terms}
    np.testing.assert_allclose(d.idf[[d.terms[g] for g in d.terms]], [idf[g] for g in d.terms], rtol=1e-6)
    ref = np.zeros(d.dim)
    for g in _grams("un perro en la playa", 2):
        if g in d.terms:
            ref[d.terms[g]] += idf[g]
    np.testing.assert_allclose(x[0], ref / np.linalg.norm(ref), rtol=1e-5, atol=1e-6)
    back = restore_descriptor(d.config, d.state(), None)
    np.testing.assert_array_equal(back.transform(["un perro en la playa"]), x[:1])


def test_tfidf_numpy_transform_equals_sklearn():
    from sklearn.feature_extraction.text import TfidfVectorizer

    rng = np.random.default_rng(3)
    vocab = WORDS + ["corre", "duerme", "azul", "Árbol", "NIÑO"]
    train = [" ".join(rng.choice(vocab, size=int(rng.integers(1, 9)))) + "." for _ in range(300)]
    queries = [" ".join(rng.choice(vocab + ["zzz"], size=int(rng.integers(0, 9)))) for _ in range(100)] + [""]
    for opts in ({"ngrams": 3, "min_df": 2, "max_df": 0.8, "max_features": 200}, {"ngrams": 1, "min_df": 1, "max_df": 1.0}):
        d = make_descriptor("tfidf", **opts).fit(train)
        ref = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None, ngram_range=(1, opts["ngrams"]),
                              min_df=opts["min_df"], max_df=opts["max_df"], max_features=opts.get("max_features"))
        want = ref.fit(train).transform(queries).toarray()
        assert list(d.terms) == list(ref.get_feature_names_out())
        restored = restore_descriptor(d.config, d.state(), None)  # terms + idf only: the query path
        assert restored._vectorizer is None
        np.testing.assert_allclose(restored.transform(queries), want, atol=1e-6)
        np.testing.assert_allclose(restored.transform_sparse(queries).toarray(), want, atol=1e-6)
        sparse = d.transform_sparse(queries)  # the fitted vectorizer (training)
        assert sparse.format == "csr" and sparse.dtype == np.float32 and d.n_empty == restored.n_empty >= 1
        np.testing.assert_allclose(sparse.toarray(), want, atol=1e-6)


def test_tfidf_fit_errors_are_user_errors():
    with pytest.raises(UserError, match="cannot fit tf-idf"):
        make_descriptor("tfidf").fit(["", "123 !!"])
    with pytest.raises(UserError, match="cannot fit tf-idf"):
        make_descriptor("tfidf", min_df=5).fit(["un perro", "un gato"])
    with pytest.raises(UserError, match="not fitted"):
        make_descriptor("tfidf").transform(["un perro"])


def test_sequence_index_keeps_order_and_pads(wv):
    d = make_descriptor("sequence", wv, max_len=3)
    ids, lengths, table = d.index(["el perro zzz en la playa", "", "niño"])
    assert ids.shape == (3, 3) and list(lengths) == [3, 1, 1]
    x = table[ids]
    for j, w in enumerate(["el", "perro", "en"]):
        np.testing.assert_array_equal(x[0, j], wv.matrix[wv.index[w]])
    assert not x[1].any() and d.n_empty == 1
    np.testing.assert_array_equal(x[2, 0], wv.matrix[wv.index["niño"]])


def test_restore_refuses_other_vectors(tmp_path, wv):
    d = make_descriptor("centroid", wv)
    other = open_vectors(export_vectors(make_keyed_vectors(WORDS, dim=6, seed=9), tmp_path / "o.kv"))
    with pytest.raises(UserError, match=r"fingerprint .* but .*o\.kv"):
        restore_descriptor(d.config, d.state(), other)
    smaller = open_vectors(export_vectors(make_keyed_vectors(WORDS, dim=4, seed=1), tmp_path / "s.kv"))
    with pytest.raises(UserError, match="6-d.*4-d"):
        restore_descriptor(d.config, d.state(), smaller)


def test_factory_names_and_errors(wv):
    assert set(KINDS) >= {"centroid", "centroid-tfidf", "tfidf", "sequence", "use-multilingual", "e5-small"}
    with pytest.raises(UserError, match="unknown descriptor"):
        make_descriptor("bert", wv)
    with pytest.raises(UserError, match="needs word vectors"):
        make_descriptor("centroid")
