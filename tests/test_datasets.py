import json
import logging

import numpy as np
import pytest

from extract.core.errors import UserError
from retrieval.datasets import find_splits, join_features, load_splits, read_captions


def test_tsv_and_coco_json_read_the_same_captions(tmp_path):
    (tmp_path / "train_captions.txt").write_text("a/1.jpg\tUn perro.\n\nb/2.jpg\tUna niña\tcon tab.\n", encoding="utf-8")
    coco = {"images": [{"id": 7, "file_name": "a/1.jpg"}, {"id": 9, "file_name": "b/2.jpg"}],
            "annotations": [{"image_id": 7, "caption": "Un perro."}, {"image_id": 9, "caption": "Una niña\tcon tab."}]}
    (tmp_path / "captions_val.json").write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    tsv = read_captions(tmp_path / "train_captions.txt")
    js = read_captions(tmp_path / "captions_val.json")
    assert tsv.split == "train" and js.split == "val"
    assert tsv.ids == js.ids == ["a/1.jpg", "b/2.jpg"]
    assert tsv.texts == js.texts == ["Un perro.", "Una niña\tcon tab."]
    assert find_splits([tmp_path]) == {"train": tmp_path / "train_captions.txt", "val": tmp_path / "captions_val.json"}
    assert find_splits([f"extra={tmp_path / 'train_captions.txt'}"]) == {"extra": tmp_path / "train_captions.txt"}


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "test_captions.txt"
    p.write_text("a.jpg\tbien\nsin tabulador aquí\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"test_captions\.txt:2: expected 'image_id<TAB>caption'"):
        read_captions(p)


def test_non_utf8_is_a_user_error_with_line(tmp_path):
    p = tmp_path / "train_captions.txt"
    p.write_bytes(b"a.jpg\tbien\n" + "b.jpg\tniño\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"train_captions\.txt:2: not valid UTF-8"):
        read_captions(p)


def test_join_lists_missing_images_and_builds_gallery(tmp_path, caplog):
    p = tmp_path / "val_captions.txt"
    p.write_text("val/1.jpg\tuno\nval/2.jpg\tdos\nval/9.jpg\tfalta\n1.jpg\tuno otra vez\nval/9.jpg\tfalta\n", encoding="utf-8")
    feature_ids = ["train/0.jpg", "val/2.jpg", "val/1.jpg", "val/3.jpg"]
    with caplog.at_level(logging.WARNING):
        s = join_features(read_captions(p), feature_ids)
    assert "2 captions name 1 images missing from the features, skipped: val/9.jpg" in caplog.text
    assert s.missing == 2 and s.texts == ["uno", "dos", "uno otra vez"]
    np.testing.assert_array_equal(s.gallery_rows, [2, 1])  # distinct images in caption order
    np.testing.assert_array_equal(s.image_rows, [2, 1, 2])  # "1.jpg" matched val/1.jpg by file name
    # an explicit image list widens the gallery
    (tmp_path / "val_images_names.txt").write_text("val/3.jpg\nval/1.jpg\nval/2.jpg\n")
    s = join_features(read_captions(p), feature_ids)
    np.testing.assert_array_equal(s.gallery_rows, [3, 2, 1])
    np.testing.assert_array_equal(s.image_rows, [2, 1, 2])


def test_empty_split_is_warned(tmp_path, caplog):
    (tmp_path / "test_captions.txt").write_text("x.jpg\tnada\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        splits = load_splits([tmp_path], ["y.jpg"])
    assert splits["test"].texts == [] and "split test" in caplog.text
