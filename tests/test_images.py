"""Listing and robust decoding of images: every bad-input class gets a test with an image drawn here."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from extract.core.errors import UserError
from extract.images import (
    DECODERS,
    RESAMPLERS,
    Decoder,
    Preprocessing,
    list_images,
    load_image,
    load_pixels,
    prepare_image,
    recorded_preprocessing,
)


def _jpeg_bytes(color=(200, 30, 30), size=(120, 80)) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).ellipse([10, 10, 50, 50], fill=(0, 0, 255))
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# ---- listing ------------------------------------------------------------------------------------


def test_folder_is_recursive_sorted_and_case_insensitive(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ["z.JPG", "a.png", "b/c.Jpeg", "b/d.webp", "notes.txt", "e.TIFF"]:
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="PNG") if not name.endswith(".txt") else (
            tmp_path / name).write_text("x")
    listing = list_images(tmp_path)
    assert listing.ids == sorted(["z.JPG", "a.png", "b/c.Jpeg", "b/d.webp", "e.TIFF"], key=lambda i: str(tmp_path / i))
    assert listing.root == tmp_path and listing.duplicates == 0


def test_list_file_relative_absolute_and_duplicates(tmp_path, caplog):
    (tmp_path / "imgs").mkdir()
    for n in ["a.jpg", "b.jpg"]:
        (tmp_path / "imgs" / n).write_bytes(_jpeg_bytes())
    lst = tmp_path / "list.txt"
    lst.write_text(f"imgs/a.jpg\n\n# comment\n{tmp_path / 'imgs' / 'b.jpg'}\nimgs/./a.jpg\nimgs/b.jpg\n")
    with caplog.at_level(logging.WARNING):
        listing = list_images(lst)
    assert listing.ids == ["imgs/a.jpg", "imgs/b.jpg"]
    assert listing.duplicates == 2
    assert "2 duplicate image paths" in caplog.text
    assert [p.is_file() for p in listing.paths()] == [True, True]
    rooted = list_images(lst, root=tmp_path / "imgs")  # relative entries now resolve under --root
    assert rooted.ids == ["imgs/a.jpg", "b.jpg", "imgs/b.jpg"]
    assert rooted.paths()[1] == tmp_path / "imgs" / "b.jpg"


def test_coco_json(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "x/1.jpg"}, {"id": 2, "file_name": "2.jpg"}], "annotations": []}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    listing = list_images(tmp_path / "ann.json")
    assert listing.ids == ["x/1.jpg", "2.jpg"] and listing.root == tmp_path
    other = list_images(tmp_path / "ann.json", root=tmp_path / "x")
    assert other.root == tmp_path / "x" and other.paths()[0] == tmp_path / "x" / "x" / "1.jpg"


def test_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        list_images(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_empty_folder_is_one_line_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images") as err:
        list_images(tmp_path)
    assert "\n" not in str(err.value)


def test_unreadable_or_bad_lists(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="cannot read image list"):
        list_images(tmp_path / "bin.txt")
    (tmp_path / "bad.json").write_text('{"images": [{"name": 1}]}')
    with pytest.raises(UserError, match="COCO-style JSON"):
        list_images(tmp_path / "bad.json")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="lists no images"):
        list_images(tmp_path / "empty.txt")


# ---- bad images: a reason, never an exception ----------------------------------------------------


@pytest.mark.parametrize("library", DECODERS)
def test_corrupt_jpeg_header(tmp_path, library):
    data = bytearray(_jpeg_bytes())
    data[2:200] = bytes(198)
    (tmp_path / "c.jpg").write_bytes(bytes(data))
    im, reason = load_image(tmp_path / "c.jpg", library=library)
    assert im is None and "not a recognised image" in reason


@pytest.mark.parametrize("library", DECODERS)
def test_truncated_jpeg(tmp_path, library):
    data = _jpeg_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    im, reason = load_image(tmp_path / "t.jpg", library=library)
    assert im is None and "truncated" in reason


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    assert load_image(tmp_path / "z.jpg") == (None, "empty file (0 bytes)")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "t.jpg").write_text("this is not an image\n" * 10)
    im, reason = load_image(tmp_path / "t.jpg")
    assert im is None and "not a recognised image" in reason


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    path.write_bytes(_jpeg_bytes())
    path.chmod(0)
    try:
        with open(path, "rb"):
            readable = True  # running as root: permissions do not stop reads, so make open() refuse
    except PermissionError:
        readable = False
    if readable:
        real_open = Image.open

        def refusing_open(fp, *a, **k):
            if str(fp) == str(path):
                raise PermissionError(13, "Permission denied", str(fp))
            return real_open(fp, *a, **k)

        monkeypatch.setattr(Image, "open", refusing_open)
    im, reason = load_image(path)
    path.chmod(0o644)
    assert im is None and "permission denied" in reason


def test_grayscale_becomes_rgb_with_same_values(tmp_path):
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(arr, "L").save(tmp_path / "g.png")
    im, reason = load_image(tmp_path / "g.png")
    rgb = np.asarray(im)
    assert reason is None and im.mode == "RGB"
    assert np.array_equal(rgb[..., 0], arr) and np.array_equal(rgb[..., 2], arr)


@pytest.mark.parametrize("library", DECODERS)
def test_cmyk_jpeg(tmp_path, library):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "k.jpg", quality=95)  # pure red in CMYK
    im, reason = load_image(tmp_path / "k.jpg", library=library)
    r, g, b = np.asarray(im)[16, 16].astype(int)
    assert reason is None and im.mode == "RGB"
    assert r > 200 and g < 60 and b < 60


def test_palette_png_with_transparency_on_white(tmp_path):
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    ImageDraw.Draw(im).rectangle([0, 0, 9, 19], fill=1)
    im.save(tmp_path / "p.png", transparency=0)
    out, reason = load_image(tmp_path / "p.png")
    arr = np.asarray(out)
    assert reason is None
    assert tuple(arr[5, 5]) == (10, 200, 10) and tuple(arr[5, 15]) == (255, 255, 255)


def test_rgba_png_composited_on_white(tmp_path):
    arr = np.zeros((4, 3, 4), np.uint8)
    arr[..., 0] = 200
    arr[:, 0, 3] = 255
    arr[:, 1, 3] = 128
    arr[:, 2, 3] = 0
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out, reason = load_image(tmp_path / "a.png")
    rgb = np.asarray(out).astype(int)
    assert reason is None
    assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[0, 2]) == (255, 255, 255)
    expected = np.array([200 * 128 + 255 * 127, 255 * 127, 255 * 127]) / 255
    assert np.all(np.abs(rgb[0, 1] - expected) <= 1.5)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out, reason = load_image(tmp_path / "d.png")
    assert reason is None
    assert np.asarray(out)[0, :, 0].tolist() == [0, 1, 4, 128, 255]


@pytest.mark.parametrize("library", DECODERS)
def test_exif_orientation_is_applied(tmp_path, library):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    ImageDraw.Draw(im).rectangle([0, 0, 9, 9], fill=(255, 0, 0))  # red at top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out, reason = load_image(tmp_path / "o.jpg", library=library)
    arr = np.asarray(out).astype(int)
    assert reason is None and out.size == (20, 40)
    assert arr[3, 16, 0] > 200 and arr[3, 3, 0] < 60  # top-left red moved to top-right


def test_decompression_bomb_guard(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    im, reason = load_image(tmp_path / "big.png", max_pixels=5000)
    assert im is None and "too many pixels" in reason
    assert load_image(tmp_path / "big.png", max_pixels=10_000)[1] is None

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # claims 10^10 gray pixels
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    im, reason = load_image(tmp_path / "bomb.png")
    assert im is None and "decompression bomb" in reason


def test_prepare_image_resizes_shorter_side_and_centre_crops(tmp_path):
    im = Image.new("RGB", (300, 100), (255, 0, 0))
    ImageDraw.Draw(im).rectangle([100, 0, 199, 99], fill=(0, 255, 0))
    im.save(tmp_path / "w.png")
    arr, reason = prepare_image(tmp_path / "w.png", 32)
    assert reason is None and arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert arr.flags.writeable
    assert tuple(arr[16, 16]) == (0, 255, 0) and tuple(arr[2, 2]) == (0, 255, 0)
    assert prepare_image(tmp_path / "missing.png", 32) == (None, "file not found")


def test_relative_folder_gives_ids_relative_to_it(tmp_path, monkeypatch):
    from PIL import Image

    from extract.images import list_images, load_image

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "imgs" / "sub" / "a.png")
    monkeypatch.chdir(tmp_path)
    listing = list_images("imgs")
    assert listing.ids == ["sub/a.png"]
    im, reason = load_image(listing.paths()[0])
    assert reason is None and im.size == (8, 8)


# ---- preprocessing and decoders -----------------------------------------------------------------


def _scene(size=(300, 200), seed=0) -> Image.Image:
    """Smooth gradients and a few shapes: resampling and crop offsets show, JPEG artefacts stay small."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([255 * xx / w, 255 * yy / h, 128 + 100 * np.sin(xx / 17.0)], axis=-1).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x, y = int(rng.integers(0, w - w // 4)), int(rng.integers(0, h - h // 4))
        d.ellipse([x, y, x + w // 5, y + h // 6], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(300, 200), (180, 260)])
def test_prepare_image_equals_torchvision_resize_then_centre_crop(tmp_path, interpolation, size):
    from torchvision import transforms as T

    im = _scene(size)
    im.save(tmp_path / "s.png")
    tv = T.Compose([T.Resize(116, interpolation=T.InterpolationMode(interpolation)), T.CenterCrop(112)])
    expected = np.asarray(tv(im)).astype(int)
    arr, reason = prepare_image(tmp_path / "s.png", Preprocessing(116, 112, interpolation))
    assert reason is None and arr.shape == (112, 112, 3) and arr.dtype == np.uint8
    diff = np.abs(arr.astype(int) - expected)
    assert diff.mean() < 1.0  # torchvision rounds the resized image to whole pixels: sub-pixel shifts at edges
    squashed = np.asarray(im.resize((112, 112), Image.BILINEAR)).astype(int)  # what a plain resize would give
    assert np.abs(squashed - expected).mean() > 5 * diff.mean()


def test_preprocessing_config_round_trip_and_image_size_override():
    import json

    p = Preprocessing(232, 224, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cfg = json.loads(json.dumps(p.to_config()))
    assert cfg == p.to_config() == {"resize": 232, "crop": 224, "interpolation": "bicubic",
                                    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert Preprocessing.from_config(cfg) == p
    assert p.with_crop(64) == Preprocessing(66, 64, "bicubic", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # 64*232/224
    assert Preprocessing(256, 224).with_crop(32).resize == 37
    assert Decoder.from_config(json.loads(json.dumps(Decoder("simplejpeg").to_config()))) == Decoder("simplejpeg")
    for bad in ({"resize": 10, "crop": 20, "interpolation": "bilinear", "mean": [0] * 3, "std": [1] * 3},
                {"resize": 20, "crop": 20, "interpolation": "sinc", "mean": [0] * 3, "std": [1] * 3},
                {"resize": 20}):
        with pytest.raises(UserError):
            Preprocessing.from_config(bad)
    with pytest.raises(UserError, match="unknown image decoder 'turbo'"):
        Decoder("turbo")


def test_files_without_recorded_preprocessing_get_the_square_crop_they_were_made_with(tmp_path):
    _scene((300, 200)).save(tmp_path / "s.jpg", quality=90)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    pre, dec = recorded_preprocessing({"image_size": 48, "mean": mean, "std": std})
    assert pre == Preprocessing(48, 48, "bilinear", tuple(mean), tuple(std)) and dec == Decoder("pil")
    im = Image.open(tmp_path / "s.jpg")  # the earlier pipeline: draft, centre square, one bilinear resize
    im.draft("RGB", (48, 48))
    im = im.convert("RGB")
    side = min(im.size)
    left, top = (im.size[0] - side) / 2, (im.size[1] - side) / 2
    expected = np.asarray(im.resize((48, 48), Image.BILINEAR, box=(left, top, left + side, top + side)))
    assert np.array_equal(prepare_image(tmp_path / "s.jpg", pre, decoder=dec)[0], expected)


@pytest.mark.parametrize("library", DECODERS)
@pytest.mark.parametrize("size, draft, decoded", [((1000, 750), 232, (500, 375)), ((1000, 750), 180, (250, 188)),
                                                  ((1000, 750), 400, (1000, 750)), ((600, 2000), 70, (75, 250))])
def test_jpeg_dct_scaling_decodes_small_and_lands_on_the_same_crop(tmp_path, library, size, draft, decoded):
    path = tmp_path / "big.jpg"
    _scene(size).save(path, quality=92)
    im, reason = load_image(path, draft_size=draft, library=library)
    assert reason is None and im.size == decoded  # 1/2, 1/4, 1/8: the smallest keeping the shorter side >= draft
    if draft != 232:
        return
    assert load_image(path, library=library)[0].size == (1000, 750)
    pre = Preprocessing(232, 224)
    full, _ = prepare_image(path, pre, decoder=Decoder(library, jpeg_scaling=False))
    scaled, _ = prepare_image(path, pre, decoder=Decoder(library))
    assert scaled.shape == full.shape == (224, 224, 3)
    assert np.abs(scaled.astype(int) - full.astype(int)).mean() < 2.0


def test_simplejpeg_and_pil_agree_on_colour_and_grayscale_jpegs(tmp_path):
    _scene((120, 90)).save(tmp_path / "c.jpg", quality=95)
    _scene((120, 90)).convert("L").save(tmp_path / "g.jpg", quality=95)
    for name in ("c.jpg", "g.jpg"):
        a, ra = load_image(tmp_path / name, library="pil")
        b, rb = load_image(tmp_path / name, library="simplejpeg")
        assert ra is rb is None and a.mode == b.mode == "RGB" and a.size == b.size == (120, 90)
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 3


def test_simplejpeg_decoder_needs_its_package(monkeypatch):
    import importlib.util

    from extract.images import default_decoder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "simplejpeg" else real(name, *a))
    with pytest.raises(UserError, match="pip install simplejpeg"):
        Decoder("simplejpeg")
    assert default_decoder() == Decoder("pil", True, "torchvision")


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(300, 200), (180, 260), (500, 375)])
def test_torchvision_resampler_is_the_weights_transforms(tmp_path, interpolation, size):
    import torch
    from torchvision import transforms as T
    from torchvision.transforms import v2

    im = _scene(size)
    im.save(tmp_path / "s.png")
    mode = T.InterpolationMode(interpolation)
    pre, dec = Preprocessing(116, 112, interpolation), Decoder("pil", resampler="torchvision")
    arr, reason = prepare_image(tmp_path / "s.png", pre, decoder=dec)
    assert reason is None and arr.shape == (112, 112, 3) and arr.dtype == np.uint8 and arr.flags.writeable
    on_tensor = v2.Compose([v2.Resize(116, interpolation=mode, antialias=True), v2.CenterCrop(112)])
    assert np.array_equal(arr, on_tensor(torch.from_numpy(np.array(im)).permute(2, 0, 1)).permute(1, 2, 0).numpy())
    on_pil = np.asarray(T.Compose([T.Resize(116, interpolation=mode), T.CenterCrop(112)])(im)).astype(int)
    diff = np.abs(arr.astype(int) - on_pil)
    assert diff.max() <= 1 and diff.mean() < 0.01  # torch's uint8 resample rounds like Pillow's to within one level


@pytest.mark.parametrize("orientation", range(1, 9))
def test_simplejpeg_orientation_table_matches_pillow(tmp_path, orientation):
    im = _scene((40, 24))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    a, _ = load_pixels(tmp_path / "o.jpg", library="pil")
    b, _ = load_pixels(tmp_path / "o.jpg", library="simplejpeg")
    assert a.shape == b.shape == ((24, 40, 3) if orientation < 5 else (40, 24, 3))
    assert b.flags.c_contiguous and np.abs(a.astype(int) - b.astype(int)).max() <= 3


def test_resampler_is_recorded_and_older_files_resampled_with_pillow():
    assert RESAMPLERS == ("pil", "torchvision")
    assert Decoder.from_config({"library": "simplejpeg", "jpeg_scaling": True}) == Decoder("simplejpeg", True, "pil")
    dec = Decoder("simplejpeg", True, "torchvision")
    assert Decoder.from_config(dec.to_config()) == dec and dec.to_config()["resampler"] == "torchvision"
    assert "resized by torchvision" in dec.describe()
    with pytest.raises(UserError, match="unknown resampler 'cv2'"):
        Decoder(resampler="cv2")
    with pytest.raises(UserError, match="no 'lanczos' interpolation"):
        dec.check(Preprocessing(256, 224, "lanczos"))
    from extract.images import default_decoder

    assert default_decoder(Preprocessing(256, 224, "lanczos")).resampler == "pil"
    assert default_decoder(Preprocessing(256, 224, "bicubic")).resampler == "torchvision"
