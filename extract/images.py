"""List the images to extract and decode them robustly to RGB.

``list_images`` accepts a folder (searched recursively), a text file with one path per line, or a
COCO-style JSON (``images[].file_name``). Image ids are POSIX paths relative to the image root.

``load_image`` / ``prepare_image`` never raise for a bad image: they return a short reason string
instead (corrupt or truncated data, not an image, too many pixels, unreadable file), so one bad file
never stops an extraction.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from extract.core.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
_WHITE = (255, 255, 255)


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
    ids, seen, dups = [], set(), 0
    for entry in entries:
        i = _to_id(entry, base)
        if i in seen:
            dups += 1
            continue
        seen.add(i)
        ids.append(i)
    if dups:
        log.warning("%d duplicate image paths in %s were dropped", dups, src)
    return ImageList(base, ids, dups, str(src))


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


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Decode ``path`` to an upright 8-bit RGB image; return ``(image, None)`` or ``(None, reason)``.

    Transparency is composited on white, 16-bit data is scaled (not clipped) to 8 bits, EXIF
    orientation is applied, and images above ``max_pixels`` are refused before decoding.
    ``draft_size`` lets JPEG decoding downscale on the fly while staying at least that large.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            w, h = im.size
            if w * h > max_pixels:
                return None, f"too many pixels ({w}x{h} = {w * h} > limit {max_pixels}; possible decompression bomb)"
            if draft_size and im.format == "JPEG":
                im.draft(im.mode, (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im), None
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


def prepare_image(path: str | os.PathLike, image_size: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """Decode, resize the shorter side to ``image_size`` and centre-crop: ``(S, S, 3) uint8`` or a reason."""
    im, reason = load_image(path, max_pixels, draft_size=image_size)
    if im is None:
        return None, reason
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    out = im.resize((image_size, image_size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.array(out, dtype=np.uint8), None
