"""A feature file several times the memory budget is indexed within that budget (peak RSS, measured)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from extract.store import write_features
from indexes.bench.synthetic import clustered_blocks

N, D, BUDGET = 30_000, 512, 16 << 20  # CNN-like width: the rows dominate, not the (packed) id list

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from indexes.build import ArrayFeatures, IndexConfig, build_index_dir
    from indexes.bench.synthetic import clustered

    def status_mib(field):  # VmRSS now, VmHWM peak (per process image: not inherited through fork + exec)
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024

    features, out, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = IndexConfig(memory_budget=budget)
    # warm-up: libraries allocate their buffers (BLAS, OpenMP, HDF5) on first use
    build_index_dir(features, out + "-warm", IndexConfig(factory="IVF16,PQ64x4fs", train_size=2000, memory_budget=budget,
                                                         calibration_queries=50), quiet=True)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS: the warm-up's
        fh.write("5")                                 # own peak is not the build's
    base = status_mib("VmRSS")
    meta = build_index_dir(features, out, config, quiet=True)
    peak = status_mib("VmHWM")
    print(json.dumps({"base": base, "peak": peak, "factory": meta["factory"], "n": meta["n"]}))
""")


def test_build_stays_within_the_memory_budget(tmp_path):
    path = tmp_path / "features.h5"
    xb = np.concatenate([x for _, x in clustered_blocks(N, D, 16384, seed=3)])
    write_features(path, [f"{i}.jpg" for i in range(N)], xb, {"model": "resnet18"})
    del xb
    assert path.stat().st_size > 3 * BUDGET  # loading the features whole could not fit
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tmp_path / "ix"), str(BUDGET)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["n"] == N and "x4fs" in got["factory"]
    assert got["peak"] - got["base"] <= BUDGET / 2**20, got
