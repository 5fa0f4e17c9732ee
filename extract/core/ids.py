"""Image ids packed into one buffer: a million ids cost their UTF-8 bytes plus 5 bytes each, not ~100 bytes
of Python string objects.

:class:`PackedIds` is a read-only sequence of ``str``: ``ids[i]`` decodes one id, ``ids[a:b]`` gives a list,
iteration decodes as it goes. The buffer is ``\\0`` + the UTF-8 ids, each followed by ``\\0`` (a byte no
file name holds), so :meth:`PackedIds.row` finds an id with one ``bytes.find`` and no lookup table.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise

import numpy as np

SEP = b"\x00"


def _offset_dtype(total: int):
    return np.uint32 if total < 2**32 else np.uint64


class PackedIds(Sequence):
    """``n`` ids in one ``bytes`` buffer with ``(n + 1,)`` start offsets (see the module doc)."""

    __slots__ = ("_blob", "_starts")

    def __init__(self, blob: bytes, starts: np.ndarray):
        self._blob, self._starts = blob, starts

    @classmethod
    def from_encoded(cls, chunks: Iterable[Sequence[bytes]]) -> PackedIds:
        """From chunks of UTF-8 encoded ids (e.g. blocks read from an HDF5 string dataset)."""
        parts, lengths = [SEP], []
        for chunk in chunks:
            if len(chunk):
                parts.append(SEP.join(chunk) + SEP)
                lengths.append(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)))
        blob = b"".join(parts)
        sizes = np.concatenate(lengths) + 1 if lengths else np.zeros(0, np.int64)
        starts = np.empty(len(sizes) + 1, dtype=_offset_dtype(len(blob)))
        starts[0] = 1
        np.cumsum(sizes, out=starts[1:])
        starts[1:] += 1
        return cls(blob, starts)

    @classmethod
    def from_strings(cls, ids: Iterable[str], chunk: int = 65536) -> PackedIds:
        def chunks():
            block: list[bytes] = []
            for i in ids:
                block.append(i.encode("utf-8"))
                if len(block) == chunk:
                    yield block
                    block = []
            yield block

        return cls.from_encoded(chunks())

    @classmethod
    def concat(cls, parts: Sequence[PackedIds]) -> PackedIds:
        """The ids of ``parts`` one after the other (e.g. the shards of a manifest)."""
        blobs, starts, base = [SEP], [], 0
        for p in parts:
            blobs.append(p._blob[1:])
            starts.append(p._starts[:-1].astype(np.uint64) + base)
            base += len(p._blob) - 1
        blob = b"".join(blobs)
        out = np.empty(sum(len(x) for x in starts) + 1, dtype=_offset_dtype(len(blob)))
        out[:-1] = np.concatenate(starts) if starts else np.zeros(0, np.uint64)
        out[-1] = len(blob)
        return cls(blob, out)

    def __len__(self) -> int:
        return len(self._starts) - 1

    def _one(self, i: int) -> str:
        return self._blob[int(self._starts[i]) : int(self._starts[i + 1]) - 1].decode("utf-8")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"id row {i} out of range for {len(self)} ids")
        return self._one(i)

    def __iter__(self) -> Iterator[str]:
        blob, n = self._blob, len(self)
        for lo in range(0, n, 65536):
            starts = self._starts[lo : min(n, lo + 65536) + 1].tolist()
            for a, b in pairwise(starts):
                yield blob[a : b - 1].decode("utf-8")

    def __eq__(self, other) -> bool:
        if isinstance(other, PackedIds):
            return self._blob == other._blob
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        head = ", ".join(repr(i) for i in self[:3])
        return f"PackedIds([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    def __contains__(self, image_id) -> bool:
        return isinstance(image_id, str) and self.row(image_id) is not None

    def row(self, image_id: str) -> int | None:
        """The first row holding ``image_id``, or None (one scan of the buffer: ~ms per million ids)."""
        try:
            key = image_id.encode("utf-8")
        except UnicodeEncodeError:  # not storable, so not stored
            return None
        pos = self._blob.find(SEP + key + SEP)
        if pos < 0:
            return None
        return int(np.searchsorted(self._starts, pos + 1))

    def index(self, image_id, start: int = 0, stop=None) -> int:
        row = self.row(image_id)
        if row is None or row < start or (stop is not None and row >= stop):
            raise ValueError(f"{image_id!r} is not among the ids")
        return row

    def check_utf8(self) -> None:
        """Raise ``UnicodeDecodeError`` unless every id is valid UTF-8."""
        self._blob.decode("utf-8")

    @property
    def nbytes(self) -> int:
        """Bytes held: the buffer and the offsets (what :func:`packed_bytes` estimates)."""
        return len(self._blob) + self._starts.nbytes


def packed_bytes(n: int, mean_utf8_len: float) -> int:
    """Bytes :class:`PackedIds` holds for ``n`` ids of ``mean_utf8_len`` UTF-8 bytes on average."""
    per = 4 if n * (mean_utf8_len + 1) < 2**32 else 8
    return round(n * (mean_utf8_len + 1) + 1 + (n + 1) * per)
