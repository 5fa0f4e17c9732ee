import json
import os
import subprocess
import sys

import pytest

# A fresh process allocates, touches and frees a buffer of MiB (argv[1], default 64) 20 times, as a
# forward does with its activations, on the main thread or another one (argv[2] == "thread"), and
# reports the page faults of the last 19 rounds.
_PROBE = """
import ctypes, json, resource, sys, threading
from extract.cpu_memory import keep_freed_memory
tuned = keep_freed_memory()
MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 64
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():
    p = libc.malloc(MIB << 20)
    ctypes.memset(p, 1, MIB << 20)
    libc.free(p)
def rounds(out):
    round_trip()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(19):
        round_trip()
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = []
if sys.argv[2:] == ["thread"]:
    t = threading.Thread(target=rounds, args=(faults,))
    t.start()
    t.join()
else:
    rounds(faults)
print(json.dumps({"tuned": tuned, "faults": faults[0]}))
"""


def _probe(setting: str, *args: str, env: dict | None = None) -> dict:
    env = dict({k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}, BUSCADOR_MALLOC_TUNING=setting,
               **(env or {}))
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is a Linux matter")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    off, on = _probe("0"), _probe("1")
    assert off["tuned"] is False and on["tuned"] is True
    pages = 19 * (64 << 20) // 4096  # what re-faulting every round costs
    assert off["faults"] > pages // 2  # glibc's default: each 64 MiB buffer is fresh mmap memory
    assert on["faults"] < pages // 20  # tuned: the freed buffer is reused


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc arenas are a Linux matter")
def test_a_worker_thread_reuses_big_buffers_only_with_one_arena(monkeypatch):
    """96 MiB buffers on a thread other than the main one, as in a Ray actor: its own arena maps them afresh
    every time even when tuned; the worker environment (one arena) makes them reused."""
    from extract.cpu_memory import worker_env

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("BUSCADOR_MALLOC_TUNING", raising=False)
    env = worker_env()
    assert env == {"MALLOC_ARENA_MAX": "1"}
    pages = 19 * (96 << 20) // 4096
    assert _probe("1", "96", "thread")["faults"] > pages // 2
    assert _probe("1", "96", "thread", env=env)["faults"] < pages // 20
    monkeypatch.setenv("BUSCADOR_MALLOC_TUNING", "0")
    assert worker_env() == {}  # tuning off: the environment is left alone
    monkeypatch.setenv("BUSCADOR_MALLOC_TUNING", "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert worker_env() == {}  # the user's own setting is kept
