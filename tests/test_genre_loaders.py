"""Real-world label files: gzipped tables, named columns, list-literal genre cells, Kaggle's two id columns,
the join on file stems, seed 000's TMDB pickle and MM-IMDb folders."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle

import numpy as np
import pytest

from extract.core.errors import UserError
from retrieval.genre.data import joined, read_label_set

MOVIES = [
    {"tmdb": "8844", "imdb_id": "tt0113497", "overview": "a board game opens a jungle", "genres": '["Adventure", "Fantasy"]'},
    {"tmdb": "15602", "imdb_id": "tt0113228", "overview": "old neighbours feud again", "genres": '["Romance", "Comedy"]'},
    {"tmdb": "31357", "imdb_id": "tt0114885", "overview": "four friends wait", "genres": '["Comedy", "Drama"]'},
]
EXPECTED = {"8844": {"Adventure", "Fantasy"}, "15602": {"Romance", "Comedy"}, "31357": {"Comedy", "Drama"}}


def _table(rows, delimiter=","):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter=delimiter)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _genres_by_id(ls):
    return {i: {g for g, v in zip(ls.genres, row) if v} for i, row in zip(ls.ids, ls.Y)}


@pytest.mark.parametrize("name", ["m.csv.gz", "m.tsv.gz", "m.jsonl.gz", "m.json.gz"])
def test_gzipped_tables_read_like_plain_ones(tmp_path, name):
    rows = [{"id": m["tmdb"], "overview": m["overview"], "genres": json.loads(m["genres"])} for m in MOVIES]
    if ".csv" in name or ".tsv" in name:
        text = _table([{**r, "genres": "|".join(r["genres"])} for r in rows], "\t" if ".tsv" in name else ",")
    elif ".jsonl" in name:
        text = "\n".join(json.dumps(r) for r in rows) + "\n"
    else:
        text = json.dumps(rows)
    path = tmp_path / name
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    ls = read_label_set(path)
    assert _genres_by_id(ls) == EXPECTED
    assert ls.texts == [m["overview"] for m in MOVIES]


def test_named_columns_and_list_literal_genres(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("key,sinopsis,generos\nx1,una,\"[Drama, Comedia]\"\nx2,dos,\"['Terror']\"\nx3,tres,Drama|Terror\n",
                    encoding="utf-8")
    ls = read_label_set(path, text_field="sinopsis", id_column="key", genres_column="generos")
    assert _genres_by_id(ls) == {"x1": {"Drama", "Comedia"}, "x2": {"Terror"}, "x3": {"Drama", "Terror"}}
    assert ls.texts == ["una", "dos", "tres"]
    with pytest.raises(UserError, match="no id column 'movie'.*'key', 'sinopsis', 'generos'"):
        read_label_set(path, id_column="movie", genres_column="generos")


def _kaggle(tmp_path):
    rows = [{"id": m["tmdb"], "imdb_id": m["imdb_id"], "title": "t", "overview": m["overview"], "genres": m["genres"]}
            for m in MOVIES]
    path = tmp_path / "movies_metadata.csv"
    path.write_text(_table(rows), encoding="utf-8")
    return path


def test_kaggle_metadata_joins_posters_named_by_imdb_id(tmp_path):
    path = _kaggle(tmp_path)
    ls = read_label_set(path)
    assert ls.id_column == "id" and ls.alt_ids["imdb_id"] == [m["imdb_id"] for m in MOVIES]
    feature_ids = ["posters/tt0114885.jpg", "posters/tt0113497.jpg", "posters/tt9999999.jpg"]
    kept, rows = joined(ls, feature_ids)
    assert kept.id_column == "imdb_id" and kept.ids == ["tt0113497", "tt0114885"]
    assert rows.tolist() == [1, 0]
    assert _genres_by_id(kept) == {"tt0113497": EXPECTED["8844"], "tt0114885": EXPECTED["31357"]}


def test_nothing_joins_shows_every_id_column_and_both_sides(tmp_path):
    ls = read_label_set(_kaggle(tmp_path))
    with pytest.raises(UserError) as err:
        joined(ls, ["img_001.png", "img_002.png"])
    msg = str(err.value)
    assert "none of the 3 movies" in msg and "id: '8844'" in msg and "imdb_id: 'tt0113497'" in msg
    assert "'img_001.png'" in msg and "--id-column" in msg


def test_join_on_the_file_stem_whatever_folder_or_extension_the_ids_carry(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,overview,genres\nposters/tt1.jpg,a,Drama\ntt2.png,b,Terror\ntt3,c,Drama\n", encoding="utf-8")
    kept, rows = joined(read_label_set(path), ["tt3.jpg", "x/tt2.jpg", "tt1.webp"])
    assert dict(zip(kept.ids, rows.tolist())) == {"posters/tt1.jpg": 2, "tt2.png": 1, "tt3": 0}


def test_tmdb_pickle_needs_allow_pickle(tmp_path):
    data = [{"overview": "a haunted house", "title": "Casa", "genre_ids": [27, 53], "poster_path": "/abc.jpg"},
            {"overview": "two friends on the road", "title": "Ruta", "genre_ids": [35]}]
    path = tmp_path / "tmdb_posters.pkl"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UserError, match="--allow-pickle"):
        read_label_set(path)
    with pytest.warns(UserWarning, match="unpickling"):
        ls = read_label_set(path, allow_pickle=True)
    assert ls.ids == ["0", "1"] and ls.texts == ["a haunted house", "two friends on the road"]
    assert _genres_by_id(ls) == {"0": {"Horror", "Thriller"}, "1": {"Comedy"}}


def test_mmimdb_folder_with_split_json(tmp_path):
    root = tmp_path / "mmimdb"
    (root / "dataset").mkdir(parents=True)
    movies = {"0000001": (["A detective hunts.", "Second plot."], ["Crime", "Drama"]), "0000002": (["Aliens land."], ["Sci-Fi"]),
              "0000003": (["A love story."], ["Romance"])}
    for movie_id, (plot, genres) in movies.items():
        (root / "dataset" / f"{movie_id}.json").write_text(json.dumps({"plot": plot, "genres": genres, "title": "x"}))
        (root / "dataset" / f"{movie_id}.jpeg").write_bytes(b"")
    (root / "split.json").write_text(json.dumps({"train": ["0000001"], "dev": ["0000002"], "test": ["0000003", "0000009"]}))
    for path in (root, root / "split.json"):
        ls = read_label_set(path)
        assert ls.ids == ["0000001", "0000002", "0000003"]
        assert ls.texts == ["A detective hunts.", "Aliens land.", "A love story."]
        assert ls.splits == ["train", "val", "test"]
        assert _genres_by_id(ls) == {"0000001": {"Crime", "Drama"}, "0000002": {"Sci-Fi"}, "0000003": {"Romance"}}
        assert ls.posters[0] == str(root / "dataset" / "0000001.jpeg")
        kept, rows = joined(ls, ["0000003.jpeg", "0000001.jpeg"])
        assert dict(zip(kept.ids, rows.tolist())) == {"0000001": 1, "0000003": 0}
    assert np.array_equal(ls.Y.sum(axis=1), [2, 1, 1])
