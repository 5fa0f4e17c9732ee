"""The index folder is one unit: checksums, atomic replacement, strict sidecar, writable output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from indexes_fakes import make_corpus

import indexes.io
from cli import cli
from extract.core.errors import UserError
from extract.core.hashing import sha256_file
from indexes.build import IndexConfig, build_index_dir, normalize_rows
from indexes.io import load_index, read_sidecar


@pytest.fixture
def corpus(tmp_path):
    path, ids, xb = make_corpus(tmp_path)
    build_index_dir(path, tmp_path / "index", IndexConfig(factory="Flat"), quiet=True)
    return tmp_path, path, ids, xb


def _top(folder, xb, k=3):
    return load_index(folder).index.search(normalize_rows(xb[:5].copy()), k)[1]


def test_sidecar_records_size_and_sha256_and_no_staging_is_left(corpus):
    root, _path, _ids, _xb = corpus
    meta = read_sidecar(root / "index")
    f = root / "index" / "index.faiss"
    assert meta["files"]["index.faiss"] == {"size": f.stat().st_size, "sha256": sha256_file(f)}
    assert sorted(p.name for p in (root / "index").iterdir()) == ["index.faiss", "index.json"]
    assert not [p for p in root.iterdir() if p.name.startswith(".index.") and p.is_dir()]


def test_a_kill_before_the_swap_leaves_the_old_index_whole(corpus, monkeypatch):
    root, path, _ids, xb = corpus
    before = _top(root / "index", xb)
    old_bytes = (root / "index" / "index.faiss").read_bytes()

    def killed(staging, out):
        raise KeyboardInterrupt  # the process dies after writing the new folder, before it takes the old one's place

    monkeypatch.setattr(indexes.io, "_swap_in", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index_dir(path, root / "index", IndexConfig(factory="HNSW32"), quiet=True)
    assert (root / "index" / "index.faiss").read_bytes() == old_bytes
    assert read_sidecar(root / "index")["factory"] == "Flat" and np.array_equal(_top(root / "index", xb), before)
    assert not (root / ".index.new").exists()
    monkeypatch.undo()
    build_index_dir(path, root / "index", IndexConfig(factory="HNSW32"), quiet=True)  # a rerun replaces it whole
    assert read_sidecar(root / "index")["factory"] == "HNSW32"


def test_changed_bytes_or_a_file_from_another_build_are_refused(corpus, tmp_path_factory):
    root, path, _ids, _xb = corpus
    f = root / "index" / "index.faiss"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match="its bytes changed after the build; rebuild the index with `cli.py index build"):
        load_index(root / "index")
    other = tmp_path_factory.mktemp("other")
    build_index_dir(path, other / "ix", IndexConfig(factory="HNSW32"), quiet=True)
    f.write_bytes((other / "ix" / "index.faiss").read_bytes())  # a mixed pair: new index.faiss, old index.json
    with pytest.raises(UserError, match="is .* bytes but index.json says"):
        load_index(root / "index")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("d"), "lacks d"),
    (lambda m: m.update(d="16"), "'d' must be an integer, found the string '16'"),
    (lambda m: m.update(features=None), "'features' must be an object, found null"),
    (lambda m: m.update(files=None), "'files' must be an object, found null"),
    (lambda m: m["features"].update(fingerprint=None), "'fingerprint' must be a string, found null"),
    (lambda m: m.update(normalize=1), "'normalize' must be true/false, found 1"),
    (lambda m: m.update(search_params=None), "'search_params' must be an object, found null"),
    (lambda m: m.pop("files"), "older buscador without file checksums"),
])
def test_malformed_sidecar_is_one_clear_line(corpus, edit, message):
    root, _path, _ids, _xb = corpus
    side = root / "index" / "index.json"
    meta = json.loads(side.read_text())
    if "older" in message:
        meta["format_version"] = 1
    edit(meta)
    side.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=message):
        read_sidecar(root / "index")
    r = CliRunner().invoke(cli, ["search", "--index", str(root / "index"), "--id", "img/0001.png"])
    assert r.exit_code == 1 and r.output.startswith("Error:") and len(r.output.strip().splitlines()) == 1


def test_read_only_or_foreign_output_folder_is_refused_before_any_work(corpus, monkeypatch, tmp_path):
    _root, path, _ids, _xb = corpus
    import indexes.build

    def never(*a, **k):
        raise AssertionError("built before checking the output folder")

    monkeypatch.setattr(indexes.build, "build_index", never)
    if os.geteuid() == 0:
        readonly = "/sys/buscador-index"  # read-only even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        readonly = str(ro / "index")
    r = CliRunner().invoke(cli, ["index", "build", str(path), readonly, "-q"])
    assert r.exit_code == 1 and "is not writable" in r.output and len(r.output.strip().splitlines()) == 1
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep me")
    r = CliRunner().invoke(cli, ["index", "build", str(path), str(foreign), "-q"])
    assert r.exit_code == 1 and "holds other files (holiday.jpg)" in r.output
    assert (foreign / "holiday.jpg").read_bytes() == b"keep me"
