"""Label loaders on tiny files, multi-hot encoding, the id join to features, and the seeded split."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest

from extract.core.errors import UserError
from retrieval.genre.data import encode_genres, join_features, joined, read_label_set
from retrieval.genre.split import stratified_split


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_poster_csv_layout(tmp_path):
    f = _write(tmp_path / "train.csv", "Id,Genre,Action,Comedy,Drama\ntt01,\"['Comedy', 'Drama']\",0,1,1\ntt02,\"['Action']\",1,0,0\n")
    ls = read_label_set(f)
    assert ls.ids == ["tt01", "tt02"]
    assert ls.genres == ["Action", "Comedy", "Drama"]  # the file's column order
    assert ls.Y.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert ls.posters[0].endswith("Images/tt01.jpg")


def test_tmdb_csv_with_ids_names_and_json_objects(tmp_path, caplog):
    f = _write(
        tmp_path / "tmdb.csv",
        "id,title,overview,genre_ids,poster_path\n"
        "1,A,una historia,\"[18, 35]\",/p/1.jpg\n"
        "2,B,otra historia,\"[{'id': 28, 'name': 'Action'}]\",/p/2.jpg\n"
        "3,C,tercera,\"[18, 99999]\",\n",
    )
    with caplog.at_level(logging.WARNING):
        ls = read_label_set(f)
    assert ls.texts == ["una historia", "otra historia", "tercera"]
    got = {i: {g for g, v in zip(ls.genres, row) if v} for i, row in zip(ls.ids, ls.Y)}
    assert got == {"1": {"Drama", "Comedy"}, "2": {"Action"}, "3": {"Drama"}}
    assert ls.genres[0] == "Drama"  # most frequent first
    assert "1 genre ids not in the TMDB table" in caplog.text and "99999" in caplog.text


def test_json_list_and_jsonl_and_plain_csv_agree(tmp_path):
    movies = [
        {"id": "a", "text": "robots y naves", "genres": ["Ciencia ficción", "Acción"], "image": "img/a.jpg"},
        {"id": "b", "text": "amor en parís", "genres": ["Romance"], "image": "img/b.jpg"},
    ]
    js = _write(tmp_path / "m.json", json.dumps({"movies": movies}))
    jl = _write(tmp_path / "m.jsonl", "\n".join(json.dumps(m) for m in movies) + "\n")
    csv = _write(tmp_path / "m.csv", "id,text,genres,image\na,robots y naves,Ciencia ficción|Acción,img/a.jpg\nb,amor en parís,Romance,img/b.jpg\n")
    sets = [read_label_set(p, text_field="text") for p in (js, jl, csv)]
    for ls in sets:
        assert ls.ids == ["a", "b"] and ls.texts == ["robots y naves", "amor en parís"]
        assert ls.genres == sets[0].genres and np.array_equal(ls.Y, sets[0].Y)
        assert ls.posters[1] == str(tmp_path / "img/b.jpg")
    assert sets[0].Y.sum() == 3


def test_jsonl_bad_line_names_the_line(tmp_path):
    f = _write(tmp_path / "m.jsonl", '{"id": 1, "genres": ["Drama"]}\n{oops\n')
    with pytest.raises(UserError, match=r"m.jsonl:2: not a JSON object"):
        read_label_set(f)


def test_pickle_needs_the_flag_and_warns(tmp_path):
    f = tmp_path / "m.pkl"
    f.write_bytes(pickle.dumps([{"id": 7, "overview": "x", "genre_ids": [27]}]))
    with pytest.raises(UserError, match="--allow-pickle"):
        read_label_set(f)
    with pytest.warns(UserWarning, match="runs any code"):
        ls = read_label_set(f, allow_pickle=True)
    assert ls.ids == ["7"] and ls.genres == ["Horror"]


def test_wrong_columns_is_a_clear_error(tmp_path):
    f = _write(tmp_path / "m.csv", "name,plot\nx,y\n")
    with pytest.raises(UserError, match=r"expected an id column .* and a genres column"):
        read_label_set(f)


def test_movies_without_genre_duplicates_and_unknown_names_are_reported(tmp_path, caplog):
    f = _write(tmp_path / "m.csv", "id,overview,genres\n1,a,Drama\n2,b,\n3,c,Drama|Westerns\n1,d,Comedia\n4,e,Westerns\n")
    with caplog.at_level(logging.WARNING):
        ls = read_label_set(f, genres=["Drama", "Comedia"])
    assert ls.ids == ["1", "3"]
    assert "2 genre labels are not among the 2 known genres" in caplog.text and "Westerns x2" in caplog.text
    assert "2 of 5 movies have no known genre" in caplog.text
    assert "1 duplicate ids" in caplog.text
    assert ls.genres == ["Drama", "Comedia"] and ls.Y.tolist() == [[1, 0], [1, 0]]


def test_no_movie_with_a_genre_is_an_error(tmp_path):
    f = _write(tmp_path / "m.csv", "id,overview,genres\n1,a,\n2,b,\n")
    with pytest.raises(UserError, match="none of its 2 movies has a known genre"):
        read_label_set(f)


def test_multi_hot_encoding_order_and_case():
    Y, genres, unknown = encode_genres([["Drama", "Terror"], ["drama"], ["Comedia", "Drama"]])
    assert genres == ["Drama", "Comedia", "Terror"]  # by frequency, then name; "drama" is the same genre
    Y2, _, unknown2 = encode_genres([["drama"], ["Otro"]], genres=["Drama"])
    assert Y2.tolist() == [[1], [0]] and dict(unknown2) == {"Otro": 1}
    assert Y.dtype == np.uint8 and Y.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]] and not unknown


def test_join_by_id_stem_or_poster_path(tmp_path, caplog):
    f = _write(tmp_path / "m.csv", "id,overview,genres,poster\n10,a,Drama,posters/10.jpg\nx,b,Drama,posters/zz.png\n12,c,Drama,\n13,d,Drama,\n")
    ls = read_label_set(f)
    feature_ids = ["10.jpg", "other/zz.png", "12", "sub/99.jpg"]
    rows, missing = join_features(ls, feature_ids)
    assert rows.tolist() == [0, 1, 2, -1] and missing == ["13"]
    with caplog.at_level(logging.WARNING):
        kept, krows = joined(ls, feature_ids)
    assert kept.ids == ["10", "x", "12"] and krows.tolist() == [0, 1, 2]
    assert "1 of 4 movies have no poster features" in caplog.text and "'13'" in caplog.text
    with pytest.raises(UserError, match="none of the 4 movies"):
        joined(ls, ["q.jpg"])


def test_ambiguous_stem_does_not_join():
    from retrieval.genre.data import LabelSet

    ls = LabelSet(["5"], [""], [""], ["Drama"], np.ones((1, 1), np.uint8), None, "x")
    rows, missing = join_features(ls, ["a/5.jpg", "b/5.jpg"])
    assert rows.tolist() == [-1] and missing == ["5"]


def test_split_is_deterministic_and_stratified():
    rng = np.random.default_rng(1)
    Y = (rng.random((400, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]).astype(np.uint8)
    a, b = stratified_split(Y, seed=3), stratified_split(Y, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stratified_split(Y, seed=4))
    sizes = np.bincount(a, minlength=3)
    assert abs(sizes[0] - 320) <= 4 and abs(sizes[1] - 40) <= 4 and abs(sizes[2] - 40) <= 4
    total = Y.sum(axis=0)
    for s, frac in enumerate((0.8, 0.1, 0.1)):
        per = Y[a == s].sum(axis=0)
        assert np.all(np.abs(per - frac * total) <= 1.0 + 1e-9), (s, per, frac * total)


def test_split_column_is_used(tmp_path):
    from retrieval.genre.train import prepare

    f = _write(tmp_path / "m.csv", "id,overview,genres,split\n1,a,Drama,train\n2,b,Drama,validation\n3,c,Drama,test\n4,d,Comedia,train\n")
    prep = prepare(f)
    assert [prep.labels.ids[i] for i in prep.rows("val")] == ["2"]
    assert [prep.labels.ids[i] for i in prep.rows("test")] == ["3"]
    bad = _write(tmp_path / "b.csv", "id,overview,genres,split\n1,a,Drama,holdout\n")
    with pytest.raises(UserError, match="split column has values 'holdout'"):
        prepare(bad)


def test_genre_without_training_positive_is_warned(tmp_path, caplog):
    from retrieval.genre.train import prepare

    f = _write(tmp_path / "m.csv", "id,overview,genres,split\n1,a,Drama,train\n2,b,Drama|Western,test\n3,c,Drama,val\n")
    with caplog.at_level(logging.WARNING):
        prep = prepare(f)
    assert prep.no_train_positive == ["Western"]
    assert "1 genres have no positive example in training" in caplog.text and "Western" in caplog.text
