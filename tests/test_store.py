import h5py
import numpy as np
import pytest

from extract.core.errors import UserError
from extract.parts import ResumableWriter
from extract.store import open_features, write_features


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((37, 8)).astype(np.float32)
    ids = [f"img/ñandú_{i}.jpg" for i in range(37)]
    cfg = {"model": "resnet152", "image_size": 224, "mean": [0.485, 0.456, 0.406]}
    path = write_features(tmp_path / "f.h5", ids, xb, cfg, failed=[("bad.jpg", "truncated JPEG")])
    ff = open_features(path)
    assert ff.ids == ids
    assert ff.dim == 8
    assert ff.config == cfg
    assert ff.failed == [("bad.jpg", "truncated JPEG")]
    assert ff.load().tobytes() == xb.tobytes()
    assert np.array_equal(ff.load([5, 2, 5]), xb[[5, 2, 5]])
    assert len(ff.fingerprint) == 16 and ff.content_sha256
    with h5py.File(path, "r") as f:  # plain h5py can read it
        assert f.attrs["model"] == "resnet152"
        assert f["features"].dtype == np.float32
        assert f["features"].maxshape == (None, 8)


def test_iter_blocks_covers_all_rows(tmp_path):
    xb = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    write_features(tmp_path / "f.h5", [str(i) for i in range(50)], xb, {})
    got = np.concatenate([b for _, b in open_features(tmp_path / "f.h5").iter_blocks(16)])
    assert np.array_equal(got, xb)


def test_open_missing_and_garbage(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_features(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="cannot read"):
        open_features(tmp_path / "junk.h5")


def test_resumable_writer_merges_and_dedupes(tmp_path):
    out = tmp_path / "f.h5"
    cfg = {"model": "m", "image_size": 32}
    w = ResumableWriter(out, cfg, dim=2, match_keys=("model", "image_size"))
    w.commit(["a", "b"], np.ones((2, 2)), failed=[("x", "corrupt")])
    # a new writer (as after a kill) sees what was committed
    w = ResumableWriter(out, cfg, dim=2, match_keys=("model", "image_size"))
    assert w.done == {"a", "b", "x"}
    w.commit(["b", "c"], np.full((2, 2), 3.0))  # b is a duplicate and is dropped
    w.finalize()
    ff = open_features(out)
    assert ff.ids == ["a", "b", "c"]
    assert np.array_equal(ff.load(), np.array([[1, 1], [1, 1], [3, 3]], np.float32))
    assert ff.failed == [("x", "corrupt")]
    assert not out.with_name("f.h5.parts").exists()
    # appending to a finished file keeps old rows first
    w = ResumableWriter(out, cfg, dim=2, match_keys=("model",))
    w.commit(["d"], np.zeros((1, 2)))
    w.finalize()
    assert open_features(out).ids == ["a", "b", "c", "d"]


def test_resume_with_other_config_is_refused(tmp_path):
    out = tmp_path / "f.h5"
    ResumableWriter(out, {"model": "a"}, dim=2, match_keys=("model",)).finalize()
    with pytest.raises(UserError, match="model='a'"):
        ResumableWriter(out, {"model": "b"}, dim=2, match_keys=("model",))
    with pytest.raises(UserError, match="2-d features"):
        ResumableWriter(out, {"model": "a"}, dim=3, match_keys=("model",))


def test_finalize_without_new_parts_keeps_the_file(tmp_path):
    out = tmp_path / "f.h5"
    w = ResumableWriter(out, {"model": "m"}, 4, ["model"])
    w.commit(["a", "b"], np.ones((2, 4), np.float32))
    w.finalize()
    before = (out.stat().st_ino, out.read_bytes())
    again = ResumableWriter(out, {"model": "m"}, 4, ["model"])
    again.commit(["a"], np.zeros((1, 4), np.float32))  # already done: nothing new is written
    again.finalize()
    assert (out.stat().st_ino, out.read_bytes()) == before
    assert not out.with_name("f.h5.parts").exists()


def test_config_attrs_accept_str_subclasses(tmp_path):
    class Version(str):
        pass

    write_features(tmp_path / "f.h5", ["a"], np.zeros((1, 2), np.float32), {"torch": Version("2.4.0+cpu"), "n": 3})
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f.attrs["torch"] == "2.4.0+cpu" and f.attrs["n"] == 3


def _fp(tmp_path, name, ids, xb, cfg):
    return open_features(write_features(tmp_path / name, ids, xb, cfg)).fingerprint


def test_fingerprint_covers_values_order_and_config(tmp_path):
    """Same ids and shape but other values, shuffled rows or another backbone: another fingerprint."""
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((20, 6)).astype(np.float32)
    ids = [f"{i:05d}.jpg" for i in range(20)]
    cfg = {"model": "resnet18", "weights": "imagenet", "weights_sha256": "aa" * 32, "created": "2024-01-01"}
    base = _fp(tmp_path, "a.h5", ids, xb, cfg)
    assert _fp(tmp_path, "same.h5", ids, xb.copy(), dict(cfg, created="2025-02-02")) == base  # when: not identity
    other_values = xb.copy()
    other_values[7, 2] += 1e-3
    perm = rng.permutation(20)
    fps = {
        "values": _fp(tmp_path, "b.h5", ids, other_values, cfg),
        "shuffled rows": _fp(tmp_path, "c.h5", ids, xb[perm], cfg),
        "shuffled ids": _fp(tmp_path, "d.h5", [ids[p] for p in perm], xb, cfg),
        "model": _fp(tmp_path, "e.h5", ids, xb, dict(cfg, model="resnet34")),
        "weights": _fp(tmp_path, "f.h5", ids, xb, dict(cfg, weights_sha256="bb" * 32)),
    }
    assert all(fp != base for fp in fps.values()), fps
    assert len(set(fps.values())) == len(fps)


def test_values_changed_after_writing_are_detected_by_verify(tmp_path):
    xb = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)
    path = write_features(tmp_path / "f.h5", [str(i) for i in range(40)], xb, {"model": "m"})
    open_features(path).verify()  # intact
    with h5py.File(path, "r+") as f:
        f["features"][13, 1] = -5.0
    ff = open_features(path)  # cheap open: attrs agree with ids and config
    with pytest.raises(UserError, match=r"feature values of .*f.h5 changed after it was written"):
        ff.verify()
    with pytest.raises(UserError, match="changed after it was written"):
        ff.load_verified()


def test_ids_or_config_edited_after_writing_are_refused(tmp_path):
    xb = np.ones((3, 2), np.float32)
    path = write_features(tmp_path / "f.h5", ["a", "b", "c"], xb, {"model": "resnet18"})
    with h5py.File(path, "r+") as f:
        f["ids"][1] = "z"
    with pytest.raises(UserError, match="the ids of .*f.h5 changed after it was written"):
        open_features(path).verify()
    path = write_features(tmp_path / "g.h5", ["a", "b", "c"], xb, {"model": "resnet18"})
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = '{"model": "resnet34"}'
    with pytest.raises(UserError, match="does not match its own record"):
        open_features(path)


def test_flipped_bytes_in_a_feature_file_never_pass_silently(tmp_path):
    """Flip one byte at many offsets: each copy is refused at open or by verify, or is byte-identical in content."""
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((64, 16)).astype(np.float32)
    path = write_features(tmp_path / "f.h5", [f"{i}.jpg" for i in range(64)], xb, {"model": "m"})
    data = bytearray(path.read_bytes())
    silent = []
    for k, off in enumerate(range(0, len(data), max(1, len(data) // 150))):
        bad = bytearray(data)
        bad[off] ^= 0xFF
        p = tmp_path / f"flip{k}.h5"
        p.write_bytes(bytes(bad))
        try:
            ff = open_features(p)
            got = ff.load_verified()
        except UserError:
            continue
        if not (np.array_equal(got, xb) and ff.ids == [f"{i}.jpg" for i in range(64)]):
            silent.append(off)
    assert not silent, f"corruption at offsets {silent} was not detected"


def test_non_finite_rows_are_recorded_as_failed_never_stored(tmp_path):
    xb = np.ones((4, 3), np.float32)
    xb[1, 0] = np.nan
    xb[3, 2] = np.inf
    ff = open_features(write_features(tmp_path / "f.h5", ["a", "b", "c", "d"], xb, {}))
    assert ff.ids == ["a", "c"] and np.isfinite(ff.load()).all()
    assert [i for i, _ in ff.failed] == ["b", "d"] and "NaN or inf" in ff.failed[0][1]
    w = ResumableWriter(tmp_path / "g.h5", {}, 3)
    w.commit(["x", "y"], np.array([[1, 2, 3], [np.nan, 0, 0]], np.float32))
    g = open_features(w.finalize())
    assert g.ids == ["x"] and g.failed[0][0] == "y"


def test_a_file_with_nan_written_by_hand_is_refused_naming_the_row(tmp_path):
    path = write_features(tmp_path / "f.h5", ["a", "b", "c"], np.ones((3, 2), np.float32), {})
    with h5py.File(path, "r+") as f:
        f["features"][2, 1] = np.nan
    with pytest.raises(UserError, match=r"f.h5 row 2 \(id 'c'\) holds NaN or inf"):
        open_features(path).load_verified()


def test_changed_rows_replace_old_ones_and_prune_drops(tmp_path):
    out = tmp_path / "f.h5"
    w = ResumableWriter(out, {"model": "m"}, 2)
    w.commit(["a", "b", "c"], np.array([[1, 1], [2, 2], [3, 3]], np.float32), sources={"b": (5, 6, "ab" * 32)})
    w.finalize()
    w = ResumableWriter(out, {"model": "m"}, 2)
    w.redo(["b"])
    w.commit(["b", "d"], np.array([[20, 20], [4, 4]], np.float32), sources={"b": (7, 8, "cd" * 32)})
    w.finalize(drop=["c"])
    ff = open_features(out)
    assert ff.ids == ["a", "b", "d"]
    assert np.array_equal(ff.load(), np.array([[1, 1], [20, 20], [4, 4]], np.float32))
    assert ff.sources()["b"] == (7, 8, "cd" * 32) and ff.sources()["a"] == (-1, -1, "")


def test_part_chunks_are_sized_to_the_part(tmp_path):
    w = ResumableWriter(tmp_path / "f.h5", {}, 512)
    w.commit(["a", "b"], np.ones((2, 512), np.float32))
    part = next((tmp_path / "f.h5.parts").glob("part-*.h5"))
    with h5py.File(part, "r") as f:
        assert f["features"].chunks == (2, 512)
    assert part.stat().st_size < 64 * 1024  # 4 KB of data, not a 512 KB chunk


def test_disk_full_while_committing_is_one_line_and_keeps_parts(tmp_path, monkeypatch):
    import errno

    from extract import store

    out = tmp_path / "f.h5"
    w = ResumableWriter(out, {}, 2)
    w.commit(["a"], np.ones((1, 2), np.float32))
    real = store._append

    def full(ds, values):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_append", full)
    with pytest.raises(UserError, match=r"cannot write .*part-000001.h5: the disk is full; free some space") as err:
        w.commit(["b"], np.ones((1, 2), np.float32))
    assert "\n" not in str(err.value)
    monkeypatch.setattr(store, "_append", real)
    assert not list((tmp_path / "f.h5.parts").glob("*.tmp"))
    w = ResumableWriter(out, {}, 2)  # a later run continues from the committed part
    assert w.done == {"a"}
    w.commit(["b"], np.ones((1, 2), np.float32))
    assert open_features(w.finalize()).ids == ["a", "b"]


def test_float16_file_halves_the_values_and_readers_get_float32_within_half_precision(tmp_path):
    rng = np.random.default_rng(3)
    xb = (rng.standard_normal((300, 64)) * rng.choice([1e-3, 1.0, 300.0], (300, 1))).astype(np.float32)
    ids = [f"i{k}.jpg" for k in range(300)]
    full = write_features(tmp_path / "f32.h5", ids, xb, {"model": "resnet18"})
    half = write_features(tmp_path / "f16.h5", ids, xb, {"model": "resnet18", "dtype": "float16"})
    a, b = open_features(full), open_features(half)
    assert (a.dtype, b.dtype) == ("float32", "float16")
    x16 = b.load()
    assert x16.dtype == np.float32 and b.load([7, 3]).dtype == np.float32
    # round to nearest in half precision: relative error <= 2^-11 for normal values, absolute 2^-25 below 2^-14
    err = np.abs(x16.astype(np.float64) - xb)
    assert np.all(err <= np.maximum(np.abs(xb) * 2.0**-11, 2.0**-25))
    assert err.max() > 0  # the values really went through float16
    assert np.array_equal(np.concatenate([blk for _, blk in b.iter_blocks(block_rows=64)]), x16)
    np.testing.assert_array_equal(b.load_verified(), x16)  # hashes are over the values readers get
    with h5py.File(full, "r") as f32, h5py.File(half, "r") as f16:
        assert f16["features"].dtype == np.float16
        assert f16["features"].id.get_storage_size() * 2 == f32["features"].id.get_storage_size()
    assert a.fingerprint != b.fingerprint


def test_float16_overflow_is_a_failed_row_and_a_dtype_edit_is_refused(tmp_path):
    xb = np.ones((3, 4), np.float32)
    xb[1, 2] = 1e6  # beyond float16's 65504
    ff = open_features(write_features(tmp_path / "f.h5", ["a", "b", "c"], xb, {"dtype": "float16"}))
    assert ff.ids == ["a", "c"] and ff.failed[0][0] == "b" and "beyond float16 range" in ff.failed[0][1]
    with h5py.File(tmp_path / "f.h5", "r+") as f:  # the config says float16, make the values float32
        data = f["features"][...]
        del f["features"]
        f.create_dataset("features", data=data.astype(np.float32), maxshape=(None, 4))
    with pytest.raises(UserError, match="stores float32 values but its config records dtype float16"):
        open_features(tmp_path / "f.h5")
    with pytest.raises(UserError, match="unknown feature dtype 'int8'"):
        write_features(tmp_path / "g.h5", ["a"], xb[:1], {"dtype": "int8"})


def test_resuming_a_float16_run_as_float32_is_refused_and_files_without_dtype_are_float32(tmp_path):
    cfg = {"model": "m", "dtype": "float16"}
    w = ResumableWriter(tmp_path / "f.h5", cfg, 4, ["model", "dtype"])
    w.commit(["a"], np.ones((1, 4), np.float32))
    w.finalize()
    with pytest.raises(UserError, match="dtype='float16' but this run has dtype='float32'"):
        ResumableWriter(tmp_path / "f.h5", {"model": "m", "dtype": "float32"}, 4, ["model", "dtype"])
    write_features(tmp_path / "old.h5", ["a"], np.ones((1, 4), np.float32), {"model": "m"})  # made before dtype
    with pytest.raises(UserError, match="dtype='float32' but this run has dtype='float16'"):
        ResumableWriter(tmp_path / "old.h5", cfg, 4, ["model", "dtype"])
    ResumableWriter(tmp_path / "old.h5", {"model": "m", "dtype": "float32"}, 4, ["model", "dtype"])
