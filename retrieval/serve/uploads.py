"""Request bodies and uploaded images, checked before anything else looks at them.

The body is read up to a byte limit (a larger one is refused as soon as it is known to be larger), an
image's type comes from its first bytes, never from its name or content type, and its pixel count is
checked against the same decompression-bomb limit as ``extract`` before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from extract.core.errors import UserError

# magic bytes -> Pillow format name
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "BMP": "image/bmp", "WEBP": "image/webp"}
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp"}


class RequestError(UserError):
    """A request the client must change: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """The image format named by the first bytes (``JPEG``, ``PNG``, ``GIF``, ``BMP``, ``WEBP``), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, fmt in _SIGNATURES:
        if data.startswith(magic):
            return fmt
    return None


def check_image(data: bytes, max_bytes: int, max_pixels: int, what: str = "upload") -> str:
    """Refuse an upload that is too large, not an image, or has too many pixels; return its format.

    The header is parsed (Pillow, restricted to the sniffed format) and the size checked before the
    pixels are decoded; then they are decoded once, so a truncated file is refused here too.
    """
    from PIL import Image

    if not data:
        raise RequestError(f"{what} is empty; send a JPEG, PNG, GIF, BMP or WebP file")
    if len(data) > max_bytes:
        raise RequestError(f"{what} is {len(data)} bytes, over the {max_bytes}-byte limit", 413)
    fmt = sniff(data)
    if fmt is None:
        raise RequestError(f"{what} is not a JPEG, PNG, GIF, BMP or WebP image (by its first bytes)", 415)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise RequestError(f"{what} has {w}x{h} = {w * h} pixels, over the {max_pixels} limit "
                                       "(possible decompression bomb)", 413)
                im.load()
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:
        raise RequestError(f"{what} has too many pixels (possible decompression bomb): {exc}", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RequestError(f"{what} looks like {fmt} but cannot be decoded ({exc})", 415) from None
    return fmt


def decode_base64(text: str, max_bytes: int, what: str = "image") -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix is allowed); refuses oversized or invalid text."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (max_bytes * 4) // 3 + 8:
        raise RequestError(f"{what} is over the {max_bytes}-byte limit", 413)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64") from None


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 once it is known to exceed ``limit`` bytes (header or stream).

    The bytes are kept on the request, so ``request.form()`` / ``request.json()`` parse them afterwards.
    """
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise RequestError(f"request body is {int(length)} bytes, over the {limit}-byte limit", 413)
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(f"request body is over the {limit}-byte limit", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # starlette re-reads a consumed body from here
    return body
