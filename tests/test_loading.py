"""Decoded batches: threads, worker processes and inline decoding give the same batches in order."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from extract.core.errors import UserError
from extract.images import Decoder, Preprocessing, prepare_image
from extract.loading import CPU_DECODE_NICENESS, ImageItems, batches, resolve_decode_in

PRE = Preprocessing(40, 32)
DEC = Decoder("simplejpeg", True, "torchvision")


@pytest.fixture()
def files(tmp_path):
    """Nine seeded JPEGs and PNGs of several sizes, one corrupt JPEG and one text file, in a fixed order."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(11):
        path = tmp_path / f"f{k:02d}.{'png' if k % 4 == 3 else 'jpg'}"
        if k == 5:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        elif k == 8:
            path.write_text("hello")
        else:
            size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _flatten(out):
    """The batches as comparable lists: good indices, pixel arrays, bad (index, reason), sources."""
    good = [i for g, _, _, _ in out for i in g]
    pixels = [x.numpy() for _, xb, _, _ in out if xb is not None for x in xb]
    bad = [pair for _, _, b, _ in out for pair in b]
    sources = {i: src for _, _, _, s in out for i, src in s.items()}
    return good, pixels, bad, sources


@pytest.mark.parametrize("decode_in, workers", [("threads", 3), ("processes", 2), ("auto", 1)])
def test_same_batches_as_inline_decoding(files, decode_in, workers):
    """Every mode yields the reference (each file decoded on its own by prepare_image) in list order."""
    out = list(batches(files, PRE, DEC, torch.device("cpu"), 10**8, 4, workers, decode_in))
    assert [len(g) + len(b) for g, _, b, _ in out] == [4, 4, 3]  # batches of 4 items, in order
    good, pixels, bad, sources = _flatten(out)
    expected = [prepare_image(p, PRE, decoder=DEC) for p in files]
    assert good == [i for i, (arr, _) in enumerate(expected) if arr is not None] == [0, 1, 2, 3, 4, 6, 7, 9, 10]
    for i, arr in zip(good, pixels):
        np.testing.assert_array_equal(arr.transpose(1, 2, 0), expected[i][0])
    assert [i for i, _ in bad] == [5, 8] and [why for _, why in bad] == [expected[5][1], expected[8][1]]
    assert sorted(sources) == list(range(11))
    assert sources[3] == ImageItems(files, PRE, DEC, 10**8)[3][3]  # size, mtime, sha256 of the bytes decoded


def test_inline_decoding_matches_threads(files):
    inline = _flatten(batches(files, PRE, DEC, torch.device("cpu"), 10**8, 3, 0))
    threads = _flatten(batches(files, PRE, DEC, torch.device("cpu"), 10**8, 3, 2, "threads"))
    assert inline[0] == threads[0] and inline[2] == threads[2] and inline[3] == threads[3]
    assert all(np.array_equal(a, b) for a, b in zip(inline[1], threads[1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_decode_threads_run_at_lower_priority_on_cpu(files, monkeypatch):
    """Each decoding thread is niced; the calling thread (the model's) keeps its priority."""
    seen = []
    real = ImageItems.__getitem__

    def spy(self, i):
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real(self, i)

    monkeypatch.setattr(ImageItems, "__getitem__", spy)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    list(batches(files, PRE, DEC, torch.device("cpu"), 10**8, 4, 2, "threads"))
    assert len(seen) == len(files) and all(name.startswith("decode") for name, _ in seen)
    assert {nice for _, nice in seen} == {min(19, base + CPU_DECODE_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_closing_early_stops_the_decoding_threads(files):
    gen = batches(files, PRE, DEC, torch.device("cpu"), 10**8, 2, 2, "threads")
    next(gen)
    assert any(t.name.startswith("decode") for t in threading.enumerate())
    gen.close()  # as when the model fails mid-run
    assert not any(t.name.startswith("decode") for t in threading.enumerate())


def test_where_decoding_runs():
    assert resolve_decode_in("auto", torch.device("cpu")) == "threads"
    assert resolve_decode_in("auto", torch.device("cuda")) == "processes"
    assert resolve_decode_in("processes", torch.device("cpu")) == "processes"
    with pytest.raises(UserError, match="unknown --decode-in 'fibers'; use one of auto, threads, processes"):
        resolve_decode_in("fibers", torch.device("cpu"))
