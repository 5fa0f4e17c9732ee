"""``cli.py benchmark serve``: a bounded load test of ``cli.py serve`` on loopback, against the bare in-process call.

A server process is started on a free 127.0.0.1 port (text and id queries only, so torch is not loaded).
Then, in order:

1. the bare in-process call (:func:`retrieval.serve.answers.search` on a warm :class:`Engine` in this
   process): text and id queries one at a time;
2. the same queries over HTTP from one client, one at a time: ``overhead`` is its p50 minus the
   in-process p50 (HTTP, JSON, routing, threads), and the server's CPU time per query against the
   in-process CPU time (a figure that a busy machine's scheduling does not inflate);
3. the load (after a short concurrent warm-up): ``clients`` concurrent httpx clients send a fixed, seeded mix of ``n_text`` text and ``n_id``
   id queries, under a time limit; throughput, p50/p99 per kind, errors, and the server's RSS before
   and after.

Nothing leaves the machine: the server binds 127.0.0.1 and the clients only talk to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from extract.core.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_QUERIES = ("una persona en bicicleta", "un perro en la playa", "un gato negro encima de un coche",
                   "niños jugando al fútbol", "una mujer con un paraguas bajo la lluvia", "un barco en el mar",
                   "una montaña con nieve", "un hombre cocinando en la cocina", "dos caballos en el campo",
                   "una calle llena de gente de noche")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def _start_server(index_dir: str, model: str, port: int) -> subprocess.Popen:
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING); "
            "from retrieval.serve import ServeConfig, run; "
            f"run(ServeConfig(index_dir={index_dir!r}, model={model!r}, image_queries=False), '127.0.0.1', {port})")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(proc: subprocess.Popen, base: str, limit: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the server exited ({proc.returncode}): {proc.stderr.read().decode(errors='replace')[-800:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise UserError(f"the server did not answer /healthz within {limit:.0f} s")


def _in_process(engine, requests: list[tuple[str, str]]) -> dict[str, list[float]]:
    from retrieval.serve.answers import search
    from retrieval.serve.models import SearchBody

    out: dict[str, list[float]] = {"text": [], "id": []}
    for kind, value in requests:
        body = SearchBody(q=value, k=10) if kind == "text" else SearchBody(id=value, k=10)
        t0 = time.perf_counter()
        search(engine, body)
        out[kind].append(time.perf_counter() - t0)
    return out


def _sequential_http(base: str, requests: list[tuple[str, str]]) -> dict[str, list[float]]:
    import httpx

    out: dict[str, list[float]] = {"text": [], "id": []}
    with httpx.Client(base_url=base, timeout=30) as client:
        for kind, value in requests:
            params = {"q" if kind == "text" else "id": value, "k": 10}
            t0 = time.perf_counter()
            r = client.get("/api/search", params=params)
            out[kind].append(time.perf_counter() - t0)
            r.raise_for_status()
    return out


async def _load(base: str, requests: list[tuple[str, str]], clients: int, time_limit: float) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    lat: dict[str, list[float]] = {"text": [], "id": []}
    errors: dict[str, int] = {}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                kind, value = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            try:
                r = await client.get("/api/search", params={"q" if kind == "text" else "id": value, "k": 10})
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            lat[kind].append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
    wall = time.perf_counter() - t0
    return {"latency": lat, "errors": errors, "wall": wall, "unsent": queue.qsize(), "timed_out": bool(pending)}


def _mix(texts: Sequence[str], ids: Sequence[str], n_text: int, n_id: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    items = [("text", texts[i]) for i in rng.integers(0, len(texts), n_text)]
    items += [("id", ids[i]) for i in rng.integers(0, len(ids), n_id)]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def read_captions(path: str | os.PathLike, limit: int = 500) -> list[str]:
    """Caption texts of an ``id<TAB>caption`` file (or plain lines), at most ``limit``."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("\t", 1)[-1].strip()
        if text:
            out.append(text)
        if len(out) >= limit:
            break
    if not out:
        raise UserError(f"{path} holds no queries")
    return out


def run(index_dir: str, model: str, texts: Sequence[str] = DEFAULT_QUERIES, clients: int = 16, n_text: int = 2000,
        n_id: int = 500, n_single: int = 300, time_limit: float = 150.0, seed: int = 0) -> dict:
    """Run the three parts (module docstring) and return the figures (milliseconds, MiB, requests/s)."""
    from retrieval.serve import Engine, ServeConfig

    if not Path(model).is_file():
        raise UserError(f"text model {model} does not exist; pass --model CKPT (after `make demo`: workspace/text-encoder.npz)")
    engine = Engine(ServeConfig(index_dir=str(index_dir), model=str(model), image_queries=False)).load()
    texts = [t for t in texts if t.strip()]
    singles = _mix(texts, engine.ids, n_single * 4 // 5, n_single // 5, seed + 1)
    _in_process(engine, singles[:20])  # warm caches
    c0 = time.process_time()
    bare = _in_process(engine, singles)
    bare_cpu = (time.process_time() - c0) / len(singles)
    engine.close()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(str(index_dir), str(model), port)
    try:
        _wait_ready(proc, base)
        _sequential_http(base, singles[:20])
        c0 = _cpu_s(proc.pid)
        http = _sequential_http(base, singles)
        http_cpu = (_cpu_s(proc.pid) - c0) / len(singles)
        # a short concurrent warm-up first, so the request threads exist before RSS is measured
        asyncio.run(_load(base, _mix(texts, engine.ids, 8 * clients, 2 * clients, seed + 2), clients, time_limit))
        rss_before = _rss_mib(proc.pid)
        load = asyncio.run(_load(base, _mix(texts, engine.ids, n_text, n_id, seed), clients, time_limit))
        rss_after = _rss_mib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    done = sum(len(v) for v in load["latency"].values())
    report = {
        "n_images": len(engine.ids), "clients": clients, "requests": n_text + n_id,
        "in_process": {k: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "n": len(v)} for k, v in bare.items()},
        "http_one_client": {k: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "n": len(v)} for k, v in http.items()},
        "load": {
            "answered": done, "errors": load["errors"], "unsent": load["unsent"], "timed_out": load["timed_out"],
            "wall_s": load["wall"], "throughput_rps": done / load["wall"] if load["wall"] else float("nan"),
            **{k: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "n": len(v)} for k, v in load["latency"].items()},
        },
        "rss_mib": {"before": rss_before, "after": rss_after, "growth_pct": 100 * (rss_after - rss_before) / rss_before},
    }
    report["cpu_ms_per_query"] = {"in_process": bare_cpu * 1000, "server": http_cpu * 1000,
                                  "overhead": (http_cpu - bare_cpu) * 1000}
    report["overhead_ms"] = {k: report["http_one_client"][k]["p50_ms"] - report["in_process"][k]["p50_ms"] for k in bare}
    report["ratio"] = {k: report["http_one_client"][k]["p50_ms"] / report["in_process"][k]["p50_ms"] for k in bare}
    return report


def format_report(r: dict) -> str:
    """A short printable summary of :func:`run`'s figures."""
    lines = [f"serve load test on loopback: {r['n_images']} images, {r['clients']} clients, {r['requests']} requests"]
    for kind in ("text", "id"):
        ip, h, ld = r["in_process"][kind], r["http_one_client"][kind], r["load"][kind]
        lines.append(f"  {kind:<4} in-process p50 {ip['p50_ms']:.2f} ms | HTTP one client p50 {h['p50_ms']:.2f} ms "
                     f"(overhead {r['overhead_ms'][kind]:+.2f} ms, x{r['ratio'][kind]:.2f}) | "
                     f"under load p50 {ld['p50_ms']:.1f} ms, p99 {ld['p99_ms']:.1f} ms (n={ld['n']})")
    ld = r["load"]
    lines.append(f"  throughput {ld['throughput_rps']:.0f} req/s over {ld['wall_s']:.1f} s; errors {sum(ld['errors'].values())}"
                 f"{' ' + str(ld['errors']) if ld['errors'] else ''}; unsent {ld['unsent']}"
                 f"{' (time limit reached)' if ld['timed_out'] else ''}")
    cpu = r["cpu_ms_per_query"]
    lines.append(f"  CPU per query (one client, text/id mix): in-process {cpu['in_process']:.2f} ms, server process "
                 f"{cpu['server']:.2f} ms (overhead {cpu['overhead']:+.2f} ms; load-independent, 10 ms clock ticks)")
    rss = r["rss_mib"]
    lines.append(f"  server RSS {rss['before']:.0f} MiB -> {rss['after']:.0f} MiB ({rss['growth_pct']:+.1f} %)")
    return "\n".join(lines)
