"""Index building: every kind against exact search on seeded clustered data, the auto rule, calibration."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from extract.core.errors import UserError
from extract.store import write_features
from indexes.bench.synthetic import SyntheticFeatures, clustered, clustered_queries
from indexes.build import (
    IndexConfig,
    auto_factory,
    build_index,
    n_lists,
    normalize_rows,
    parse_size,
    recall_at,
)
from indexes.search import search

N, D = 4000, 64


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    path = tmp_path_factory.mktemp("feats") / "features.h5"
    xb = clustered(N, D, seed=7)
    write_features(path, [f"img/{i:05d}.png" for i in range(N)], xb, {"model": "resnet152", "image_size": 224})
    return path, xb


def _exact(xb, xq, k, metric):
    if metric == "l2":
        return faiss.knn(xq, xb, k, metric=faiss.METRIC_L2)
    return faiss.knn(normalize_rows(xq.copy()), normalize_rows(xb.copy()), k, metric=faiss.METRIC_INNER_PRODUCT)


@pytest.mark.parametrize(
    "factory, bound",
    [("Flat", 1.0), ("HNSW32", 0.95), ("IVF32,Flat", 0.93), ("IVF32,SQ8", 0.92), ("SQfp16", 0.99), ("IVF16,PQ32x4fs", 0.5),
     ("PCAR64,IVF16_HNSW32,PQ32x4fs,Refine(SQ8)", 0.9), ("IVF16_HNSW32,SQ8", 0.9)],
)
def test_each_kind_against_exact_search(feats, factory, bound):
    path, xb = feats
    xq = clustered_queries(50, N, D, seed=7)
    built = build_index(path, IndexConfig(factory=factory, train_size=4000, calibration_queries=100), quiet=True)
    _, gt = _exact(xb, xq, 10, "cosine")
    _, I = search(built.index, normalize_rows(xq.copy()), 10)
    rec = recall_at(I, gt, 10)
    assert rec >= bound, f"{factory}: recall@10 {rec:.3f} < {bound}"
    if factory == "Flat":
        assert np.array_equal(I, gt)
    assert built.meta["n"] == N and built.meta["d"] == D and built.meta["factory"] == factory


def test_l2_metric_flat_matches_brute_force(feats):
    path, xb = feats
    xq = clustered_queries(20, N, D, seed=7)
    built = build_index(path, IndexConfig(factory="Flat", metric="l2"), quiet=True)
    _, I = search(built.index, xq, 5)
    ref = ((xq[:, None, :] - xb[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(I, np.argsort(ref, axis=1, kind="stable")[:, :5])
    assert not built.meta["normalize"]


def test_calibration_on_held_out_queries_picks_smallest_parameter_reaching_target(feats):
    path, xb = feats
    cfg = {"factory": "IVF64,Flat", "train_size": 4000, "calibration_queries": 100}
    easy = build_index(path, IndexConfig(**cfg, target_recall=0.0), quiet=True).meta
    hard = build_index(path, IndexConfig(**cfg, target_recall=1.01), quiet=True).meta
    target = (easy["calibration"]["recall@10"] + 1.0) / 2  # above what nprobe=1 reaches, below what 64 does
    mid_built = build_index(path, IndexConfig(**cfg, target_recall=target), quiet=True)
    mid = mid_built.meta
    assert easy["search_params"] == {"nprobe": 1}
    assert hard["search_params"] == {"nprobe": 64} and hard["calibration"]["recall@10"] == 1.0
    assert mid["calibration"]["recall@10"] >= target and mid["calibration"]["value"] == mid["search_params"]["nprobe"]
    assert mid["calibration"]["held_out"] and mid["calibration"]["recall@10"] > easy["calibration"]["recall@10"]
    # the figure is what fresh queries see: recomputed by brute force on stored rows with their own row left out
    rows = np.sort(np.random.default_rng(1).choice(N, 100, replace=False))
    xn = normalize_rows(xb.copy())
    sims = xn[rows] @ xn.T
    sims[np.arange(100), rows] = -np.inf
    gt = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    _, I = mid_built.index.search(xn[rows], 11)
    own = [[r for r in found if r != q][:10] for found, q in zip(I, rows)]
    assert abs(recall_at(np.array(own), gt, 10) - mid["calibration"]["recall@10"]) < 1e-6


def test_latency_budget_lowers_the_parameter(feats):
    path, _ = feats
    cfg = {"factory": "IVF64,Flat", "train_size": 4000, "calibration_queries": 100, "target_recall": 1.01}
    free = build_index(path, IndexConfig(**cfg), quiet=True).meta
    tight = build_index(path, IndexConfig(**cfg, max_query_ms=1e-6), quiet=True).meta  # nothing is that fast
    assert free["search_params"]["nprobe"] == 64
    assert tight["search_params"]["nprobe"] == 1 and tight["calibration"]["within_latency"] is False


def test_auto_rule():
    assert auto_factory(10_000, 2048) == "Flat"
    assert auto_factory(100_000, 2048, 8 << 30) == f"IVF{n_lists(100_000)}_HNSW32,Flat"
    assert auto_factory(1_000_000, 2048, 4 << 30) == f"IVF{n_lists(1_000_000)}_HNSW32,SQ8"
    small = auto_factory(1_000_000, 2048, 1 << 30)
    assert small.startswith("PCAR256,") and "x4fs" in small
    assert auto_factory(10_000, 2048, 64 << 20).startswith("IVF")  # Flat (80 MB) does not fit 64 MiB
    assert "IVF64" in auto_factory(100_000, 2048, 8 << 30, train_rows=2500)  # lists limited by the training sample
    with pytest.raises(UserError, match="memory budget"):
        auto_factory(10**9, 2048, 1 << 20)
    assert n_lists(100_000) == 1024 and n_lists(1_000_000) == 4096
    assert 39 * n_lists(500) <= 500


def test_nan_rows_are_refused_naming_file_and_first_bad_row(tmp_path):
    import h5py

    xb = clustered(600, 16, seed=3)
    path = tmp_path / "f.h5"
    write_features(path, [f"img/{i:04d}.png" for i in range(600)], xb, {"model": "resnet18"})
    with h5py.File(path, "r+") as f:  # the store never writes such rows: planted afterwards
        f["features"][417, 3] = np.nan
        f["features"][500, 0] = np.inf
    for factory in ("Flat", "IVF4,Flat"):  # while adding, and while training on a sample holding the rows
        with pytest.raises(UserError, match=r"f\.h5 has NaN or infinite values in row 417 \(id 'img/0417.png'\)"):
            build_index(path, IndexConfig(factory=factory, train_size=600), quiet=True)


def test_parse_size():
    assert parse_size("8GiB") == 8 << 30 and parse_size("512M") == 512 << 20 and parse_size("1000") == 1000
    with pytest.raises(UserError, match="as a size"):
        parse_size("lots")


def test_bad_factory_string_is_user_error(feats):
    with pytest.raises(UserError, match="faiss cannot build index 'NotAnIndex'"):
        build_index(feats[0], IndexConfig(factory="NotAnIndex"), quiet=True)


def test_build_from_synthetic_blocks_equals_flat_reference():
    src = SyntheticFeatures(3000, 32, seed=2, block=700)
    built = build_index(src, IndexConfig(factory="Flat"), quiet=True)
    xb = src.load()
    xq = src.queries(10)
    _, gt = _exact(xb, xq, 10, "cosine")
    _, I = search(built.index, normalize_rows(xq.copy()), 10)
    assert np.array_equal(I, gt)


def test_index_over_a_float16_file_matches_exact_search_on_its_values(tmp_path):
    from indexes.build import build_index_dir
    from indexes.search import Collection

    xb = clustered(2000, D, seed=11)
    path = write_features(tmp_path / "f16.h5", [f"img/{i:05d}.png" for i in range(2000)], xb,
                          {"model": "resnet152", "image_size": 224, "dtype": "float16"})
    stored = xb.astype(np.float16).astype(np.float32)  # what the file holds
    xq = clustered_queries(30, 2000, D, seed=11)
    _, gt = _exact(stored, xq, 10, "cosine")
    built = build_index(path, IndexConfig(factory="Flat"), quiet=True)
    _, I = search(built.index, normalize_rows(xq.copy()), 10)
    assert np.array_equal(I, gt)
    _, gt32 = _exact(xb, xq, 10, "cosine")
    assert recall_at(I, gt32, 10) >= 0.99  # half precision barely moves the neighbours
    meta = build_index_dir(path, tmp_path / "index", IndexConfig(factory="HNSW32"), quiet=True)
    assert meta["n"] == 2000 and meta["update"]["action"] == "built"
    col = Collection(tmp_path / "index", path)
    res = col.search_ids(["img/00005.png"], 3)
    assert res.hits[0][0].id == "img/00005.png"  # a stored row finds itself first
