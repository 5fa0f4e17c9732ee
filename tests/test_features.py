"""Batched extraction: results against a per-image reference, resume, refusal of mixed backbones, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from extract.backbone import load_backbone
from extract.core.errors import UserError
from extract.features import calibrate, calibration_ids, embed_images, extract_features
from extract.images import (
    Decoder,
    Preprocessing,
    default_decoder,
    list_images,
    prepare_image,
)
from extract.parts import ResumableWriter
from extract.store import open_features

REPO = Path(__file__).resolve().parents[1]
# float32 convolutions differ slightly with batch composition; features agree far tighter than this
TOL = {"rtol": 1e-3, "atol": 1e-4}
TINY = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 4, "quiet": True}


def draw_dataset(folder: Path, n: int, seed: int = 0) -> tuple[list[str], dict[str, str]]:
    """``n`` good drawn images (jpg/png, nested folder) plus bad ones; returns (good ids, bad id -> reason part)."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    good = []
    for k in range(n):
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
        x, y = (int(v) for v in rng.integers(0, 30, 2))
        ImageDraw.Draw(im).ellipse([x, y, x + 25, y + 25], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        name = f"{'sub/' if k % 4 == 0 else ''}img{k:03d}.{'png' if k % 3 == 0 else 'jpg'}"
        im.save(folder / name)
        good.append(name)
    (folder / "text.jpg").write_text("not an image")
    (folder / "zero.png").write_bytes(b"")
    return good, {"text.jpg": "not a recognised image", "zero.png": "empty file"}


def _reference(folder: Path, ids: list[str], image_size: int = 32) -> np.ndarray:
    """Per-image forward, one image at a time, with the same calibration: ``(n, 512) float32``."""
    bb = load_backbone("resnet18", "none", "cpu", image_size)
    calibrate(bb, folder, calibration_ids(list_images(folder)))
    rows = []
    for i in ids:
        arr, _ = prepare_image(folder / i, bb.preprocessing, decoder=bb.decoder)
        rows.append(bb.forward(bb.normalize(torch.from_numpy(arr).permute(2, 0, 1)[None])).numpy()[0])
    return np.stack(rows)


def _by_id(path: Path, ids: list[str]) -> np.ndarray:
    ff = open_features(path)
    return ff.load([ff.row_of()[i] for i in ids])


def test_extract_matches_per_image_reference(tmp_path):
    good, bad = draw_dataset(tmp_path / "imgs", 10)
    s = extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=1, **TINY)
    ff = open_features(tmp_path / "f.h5")
    assert sorted(ff.ids) == sorted(good) and len(ff.ids) == len(set(ff.ids))
    assert {i: r for i, r in ff.failed}.keys() == bad.keys()
    assert all(bad[i] in r for i, r in ff.failed)
    assert (s.written, s.skipped, s.failed, s.total_rows, ff.dim) == (10, 0, 2, 10, 512)
    np.testing.assert_allclose(_by_id(tmp_path / "f.h5", good), _reference(tmp_path / "imgs", good), **TOL)
    assert ff.config["model"] == "resnet18" and ff.config["bn_recalibrated"] and ff.config["image_size"] == 32
    assert ff.config["preprocessing"] == {"resize": 37, "crop": 32, "interpolation": "bilinear",  # 32 * 256 / 224
                                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert ff.config["decoder"] == {"library": default_decoder().library, "jpeg_scaling": True,
                                    "resampler": "torchvision"}
    feats = ff.load()
    assert np.isfinite(feats).all() and 1e-2 < feats.std() < 1e2
    xq, failed = embed_images([tmp_path / "imgs" / good[3], tmp_path / "imgs" / "text.jpg"], tmp_path / "f.h5")
    assert xq.shape == (1, 512) and failed[0][0].endswith("text.jpg")
    np.testing.assert_allclose(xq[0], _by_id(tmp_path / "f.h5", [good[3]])[0], **TOL)


def test_resume_after_limit_equals_uninterrupted(tmp_path):
    good, _ = draw_dataset(tmp_path / "imgs", 12)
    first = extract_features(tmp_path / "imgs", tmp_path / "a.h5", limit=5, workers=0, **TINY)
    assert first.total_rows + first.total_failed == 5
    rest = extract_features(tmp_path / "imgs", tmp_path / "a.h5", workers=0, **TINY)
    assert rest.skipped == 5 and rest.written + rest.failed == 14 - 5
    again = extract_features(tmp_path / "imgs", tmp_path / "a.h5", workers=0, **TINY)
    assert (again.written, again.failed, again.skipped) == (0, 0, 14)
    extract_features(tmp_path / "imgs", tmp_path / "b.h5", workers=0, **TINY)
    a, b = open_features(tmp_path / "a.h5"), open_features(tmp_path / "b.h5")
    assert sorted(a.ids) == sorted(b.ids) == sorted(good) and len(a.ids) == len(set(a.ids))
    assert sorted(a.failed) == sorted(b.failed)
    np.testing.assert_allclose(_by_id(a.path, good), _by_id(b.path, good), **TOL)


def test_duplicates_in_list_are_counted(tmp_path):
    good, _ = draw_dataset(tmp_path / "imgs", 3)
    (tmp_path / "list.txt").write_text("\n".join(f"imgs/{i}" for i in good + good[:2]))
    s = extract_features(tmp_path / "list.txt", tmp_path / "f.h5", workers=0, **TINY)
    assert s.duplicates == 2 and s.written == 3
    assert sorted(open_features(tmp_path / "f.h5").ids) == sorted(f"imgs/{i}" for i in good)


def test_on_commit_counts_each_durable_part(tmp_path):
    """Committing every batch: one call per batch of 4 with its images, good and failed; none for an empty last part."""
    draw_dataset(tmp_path / "imgs", 10)  # 10 good + 2 bad = 3 batches of 4
    calls = []
    s = extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=0, commit_seconds=0, on_commit=calls.append,
                         **TINY)
    assert calls == [4, 4, 4] and (s.written, s.failed) == (10, 2)
    again = []
    extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=0, on_commit=again.append, **TINY)
    assert again == []  # nothing left to extract, nothing committed


def test_mixing_backbones_is_refused_naming_both(tmp_path):
    draw_dataset(tmp_path / "imgs", 4)
    extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=0, **TINY)
    with pytest.raises(UserError, match="model='resnet18' but this run has model='resnet34'") as err:
        extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=0, **dict(TINY, model="resnet34"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="image_size=32 but this run has image_size=48"):
        extract_features(tmp_path / "imgs", tmp_path / "f.h5", workers=0, **dict(TINY, image_size=48))
    # an unfinished run (part files only) with another backbone is refused too
    w = ResumableWriter(tmp_path / "g.h5", {"model": "resnet34", "dim": 512}, 512, ["model"])
    w.commit(["x.jpg"], np.zeros((1, 512), np.float32))
    with pytest.raises(UserError, match="g.h5.parts was made with model='resnet34' but this run has model='resnet18'"):
        extract_features(tmp_path / "imgs", tmp_path / "g.h5", workers=0, **TINY)


def test_resume_with_other_preprocessing_or_decoder_is_refused_naming_both(tmp_path):
    draw_dataset(tmp_path / "imgs", 4)
    out = tmp_path / "f.h5"
    pil = load_backbone("resnet18", "none", "cpu", 32, decoder=Decoder("pil"))
    extract_features(tmp_path / "imgs", out, workers=0, backbone=pil, **{k: TINY[k] for k in ("batch_size", "quiet")})
    other = load_backbone("resnet18", "none", "cpu", 32, decoder=Decoder("simplejpeg"))
    with pytest.raises(UserError, match="decoder={'jpeg_scaling': True, 'library': 'pil', 'resampler': 'pil'} but "
                                        "this run has decoder={'library': 'simplejpeg', 'jpeg_scaling': True, "
                                        "'resampler': 'pil'}") as err:
        extract_features(tmp_path / "imgs", out, workers=0, backbone=other, quiet=True)
    assert "\n" not in str(err.value)
    resampled = load_backbone("resnet18", "none", "cpu", 32, decoder=Decoder("pil", resampler="torchvision"))
    with pytest.raises(UserError, match="'resampler': 'pil'} but this run has decoder=.*'resampler': 'torchvision'"):
        extract_features(tmp_path / "imgs", out, workers=0, backbone=resampled, quiet=True)
    bicubic = load_backbone("resnet18", "none", "cpu", decoder=Decoder("pil"),
                            preprocessing=Preprocessing(37, 32, "bicubic"))
    with pytest.raises(UserError, match="was made with preprocessing=.*'bilinear'.* but this run has "
                                        "preprocessing=.*'bicubic'"):
        extract_features(tmp_path / "imgs", out, workers=0, backbone=bicubic, quiet=True)


def test_file_from_before_recorded_preprocessing(tmp_path):
    """Such a file (square crop, Pillow decode) is refused for a resume and embeds queries as it was made."""
    good, _ = draw_dataset(tmp_path / "imgs", 6)
    folder, out = tmp_path / "imgs", tmp_path / "old.h5"
    bb = load_backbone("resnet18", "none", "cpu", decoder=Decoder("pil"), preprocessing=Preprocessing(32, 32))
    calibrate(bb, folder, calibration_ids(list_images(folder)))
    rows = [bb.forward(bb.normalize(torch.from_numpy(prepare_image(folder / i, 32)[0]).permute(2, 0, 1)[None]))
            for i in good]
    config = {k: v for k, v in bb.config.items() if k not in ("preprocessing", "decoder", "pillow", "simplejpeg")}
    config["resize"] = "shorter side to 32, centre crop 32x32, bilinear"  # as such files recorded it
    from extract.store import write_features

    write_features(out, good, torch.cat(rows).numpy(), config)
    xq, failed = embed_images([folder / good[2]], out)
    assert not failed
    np.testing.assert_allclose(xq[0], _by_id(out, [good[2]])[0], **TOL)
    with pytest.raises(UserError, match="resize='shorter side to 32, centre crop 32x32, bilinear' but this run has"):
        extract_features(folder, out, workers=0, **TINY)


def _parts(out: Path) -> int:
    return len(list(out.with_name(out.name + ".parts").glob("part-*.h5")))


# Runs the CLI with a SIGKILL of its whole process group planted right after the n-th call of one step of the store.
_KILL_AT = """
import os, runpy, signal, sys
import extract.parts as parts
import extract.store as store
where, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def after(real, counts=lambda *a: True):
    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        calls[0] += counts(*args)
        if calls[0] == n:
            os.killpg(0, signal.SIGKILL)
        return out
    return wrapped
if where == "commit":
    parts.ResumableWriter.commit = after(parts.ResumableWriter.commit)
elif where == "merge_seal":  # the merged file is sealed (part files carry no config)
    store.FeatureBuilder.seal = after(store.FeatureBuilder.seal, lambda builder: bool(builder.config))
elif where == "features_append":  # rows written into a part (or the merged file)
    store._append = after(store._append, lambda ds, values: ds.name == "/features")
else:
    setattr(store, where, after(getattr(store, where)))
sys.argv = ["cli.py", *sys.argv[3:]]
runpy.run_path("cli.py", run_name="__main__")
"""


def test_resume_after_repeated_sigkill(tmp_path):
    """SIGKILL a real CLI extraction at fixed points (between commits, inside a part, inside the merge), re-run until
    done, compare to one clean run."""
    good, bad = draw_dataset(tmp_path / "imgs", 60, seed=1)
    folder, out = tmp_path / "imgs", tmp_path / "killed.h5"
    extract_features(folder, out, limit=16, workers=0, **TINY)  # an existing file, so kills can hit the merge
    args = ["extract", str(folder), str(out), "--model", "resnet18", "--weights", "none", "--image-size", "32",
            "--batch-size", "4", "--workers", "1", "--commit-every", "0", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # (store step, its n-th call, part files expected afterwards): 2 batches committed; killed while writing the
    # 2nd part of a run (1 more); every batch committed, killed after the merged file is written but not renamed
    kills = [("commit", 2, 2), ("features_append", 2, 3), ("merge_seal", 1, None)]
    for where, n, parts in kills:
        proc = subprocess.run([sys.executable, "-c", _KILL_AT, where, str(n), *args], check=False, cwd=REPO, env=env,
                              start_new_session=True, capture_output=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        assert len(open_features(out).ids) == 16  # the old file is intact and readable until a merge completes
        if parts is not None:
            assert _parts(out) == parts
    assert out.with_name(out.name + ".tmp").exists()  # the merge killed before its rename left its temporary file
    proc = subprocess.run([sys.executable, "cli.py", *args], check=False, cwd=REPO, env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    extract_features(folder, tmp_path / "clean.h5", workers=0, **TINY)
    a, b = open_features(out), open_features(tmp_path / "clean.h5")
    assert sorted(a.ids) == sorted(good) and len(a.ids) == len(set(a.ids))
    assert sorted(i for i, _ in a.failed) == sorted(bad) and sorted(a.failed) == sorted(b.failed)
    np.testing.assert_allclose(_by_id(a.path, good), _by_id(b.path, good), **TOL)
    assert not out.with_name(out.name + ".parts").exists() and not out.with_name(out.name + ".tmp").exists()


def test_embedding_against_an_imported_file_is_refused(tmp_path):
    from extract.store import write_features

    write_features(tmp_path / "imp.h5", ["a.jpg"], np.zeros((1, 8), np.float32), {"model": "imported"})
    with pytest.raises(UserError, match="imported from precomputed vectors"):
        embed_images([tmp_path / "a.jpg"], tmp_path / "imp.h5")


@pytest.mark.gpu
def test_cuda_autocast_matches_cpu(tmp_path):
    good, _ = draw_dataset(tmp_path / "imgs", 8)
    extract_features(tmp_path / "imgs", tmp_path / "cpu.h5", workers=0, device="cpu", **TINY)
    extract_features(tmp_path / "imgs", tmp_path / "gpu.h5", workers=1, device="cuda", **TINY)
    a, b = _by_id(tmp_path / "cpu.h5", good), _by_id(tmp_path / "gpu.h5", good)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99  # fp16/bf16 autocast on the GPU, fp32 on the CPU


def test_float16_extraction_is_the_float32_one_rounded_and_resumes_only_as_float16(tmp_path, monkeypatch):
    import extract.features

    good, _ = draw_dataset(tmp_path / "imgs", 6)
    extract_features(tmp_path / "imgs", tmp_path / "f32.h5", workers=0, **TINY)
    extract_features(tmp_path / "imgs", tmp_path / "f16.h5", workers=0, limit=4, dtype="float16", **TINY)
    with monkeypatch.context() as m:  # refused before any model is loaded
        m.setattr(extract.features, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
        with pytest.raises(UserError, match="dtype='float16' but this run has dtype='float32'"):
            extract_features(tmp_path / "imgs", tmp_path / "f16.h5", workers=0, **TINY)
    s = extract_features(tmp_path / "imgs", tmp_path / "f16.h5", workers=0, dtype="float16", **TINY)
    assert (s.written, s.skipped) == (2, 4)
    full, half = open_features(tmp_path / "f32.h5"), open_features(tmp_path / "f16.h5")
    assert (half.dtype, half.config["dtype"], full.config["dtype"]) == ("float16", "float16", "float32")
    x32, x16 = _by_id(tmp_path / "f32.h5", good), _by_id(tmp_path / "f16.h5", good)
    assert x16.dtype == np.float32
    bound = np.abs(x32) * 2.0**-11 + 2.0**-24 + TOL["atol"]  # half-precision rounding on top of batch-order noise
    assert np.all(np.abs(x16 - x32) <= bound)
    with pytest.raises(UserError, match="unknown --dtype 'bfloat16'"):
        extract_features(tmp_path / "imgs", tmp_path / "g.h5", workers=0, dtype="bfloat16", **TINY)
