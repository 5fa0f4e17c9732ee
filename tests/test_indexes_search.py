"""Save/load round trip with sidecar checks, id mapping, k clamping, query encoding and refusals."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest
from indexes_fakes import DIM, FakeTextEncoder, concept_vector, make_corpus

from extract.core.errors import UserError
from extract.store import write_features
from indexes.build import IndexConfig, build_index, build_index_dir, normalize_rows
from indexes.gpu import to_device
from indexes.io import check_query_model, load_index, read_sidecar
from indexes.search import search
from retrieval.search import Searcher, encode_texts, read_queries_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    path, ids, xb = make_corpus(root)
    build_index_dir(path, root / "index", IndexConfig(factory="Flat"), quiet=True)
    return root, path, ids, xb


def test_round_trip_sidecar_and_identical_results(corpus, tmp_path):
    _root, path, ids, xb = corpus
    built = build_index(path, IndexConfig(factory="HNSW32"), quiet=True)
    build_index_dir(path, tmp_path / "ix", IndexConfig(factory="HNSW32"), quiet=True)
    meta = read_sidecar(tmp_path / "ix")
    assert meta["factory"] == "HNSW32" and meta["metric"] == "cosine" and meta["normalize"] is True
    assert (meta["n"], meta["d"]) == (len(ids), DIM)
    assert meta["features"]["config"]["model"] == "resnet152" and meta["features"]["fingerprint"]
    assert meta["search_params"] == built.meta["search_params"] and meta["build_seconds"] >= 0
    xq = normalize_rows(xb[:5].copy())
    for mmap in (True, False):
        loaded = load_index(tmp_path / "ix", mmap=mmap)
        D0, I0 = built.index.search(xq, 4)
        D1, I1 = search(loaded.index, xq, 4)
        assert np.array_equal(I0, I1) and np.array_equal(D0, D1)
    assert not list(tmp_path.joinpath("ix").glob("*.tmp"))


def test_search_returns_ids_not_rows(corpus):
    root, _path, ids, xb = corpus
    s = Searcher(root / "index")
    res = s.search_vectors(xb[7], 3)
    exact = np.argsort(-(normalize_rows(xb.copy()) @ normalize_rows(xb[7:8].copy()).T)[:, 0], kind="stable")[:3]
    assert [h.id for h in res.hits[0]] == [ids[r] for r in exact]
    assert res.hits[0][0].id == "img/0007.png" and res.hits[0][0].rank == 1
    assert res.hits[0][0].path.endswith("images/img/0007.png")
    by_id = s.search_ids(["img/0007.png"], 3)
    assert [h.id for h in by_id.hits[0]] == [h.id for h in res.hits[0]]


def test_k_is_clamped_with_a_warning(corpus, caplog):
    root, *_ = corpus
    s = Searcher(root / "index")
    xq = concept_vector(0)
    with caplog.at_level(logging.WARNING):
        assert len(s.search_vectors(xq, 0).hits[0]) == 1
        assert len(s.search_vectors(xq, 10_000).hits[0]) == 30
    assert "k=0 is not positive" in caplog.text and "k=10000 is more than the 30 indexed images" in caplog.text


def test_text_queries_find_planted_concept(corpus):
    root, *_ = corpus
    res = Searcher(root / "index").search_texts(FakeTextEncoder(), ["una persona en bicicleta", "un perro"], 5)
    assert all(int(h.id[4:8]) % 3 == 0 for h in res.hits[0])
    assert all(int(h.id[4:8]) % 3 == 1 for h in res.hits[1])


def test_empty_and_unknown_queries(caplog):
    enc = FakeTextEncoder()
    with pytest.raises(UserError, match="empty query"):
        encode_texts(enc, ["   "])
    with pytest.raises(UserError, match=r"no known words in 'zzz qqq' \(unknown: zzz, qqq\)"):
        encode_texts(enc, ["zzz qqq"])
    with pytest.raises(UserError, match=r"no known words in 'zzz 42' \(unknown: zzz\)"):  # digits are no words
        encode_texts(enc, ["zzz 42"])
    with caplog.at_level(logging.WARNING):
        xq, keep = encode_texts(enc, ["zzz", "un barco azulado"])
    assert keep == [1] and xq.shape == (1, DIM)
    assert "unknown words ignored in 'un barco azulado': azulado" in caplog.text and "skipped: no known words" in caplog.text
    with pytest.raises(UserError, match="none of the 2 queries"):
        encode_texts(enc, ["", "zzz"])


def test_queries_file(tmp_path):
    good = tmp_path / "q.txt"
    good.write_text("una persona en bicicleta\n\n  un perro  \n", encoding="utf-8")
    assert read_queries_file(good) == ["una persona en bicicleta", "un perro"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"uno\n" + "canción".encode("latin-1") + b"\n")
    with pytest.raises(UserError, match=r"not UTF-8 \(bad byte at line 2\)"):
        read_queries_file(bad)


def test_missing_and_corrupt_index(corpus, tmp_path):
    _root, path, *_ = corpus
    with pytest.raises(UserError, match="does not exist"):
        load_index(tmp_path / "nowhere")
    ix = tmp_path / "ix"
    build_index_dir(path, ix, IndexConfig(factory="Flat"), quiet=True)
    (ix / "index.faiss").write_bytes(b"garbage" * 10)
    with pytest.raises(UserError, match="not a readable faiss index"):
        load_index(ix)
    (ix / "index.faiss").unlink()
    with pytest.raises(UserError, match="index.faiss is missing"):
        load_index(ix)
    (ix / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_index(ix)


def test_sidecar_disagreeing_with_index_is_refused(corpus, tmp_path):
    _root, path, *_ = corpus
    ix = tmp_path / "ix"
    build_index_dir(path, ix, IndexConfig(factory="Flat"), quiet=True)
    meta = json.loads((ix / "index.json").read_text())
    meta["n"] = 99
    (ix / "index.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="holds 30 x 16 vectors but index.json says 99 x 16"):
        load_index(ix)


def test_index_from_another_feature_file_is_refused(corpus, tmp_path):
    root, _path, ids, xb = corpus
    other = tmp_path / "other.h5"
    write_features(other, ids[:-1], xb[:-1], {"model": "resnet152"})
    with pytest.raises(UserError, match=r"fingerprint .* but .*other.h5 has fingerprint"):
        Searcher(root / "index", features=other)


def test_query_model_mismatch_is_refused(corpus):
    root, *_ = corpus
    meta = read_sidecar(root / "index")
    with pytest.raises(UserError, match="outputs 2048-d vectors but the index holds 16-d ones"):
        check_query_model(meta, {"feature_dim": 2048})
    with pytest.raises(UserError, match="trained on resnet50 image features but the index holds resnet152"):
        check_query_model(meta, {"features_model": "resnet50"}, dim=DIM)
    with pytest.raises(UserError, match="outputs 8-d"):
        Searcher(root / "index").search_texts(FakeTextEncoder(dim=8), ["perro"], 3)
    check_query_model(meta, {"feature_dim": DIM, "features_model": "resnet152"})


def test_cpu_device_keeps_index_and_cuda_without_gpu_is_refused(corpus):
    root, *_ = corpus
    index = load_index(root / "index").index
    assert to_device(index, "cpu") is index
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "StandardGpuResources"):
        assert to_device(index, "auto") is index
        with pytest.raises(UserError, match="needs a GPU build of faiss"):
            to_device(index, "cuda")


@pytest.mark.gpu
@pytest.mark.faiss_gpu
def test_gpu_index_matches_cpu(corpus):
    root, _, _, xb = corpus
    index = load_index(root / "index", mmap=False).index
    gpu = to_device(index, "cuda")  # float16 storage, as answer() moves it
    xq = normalize_rows(xb[:10].copy())
    D0, I0 = index.search(xq, 5)
    D1, I1 = gpu.search(xq, 5)
    assert np.array_equal(I0[:, 0], I1[:, 0]) and np.allclose(D0, D1, atol=5e-3)  # float16 rounding of unit vectors
