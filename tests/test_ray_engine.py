"""The Ray engine against the local engine: same ids, features and failed list; a killed actor; resume.

One local Ray cluster (2 CPUs, loopback, no dashboard) is started for the module and stopped after it.
The shard store, the virtual output and the table inputs are tested without Ray.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from cli import cli
from extract.core.errors import UserError
from extract.features import MATCH_KEYS, extract_features
from extract.images import list_images
from extract.inputs import list_inputs
from extract.shards import ShardStore, shards_dir
from extract.store import open_features

TINY = {"model": "resnet18", "weights": "none", "image_size": 64, "quiet": True}
ATOL = 1e-5


def draw(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` drawn images (jpg/png, one nested folder) plus a text file named .jpg and an empty .png."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        im = Image.new("RGB", (int(rng.integers(40, 90)), int(rng.integers(40, 90))),
                       tuple(int(v) for v in rng.integers(0, 256, 3)))
        x, y = (int(v) for v in rng.integers(0, 30, 2))
        ImageDraw.Draw(im).ellipse([x, y, x + 25, y + 25], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        im.save(folder / f"{'sub/' if k % 4 == 0 else ''}img{k:03d}.{'png' if k % 3 == 0 else 'jpg'}")
    (folder / "text.jpg").write_text("not an image")
    (folder / "zero.png").write_bytes(b"")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray engine needs buscador[ray]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 drawn images + 2 bad ones, and the local engine's feature file of them."""
    root = tmp_path_factory.mktemp("ray-corpus")
    draw(root / "imgs", 24)
    extract_features(root / "imgs", root / "local.h5", workers=0, batch_size=8, **TINY)
    return root / "imgs", open_features(root / "local.h5")


def _embedder_pids() -> list[int]:
    """Processes whose command line names the backbone actor class (Ray sets it as the process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_Embedder" in cmd and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def test_ray_matches_local_through_the_cli(ray_cluster, corpus, tmp_path):
    images, local = corpus
    out = tmp_path / "ray.h5"
    result = CliRunner().invoke(cli, ["extract", str(images), str(out), "--engine", "ray", "--model", "resnet18",
                                      "--weights", "none", "--image-size", "64", "--batch-size", "4",
                                      "--shard-size", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "24 new, 0 changed (extracted again), 0 unchanged, 2 failed" in result.output
    ff = open_features(out)
    assert ff.ids == local.ids and ff.failed == local.failed
    assert np.abs(ff.load() - local.load()).max() <= ATOL
    assert ff.config["engine"] == "ray" and ff.config["shard_size"] == 5
    assert all(ff.config[k] == local.config[k] for k in MATCH_KEYS if k in local.config)
    assert not shards_dir(out).exists() and not out.with_name("ray.h5.parts").exists()
    again = CliRunner().invoke(cli, ["extract", str(images), str(out), "--engine", "ray", "--model", "resnet18",
                                     "--weights", "none", "--image-size", "64", "--quiet"])
    assert again.exit_code == 0 and "0 new, 0 changed (extracted again), 26 unchanged" in again.output  # no Ray job at all


def test_killed_actor_and_resume_from_manifest(ray_cluster, corpus, tmp_path):
    """Shard 0 exists (its rows marked +1), an actor is SIGKILLed at the first new shard: nothing lost or doubled."""
    from extract.ray_engine import extract_features_ray

    images, local = corpus
    out = tmp_path / "ray.h5"
    ref = local.load()
    first = local.ids[:4]
    ShardStore(out, local.config, local.dim, MATCH_KEYS).write(0, first, ref[:4] + 1.0, [])
    killed = []

    def kill_an_actor(rec):
        if not killed:
            pids = _embedder_pids()
            assert pids, "no backbone actor process found while shards were still coming in"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    s = extract_features_ray(images, out, batch_size=2, shard_size=3, on_shard=kill_an_actor, **TINY)
    assert killed and not Path(f"/proc/{killed[0]}").exists()
    ff = open_features(out)
    assert ff.ids == local.ids and len(set(ff.ids)) == len(ff.ids)  # listing order, each id once
    assert ff.failed == local.failed
    got = ff.load()
    np.testing.assert_array_equal(got[:4], ref[:4] + 1.0)  # shard 0 was kept, not redone
    assert np.abs(got[4:] - ref[4:]).max() <= ATOL
    assert (s.skipped, s.written, s.failed, s.total_rows) == (4, 20, 2, 24)


def test_shard_store_keeps_finished_shards_and_redoes_damaged_ones(tmp_path, caplog):
    out = tmp_path / "f.h5"
    config = {"model": "m", "weights": "none", "dim": 3}
    xb = np.arange(12, dtype=np.float32).reshape(4, 3)
    store = ShardStore(out, config, 3, MATCH_KEYS)
    store.write(0, ["a", "b"], xb[:2], [("x", "broken")])
    store.write(1, ["c"], xb[2:3], [])
    store.write(2, ["d"], xb[3:], [])
    (store.folder / "manifest.json").write_text((store.folder / "manifest.json").read_text().replace(
        '"index": 2', '"index": 7'))  # shard 2 now looks written but not listed (driver killed before listing)
    (store.folder / "shard-000001.h5").write_bytes(b"garbage")  # a damaged shard
    again = ShardStore(out, config, 3, MATCH_KEYS)
    assert again.done == {"a", "b", "x", "d"} and sorted(again.records) == [0, 2]
    assert "cannot be read" in caplog.text and "missing" in caplog.text
    with pytest.raises(UserError, match="model='m' but this run has model='n'"):
        ShardStore(out, dict(config, model="n"), 3, MATCH_KEYS)
    with pytest.raises(UserError, match="3-d features but this run makes 4-d"):
        ShardStore(out, config, 4, MATCH_KEYS)


def test_merge_refuses_a_shard_whose_content_changed(tmp_path):
    import h5py

    from extract.parts import ResumableWriter

    out = tmp_path / "f.h5"
    config = {"model": "m", "dim": 2}
    store = ShardStore(out, config, 2, MATCH_KEYS)
    store.write(0, ["a", "b"], np.ones((2, 2), np.float32), [])
    with h5py.File(store.folder / "shard-000000.h5", "r+") as f:
        f["features"][0, 0] = 5.0  # same ids and shape, other numbers
    with pytest.raises(UserError, match="does not match its content fingerprint"):
        ShardStore(out, config, 2, MATCH_KEYS).merge(ResumableWriter(out, config, 2, MATCH_KEYS))
    assert not out.exists()


def test_virtual_output_reads_like_a_merged_file(tmp_path, monkeypatch):
    out = tmp_path / "out" / "f.h5"
    config = {"model": "m", "dim": 3}
    xb = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    store = ShardStore(out, config, 3, MATCH_KEYS)
    store.write(0, ["a", "b"], xb[:2], [("z", "bad")])
    store.write(1, [], np.zeros((0, 3), np.float32), [("y", "bad too")])
    store.write(2, ["c", "d", "e"], xb[2:], [])
    store.write_virtual()
    monkeypatch.chdir(tmp_path)  # the shard paths resolve beside the file, not from the working directory
    ff = open_features(out)
    assert ff.ids == ["a", "b", "c", "d", "e"] and ff.failed == [("z", "bad"), ("y", "bad too")]
    np.testing.assert_array_equal(ff.load(), xb)
    np.testing.assert_array_equal(ff.load([4, 0]), xb[[4, 0]])
    assert (tmp_path / "out" / "f.h5.shards" / "shard-000002.h5").exists()
    store.write_virtual()  # a virtual file over the same shards may be rewritten
    from extract.parts import ResumableWriter

    with pytest.raises(UserError, match="pass --virtual"):  # merging would delete what it reads
        store.merge(ResumableWriter(out, config, 3, MATCH_KEYS))
    assert (tmp_path / "out" / "f.h5.shards" / "shard-000002.h5").exists()
    import h5py

    with h5py.File(out, "r+") as f:
        del f.attrs["virtual_shards"]  # now it looks like a complete merged file: never overwritten
    with pytest.raises(UserError, match="complete feature file"):
        store.write_virtual()


def test_table_of_paths_lists_like_the_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    draw(tmp_path / "imgs", 6)
    folder = list_images(tmp_path / "imgs")
    pq.write_table(pa.table({"path": [str(tmp_path / "imgs" / i) for i in folder.ids] + [folder.ids[0]],
                             "caption": ["x"] * 9}), tmp_path / "imgs" / "list.parquet")
    table = list_inputs(tmp_path / "imgs" / "list.parquet")
    assert table.ids == folder.ids and table.root == tmp_path / "imgs" and table.duplicates == 1
    (tmp_path / "paths.csv").write_text("file_name\n" + "\n".join(folder.ids) + "\n")  # relative to --root
    csv = list_inputs(tmp_path / "paths.csv", root=tmp_path / "imgs")
    assert csv.ids == folder.ids and csv.root == tmp_path / "imgs"
    (tmp_path / "two.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="name the image path column"):
        list_inputs(tmp_path / "two.csv")


def test_ray_options_need_the_ray_engine(tmp_path):
    result = CliRunner().invoke(cli, ["extract", str(tmp_path), str(tmp_path / "f.h5"), "--actors", "2"])
    assert result.exit_code == 2 and "--actors only apply to --engine ray" in result.output
    result = CliRunner().invoke(cli, ["extract", str(tmp_path), str(tmp_path / "f.h5"), "--engine", "ray",
                                      "--decode-in", "threads"])
    assert result.exit_code == 2 and "--decode-in applies to --engine local (the Ray engine decodes in Ray tasks)" \
        in result.output


@pytest.mark.gpu
def test_gpu_actor_matches_the_local_gpu_engine(ray_cluster, corpus, tmp_path):
    """One actor per GPU (fp16/bf16 autocast, channels_last, pinned host batches) against the local CUDA path."""
    from extract.ray_engine import extract_features_ray

    images, _ = corpus
    local = extract_features(images, tmp_path / "local.h5", workers=2, batch_size=8, device="cuda", **TINY)
    ray_run = extract_features_ray(images, tmp_path / "ray.h5", batch_size=8, gpus_per_actor=1, **TINY)
    a, b = open_features(local.out), open_features(ray_run.out)
    assert a.ids == b.ids and a.failed == b.failed
    xa, xb = a.load(), b.load()
    cos = (xa * xb).sum(1) / np.linalg.norm(xa, axis=1) / np.linalg.norm(xb, axis=1)
    assert cos.min() > 0.999  # half-precision autocast: batch composition moves the last bits


class _Rows:
    """Stands in for a Ray dataset: yields the given batches from ``iter_batches``."""

    def __init__(self, batches):
        self.batches = batches

    def iter_batches(self, **_):
        yield from self.batches


def _batch(rows, dim=2):
    """Rows ``(shard, id, value)``; each carries the source record ``(100 + value, 7, id * 64)``."""
    return {"shard": np.array([k for k, _, _ in rows]), "id": np.array([i for _, i, _ in rows], dtype=object),
            "feature": np.array([np.full(dim, v, np.float32) for _, _, v in rows]).reshape(len(rows), dim),
            "reason": np.array(["bad" if v < 0 else "" for _, _, v in rows], dtype=object),
            "size": np.array([100 + v for _, _, v in rows], np.int64), "mtime_ns": np.full(len(rows), 7, np.int64),
            "sha256": np.array([i * 64 for _, i, _ in rows], dtype=object)}


def test_gathering_is_order_free_and_takes_each_id_once(tmp_path):
    from extract.ray_engine import gather_shards

    plan = {0: ["a", "b", "c"], 1: ["d", "e"]}
    store = ShardStore(tmp_path / "f.h5", {"model": "m"}, 2)
    # rows of both shards interleaved and out of order; "b" delivered twice (a retried batch), "e" failed,
    # and "a" arrives again after shard 0 was written
    batches = [_batch([(1, "e", -1), (0, "c", 3), (0, "b", 2)]), _batch([(0, "b", 9), (1, "d", 4), (0, "a", 1)]),
               _batch([(0, "a", 7)])]
    tally = {"written": 0, "failed": []}
    written = []
    gather_shards(_Rows(batches), plan, store, written.append, _NoBar(), tally)
    assert [r.index for r in written] == [1, 0] and tally == {"written": 4, "failed": [("e", "bad")]}
    s0, s1 = open_features(store.folder / "shard-000000.h5"), open_features(store.folder / "shard-000001.h5")
    assert s0.ids == ["a", "b", "c"] and s1.ids == ["d"] and s1.failed == [("e", "bad")]
    np.testing.assert_array_equal(s0.load()[:, 0], [1, 2, 3])  # plan order, first copy of "b"
    assert s0.sources() == {"a": (101, 7, "a" * 64), "b": (102, 7, "b" * 64), "c": (103, 7, "c" * 64)}
    assert s1.sources() == {"d": (104, 7, "d" * 64), "e": (99, 7, "e" * 64)}  # the failed image's too
    with pytest.raises(RuntimeError, match="1 shards came back incomplete"):
        gather_shards(_Rows([_batch([(2, "f", 1)])]), {2: ["f", "g"]}, store, None, _NoBar(), tally)


class _NoBar:
    def update(self, _n):
        pass


def test_ray_file_records_each_rows_source_and_updates_incrementally(ray_cluster, corpus, tmp_path):
    """A Ray-built file holds each image's (size, mtime, sha256); either engine then redoes only what changed."""
    import shutil
    import time

    from extract.collection import source_stat
    from extract.ray_engine import extract_features_ray

    folder = tmp_path / "imgs"
    shutil.copytree(corpus[0], folder)
    out, opts = tmp_path / "ray.h5", dict(TINY, batch_size=4, bn_images=8)
    extract_features_ray(folder, out, shard_size=5, **opts)
    ff = open_features(out)
    assert ff.sources() == {i: source_stat(folder / i) for i in [*ff.ids, *(i for i, _ in ff.failed)]}
    late = sorted(ff.ids)[-3:]  # not among the 8 calibration images (the first readable ones, sorted)

    def edit(name, color):
        time.sleep(0.01)  # a new mtime even on coarse clocks
        Image.new("RGB", (52, 61), color).save(folder / name)

    edit(late[0], (10, 200, 30))
    edit("new.jpg", (200, 10, 30))
    s = extract_features(folder, out, workers=0, **opts)  # the local engine on the Ray-built file
    assert (s.written, s.changed, s.skipped, s.total_rows) == (2, 1, 25, 25)
    edit(late[1], (90, 90, 250))
    s = extract_features_ray(folder, out, shard_size=5, **opts)  # and the Ray engine on its own file
    assert (s.written, s.skipped, s.total_rows) == (1, 26, 25)
    fresh = tmp_path / "fresh.h5"
    extract_features(folder, fresh, workers=0, **opts)
    ff, ref = open_features(out), open_features(fresh)
    assert sorted(ff.ids) == sorted(ref.ids) and ff.failed == ref.failed
    rows, ref_rows = ff.row_of(), ref.row_of()
    for i in (late[0], late[1], "new.jpg", late[2]):  # other batch sizes here: float32 rounding differs a little
        np.testing.assert_allclose(ff.load([rows[i]]), ref.load([ref_rows[i]]), rtol=1e-4, atol=ATOL, err_msg=i)
    assert ff.sources() == {i: source_stat(folder / i) for i in [*ff.ids, *(i for i, _ in ff.failed)]}


@pytest.mark.parametrize("virtual", [False, True])
def test_float16_shards_merge_or_read_virtually_as_the_rounded_values(tmp_path, virtual):
    from extract.parts import ResumableWriter

    out, config = tmp_path / "f.h5", {"model": "m", "dim": 3, "dtype": "float16"}
    xb = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32) * 100
    store = ShardStore(out, config, 3, MATCH_KEYS)
    store.write(0, ["a", "b"], xb[:2], [])
    store.write(1, ["c", "d", "e"], xb[2:], [], {"c": (5, 6, "c" * 64)})
    store.write_virtual() if virtual else store.merge(ResumableWriter(out, config, 3, MATCH_KEYS))
    ff = open_features(out)
    assert ff.ids == ["a", "b", "c", "d", "e"] and ff.dtype == "float16"
    np.testing.assert_array_equal(ff.load(), xb.astype(np.float16).astype(np.float32))
    ff.verify()
    assert ff.sources()["c"] == (5, 6, "c" * 64)
    with pytest.raises(UserError, match="dtype='float16' but this run has dtype='float32'"):
        ShardStore(tmp_path / "g.h5", dict(config, dtype="float32"), 3, MATCH_KEYS)._check(config, 3, "shard")


def test_ray_prune_drops_rows_whose_file_is_gone_like_the_local_engine(ray_cluster, corpus, tmp_path):
    """Two images deleted: without --prune their rows stay and are counted; with it both engines drop the same rows."""
    import shutil

    from extract.ray_engine import extract_features_ray

    folder = tmp_path / "imgs"
    shutil.copytree(corpus[0], folder)
    out, opts = tmp_path / "ray.h5", dict(TINY, batch_size=4, bn_images=8)
    extract_features_ray(folder, out, shard_size=6, **opts)
    shutil.copy(out, tmp_path / "local.h5")
    late = sorted(open_features(out).ids)[-2:]  # not among the 8 calibration images
    for name in late:
        (folder / name).unlink()
    kept = extract_features_ray(folder, out, shard_size=6, **opts)
    assert (kept.written, kept.gone, kept.pruned, kept.total_rows) == (0, 2, 0, 24)
    pruned = extract_features_ray(folder, out, shard_size=6, prune=True, **opts)
    assert (pruned.pruned, pruned.gone, pruned.total_rows) == (2, 0, 22)
    local = extract_features(folder, tmp_path / "local.h5", workers=0, prune=True, **opts)
    assert (local.pruned, local.total_rows) == (2, 22)
    ff, ref = open_features(out), open_features(tmp_path / "local.h5")
    assert ff.ids == ref.ids and not set(late) & set(ff.ids) and ff.failed == ref.failed
    np.testing.assert_array_equal(ff.load(), ref.load())  # the same rows, untouched by the merge
    with pytest.raises(UserError, match="--prune rewrites the merged file"):
        extract_features_ray(folder, tmp_path / "v.h5", prune=True, virtual=True, **opts)
