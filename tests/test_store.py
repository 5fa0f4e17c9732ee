import h5py
import numpy as np
import pytest

from extract.core.errors import UserError
from extract.store import ResumableWriter, fingerprint, open_features, write_features


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
    assert ff.fingerprint == fingerprint(ids, (37, 8))
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
