"""Collections change between runs: new, changed and deleted images, another root, faults during extraction."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from extract import features
from extract.backbone import load_backbone
from extract.core.errors import UserError
from extract.features import calibrate, embed_images, extract_features
from extract.store import open_features

TINY = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 4, "quiet": True, "workers": 0}
TOL = {"rtol": 1e-3, "atol": 1e-4}


def _draw(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _folder(root: Path, n: int) -> Path:
    for k in range(n):
        _draw(root / f"img{k:03d}.png", k)
    return root


@pytest.fixture(scope="module")
def calibrated():
    """A random-init resnet18 calibrated once on images of its own, so runs need no calibration."""
    import tempfile

    folder = _folder(Path(tempfile.mkdtemp()) / "calib", 4)
    bb = load_backbone("resnet18", "none", "cpu", 32)
    calibrate(bb, folder, sorted(p.name for p in folder.iterdir()))
    return bb


def _row(path: Path, image_id: str) -> np.ndarray:
    ff = open_features(path)
    return ff.load([ff.row_of()[image_id]])[0]


def _no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(features, "load_backbone", refuse)


def test_rerun_adds_new_reextracts_changed_and_prunes_gone(tmp_path, calibrated):
    folder, out = _folder(tmp_path / "imgs", 5), tmp_path / "f.h5"
    first = extract_features(folder, out, backbone=calibrated, **TINY)
    assert (first.written, first.total_rows) == (5, 5)
    old_row = _row(out, "img001.png")
    _draw(folder / "img001.png", 101)  # changed content
    (folder / "img002.png").unlink()  # gone
    _draw(folder / "img009.png", 9)  # new
    s = extract_features(folder, out, backbone=calibrated, **TINY)
    assert (s.written - s.changed, s.changed, s.skipped, s.gone, s.pruned) == (1, 1, 3, 1, 0)
    assert "1 rows name images that are gone; pass --prune" in s.report()
    ff = open_features(out)
    assert sorted(ff.ids) == ["img000.png", "img001.png", "img002.png", "img003.png", "img004.png", "img009.png"]
    fresh, _ = embed_images([folder / "img001.png", folder / "img009.png"], calibrated)
    np.testing.assert_allclose(_row(out, "img001.png"), fresh[0], **TOL)
    np.testing.assert_allclose(_row(out, "img009.png"), fresh[1], **TOL)
    assert not np.allclose(old_row, fresh[0], **TOL)
    s = extract_features(folder, out, backbone=calibrated, prune=True, **TINY)
    assert (s.written, s.pruned, s.gone, s.total_rows) == (0, 1, 0, 5)
    assert "img002.png" not in open_features(out).ids
    # only the mtime changed (same bytes): not extracted again
    os.utime(folder / "img003.png", ns=(1, 1))
    s = extract_features(folder, out, backbone=calibrated, **TINY)
    assert (s.written, s.skipped) == (0, 5)


def test_a_rerun_with_nothing_to_do_loads_no_model(tmp_path, monkeypatch):
    folder, out = _folder(tmp_path / "imgs", 3), tmp_path / "f.h5"
    extract_features(folder, out, **TINY)
    before = out.read_bytes()
    _no_model(monkeypatch)
    s = extract_features(folder, out, **TINY)
    assert (s.written, s.skipped, s.total_rows) == (0, 3, 3) and out.read_bytes() == before
    with pytest.raises(UserError, match="model='resnet18' but this run has model='resnet34'"):
        extract_features(folder, out, **dict(TINY, model="resnet34"))


def test_another_root_is_refused_never_doubles_rows(tmp_path, monkeypatch):
    folder, out = _folder(tmp_path / "imgs", 3), tmp_path / "f.h5"
    extract_features(folder, out, **TINY)
    _no_model(monkeypatch)  # refused before any model is loaded
    with pytest.raises(UserError, match=rf"image root {folder.resolve()} but this run's root is {tmp_path.resolve()}; "
                                        rf"pass --root {folder.resolve()}"):
        extract_features(folder, out, root=tmp_path, **TINY)
    assert len(open_features(out)) == 3


def test_changed_calibration_images_are_refused_naming_them(tmp_path):
    folder, out = _folder(tmp_path / "imgs", 4), tmp_path / "f.h5"
    extract_features(folder, out, **TINY)
    _draw(folder / "img010.png", 10)  # a new image alone is fine: the recorded calibration set is rebuilt
    s = extract_features(folder, out, **TINY)
    assert s.written == 1
    xq, _ = embed_images([folder / "img010.png"], out)
    np.testing.assert_allclose(_row(out, "img010.png"), xq[0], **TOL)
    _draw(folder / "img002.png", 55)
    _draw(folder / "img011.png", 11)
    with pytest.raises(UserError, match=r"calibrated on 4 images .*1 changed \(img002.png\).*another output file"):
        extract_features(folder, out, **TINY)


def test_non_utf8_file_name_is_listed_as_failed_and_extraction_goes_on(tmp_path):
    folder, out = _folder(tmp_path / "imgs", 3), tmp_path / "f.h5"
    with open(os.fsencode(folder) + b"/00050-\xe9.png", "wb") as fh:
        Image.new("RGB", (40, 40), (9, 9, 9)).save(fh, format="PNG")
    result = CliRunner().invoke(cli, ["extract", str(folder), str(out), "--model", "resnet18", "--weights", "none",
                                      "--image-size", "32", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    ff = open_features(out)
    assert len(ff) == 3 and ff.failed == [("00050-\\xe9.png", "file name is not valid UTF-8; rename the file to extract it")]
    again = extract_features(folder, out, **TINY)
    assert (again.written, again.failed, again.skipped) == (0, 0, 4)


def test_read_only_output_folder_is_refused_before_loading_a_model(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs", 2)
    _no_model(monkeypatch)
    readonly = Path("/sys")  # not writable even by root
    if os.access(readonly, os.W_OK) and os.geteuid() != 0:
        pytest.fail("/sys is writable here")
    with pytest.raises(UserError, match=r"cannot write /sys/f.h5: folder /sys is not writable"):
        extract_features(folder, readonly / "f.h5", **TINY)


def test_disk_full_during_extraction_stops_cleanly_and_the_next_run_finishes(tmp_path, monkeypatch):
    from extract import store

    folder, out = _folder(tmp_path / "imgs", 10), tmp_path / "f.h5"
    real, calls = store._append, {"n": 0}

    def fill_up(ds, values):
        calls["n"] += 1
        if calls["n"] > 12:  # the first part gets written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(ds, values)

    monkeypatch.setattr(store, "_append", fill_up)
    with pytest.raises(UserError, match=r"cannot write .*f.h5.parts/part-\d+.h5: the disk is full") as err:
        extract_features(folder, out, commit_seconds=0, **TINY)
    assert "\n" not in str(err.value)
    kept = len(list((tmp_path / "f.h5.parts").glob("part-*.h5")))
    assert kept >= 1 and not list((tmp_path / "f.h5.parts").glob("*.tmp"))
    monkeypatch.setattr(store, "_append", real)
    s = extract_features(folder, out, **TINY)
    assert s.skipped == 4 * kept and s.total_rows == 10
    extract_features(folder, tmp_path / "clean.h5", **TINY)
    a, b = open_features(out), open_features(tmp_path / "clean.h5")
    np.testing.assert_allclose(a.load([a.row_of()[i] for i in b.ids]), b.load(), **TOL)


def test_non_finite_features_are_recorded_as_failed(tmp_path, calibrated):
    folder, out = _folder(tmp_path / "imgs", 4), tmp_path / "f.h5"
    real = calibrated.forward

    def poisoned(x):
        y = real(x).clone()
        y[0] = torch.nan  # the first image of every batch
        return y

    bb = dataclasses.replace(calibrated, config=dict(calibrated.config))
    bb.forward = poisoned
    s = extract_features(folder, out, backbone=bb, **TINY)
    ff = open_features(out)
    assert s.failed == 1 and ff.ids == ["img001.png", "img002.png", "img003.png"]
    assert ff.failed == [("img000.png", "the model gave NaN or inf features")]
    assert np.isfinite(ff.load()).all()
