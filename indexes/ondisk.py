"""IVF indexes bigger than the memory budget: lists built in shards, merged into one file on disk, mapped to search.

Build. The IVF kind is trained once on a sample (:func:`indexes.fill.train`). The rows are then added
block by block (:func:`indexes.fill.fill`: finite check, normalisation, content hash, calibration ground
truth) into the index's inverted lists; whenever those hold a shard's worth of rows they are written to
a shard file in a work folder beside the index folder and replaced by empty lists, so every shard shares
the one trained coarse quantizer and codec, and row ``i`` keeps id ``i``. The shards are merged list by
list into ``index.ivfdata`` in faiss's ``OnDiskInvertedLists`` layout (list ``j``: its codes, then its
int64 ids), which :func:`indexes.io.save_index` moves into the staging folder beside ``index.faiss``
(quantizer, codec, list offsets) and the sidecar, its checksum covering both, before the one rename that
replaces the index folder. The work folder and its shards are then removed; a build killed before the
rename leaves the old folder as it was (or none), and the next build removes the orphaned work folder.

Memory. What stays resident is the trained part (:func:`resident_bytes`): the coarse quantizer and its
HNSW graph, PCA/OPQ matrices, PQ/SQ codebooks, a re-ranking stage's vectors (``Refine``) and the list
metadata. The index share of ``--memory-budget`` less that part bounds, in turn, a shard's lists in memory
(at three times their bytes: list buffers grow by doubling; freed memory is handed back to the system
between shards), the pages of shards and ``index.ivfdata`` mapped at once while merging (dropped with
``madvise(MADV_DONTNEED)`` as the merge moves on; written pages stay in the page cache and reach the disk),
and the entries one query scans (``max_codes``, recorded with the search parameters, so the build-time
calibration, which drops the pages after each query, and every later query map at most that much).

Searching maps ``index.ivfdata`` read-only (:func:`map_lists`): a query reads the lists it probes, as file
pages the kernel shares and evicts under memory pressure rather than memory the process holds.

When. ``--on-disk`` always, ``--in-memory`` never; by default when an explicit IVF kind's estimated bytes
exceed the index share of ``--memory-budget``, and for ``--index auto`` when no candidate fits that share in
memory (:func:`choose_on_disk` then takes the best-recall kind whose resident part fits, passing over kinds
whose entries are so big that ``max_codes`` is under ``MIN_SCAN`` of the rows). Fast-scan lists
(``PQ..x4fs``) are packed in blocks of 32 vectors and cannot be stored this way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from extract.core.errors import UserError
from indexes.choose import Plan, candidates, estimate_bytes, plan
from indexes.fill import INDEX_SHARE

log = logging.getLogger(__name__)

MIN_SCAN = 1 / 8  # the auto on-disk choice wants a query to be able to scan this share of the rows
GROWTH = 3  # list buffers grow by doubling, leaving the smaller ones freed behind: a shard's lists take ~3x their bytes
_MADV_DONTNEED = 4
_WORK_PREFIX = ".build-"


def lists_unsupported(index) -> str | None:
    """None when the inverted lists of ``index`` can be stored on disk; else why not."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return f"{type(faiss.downcast_index(index)).__name__} has no inverted lists"
    if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQR):
        return "IVFPQR keeps its re-ranking codes inside the lists"
    if ivf.invlists.code_size == faiss.InvertedLists.INVALID_CODE_SIZE:
        return "fast-scan lists are packed in blocks of 32 vectors"
    return None


def _disk_capable(factory: str) -> bool:
    return "IVF" in factory and not re.search(r"PQ\d+x\d+fs", factory)


def resident_bytes(factory: str, n: int, d: int) -> int:
    """Bytes an on-disk ``factory`` index over ``n`` x ``d`` keeps in memory: everything but the list codes and ids."""
    empty, full = estimate_bytes(factory, 0, d), estimate_bytes(factory, n, d)
    return int(empty["total"] + full.get("refine", 0) - empty.get("refine", 0))


def entry_bytes(factory: str, n: int, d: int) -> float:
    """Bytes of one vector's entry in the on-disk lists: its code and its 8-byte id."""
    empty, full = estimate_bytes(factory, 0, d), estimate_bytes(factory, max(n, 1), d)
    return (full["codes"] - empty["codes"] + full["ids"]) / max(n, 1)


def choose_on_disk(n: int, d: int, share: int, max_query_ms: float | None = None, max_lists: int | None = None) -> Plan:
    """The best-recall candidate kind with on-disk lists whose resident part fits ``share`` bytes (and, with
    ``max_query_ms``, whose estimated query time fits it; else the fastest that fits). ``max_lists`` caps the
    IVF lists first (the training sample's limit), since the coarse quantizer is most of what stays resident."""
    def capped(f: str) -> str:
        return re.sub(r"IVF(\d+)", lambda m: f"IVF{min(int(m.group(1)), max_lists)}", f, count=1) if max_lists else f

    plans = [plan(capped(f), n, d) for f in candidates(n, d) if _disk_capable(f)]
    fits = [p for p in plans if resident_bytes(p.factory, n, d) <= share]
    # a query scans at most max_codes entries (see OnDiskLists.max_codes); a kind whose entries are so big that
    # this is under MIN_SCAN of the rows loses more recall to the cap than its finer codes win back
    scans = [p for p in fits if (share - resident_bytes(p.factory, n, d)) / (2 * entry_bytes(p.factory, n, d)) >= MIN_SCAN * n]
    fits = scans or fits
    if not fits:
        least = min(plans, key=lambda p: resident_bytes(p.factory, n, d))
        raise UserError(f"{n} x {d} vectors do not fit a memory budget of {share / INDEX_SHARE / 2**20:,.0f} MiB even "
                        f"with their lists on disk ({least.factory} keeps {resident_bytes(least.factory, n, d) / 2**20:,.0f}"
                        " MiB in memory); raise --memory-budget")
    if max_query_ms is None:
        return fits[0]
    fast = [p for p in fits if p.query_ms <= max_query_ms]
    return fast[0] if fast else min(fits, key=lambda p: p.query_ms)


def disk_reason(factory: str, n: int, d: int, config, make_empty) -> str | None:
    """Why the lists of the explicit kind ``factory`` go on disk, or None (``make_empty()``: an empty index of it)."""
    if config.on_disk is False:
        return None
    if config.on_disk:
        why_not = lists_unsupported(make_empty())
        if why_not:
            raise UserError(f"--on-disk needs IVF lists of one code per vector; {factory}: {why_not}; "
                            "use e.g. IVF4096,SQ8, IVF4096,PQ64 or IVF4096_HNSW32,Flat")
        return "--on-disk"
    try:
        need = estimate_bytes(factory, n, d)["total"]
    except UserError:
        return None
    share = int(config.memory_budget * INDEX_SHARE)
    if need <= share or lists_unsupported(make_empty()):
        return None
    return (f"{factory} over {n} x {d} needs about {need / 2**20:,.0f} MiB in memory, more than the index share "
            f"({share / 2**20:,.0f} MiB) of --memory-budget")


@functools.cache
def _madvise():
    fn = ctypes.CDLL(None, use_errno=True).madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


def _release_heap() -> None:
    """Hand memory freed by the training and the shards back to the system (glibc keeps it otherwise), so the
    pages mapped while merging do not come on top of it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _drop_pages(*lists) -> None:
    """Unmap the resident pages of mapped inverted lists (file pages stay in the page cache; written ones reach disk)."""
    for il in lists:
        if il.ptr is not None and il.totsize:
            _madvise()(int(il.ptr), int(il.totsize), _MADV_DONTNEED)


def _reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of blocks reserved: a full disk is an error here, not a fault
    (SIGBUS) while the mapping is written."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise UserError(f"cannot write {path} ({exc.strerror}): the lists need {size / 2**20:,.0f} MiB on "
                                f"disk; free space there or pass another OUT_DIR; the previous index, if any, is "
                                "unchanged") from None
            os.ftruncate(fd, size)  # a file system without fallocate
    finally:
        os.close(fd)


def _write_lists(invlists, path: Path) -> None:
    import faiss

    try:
        writer = faiss.FileIOWriter(str(path))
        faiss.write_InvertedLists(invlists, writer)
        del writer
    except RuntimeError as exc:
        raise UserError(f"cannot write {path} ({(str(exc).strip().splitlines() or ['error'])[-1]}); free space "
                        "there or pass another OUT_DIR; the previous index, if any, is unchanged") from None


def _read_lists(path: Path):
    """The lists of a shard file, mapped read-only (freed, and unmapped, with the returned object)."""
    import faiss

    il = faiss.downcast_InvertedLists(faiss.read_InvertedLists(faiss.FileIOReader(str(path)), faiss.IO_FLAG_MMAP))
    il.thisown = True
    return il


def _empty_lists(ivf) -> None:
    import faiss

    fresh = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(fresh, True)
    fresh.this.disown()


class OnDiskLists:
    """The on-disk part of one build: shards in ``work``, merged into ``work/index.ivfdata``.

    :func:`indexes.build.build_index` fills :meth:`sink` instead of the index, then calls :meth:`finish`,
    tunes inside :meth:`paged`, and adds :meth:`record` to the sidecar.
    """

    def __init__(self, factory: str, n: int, d: int, config, work: Path, reason: str):
        self.factory, self.n, self.d, self.reason, self.work = factory, n, d, reason, work
        self.resident = resident_bytes(factory, n, d) if _disk_capable(factory) else 0
        self.avail = int(config.memory_budget * INDEX_SHARE) - self.resident
        if self.avail <= 0:
            raise UserError(f"{factory} keeps about {self.resident / 2**20:,.0f} MiB in memory even with its lists on disk, "
                            f"more than the index share of --memory-budget {config.memory_budget / 2**20:,.0f} MiB; "
                            "raise --memory-budget or use fewer IVF lists")
        self.shards: list[Path] = []
        self.ivfdata = work / "index.ivfdata"
        self.index = self.ivf = None
        self.pending = self.shard_rows = 0

    def sink(self, index):
        """The object :func:`indexes.fill.fill` adds to: rows go into ``index``; a full shard goes to a file."""
        import faiss

        why_not = lists_unsupported(index)
        if why_not:
            raise UserError(f"the lists of {self.factory} cannot be stored on disk ({why_not}); pass --in-memory or another kind")
        self.index, self.ivf = index, faiss.extract_index_ivf(index)
        _release_heap()
        self.entry = self.ivf.code_size + 8
        self.shard_rows = max(1, self.avail // (GROWTH * self.entry))
        log.info("on-disk lists: %s in memory, shards of %d rows (%.0f MiB of lists each)",
                 f"{self.resident / 2**20:,.1f} MiB", self.shard_rows, self.shard_rows * self.entry / 2**20)
        return self

    def add(self, xb: np.ndarray) -> None:
        self.index.add(xb)
        self.pending += len(xb)
        if self.pending >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        path = self.work / f"shard-{len(self.shards):05d}.ivl"
        _write_lists(self.ivf.invlists, path)
        _empty_lists(self.ivf)  # the next rows go into fresh lists; ntotal keeps counting, so ids stay row numbers
        _release_heap()
        self.shards.append(path)
        self.pending = 0
        log.debug("wrote %s", path)

    def finish(self) -> None:
        """Merge the shards into ``index.ivfdata`` and give the index those lists (read-write mapped)."""
        import faiss

        self._flush()
        _release_heap()
        nlist, cs = self.ivf.nlist, self.ivf.code_size
        sources = [_read_lists(p) for p in self.shards]
        sizes = np.zeros(nlist, np.uint64)
        for il in sources:
            sizes += np.fromiter((il.list_size(j) for j in range(nlist)), np.uint64, nlist)
        total = int(sizes.sum()) * self.entry
        if int(sizes.sum()) != self.index.ntotal:
            raise RuntimeError(f"the shards hold {int(sizes.sum())} vectors, the index counted {self.index.ntotal}")
        out = faiss.OnDiskInvertedLists(nlist, cs, str(self.ivfdata))
        out.set_all_lists_sizes(faiss.swig_ptr(sizes))
        _reserve(self.ivfdata, total)
        out.totsize = total
        out.prefetch_nthread = 0  # no background threads reading whole probed lists (past max_codes, after the search)
        out.do_mmap()
        # entries copied between page drops: their shard pages and output pages take half of what is available
        step = max(1, self.avail // (4 * self.entry))
        filled, copied = np.zeros(nlist, np.int64), 0
        for j in range(nlist):
            for il in sources:
                m = il.list_size(j)
                if not m:
                    continue
                ids, codes = faiss.rev_swig_ptr(il.get_ids(j), m), faiss.rev_swig_ptr(il.get_codes(j), m * cs)
                a = 0
                while a < m:
                    b = min(m, a + step - copied)
                    out.update_entries(j, int(filled[j]), b - a, faiss.swig_ptr(ids[a:b]),
                                       faiss.swig_ptr(codes[a * cs : b * cs]))
                    filled[j] += b - a
                    copied += b - a
                    a = b
                    if copied >= step:
                        _drop_pages(out, *sources)
                        copied = 0
        _drop_pages(out, *sources)
        del sources
        self.ivf.replace_invlists(out, True)
        out.this.disown()
        self.lists = out
        for p in self.shards:
            p.unlink()
        log.info("merged %d shards into %s (%.1f MiB)", len(self.shards), self.ivfdata.name, total / 2**20)

    def max_codes(self) -> int:
        """Entries one query may scan: their pages (mapped with some read-around: about 1.5x the entries' bytes,
        measured) fit what the index share leaves after the resident part."""
        return max(1, self.avail // (2 * self.entry))

    @contextlib.contextmanager
    def paged(self, index):
        """Searches of ``index`` one query at a time, dropping the mapped list pages after each (for calibration)."""
        search = index.search

        def one_by_one(xq, k, **kw):
            parts = []
            for i in range(len(xq)):
                parts.append(search(xq[i : i + 1], k, **kw))
                _drop_pages(self.lists)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        index.search = one_by_one
        try:
            yield index
        finally:
            del index.search

    def record(self) -> dict:
        """The sidecar's ``storage`` entry."""
        return {"lists": "on_disk", "reason": self.reason, "resident_bytes": self.resident,
                "ivfdata_bytes": int(self.lists.totsize), "shards": len(self.shards), "shard_rows": int(self.shard_rows),
                "max_codes": self.max_codes()}


@contextlib.contextmanager
def work_folder(out_dir: str | os.PathLike):
    """A work folder beside ``OUT_DIR`` (same file system, so its files move into the index folder by rename),
    removed afterwards; work folders of builds no longer running are removed first."""
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}{_WORK_PREFIX}"
    for old in out.parent.glob(prefix + "*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=out.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def map_lists(index, path: Path) -> None:
    """Map ``path`` read-only as the lists of ``index`` (read with ``IO_FLAG_SKIP_IVF_DATA``).

    The file's size must be the one ``index.faiss`` records (a shorter file would fault on access).
    Lists are not prefetched by extra threads: probed lists are read where they are scanned.
    """
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    il = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    if not isinstance(il, faiss.OnDiskInvertedLists):
        raise UserError(f"{path.parent / 'index.faiss'} holds its lists in memory but index.json lists {path.name}: "
                        "the folder mixes two builds; rebuild the index")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path} is missing; rebuild the index") from None
    if size != il.totsize:
        raise UserError(f"{path} is {size} bytes but {path.parent / 'index.faiss'} maps {il.totsize}: the folder mixes "
                        "two builds; rebuild the index")
    il.filename = str(path)
    il.read_only = True
    il.prefetch_nthread = 0
    try:
        il.do_mmap()
    except RuntimeError as exc:
        raise UserError(f"cannot map {path} ({(str(exc).strip().splitlines() or ['error'])[-1]})") from None
