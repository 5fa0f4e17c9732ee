"""IVF lists on disk: the same answers as the in-memory index, a build within the memory budget, a killed
build never leaves a folder that loads half-written, and damaged list files are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from extract.core.errors import UserError
from extract.store import open_features, write_features
from indexes.bench.synthetic import clustered, clustered_blocks
from indexes.build import IndexConfig, build_index_dir, normalize_rows
from indexes.io import IVFDATA_FILE, load_index
from indexes.search import Collection


def _manifest(root, xb, ids, cuts):
    """A shard manifest of ``xb`` cut at ``cuts`` (a distributed extraction's output)."""
    folder = root / "features.h5.shards"
    folder.mkdir()
    shards = []
    for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(xb)])):
        name = f"shard-{s:06d}.h5"
        write_features(folder / name, ids[a:b], xb[a:b], {"model": "resnet18", "shard": s})
        shards.append({"index": s, "file": name, "rows": b - a, "fingerprint": open_features(folder / name).fingerprint})
    (folder / "manifest.json").write_text(json.dumps({"shards": shards, "config": {"model": "resnet18"}}))
    return folder / "manifest.json"


def _in_memory_reference(folder, xb):
    """The same trained quantizer and codec (read from the on-disk index's index.faiss), with fresh
    in-memory lists filled by faiss's own ``add``."""
    import faiss

    ref = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(ref)
    fresh = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(fresh, True)
    fresh.this.disown()
    ivf.ntotal = ref.ntotal = 0
    ref.add(normalize_rows(xb.copy()))
    return ref


@pytest.mark.parametrize("factory, budget", [("IVF32,Flat", 1 << 20), ("IVF32,SQ8", 300 << 10),
                                             ("PCAR32,IVF32_HNSW32,PQ16", 240 << 10)])  # budgets: 4 shards each
def test_on_disk_lists_answer_as_the_in_memory_index(tmp_path, factory, budget):
    import faiss

    n, d = 6000, 48
    xb = clustered(n, d, seed=4)
    ids = [f"img/{i:05d}.jpg" for i in range(n)]
    manifest = _manifest(tmp_path, xb, ids, [2500, 4100])
    meta = build_index_dir(manifest, tmp_path / "ix", IndexConfig(factory=factory, memory_budget=budget, on_disk=True),
                           quiet=True)
    storage = meta["storage"]
    assert storage["lists"] == "on_disk" and storage["shards"] >= 3, storage
    assert set(meta["files"]) == {"index.faiss", IVFDATA_FILE}
    loaded = load_index(tmp_path / "ix")
    assert isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.index).invlists), faiss.OnDiskInvertedLists)
    ref = _in_memory_reference(tmp_path / "ix", xb)
    xq = normalize_rows(clustered(40, d, seed=9) + 0.05 * xb[:40])
    ps = faiss.ParameterSpace()
    for nprobe in (1, 4, 32):
        for index in (loaded.index, ref):
            ps.set_index_parameter(index, "nprobe", nprobe)
            ps.set_index_parameter(index, "max_codes", 0)
        D, I = loaded.index.search(xq, 10)
        D0, I0 = ref.search(xq, 10)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
    if factory == "IVF32,Flat":  # every list probed: exact search, the brute-force answer
        exact = np.argsort(-(xq @ normalize_rows(xb.copy()).T), axis=1, kind="stable")[:, :10]
        assert (I == exact).mean() > 0.99
    hits = Collection(tmp_path / "ix").search_ids(["img/04321.jpg"], 1).hits[0]
    assert [h.id for h in hits] == ["img/04321.jpg"]


_CHILD = textwrap.dedent("""
    import json, sys
    from indexes.build import IndexConfig, build_index_dir

    def status_mib(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field)) / 1024

    features, out, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # warm-up at the same block sizes (BLAS, OpenMP and HDF5 allocate their buffers on first use), then the
    # peak is reset to the current RSS
    build_index_dir(features, out + "-warm", IndexConfig(factory="IVF8,SQ8", train_size=500, memory_budget=budget,
                                                         on_disk=True), quiet=True)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status_mib("VmRSS")
    meta = build_index_dir(features, out, IndexConfig(factory="IVF32,Flat", memory_budget=budget, train_size=1280), quiet=True)
    print(json.dumps({"base": base, "peak": status_mib("VmHWM"), "storage": meta["storage"], "n": meta["n"],
                      "max_codes": meta["search_params"]["max_codes"]}))
""")


def test_index_bigger_than_the_budget_is_built_within_it(tmp_path):
    n, d, budget = 30_000, 512, 16 << 20
    path = tmp_path / "features.h5"
    xb = np.concatenate([x for _, x in clustered_blocks(n, d, 16384, seed=3)])
    write_features(path, [f"{i}.jpg" for i in range(n)], xb, {"model": "resnet18"})
    del xb
    assert path.stat().st_size > 3 * budget
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(tmp_path / "ix"), str(budget)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["n"] == n and got["storage"]["lists"] == "on_disk", got
    assert "more than the index share" in got["storage"]["reason"]
    assert (tmp_path / "ix" / IVFDATA_FILE).stat().st_size > 3 * budget  # the index itself is bigger than the budget
    assert got["peak"] - got["base"] <= budget / 2**20, got
    # one query reads at most what the budget leaves after the resident part (2,056 bytes a Flat entry)
    assert got["max_codes"] * 2056 <= 0.3 * budget, got


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from indexes import ondisk
    from indexes.build import IndexConfig, build_index_dir

    flush = ondisk.OnDiskLists._flush
    def flush_then_die(self):
        flush(self)
        if len(self.shards) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    ondisk.OnDiskLists._flush = flush_then_die
    build_index_dir(sys.argv[1], sys.argv[2], IndexConfig(factory="IVF16,Flat", memory_budget=512 << 10), quiet=True)
""")


@pytest.mark.parametrize("old", [False, True])
def test_killed_build_leaves_the_old_folder_or_none(tmp_path, old):
    n, d = 4000, 32
    xb = clustered(n, d, seed=2)
    path = tmp_path / "features.h5"
    write_features(path, [f"{i}.jpg" for i in range(n)], xb, {"model": "resnet18"})
    out = tmp_path / "ix"
    if old:
        write_features(tmp_path / "old.h5", [f"{i}.jpg" for i in range(500)], xb[:500], {"model": "resnet18"})
        build_index_dir(tmp_path / "old.h5", out, IndexConfig(factory="IVF8,SQ8", on_disk=True), quiet=True)
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(path), str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert any(p.name.endswith(".ivl") for p in tmp_path.glob(".ix.build-*/*"))  # it died between shards
    if old:
        loaded = load_index(out)
        assert loaded.meta["n"] == 500 and loaded.index.ntotal == 500
    else:
        assert not out.exists()
        with pytest.raises(UserError, match="does not exist"):
            load_index(out)
    meta = build_index_dir(path, out, IndexConfig(factory="IVF16,Flat", memory_budget=512 << 10), quiet=True)
    assert meta["n"] == n and meta["storage"]["lists"] == "on_disk"
    assert not list(tmp_path.glob(".ix.build-*"))  # the dead build's work folder is gone


def test_damaged_list_file_is_refused(tmp_path):
    xb = clustered(3000, 32, seed=6)
    path = tmp_path / "features.h5"
    write_features(path, [f"{i}.jpg" for i in range(3000)], xb, {"model": "resnet18"})
    r = CliRunner().invoke(cli, ["index", "build", str(path), str(tmp_path / "ix"), "--index", "IVF16,SQ8", "--on-disk", "-q"])
    assert r.exit_code == 0 and "lists on disk" in r.output, r.output
    data = tmp_path / "ix" / IVFDATA_FILE
    good = data.read_bytes()
    data.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(UserError, match=r"index.ivfdata has sha256 \w+ but index.json says \w+") as exc:
        load_index(tmp_path / "ix")
    assert "\n" not in str(exc.value)
    r = CliRunner().invoke(cli, ["search", "--index", str(tmp_path / "ix"), "--id", "5.jpg"])
    assert r.exit_code != 0 and r.output.count("\n") == 1 and "index.ivfdata has sha256" in r.output, r.output
    data.write_bytes(good[:-4096])  # unchecked load: a short file is refused, never mapped past its end
    with pytest.raises(UserError, match="index.ivfdata is .* bytes but"):
        load_index(tmp_path / "ix", verify=False)


def test_on_disk_index_is_rebuilt_when_rows_are_added(tmp_path):
    xb = clustered(3000, 32, seed=7)
    ids = [f"{i}.jpg" for i in range(3000)]
    path = tmp_path / "features.h5"
    write_features(path, ids[:2000], xb[:2000], {"model": "resnet18"})
    config = IndexConfig(factory="IVF16,SQ8", on_disk=True)
    build_index_dir(path, tmp_path / "ix", config, quiet=True)
    write_features(path, ids, xb, {"model": "resnet18"})
    meta = build_index_dir(path, tmp_path / "ix", config, quiet=True)
    assert meta["update"]["action"] == "rebuilt" and "on-disk lists" in meta["update"]["reason"]
    assert meta["n"] == 3000 and load_index(tmp_path / "ix").index.ntotal == 3000
    meta = build_index_dir(path, tmp_path / "ix", IndexConfig(factory="IVF16,SQ8", on_disk=False), quiet=True)
    assert meta["update"]["action"] == "rebuilt" and meta["storage"] == {"lists": "memory"}
    assert IVFDATA_FILE not in meta["files"] and not (tmp_path / "ix" / IVFDATA_FILE).exists()


def test_auto_keeps_the_lists_on_disk_when_no_kind_fits_in_memory(tmp_path):
    n, d = 20_000, 8
    xb = clustered(n, d, seed=11)
    path = tmp_path / "features.h5"
    write_features(path, [f"{i}.jpg" for i in range(n)], xb, {"model": "resnet18"})
    budget = ["--memory-budget", "256KiB"]  # even 8-byte codes and ids (320 KB) are over its index share
    r = CliRunner().invoke(cli, ["index", "build", str(path), str(tmp_path / "mem"), *budget, "--in-memory", "-q"])
    assert r.exit_code != 0 and "do not fit a memory budget" in r.output and r.output.count("\n") == 1, r.output
    r = CliRunner().invoke(cli, ["index", "build", str(path), str(tmp_path / "ix"), *budget, "-q"])
    assert r.exit_code == 0 and "lists on disk" in r.output, r.output
    meta = load_index(tmp_path / "ix").meta
    # the best-recall kind whose queries can still scan 1/8 of the rows within the budget (Flat entries could not)
    assert meta["factory"] == "IVF32_HNSW32,SQ8" and meta["storage"]["reason"].startswith("no index kind")
    assert meta["storage"]["resident_bytes"] <= 0.6 * (256 << 10)
    xq = normalize_rows(xb[:50].copy())
    exact = np.argsort(-(xq @ normalize_rows(xb.copy()).T), axis=1, kind="stable")[:, :1]
    hits = Collection(tmp_path / "ix").search_vectors(xb[:50], 1).hits
    assert np.mean([h[0].id == f"{e}.jpg" for h, e in zip(hits, exact[:, 0])]) >= 0.9  # each row finds itself


def test_benchmark_compares_the_same_lists_mapped_and_in_memory(tmp_path):
    from indexes.bench.ondisk import ondisk_benchmark

    got = ondisk_benchmark(6000, 32, 512 << 10, nq=50, folder=tmp_path)
    assert got["storage"]["lists"] == "on_disk" and got["storage"]["shards"] >= 2, got
    assert got["recall@10_on_disk"] == got["recall@10_in_memory"] > 0.3, got  # same lists, same answers
    assert got["features_mib"] * 2**20 > 2 * (512 << 10)
