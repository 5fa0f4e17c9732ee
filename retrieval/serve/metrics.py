"""Prometheus metrics of the server: requests per route and status, latency per route and per query stage.

Each app gets its own registry (so several apps in one process, as in tests, do not collide); the ASGI
middleware times every request under its route template (``/api/images/{image_id}``), never the raw
path, so the label set stays small whatever clients send. The labelled series are looked up once and
kept (a ``labels()`` call takes a lock and builds a key on every request).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("buscador_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("buscador_request_seconds", "Request latency by route", ["route"], buckets=_BUCKETS,
                                 registry=self.registry)
        self.stages = Histogram("buscador_stage_seconds", "Time per query stage (encode, search, ...)", ["stage"],
                                buckets=_BUCKETS, registry=self.registry)
        self._series: dict[tuple, object] = {}

    def _child(self, metric, *labels: str):
        key = (id(metric), *labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def observe_stages(self, timings: dict[str, float]) -> None:
        """Record ``{stage: seconds}``."""
        for stage, seconds in timings.items():
            self._child(self.stages, stage).observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, method, str(status)).inc()
        self._child(self.latency, route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times HTTP requests by route template."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, scope["method"], status[0], time.perf_counter() - t0)
