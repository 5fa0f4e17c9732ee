"""Indexed images for the web page: the original bytes or a cached JPEG thumbnail, by stored id only.

A request names an id; the id is looked up in the feature file's id table, and the file read is the one
that table's row points to (under the image root recorded at extraction). No part of the request is
ever joined to a path, so ``../``, absolute paths and encoded variants simply are unknown ids.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from retrieval.serve.config import ServeConfig
from retrieval.serve.uploads import MEDIA_TYPES, RequestError, sniff


class _Thumbs:
    """A byte-bounded LRU of encoded thumbnails, safe across threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = max_bytes, 0
        self.items: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            data = self.items.get(key)
            if data is not None:
                self.items.move_to_end(key)
            return data

    def put(self, key, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = data
            self.used += len(data)
            while self.used > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.used -= len(old)


class ImageStore:
    """Images of one collection: ``row_of`` (id -> row) and ``ids`` from its feature file."""

    def __init__(self, row_of: dict[str, int], ids: list[str], features_config: dict, config: ServeConfig):
        self.row_of, self.ids, self.features_config, self.config = row_of, ids, features_config, config
        self._thumbs = _Thumbs(config.thumb_cache_bytes)

    def get(self, image_id: str, size: int | None) -> tuple[bytes, str]:
        """``(bytes, media type)`` of an indexed image, or its JPEG thumbnail (longest side ``size``).

        Only exact stored ids are served; the path comes from the feature file, never from the request.
        """
        from indexes.search import image_path

        row = self.row_of.get(image_id)
        if row is None:
            raise RequestError(f"no indexed image has id {image_id[:200]!r}", 404)
        path = image_path(self.features_config, self.ids[row])
        if size is None:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise RequestError(f"image {image_id!r} is indexed but cannot be read on the server ({exc.strerror})", 404) from None
            fmt = sniff(data)
            if fmt is None:
                raise RequestError(f"image {image_id!r} is not in a format browsers show", 415)
            return data, MEDIA_TYPES[fmt]
        lo, hi = self.config.thumb_sizes
        if not lo <= size <= hi:
            raise RequestError(f"size must be between {lo} and {hi}; got {size}", 422)
        cached = self._thumbs.get((row, size))
        if cached is None:
            cached = self._thumbnail(path, size, image_id)
            self._thumbs.put((row, size), cached)
        return cached, "image/jpeg"

    def _thumbnail(self, path: str, size: int, image_id: str) -> bytes:
        import io

        from extract.images import load_image

        im, reason = load_image(path, self.config.max_pixels, draft_size=size)
        if im is None:
            raise RequestError(f"image {image_id!r} is indexed but cannot be shown ({reason})", 404)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

