"""`cli.py index build`, `index info` and `search` through click's CliRunner."""

from __future__ import annotations

import json
import sys
import types

import pytest
from click.testing import CliRunner
from indexes_fakes import FakeTextEncoder, fake_embed_images, make_corpus
from PIL import Image

import retrieval.search
from cli import cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    path, _ids, _ = make_corpus(root)
    result = CliRunner().invoke(cli, ["index", "build", str(path), str(root / "index"), "--index", "auto", "-q"])
    assert result.exit_code == 0, result.output
    assert "Flat (cosine) over 30 x 16" in result.output
    return root


@pytest.fixture
def fake_model(monkeypatch, demo):
    monkeypatch.setattr(retrieval.search, "load_text_model", lambda path: FakeTextEncoder())
    ckpt = demo / "regressor.pt"
    ckpt.write_bytes(b"")
    return ckpt


def _search(demo, *args):
    return CliRunner().invoke(cli, ["search", "--index", str(demo / "index"), *args])


def test_text_search_table_with_truth_and_contact_sheets(demo, fake_model, tmp_path):
    png, page = tmp_path / "sheet.png", tmp_path / "sheet.html"
    r = _search(demo, "una persona en bicicleta", "--model", str(fake_model), "-k", "5", "--truth",
                str(demo / "scenes.jsonl"), "--contact-sheet", str(png), "--contact-sheet", str(page))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "query: una persona en bicicleta"
    rows = [ln.split() for ln in lines[2:7]]
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(int(row[2][4:8]) % 3 == 0 and row[-1] == "yes" for row in rows)
    assert rows[0][3].endswith(rows[0][2])
    assert "5/5 results have person_on_bicycle" in r.output
    with Image.open(png) as im:
        assert im.width >= 5 * 160 and im.getpixel((2, 30)) != (255, 255, 255)  # green frame drawn
    html = page.read_text(encoding="utf-8")
    assert html.count("<figure class='yes'>") == 5 and "data:image/jpeg;base64," in html


def test_json_batch_from_queries_file(demo, fake_model, tmp_path):
    qf = tmp_path / "q.txt"
    qf.write_text("un perro\nzzz\nun barco\n", encoding="utf-8")
    r = _search(demo, "--queries-file", str(qf), "--model", str(fake_model), "-k", "3", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert [q["query"] for q in doc["queries"]] == ["un perro", "un barco"]
    assert all(int(h["id"][4:8]) % 3 == 1 for h in doc["queries"][0]["results"])
    assert all(int(h["id"][4:8]) % 3 == 2 for h in doc["queries"][1]["results"])
    assert {"index_load", "search", "encode"} <= set(doc["timings"])


def test_image_and_id_queries(demo, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "extract.features", types.SimpleNamespace(embed_images=fake_embed_images))
    q = tmp_path / "blue.png"
    Image.new("RGB", (10, 10), (0, 0, 250)).save(q)
    r = _search(demo, "--image", str(q), "-k", "4", "--json")
    assert r.exit_code == 0, r.output
    ids = [h["id"] for h in json.loads(r.output)["queries"][0]["results"]]
    assert len(ids) == 4 and all(int(i[4:8]) % 3 == 2 for i in ids)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = _search(demo, "--image", str(bad))
    assert r.exit_code == 1 and r.output.startswith("Error: query image") and "cannot be used" in r.output
    r = _search(demo, "--id", "img/0004.png", "-k", "2")
    assert r.exit_code == 0 and r.output.splitlines()[2].split()[2] == "img/0004.png"
    r = _search(demo, "--id", "img/nope.png")
    assert r.exit_code == 1 and "'img/nope.png' is not in" in r.output


def test_user_errors_are_one_line(demo, fake_model, tmp_path):
    cases = [
        (["   ", "--model", str(fake_model)], "Error: empty query"),
        (["zzz", "--model", str(fake_model)], "Error: no known words in 'zzz' (unknown: zzz)"),
        (["un perro", "--model", str(tmp_path / "none.pt")], "none.pt does not exist; train one"),
        (["--index", str(tmp_path / "missing"), "un perro"], "does not exist"),
        ([], "give exactly one kind of query"),
    ]
    for args, expected in cases:
        r = _search(demo, *args)
        assert r.exit_code == 1, r.output
        assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("Error:")
        if expected:
            assert expected in r.output
    qf = tmp_path / "latin1.txt"
    qf.write_bytes("canción\n".encode("latin-1"))
    r = _search(demo, "--queries-file", str(qf), "--model", str(fake_model))
    assert r.exit_code == 1 and "is not UTF-8" in r.output


def test_k_clamp_warns_but_answers(demo, fake_model, caplog):
    r = _search(demo, "un perro", "--model", str(fake_model), "-k", "100")
    assert r.exit_code == 0
    assert "k=100 is more than the 30 indexed images; using k=30" in caplog.text
    assert sum(1 for ln in r.output.splitlines() if ln.strip()[:1].isdigit()) == 30


def test_index_info_and_bad_factory(demo):
    r = CliRunner().invoke(cli, ["index", "info", str(demo / "index")])
    assert r.exit_code == 0 and json.loads(r.output)["factory"] == "Flat"
    r = CliRunner().invoke(cli, ["index", "build", str(demo / "features.h5"), str(demo / "x"), "--index", "Bogus"])
    assert r.exit_code == 1 and "faiss cannot build index 'Bogus'" in r.output
