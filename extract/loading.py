"""Decoded batches for the extraction loop, in order: decoding threads on CPU, worker processes on GPU.

Each item is read once (:func:`~extract.collection.read_source`: the bytes hashed are the bytes decoded) and
decoded to the network's ``uint8`` input by :func:`~extract.images.prepare_image`; a bad image becomes a reason,
never an exception. A batch is ``(indices of good images, (n, 3, S, S) uint8 or None, [(index, reason)],
{index: source})``.

Where the decoding runs (``decode_in``):

- ``threads`` (the default on CPU): a pool of ``workers`` threads in this process, at a lower priority
  (niceness :data:`CPU_DECODE_NICENESS` per thread, Linux), a few batches ahead of the model. libjpeg-turbo,
  Pillow, hashing and torch's resize release the GIL, so the threads decode while the model's threads run.
  Nothing is forked: worker processes forked from a process whose model has already run share its heap
  copy-on-write, and every page of activations the model then writes is copied once (about 5 ms of kernel
  time per image for EfficientNet-Lite0 at batch 16 on 2 cores, 40 % of its non-model CPU); a thread also
  starts at once and hands its pixels over without shared-memory files.
- ``processes`` (the default on CUDA): a torch ``DataLoader`` with ``workers`` processes and page-locked
  batches; a GPU host's cores are for decoding, and processes do not share one interpreter lock. On CPU
  they run at the same lower priority. The first batch is decoded here while the workers start.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from extract.collection import read_source
from extract.core.errors import UserError
from extract.images import Decoder, Preprocessing, prepare_image

DECODE_IN = ("auto", "threads", "processes")
# On CPU decoding runs at this lower priority: the model's threads get a core back the moment they wake up,
# and decoding fills the gaps between their parallel regions (about 2 ms of CPU per image against 40+ for even
# a small model's forward). A GPU run leaves them as they are: there the host's cores are for decoding.
CPU_DECODE_NICENESS = 10
BATCHES_AHEAD = 4  # decoded (or in decoding) ahead of the model, as the DataLoader's prefetch_factor


class ImageItems(Dataset):
    """Item ``i`` -> ``(offset + i, (S, S, 3) uint8 tensor or None, reason or None, source)``; never raises."""

    def __init__(self, paths: Sequence[Path], preprocessing: Preprocessing, decoder: Decoder, max_pixels: int,
                 offset: int = 0):
        self.paths = list(paths)
        self.preprocessing = preprocessing
        self.decoder = decoder
        self.max_pixels = max_pixels
        self.offset = offset

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        data, source = read_source(self.paths[i])  # one read: the bytes hashed are the bytes decoded
        arr, reason = prepare_image(self.paths[i], self.preprocessing, self.max_pixels, self.decoder, data)
        return self.offset + i, (None if arr is None else torch.from_numpy(arr)), reason, source


def collate(items):
    """-> (indices of good images, (n, 3, S, S) uint8 or None, [(index, reason)] of bad ones, {index: source})."""
    good = [(i, x) for i, x, _, _ in items if x is not None]
    bad = [(i, why) for i, x, why, _ in items if x is None]
    xb = torch.stack([x for _, x in good]).permute(0, 3, 1, 2) if good else None
    return [i for i, _ in good], xb, bad, {i: src for i, _, _, src in items}


def check_decode_in(decode_in: str) -> None:
    """Refuse a name that is not one of :data:`DECODE_IN` (before any work is done)."""
    if decode_in not in DECODE_IN:
        raise UserError(f"unknown --decode-in {decode_in!r}; use one of {', '.join(DECODE_IN)}")


def resolve_decode_in(decode_in: str, device: torch.device) -> str:
    """``threads`` or ``processes`` for ``decode_in`` on ``device`` (``auto``: threads on CPU, processes elsewhere)."""
    check_decode_in(decode_in)
    if decode_in == "auto":
        return "threads" if device.type == "cpu" else "processes"
    return decode_in


def batches(paths: list[Path], preprocessing: Preprocessing, decoder: Decoder, device: torch.device,
            max_pixels: int, batch_size: int, workers: int, decode_in: str = "auto") -> Iterator:
    """The collated batches of ``paths`` in order, decoded by ``workers`` threads or processes (0: here)."""
    items = ImageItems(paths, preprocessing, decoder, max_pixels)
    if not workers:
        for start in range(0, len(paths), batch_size):
            yield collate([items[i] for i in range(start, min(start + batch_size, len(paths)))])
        return
    niceness = CPU_DECODE_NICENESS if device.type == "cpu" else 0
    if resolve_decode_in(decode_in, device) == "threads":
        yield from _thread_batches(items, batch_size, workers, niceness)
    else:
        yield from _process_batches(items, batch_size, workers, niceness, pin=device.type == "cuda")


def _lower_thread_priority(niceness: int) -> None:
    """Thread-pool initializer: this thread (not the process) at ``niceness`` where the system allows it."""
    if niceness and hasattr(os, "setpriority"):
        try:  # on Linux a thread id names one thread: the model's threads keep their priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError:  # not allowed here: keep the priority
            pass


def _thread_batches(items: ImageItems, batch_size: int, workers: int, niceness: int) -> Iterator:
    n = len(items)
    window: deque = deque()  # futures of the next batches, in order
    starts = iter(range(0, n, batch_size))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode",
                              initializer=_lower_thread_priority, initargs=(niceness,))
    try:
        def fill() -> None:
            while len(window) < BATCHES_AHEAD:
                start = next(starts, None)
                if start is None:
                    return
                window.append([pool.submit(items.__getitem__, i) for i in range(start, min(start + batch_size, n))])

        fill()
        while window:
            batch = window.popleft()
            fill()
            yield collate([f.result() for f in batch])
    finally:  # stopped early (an error, a closed generator): drop what was queued, wait for what runs
        for batch in window:
            for f in batch:
                f.cancel()
        pool.shutdown(wait=True)


def _worker_init(niceness: int, _worker_id: int) -> None:
    torch.set_num_threads(1)
    if niceness:
        try:
            os.nice(niceness)
        except OSError:  # not allowed here: keep the priority
            pass


def _process_batches(items: ImageItems, batch_size: int, workers: int, niceness: int, pin: bool) -> Iterator:
    """DataLoader worker processes. The first batch is decoded here while the workers start (forking them and
    their first batch would otherwise leave the model idle)."""
    first = min(batch_size, len(items))
    rest = ()
    if first < len(items):  # the workers start now, while the first batch is decoded below
        tail = ImageItems(items.paths[first:], items.preprocessing, items.decoder, items.max_pixels, first)
        rest = iter(DataLoader(tail, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                               pin_memory=pin, worker_init_fn=functools.partial(_worker_init, niceness),
                               prefetch_factor=BATCHES_AHEAD))
    good, xb, bad, sources = collate([items[i] for i in range(first)])
    yield good, (xb.pin_memory() if pin and xb is not None else xb), bad, sources
    yield from rest
