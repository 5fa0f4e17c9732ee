"""List the images to extract, decode them robustly to RGB and bring them to the network's input.

``list_images`` accepts a folder (searched recursively), a text file with one path per line, or a
COCO-style JSON (``images[].file_name``). Image ids are POSIX paths relative to the image root.

``load_image`` / ``prepare_image`` never raise for a bad image: they return a short reason string
instead (corrupt or truncated data, not an image, too many pixels, unreadable file), so one bad file
never stops an extraction. :class:`Preprocessing` (resize, centre crop, interpolation, mean/std, as
the weights define them) and :class:`Decoder` (library, JPEG DCT-domain scaling, resampler) are frozen configs
recorded with every feature file; :mod:`extract.backbone` takes them from the weights.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, UnidentifiedImageError

from extract.core.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_WHITE = (255, 255, 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
DECODERS = ("pil", "simplejpeg")
RESAMPLERS = ("pil", "torchvision")
_TORCHVISION_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what torchvision resizes tensors with


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes the network input, as the weights define it.

    The shorter side is resized to ``resize`` and the centre ``crop`` x ``crop`` is kept, resampled with
    ``interpolation`` (antialiased, as Pillow resizes); the backbone then maps ``x / 255`` to
    ``(x - mean) / std`` per channel. torchvision's ``Resize(resize) + CenterCrop(crop)``, done as one
    resample of the centred box so no intermediate image is rounded to whole pixels.
    """

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not 1 <= int(self.crop) <= int(self.resize):
            raise UserError(f"preprocessing needs 1 <= crop <= resize, got resize {self.resize}, crop {self.crop}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UserError(f"preprocessing needs 3 means and 3 positive stds, got {self.mean} and {self.std}")

    @classmethod
    def square(cls, size: int) -> Preprocessing:
        """Shorter side to ``size``, centre crop ``size`` x ``size``, bilinear, ImageNet mean/std."""
        return cls(size, size)

    def with_crop(self, crop: int) -> Preprocessing:
        """The same preprocessing at another input size: crop ``crop``, resize ``round(crop * resize / crop0)``."""
        return Preprocessing(max(crop, round(crop * self.resize / self.crop)), crop, self.interpolation,
                             self.mean, self.std)

    def to_config(self) -> dict:
        """JSON-ready dict (lists, not tuples, so it compares equal after a round trip through the file)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocessing:
        try:
            return cls(int(cfg["resize"]), int(cfg["crop"]), str(cfg["interpolation"]), tuple(cfg["mean"]),
                       tuple(cfg["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"malformed preprocessing config {cfg!r} ({exc.__class__.__name__}: {exc})") from None

    def describe(self) -> str:
        return f"shorter side to {self.resize}, centre crop {self.crop}x{self.crop}, {self.interpolation}"


@dataclass(frozen=True)
class Decoder:
    """How image files become pixels, and pixels the network's input size.

    ``library``: ``pil`` decodes everything with Pillow; ``simplejpeg`` decodes RGB and grayscale JPEGs
    with libjpeg-turbo (through simplejpeg, with less per-image overhead than Pillow) and every other file
    with Pillow. ``jpeg_scaling``: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
    shorter side still reaches the preprocessing's ``resize``, so a large photo's full-size pixels are
    never produced. ``resampler``: ``torchvision`` resizes and centre-crops the ``uint8`` pixels with
    ``torchvision.transforms.v2.functional`` (``resize`` with antialias, then ``center_crop``: the
    weights' own transforms, run on a tensor, about three times faster than Pillow's resample on one
    core); ``pil`` resamples the centred box with Pillow in one step. Decoders and resamplers differ
    slightly (libjpeg builds, fallbacks, rounding), so all three settings are part of a feature file's
    identity.
    """

    library: str = "pil"
    jpeg_scaling: bool = True
    resampler: str = "pil"

    def __post_init__(self):
        if self.library not in DECODERS:
            raise UserError(f"unknown image decoder {self.library!r}; use one of {', '.join(DECODERS)}")
        if self.library == "simplejpeg" and importlib.util.find_spec("simplejpeg") is None:
            raise UserError("the simplejpeg image decoder is not installed; pip install simplejpeg")
        if self.resampler not in RESAMPLERS:
            raise UserError(f"unknown resampler {self.resampler!r}; use one of {', '.join(RESAMPLERS)}")

    def check(self, preprocessing: Preprocessing) -> None:
        """Refuse a resampler that cannot do ``preprocessing``'s interpolation."""
        if self.resampler == "torchvision" and preprocessing.interpolation not in _TORCHVISION_INTERPOLATIONS:
            raise UserError(f"the torchvision resampler has no {preprocessing.interpolation!r} interpolation (only "
                            f"{', '.join(_TORCHVISION_INTERPOLATIONS)}); use the pil resampler")

    def to_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, cfg: dict) -> Decoder:
        """A recorded decoder; one recorded before resamplers were (no ``resampler`` key) resampled with Pillow."""
        try:
            return cls(str(cfg["library"]), bool(cfg["jpeg_scaling"]), str(cfg.get("resampler", "pil")))
        except (KeyError, TypeError) as exc:
            raise UserError(f"malformed decoder config {cfg!r} ({exc.__class__.__name__}: {exc})") from None

    def versions(self) -> dict[str, str]:
        """Library versions behind this decoder (recorded, not matched)."""
        out = {"pillow": PIL.__version__}
        if self.library == "simplejpeg":
            out["simplejpeg"] = version("simplejpeg")
        return out

    def describe(self) -> str:
        return f"{self.library}{' with JPEG DCT scaling' if self.jpeg_scaling else ''}, resized by {self.resampler}"


def recorded_preprocessing(config: dict) -> tuple[Preprocessing, Decoder]:
    """The preprocessing and decoder a feature file's config records.

    A file made before they were recorded used a square resize and crop of ``image_size``, bilinear,
    with its mean/std, decoded by Pillow with JPEG draft mode: that is what it gets.
    """
    if "preprocessing" in config:
        return Preprocessing.from_config(config["preprocessing"]), Decoder.from_config(config.get("decoder") or {})
    size = int(config.get("image_size") or 224)
    mean, std = config.get("mean") or IMAGENET_MEAN, config.get("std") or IMAGENET_STD
    return Preprocessing(size, size, "bilinear", tuple(mean), tuple(std)), Decoder("pil")


def default_decoder(preprocessing: Preprocessing | None = None) -> Decoder:
    """libjpeg-turbo's scaled decode through simplejpeg when it is installed, else Pillow's draft mode;
    torchvision's resize where it has ``preprocessing``'s interpolation, else Pillow's."""
    tv = preprocessing is None or preprocessing.interpolation in _TORCHVISION_INTERPOLATIONS
    return Decoder("simplejpeg" if importlib.util.find_spec("simplejpeg") is not None else "pil", True,
                   "torchvision" if tv else "pil")


@dataclass(frozen=True)
class ImageList:
    """Images to process: ``root / ids[i]`` is the file of image ``ids[i]``."""

    root: Path
    ids: list[str]
    duplicates: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def paths(self) -> list[Path]:
        return [self.root / i for i in self.ids]


def list_images(source: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """List images from a folder, a text file of paths, or a COCO-style JSON.

    A folder is searched recursively for common image extensions (case-insensitive) and sorted.
    A list file keeps its order; relative paths are taken from the list's folder (or ``root``).
    Duplicate paths are dropped and counted.
    """
    src = Path(source)
    if not src.exists():
        raise UserError(f"images path {src} does not exist; pass a folder, a list of paths or a COCO JSON")
    if src.is_dir():
        base = Path(root) if root is not None else src
        found = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            raise UserError(f"no images ({exts}) under folder {src}; pass another folder or a list file")
        entries = [os.path.abspath(p) for p in found]  # rglob paths carry the folder prefix
    else:
        base = Path(root) if root is not None else src.parent
        entries = _read_list(src)
        if not entries:
            raise UserError(f"{src} lists no images; put one image path per line or use a COCO JSON")
    return unique_image_list(base, (_to_id(entry, base) for entry in entries), src)


def unique_image_list(base: Path, ids, src) -> ImageList:
    """An :class:`ImageList` of ``ids`` in order, duplicates dropped, counted and logged."""
    out, seen, dups = [], set(), 0
    for i in ids:
        if i in seen:
            dups += 1
            continue
        seen.add(i)
        out.append(i)
    if dups:
        log.warning("%d duplicate image paths in %s were dropped", dups, src)
    return ImageList(base, out, dups, str(src))


def _read_list(src: Path) -> list[str]:
    try:
        text = src.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read image list {src} ({exc.__class__.__name__}: {exc}); check the file") from None
    if src.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
            return [str(img["file_name"]) for img in doc["images"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(
                f"{src} is not a COCO-style JSON with images[].file_name ({exc.__class__.__name__}: {exc})"
            ) from None
    if src.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"{src} is an image file; pass the folder that holds it, or a list file")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _to_id(entry: str, base: Path) -> str:
    full = Path(entry) if Path(entry).is_absolute() else base / entry
    return Path(os.path.relpath(os.path.abspath(full), os.path.abspath(base))).as_posix()


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
               library: str = "pil", data: bytes | None = None) -> tuple[Image.Image | None, str | None]:
    """Decode ``path`` to an upright 8-bit RGB image; return ``(image, None)`` or ``(None, reason)``.

    Transparency is composited on white, 16-bit data is scaled (not clipped) to 8 bits, EXIF
    orientation is applied, and images above ``max_pixels`` are refused before decoding.
    ``draft_size`` lets JPEG decoding downscale in the DCT domain while the shorter side stays at least
    that large; ``library`` is a :class:`Decoder` library (``simplejpeg`` for RGB/grayscale JPEGs).
    ``data``: the file's bytes when the caller has already read them (decoded from memory, not read again).
    """
    out, reason = _load(Path(path), max_pixels, draft_size, library, data)
    return (Image.fromarray(out, "RGB") if isinstance(out, np.ndarray) else out), reason


def load_pixels(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
                library: str = "pil", data: bytes | None = None) -> tuple[np.ndarray | None, str | None]:
    """:func:`load_image` as an ``(H, W, 3) uint8`` array (libjpeg-turbo's output is never copied into Pillow)."""
    out, reason = _load(Path(path), max_pixels, draft_size, library, data)
    return (np.array(out) if isinstance(out, Image.Image) else out), reason


def _load(path: Path, max_pixels: int, draft_size: int | None, library: str,
          data: bytes | None) -> tuple[Image.Image | np.ndarray | None, str | None]:
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            return None, "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return None, f"too many pixels ({w}x{h} = {w * h} > limit {max_pixels}; possible decompression bomb)"
                if im.format == "JPEG" and library == "simplejpeg" and im.mode in ("RGB", "L"):
                    out = _simplejpeg(data if data is not None else path.read_bytes(), im, draft_size)
                    if out is not None:
                        return out, None
                if draft_size and im.format == "JPEG":
                    im.draft(im.mode, (draft_size, draft_size))
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im)), None
    except PermissionError:
        return None, "cannot read file: permission denied"
    except FileNotFoundError:
        return None, "file not found"
    except UnidentifiedImageError:
        return None, "not a recognised image (corrupt header or not an image file)"
    except Image.DecompressionBombError as exc:
        return None, f"too many pixels (possible decompression bomb): {exc}"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, f"corrupt or truncated image data: {exc}"


# EXIF orientation -> the view of an (H, W, 3) array that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT_ARRAY = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                  5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
                  7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: a.transpose(1, 0, 2)[::-1]}


def _simplejpeg(data: bytes, header: Image.Image, draft_size: int | None) -> np.ndarray | None:
    """libjpeg-turbo decode to an upright ``(H, W, 3) uint8`` array; None on bad data.

    The DCT scale is 1/2, 1/4 or 1/8, the smallest that keeps the shorter side >= ``draft_size``, as
    Pillow's draft mode picks it: libjpeg-turbo's n/8 scales (7/8, 5/8...) would leave the final resize
    almost 1:1, so the DCT truncation rather than the interpolation would shape the pixels.
    """
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        scale = next((s for s in (8, 4, 2) if draft_size and min(h, w) // s >= draft_size), 1)  # as Pillow's draft
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // scale), min_width=-(-w // scale))
    except ValueError:
        return None  # corrupt or truncated: Pillow decodes what it tolerates and names the fault
    upright = _UPRIGHT_ARRAY.get(header.getexif().get(0x0112, 1))
    return np.ascontiguousarray(upright(arr)) if upright is not None else arr


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F" and float(np.nanmax(arr, initial=0)) <= 1.0:
            arr = np.nan_to_num(arr) * 255.0
        elif mode != "F":
            arr = arr.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def prepare_image(path: str | os.PathLike, preprocessing: Preprocessing | int,
                  max_pixels: int = DEFAULT_MAX_PIXELS,
                  decoder: Decoder | None = None, data: bytes | None = None) -> tuple[np.ndarray | None, str | None]:
    """Decode and preprocess one image: ``(crop, crop, 3) uint8`` or ``(None, reason)``.

    ``preprocessing`` is a :class:`Preprocessing` or an int ``S`` (shorter side to ``S``, centre crop
    ``S`` x ``S``, bilinear); ``decoder`` defaults to Pillow with JPEG DCT scaling and Pillow's resample.
    The ``pil`` resampler does the resize and the crop as one resample of the centred square of side
    ``shorter * crop / resize``; the ``torchvision`` one resizes the shorter side, then crops, as the
    weights' transforms do. Either way a DCT-scaled decode lands on the same geometry as a full-size
    one. ``data``: the file's bytes, if already read.
    """
    pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.square(int(preprocessing))
    dec = decoder or Decoder()
    draft = pre.resize if dec.jpeg_scaling else None
    if dec.resampler == "torchvision":
        arr, reason = load_pixels(path, max_pixels, draft, dec.library, data)
        return (None, reason) if arr is None else (_resize_torchvision(arr, pre), None)
    im, reason = load_image(path, max_pixels, draft, dec.library, data)
    if im is None:
        return None, reason
    w, h = im.size
    side = min(w, h) * pre.crop / pre.resize
    left, top = (w - side) / 2, (h - side) / 2
    out = im.resize((pre.crop, pre.crop), INTERPOLATIONS[pre.interpolation], box=(left, top, left + side, top + side))
    return np.array(out, dtype=np.uint8), None


def _resize_torchvision(arr: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``(H, W, 3) uint8`` -> ``(crop, crop, 3) uint8`` with torchvision's ``resize`` (antialias) + ``center_crop``.

    The tensor is a channels-last view of the array, the layout of torch's vectorised ``uint8`` resample.
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)
    y = TF.resize(x, [pre.resize], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    return np.ascontiguousarray(TF.center_crop(y, [pre.crop]).permute(1, 2, 0).numpy())
