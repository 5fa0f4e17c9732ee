"""Keep freed activation memory in the process on CPU, instead of handing it back to the OS every batch.

A CNN forward on CPU allocates activation buffers of tens of MiB per batch (resnet152, batch 16: the
first convolution's output alone is 51 MiB). glibc serves every allocation above its mmap threshold
(which never grows past 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``, so each batch
page-faults and zeroes those pages again: on 2 cores a fifth of extraction time went to the kernel.
Raising the mmap and trim thresholds with ``mallopt`` lets the next batch reuse the freed memory; the
cost is that the process keeps its peak heap (a few hundred MiB more resident memory).

That holds for the main thread. glibc gives other threads arenas of their own, whose heaps are at most
64 MiB: a bigger block is mmapped and unmapped on every allocation whatever the thresholds. A Ray actor
runs its tasks on a thread pool, so there efficientnet-lite0's forward (batch 16, 77 MiB buffers) took
about 120,000 page faults per batch and spent 40 % of its CPU time in the kernel. A process that runs
its forward off the main thread is started with :func:`worker_env`: one arena, the main one, for every
thread.

Only glibc has ``mallopt``; elsewhere nothing changes. ``BUSCADOR_MALLOC_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

ENV = "BUSCADOR_MALLOC_TUNING"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # allocations up to 1 GiB come from the heap; up to 1 GiB of free heap top is kept
ARENAS = "MALLOC_ARENA_MAX"  # read by glibc once, when the process starts


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True when they are (or already were) raised."""
    tuned = False
    if os.environ.get(ENV, "1") == "0":
        log.info("allocator tuning off (%s=0)", ENV)
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            log.info("no glibc mallopt here; allocator left as it is")
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            tuned = bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD))
            log.info("allocator: freed memory up to %d MiB kept for reuse: %s", THRESHOLD >> 20, tuned)
    return tuned


def worker_env() -> dict[str, str]:
    """Environment variables for a process that runs its forward off the main thread: one malloc arena.

    Empty when tuning is off (``BUSCADOR_MALLOC_TUNING=0``) or ``MALLOC_ARENA_MAX`` is already set here.
    """
    if os.environ.get(ENV, "1") == "0" or ARENAS in os.environ:
        return {}
    return {ARENAS: "1"}
