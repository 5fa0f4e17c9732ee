"""A grown feature file: only the new rows are added (Flat, IVF, HNSW), other changes rebuild; `search`
reports an index older than its feature file as stale, with the command to run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from extract.store import write_features
from indexes.bench.synthetic import clustered
from indexes.build import normalize_rows
from indexes.io import load_index
from indexes.search import Collection

N0, N1, D = 600, 800, 16


@pytest.fixture
def files(tmp_path):
    xb = clustered(N1, D, seed=5)
    ids = [f"img/{i:04d}.png" for i in range(N1)]
    new = tmp_path / "features.h5"
    write_features(new, ids[:N0], xb[:N0], {"model": "resnet18"})
    return tmp_path, new, ids, xb


def _grow(path, ids, xb, n=N1):
    write_features(path, ids[:n], xb[:n], {"model": "resnet18"})


def _build(path, out, *args):
    return CliRunner().invoke(cli, ["index", "build", str(path), str(out), "-q", *args])


def _exact(xb, xq, k):
    xn = normalize_rows(xb.copy())
    return np.argsort(-(normalize_rows(xq.copy()) @ xn.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("factory, exhaustive", [("Flat", {}), ("IVF8,Flat", {"nprobe": 8}), ("HNSW16", None)])
def test_grown_file_adds_only_the_new_rows(files, factory, exhaustive, caplog):
    root, path, ids, xb = files
    r = _build(path, root / "ix", "--index", factory)
    assert r.exit_code == 0 and ": built " in r.output, r.output
    _grow(path, ids, xb)
    with caplog.at_level(logging.WARNING):
        col = Collection(root / "ix")
    assert col.stale and f"covers {N0} of the {N1} rows" in col.stale
    assert f"run `cli.py index build {path} {root / 'ix'}`" in caplog.text
    assert [h.id for h in col.search_ids(["img/0003.png"], 1).hits[0]] == ["img/0003.png"]  # old rows still map
    r = _build(path, root / "ix", "--index", factory)
    assert r.exit_code == 0 and f"added {N1 - N0} new rows to the existing index ({N0} -> {N1})" in r.output, r.output
    loaded = load_index(root / "ix", mmap=False)
    assert loaded.meta["n"] == N1 and loaded.meta["update"]["action"] == "added"
    assert Collection(root / "ix").stale is None
    xq = xb[N0:N0 + 20]
    if exhaustive is not None:  # Flat, and IVF scanning every list, are exact: the reference is brute force
        from indexes.params import set_search_params

        set_search_params(loaded.index, exhaustive)
        _, I = loaded.index.search(normalize_rows(xq.copy()), 5)
        assert np.array_equal(I, _exact(xb, xq, 5))
    else:  # each new row is its own nearest neighbour
        _, I = loaded.index.search(normalize_rows(xq.copy()), 1)
        assert I[:, 0].tolist() == list(range(N0, N0 + 20))
    r = _build(path, root / "ix", "--index", factory)
    assert "up to date" in r.output


def test_other_changes_rebuild_and_say_why(files):
    root, path, ids, xb = files
    assert _build(path, root / "sq", "--index", "SQ8").exit_code == 0
    assert _build(path, root / "flat", "--index", "Flat").exit_code == 0
    _grow(path, ids, xb)
    r = _build(path, root / "sq", "--index", "SQ8")
    assert r.exit_code == 0 and "rebuilt (IndexScalarQuantizer codes are trained for the rows" in r.output, r.output
    assert load_index(root / "sq").meta["n"] == N1
    r = _build(path, root / "flat", "--index", "HNSW16")
    assert "rebuilt (--index for 800 rows is HNSW16, the index is Flat)" in r.output
    write_features(path, ids, xb, {"model": "resnet18"})  # the same rows written again: cannot tell cheaply
    r = _build(path, root / "sq", "--index", "SQ8")
    assert f"rebuilt ({path} was rewritten since the build)" in r.output, r.output
    changed = np.vstack([xb, clustered(100, D, seed=9)])
    changed[3] += 1.0  # row 3 re-extracted with other values, and rows appended
    write_features(path, ids + [f"new/{i}.png" for i in range(100)], changed, {"model": "resnet18"})
    r = _build(path, root / "flat", "--index", "HNSW16")  # row 3 is not among the sampled rows: found while adding
    assert f"rebuilt (the first {N1} rows of {path} changed since the build)" in r.output, r.output
    _, I = load_index(root / "flat").index.search(normalize_rows(changed[3:4].copy()), 1)
    assert I[0, 0] == 3
    r = _build(path, root / "sq", "--index", "SQ8", "--target-recall", "0.5")
    assert "rebuilt (options changed (target_recall 0.95 -> 0.5))" in r.output


def test_ivf_that_more_than_doubled_is_retrained(files):
    root, path, ids, xb = files
    _grow(path, ids, xb, 300)
    assert _build(path, root / "ix", "--index", "IVF4,Flat").exit_code == 0
    _grow(path, ids, xb)
    r = _build(path, root / "ix", "--index", "IVF4,Flat")
    assert "rebuilt (the rows grew from 300 to 800, more than 2x: lists retrained)" in r.output, r.output
