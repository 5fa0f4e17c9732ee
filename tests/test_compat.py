"""extract.compat: the identity an artifact records of its feature file, and the two checks every loader uses."""

from __future__ import annotations

import numpy as np
import pytest

from extract.compat import FeatureIdentity, check_same_file, check_same_space
from extract.core.errors import UserError
from extract.store import open_features, write_features

CFG = {"model": "resnet18", "weights": "imagenet", "weights_sha256": "ab" * 32, "image_size": 224,
       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "shorter side to 224"}


def _ff(tmp_path, name, cfg=CFG, seed=0, n=5, d=4):
    xb = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return open_features(write_features(tmp_path / name, [f"{i}.jpg" for i in range(n)], xb, cfg))


def test_identity_records_what_made_the_file_and_round_trips(tmp_path):
    ff = _ff(tmp_path, "a.h5")
    ident = FeatureIdentity.of(ff)
    assert (ident.model, ident.weights, ident.weights_sha256, ident.dim, ident.count) == ("resnet18", "imagenet",
                                                                                          "ab" * 32, 4, 5)
    assert ident.preprocessing == {"image_size": 224, "resize": "shorter side to 224", "mean": CFG["mean"],
                                   "std": CFG["std"]}
    assert FeatureIdentity.from_record(ident.record()) == ident
    # an index sidecar's features section and a genre model's record read the same way
    side = {"path": str(ff.path), "fingerprint": ff.fingerprint, "model": "resnet18", "config": ff.config}
    assert FeatureIdentity.from_record(side).space == ident.space
    legacy = FeatureIdentity.from_model_config({"feature_dim": 4, "features_model": "resnet18", "features_fingerprint": "x"})
    assert (legacy.dim, legacy.model, legacy.fingerprint) == (4, "resnet18", "x")
    assert FeatureIdentity.from_model_config({"metric": "cosine"}) is None


def test_same_file_needs_the_same_fingerprint_and_names_both(tmp_path):
    a, b = _ff(tmp_path, "a.h5"), _ff(tmp_path, "b.h5", seed=1)
    check_same_file(FeatureIdentity.of(a).record(), a, "the index", "rebuild it")
    with pytest.raises(UserError) as err:
        check_same_file(FeatureIdentity.of(a).record(), b, "the index", "rebuild it with `cli.py index build b.h5 IX`")
    msg = str(err.value)
    assert a.fingerprint in msg and b.fingerprint in msg and "a.h5" in msg and "b.h5" in msg
    assert msg.endswith("rebuild it with `cli.py index build b.h5 IX`") and "\n" not in msg


@pytest.mark.parametrize("key,value", [("model", "resnet34"), ("weights_sha256", "cd" * 32), ("image_size", 256),
                                       ("mean", [0.5, 0.5, 0.5]), ("interpolation", "bicubic")])
def test_same_space_refuses_another_backbone_weights_or_preprocessing(tmp_path, key, value):
    a = _ff(tmp_path, "a.h5", dict(CFG, interpolation="bilinear"))
    check_same_space(a, _ff(tmp_path, "same.h5", dict(CFG, interpolation="bilinear"), seed=3), "the model was trained on",
                     "same.h5", "fix")  # other images, same space
    other = _ff(tmp_path, "b.h5", {**CFG, "interpolation": "bilinear", key: value})
    with pytest.raises(UserError, match=rf"the model was trained on resnet18 image features \(.*a.h5\) but b.h5 holds "
                                        rf"{other.config['model']} features \({key} "):
        check_same_space(a, other, "the model was trained on", "b.h5", "retrain")
    with pytest.raises(UserError, match=r"4-d resnet18 features .* but c.h5 holds 6-d resnet18 ones; retrain"):
        check_same_space(a, _ff(tmp_path, "c.h5", d=6), "the model was trained on", "c.h5", "retrain")


def test_identity_records_the_storage_dtype_and_a_mismatch_names_it(tmp_path):
    xb = np.ones((2, 4), np.float32)
    cfg = {"model": "resnet18", "weights": "none", "dim": 4}
    a = open_features(write_features(tmp_path / "a.h5", ["x", "y"], xb, cfg))
    b = open_features(write_features(tmp_path / "b.h5", ["x", "y"], xb, dict(cfg, dtype="float16")))
    ia, ib = FeatureIdentity.of(a), FeatureIdentity.of(b)
    assert (ia.dtype, ib.dtype) == ("float32", "float16")  # a file without the key is float32
    assert FeatureIdentity.from_record(ib.record()) == ib and "stored as float16" in ib.label()
    with pytest.raises(UserError, match="dtype float32 vs float16"):
        check_same_file(ia, b, "the index", "rebuild it")
    check_same_space(ia, b, "the text encoder was trained on", "b.h5", "retrain")  # same space: accepted
