"""Import of COCO-Spanish precomputed features (names.txt + float32 vectors.bin)."""

from __future__ import annotations

import numpy as np
import pytest

from extract.core.errors import UserError
from extract.store import open_features
from extract.vectors_import import import_vectors


def _write(tmp_path, n: int, dim: int, seed: int = 0):
    names = [f"COCO_train2014_{k:012d}.jpg" for k in range(n)]
    xb = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    (tmp_path / "train_images_names.txt").write_text("\n".join(names) + "\n")
    xb.tofile(tmp_path / "train_images_vectors.bin")
    return names, xb


def test_import_round_trip_is_byte_exact(tmp_path):
    names, xb = _write(tmp_path, 7, 16)
    out = import_vectors(tmp_path / "train_images_names.txt", tmp_path / "train_images_vectors.bin",
                         tmp_path / "f.h5", dim=16)
    ff = open_features(out)
    assert ff.ids == names and ff.dim == 16 and ff.config["model"] == "imported"
    assert ff.load().tobytes() == xb.tobytes()


def test_wrong_size_says_found_and_expected(tmp_path):
    _write(tmp_path, 5, 8)
    with pytest.raises(UserError) as err:
        import_vectors(tmp_path / "train_images_names.txt", tmp_path / "train_images_vectors.bin",
                       tmp_path / "f.h5", dim=16)
    msg = str(err.value)
    assert "has 160 bytes but 5 names x 16 dims x 4 bytes = 320 were expected" in msg
    assert "fits --dim 8" in msg and "\n" not in msg
    assert not (tmp_path / "f.h5").exists()
    (tmp_path / "train_images_names.txt").write_text("a\nb\nc\n")  # 3 names, file holds 5 rows of 8
    with pytest.raises(UserError, match="fits 5 rows of 8, not 3"):
        import_vectors(tmp_path / "train_images_names.txt", tmp_path / "train_images_vectors.bin",
                       tmp_path / "f.h5", dim=8)


def test_byte_order_mark_and_non_finite_rows(tmp_path, caplog):
    names, xb = _write(tmp_path, 6, 4)
    (tmp_path / "train_images_names.txt").write_text("\ufeff" + "\n".join(names) + "\n", encoding="utf-8")
    xb[[1, 4], 2] = [np.nan, np.inf]
    xb.tofile(tmp_path / "train_images_vectors.bin")
    out = import_vectors(tmp_path / "train_images_names.txt", tmp_path / "train_images_vectors.bin",
                         tmp_path / "f.h5", dim=4)
    assert open_features(out).ids[0] == names[0]  # the mark is not part of the first name
    assert "2 of 6 imported rows contain NaN or inf" in caplog.text
