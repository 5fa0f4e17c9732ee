"""`index build` from a shard manifest equals the build from the same rows in one feature file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extract.core.errors import UserError
from extract.store import open_features, write_features
from indexes.bench.synthetic import clustered
from indexes.build import IndexConfig, build_index_dir, normalize_rows
from indexes.search import Collection


def test_manifest_of_shards_is_one_source(tmp_path):
    xb = clustered(500, 16, seed=8)
    ids = [f"img/{i:04d}.png" for i in range(500)]
    folder = tmp_path / "features.h5.shards"
    folder.mkdir()
    shards = []
    for s, (a, b) in enumerate([(0, 180), (180, 500)]):
        name = f"shard-{s:06d}.h5"
        write_features(folder / name, ids[a:b], xb[a:b], {"model": "resnet18", "shard": s})
        shards.append({"index": s, "file": name, "rows": b - a, "failed": 0,
                       "fingerprint": open_features(folder / name).fingerprint, "content_sha256": ""})
    (folder / "manifest.json").write_text(json.dumps({"shards": shards[::-1], "config": {"model": "resnet18"}}))
    write_features(tmp_path / "whole.h5", ids, xb, {"model": "resnet18"})
    build_index_dir(folder / "manifest.json", tmp_path / "ix", IndexConfig(factory="Flat"), quiet=True)
    col = Collection(tmp_path / "ix")
    res = col.search_vectors(xb[200:203], 4)
    ref = np.argsort(-(normalize_rows(xb[200:203].copy()) @ normalize_rows(xb.copy()).T), axis=1, kind="stable")[:, :4]
    assert [[h.id for h in hs] for hs in res.hits] == [[ids[r] for r in row] for row in ref]
    assert col.search_ids(["img/0450.png"], 1).hits[0][0].id == "img/0450.png"
    shards[1]["rows"] = 999
    (folder / "manifest.json").write_text(json.dumps({"shards": shards}))
    with pytest.raises(UserError, match="lists 999 rows"):
        build_index_dir(folder, tmp_path / "ix2", IndexConfig(factory="Flat"), quiet=True)
