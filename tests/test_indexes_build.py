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
    [("Flat", 1.0), ("HNSW32", 0.95), ("IVF32,Flat", 0.93), ("IVF32,SQ8", 0.92), ("SQfp16", 0.99), ("IVF16,PQ32x4fs", 0.65)],
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


def test_calibration_picks_smallest_parameter_reaching_target(feats):
    path, _ = feats
    cfg = {"factory": "IVF64,Flat", "train_size": 4000, "calibration_queries": 100}
    easy = build_index(path, IndexConfig(**cfg, target_recall=0.0), quiet=True).meta
    hard = build_index(path, IndexConfig(**cfg, target_recall=1.01), quiet=True).meta
    mid = build_index(path, IndexConfig(**cfg, target_recall=0.9), quiet=True).meta
    assert easy["search_params"] == {"nprobe": 1}
    assert hard["search_params"] == {"nprobe": 64} and hard["calibration"]["recall@10"] == 1.0
    assert mid["calibration"]["recall@10"] >= 0.9 and mid["calibration"]["value"] == mid["search_params"]["nprobe"]
    assert mid["calibration"]["recall@10"] > easy["calibration"]["recall@10"]


def test_auto_rule():
    assert auto_factory(10_000, 2048) == "Flat"
    assert auto_factory(100_000, 2048, 8 << 30) == f"IVF{n_lists(100_000)},Flat"
    assert auto_factory(1_000_000, 2048, 4 << 30) == f"IVF{n_lists(1_000_000)},SQ8"
    assert auto_factory(1_000_000, 2048, 1 << 30).endswith(",PQ256")
    assert auto_factory(10_000, 2048, 1 << 20).startswith("IVF")  # Flat does not fit 1 MiB
    with pytest.raises(UserError, match="memory budget"):
        auto_factory(10**9, 2048, 1 << 20)
    assert n_lists(100_000) == 1024 and n_lists(1_000_000) == 4096
    assert 39 * n_lists(500) <= 500


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
