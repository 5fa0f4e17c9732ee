import json
import os
import subprocess
import sys

import pytest

# A fresh process allocates, touches and frees a 64 MiB buffer 20 times, as a forward does with its
# activations, and reports the page faults of the last 19 rounds.
_PROBE = """
import ctypes, json, resource
from extract.cpu_memory import keep_freed_memory
tuned = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def round_trip():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    round_trip()
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

def _probe(setting: str) -> dict:
    env = dict(os.environ, BUSCADOR_MALLOC_TUNING=setting)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is a Linux matter")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    off, on = _probe("0"), _probe("1")
    assert off["tuned"] is False and on["tuned"] is True
    pages = 19 * (64 << 20) // 4096  # what re-faulting every round costs
    assert off["faults"] > pages // 2  # glibc's default: each 64 MiB buffer is fresh mmap memory
    assert on["faults"] < pages // 20  # tuned: the freed buffer is reused
