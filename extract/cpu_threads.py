"""OpenMP threads that wait for work sleep instead of spinning, so decoding workers get the cores they free.

torch's CPU kernels run on OpenMP threads (libgomp). By default a thread that reaches the end of a
parallel region spins for a while before it sleeps; a CNN forward is hundreds of short regions, so its
threads spin between most of them. Alone on the machine that costs nothing, but decoding workers and
any other process on the same cores then compete with busy-waiting threads: on 2 shared cores
efficientnet-lite0's forward with 2 threads spent about 128 ms of CPU per image spinning and computing,
against about 49 ms with ``OMP_WAIT_POLICY=PASSIVE``, at the same images/s or better.

libgomp reads the policy once, when torch loads it, so :func:`sleep_when_idle` runs when the ``extract``
package is imported (before any module of it imports torch). A policy the user set is kept;
``BUSCADOR_OMP_PASSIVE=0`` leaves OpenMP's default.
"""

from __future__ import annotations

import os
import sys

ENV = "BUSCADOR_OMP_PASSIVE"
POLICY = "OMP_WAIT_POLICY"


def sleep_when_idle() -> bool:
    """Ask OpenMP for passive waiting unless told otherwise; True when torch will load with it."""
    if os.environ.get(ENV, "1") != "0":
        os.environ.setdefault(POLICY, "PASSIVE")
    return os.environ.get(POLICY, "").upper() == "PASSIVE" and "torch" not in sys.modules


def wait_policy() -> str:
    """The OpenMP wait policy torch runs with here (``default`` when none is set)."""
    return os.environ.get(POLICY, "default").lower() if "torch" in sys.modules else "not loaded"
