"""``cli.py benchmark serve``: a bounded load test of ``cli.py serve`` on loopback, against the bare in-process call.

A server process is started on a free 127.0.0.1 port (text and id queries only, so torch is not loaded);
this process holds a warm :class:`Engine` of its own for the bare call. Then:

1. paired rounds, one query at a time: the bare in-process call (:func:`retrieval.serve.answers.search`)
   and the same queries as ``GET /api/search`` from one keep-alive ``http.client`` connection in this
   process (the client is outside the server's process, so the server's figures are its own), rounds
   alternating which goes first so a change in the machine's load hits both alike. Per query: wall time,
   CPU time (this process for the bare call; every thread of the server process, from
   ``/proc/PID/task/*/schedstat``, for HTTP) and the server's own answer time (``timings.total``).
   ``overhead`` is the HTTP p50 minus the in-process p50; ``in_server`` is HTTP wall minus the server's
   answer time for the same request (the HTTP, routing, JSON and thread hand-off cost, client included),
   and a ``GET /healthz`` after each query gives the round trip of a request with no query work at all.
   CPU time is what a busy machine's scheduling does not inflate; wall time is, so the load average is
   reported with the figures;
2. the load (after a short concurrent warm-up): ``clients`` concurrent httpx clients (in this process)
   send a fixed, seeded mix of ``n_text`` text and ``n_id`` id queries, under a time limit; throughput,
   p50/p99 per kind, errors, and the server's RSS before and after.

Nothing leaves the machine: the server binds 127.0.0.1 and the clients only talk to it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

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


def _server_cpu_ns(pid: int) -> int:
    """CPU nanoseconds of every thread of a process so far (``schedstat``: ns resolution, unlike the clock ticks of ``stat``)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            pass
    return total


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def _start_server(index_dir: str, model: str, port: int, inline_ms: float) -> subprocess.Popen:
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING); "
            "from retrieval.serve import ServeConfig, run; "
            f"run(ServeConfig(index_dir={index_dir!r}, model={model!r}, image_queries=False, inline_ms={inline_ms!r}), "
            f"'127.0.0.1', {port})")
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


def _paired(engine, port: int, pid: int, requests: list[tuple[str, str]], rounds: int) -> dict[str, dict[str, list]]:
    """Part 1 (module docstring): per kind, lists of wall/CPU seconds in process and over HTTP, and the server's answer time."""
    from retrieval.serve.answers import search
    from retrieval.serve.models import SearchBody

    out = {kind: {"wall": [], "cpu": [], "http_wall": [], "http_cpu": [], "answer": []} for kind in ("text", "id")}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ranked: dict[str, list] = {"bare": [], "http": []}  # the ids answered, to check both ways agree
    floor: list[float] = []  # GET /healthz round trips: HTTP with no query work, the part no server can remove

    def bare(chunk):
        for kind, value in chunk:
            body = SearchBody(q=value, k=10) if kind == "text" else SearchBody(id=value, k=10)
            c0, t0 = time.process_time_ns(), time.perf_counter()
            doc, _ = search(engine, body)
            out[kind]["wall"].append(time.perf_counter() - t0)
            out[kind]["cpu"].append((time.process_time_ns() - c0) / 1e9)
            ranked["bare"].append([h["id"] for h in doc["results"]])

    def over_http(chunk):
        # a request's server CPU runs from just before it is sent to just before the next one, so the work
        # the server does after the response has left (middleware, bookkeeping) is counted too
        c0 = _server_cpu_ns(pid)
        for j, (kind, value) in enumerate(chunk):
            path = "/api/search?" + urlencode({"q" if kind == "text" else "id": value, "k": 10})
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            data = response.read()
            out[kind]["http_wall"].append(time.perf_counter() - t0)
            if response.status != 200:
                raise UserError(f"GET {path} answered {response.status}: {data[:300]!r}")
            doc = json.loads(data)
            out[kind]["answer"].append(doc["timings"]["total"] / 1000)
            ranked["http"].append([h["id"] for h in doc["results"]])
            if j == len(chunk) - 1:
                time.sleep(0.005)  # the last one: let the server finish before reading its clock
            c1 = _server_cpu_ns(pid)
            out[kind]["http_cpu"].append((c1 - c0) / 1e9)
            c0 = c1
        for _ in chunk:
            t0 = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            floor.append(time.perf_counter() - t0)

    try:
        over_http(requests[:20])  # warm the connection and the server's threads
        for lists in (*out.values(), ranked):
            for v in lists.values():
                v.clear()
        floor.clear()
        step = max(1, -(-len(requests) // rounds))
        for r, i in enumerate(range(0, len(requests), step)):
            chunk = requests[i:i + step]
            for part in ((bare, over_http) if r % 2 == 0 else (over_http, bare)):
                part(chunk)
    finally:
        conn.close()
    out["disagree"] = sum(a != b for a, b in zip(ranked["bare"], ranked["http"]))
    out["healthz"] = floor
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
        n_id: int = 500, n_single: int = 300, time_limit: float = 150.0, seed: int = 0, rounds: int = 10,
        inline_ms: float = 20.0) -> dict:
    """Run the two parts (module docstring) and return the figures (milliseconds, MiB, requests/s)."""
    from retrieval.serve import Engine, ServeConfig
    from retrieval.serve.answers import search
    from retrieval.serve.models import SearchBody

    if not Path(model).is_file():
        raise UserError(f"text model {model} does not exist; pass --model CKPT (after `make demo`: workspace/text-encoder.npz)")
    engine = Engine(ServeConfig(index_dir=str(index_dir), model=str(model), image_queries=False)).load()
    texts = [t for t in texts if t.strip()]
    singles = _mix(texts, engine.ids, n_single * 4 // 5, n_single // 5, seed + 1)
    for kind, value in singles[:20]:  # warm caches
        search(engine, SearchBody(q=value, k=10) if kind == "text" else SearchBody(id=value, k=10))

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start_server(str(index_dir), str(model), port, float(inline_ms))
    try:
        _wait_ready(proc, base)
        import httpx

        server = httpx.get(base + "/api/info", timeout=30).json().get("server", {})
        load_avg = {"before": os.getloadavg()}
        paired = _paired(engine, port, proc.pid, singles, rounds)
        load_avg["after_paired"] = os.getloadavg()
        # a short concurrent warm-up first, so the request threads exist before RSS is measured
        asyncio.run(_load(base, _mix(texts, engine.ids, 8 * clients, 2 * clients, seed + 2), clients, time_limit))
        rss_before = _rss_mib(proc.pid)
        load = asyncio.run(_load(base, _mix(texts, engine.ids, n_text, n_id, seed), clients, time_limit))
        rss_after = _rss_mib(proc.pid)
        load_avg["after_load"] = os.getloadavg()
    finally:
        engine.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    done = sum(len(v) for v in load["latency"].values())
    report = {
        "n_images": len(engine.ids), "clients": clients, "requests": n_text + n_id, "server": server,
        "client": "http.client, one keep-alive connection, in the benchmark's process (the server has its own)",
        "load_average": load_avg,
        "load": {
            "answered": done, "errors": load["errors"], "unsent": load["unsent"], "timed_out": load["timed_out"],
            "wall_s": load["wall"], "throughput_rps": done / load["wall"] if load["wall"] else float("nan"),
            **{k: {"p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99), "n": len(v)} for k, v in load["latency"].items()},
        },
        "rss_mib": {"before": rss_before, "after": rss_after, "growth_pct": 100 * (rss_after - rss_before) / rss_before},
    }
    report["disagree"] = paired.pop("disagree")
    healthz = paired.pop("healthz")
    report["healthz_round_trip_ms"] = {"p50": _pct(healthz, 50), "p99": _pct(healthz, 99)}
    for kind, d in paired.items():
        if not d["wall"]:
            continue
        ip, h = _pct(d["wall"], 50), _pct(d["http_wall"], 50)
        ipc, hc = _pct(d["cpu"], 50), _pct(d["http_cpu"], 50)
        report[kind] = {
            "n": len(d["wall"]),
            "in_process": {"p50_ms": ip, "p99_ms": _pct(d["wall"], 99), "cpu_p50_ms": ipc},
            "http": {"p50_ms": h, "p99_ms": _pct(d["http_wall"], 99), "cpu_p50_ms": hc,
                     "server_answer_p50_ms": _pct(d["answer"], 50)},
            "overhead_ms": {"wall": h - ip, "cpu": hc - ipc,
                            "in_server": _pct(np.subtract(d["http_wall"], d["answer"]), 50)},
            "ratio": h / ip,
        }
    return report


def format_report(r: dict) -> str:
    """A short printable summary of :func:`run`'s figures."""
    la = r["load_average"]
    lines = [(f"serve load test on loopback: {r['n_images']} images, {r['clients']} clients, {r['requests']} requests; "
             f"server: {r['server'].get('event_loop', '?')} loop, {r['server'].get('query_threads', '?')} query thread(s), "
             f"text and id queries on the {'event loop' if r['server'].get('queries_on_event_loop') else 'query threads'}"),
             f"  one at a time, in-process and HTTP rounds interleaved; client: {r['client']}",
             (f"  load average (1 min) {la['before'][0]:.1f} before, {la['after_paired'][0]:.1f} after the paired rounds, "
             f"{la['after_load'][0]:.1f} after the load, on {os.cpu_count()} CPUs")]
    for kind in ("text", "id"):
        if kind not in r:
            continue
        k, ld = r[kind], r["load"][kind]
        ip, h, o = k["in_process"], k["http"], k["overhead_ms"]
        lines.append(f"  {kind:<4} p50 wall: in-process {ip['p50_ms']:.2f} ms, HTTP {h['p50_ms']:.2f} ms: overhead {o['wall']:+.2f} ms "
                     f"(x{k['ratio']:.2f}; HTTP minus the server's own answer time {o['in_server']:+.2f} ms) (n={k['n']})")
        lines.append(f"       p50 CPU:  in-process {ip['cpu_p50_ms']:.2f} ms, server process {h['cpu_p50_ms']:.2f} ms: "
                     f"overhead {o['cpu']:+.2f} ms | under load p50 {ld['p50_ms']:.1f} ms, p99 {ld['p99_ms']:.1f} ms (n={ld['n']})")
    ld = r["load"]
    lines.append(f"  throughput {ld['throughput_rps']:.0f} req/s over {ld['wall_s']:.1f} s; errors {sum(ld['errors'].values())}"
                 f"{' ' + str(ld['errors']) if ld['errors'] else ''}; unsent {ld['unsent']}"
                 f"{' (time limit reached)' if ld['timed_out'] else ''}")
    hz = r["healthz_round_trip_ms"]
    lines.append(f"  GET /healthz round trip (HTTP with no query work), p50 {hz['p50']:.2f} ms, p99 {hz['p99']:.2f} ms; "
                 f"answers differing between in-process and HTTP: {r['disagree']}")
    rss = r["rss_mib"]
    lines.append(f"  server RSS {rss['before']:.0f} MiB -> {rss['after']:.0f} MiB ({rss['growth_pct']:+.1f} %)")
    return "\n".join(lines)
