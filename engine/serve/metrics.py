"""/metrics: the server's own request counts and latencies, then the engine's embedding
metrics (cache hits, batch sizes, remote endpoints and their breakers) in one Prometheus text."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RECENT_LATENCIES = 1000
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """A registry per server, so two servers in one process (tests) never share counts."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedscope_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedscope_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "embedscope_http_rate_limited",
            "Requests refused by a key's rate limit",
            ["key"],
            registry=self.registry,
        )
        queue = Gauge(
            "embedscope_embedding_queue_depth",
            "Texts queued or running in the embedding batchers",
            registry=self.registry,
        )
        queue.set_function(self.queue_depth)
        # Exact recent percentiles for the app's Metrics pane; the histogram's are bucket bounds.
        self._recent: deque[float] = deque(maxlen=RECENT_LATENCIES)
        self._lock = threading.Lock()

    def queue_depth(self) -> float:
        batchers = getattr(self.engine.embeddings, "_batchers", {})
        return float(sum(b.queued for b in batchers.values()))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        with self._lock:
            self._recent.append(seconds)

    def summary(self) -> dict[str, Any]:
        """Plain figures for a viewer: counts per (method, route, status), the 429 count, and
        p50/p95 (ms, None before any request) over the last RECENT_LATENCIES requests."""
        routes: dict[tuple[str, str, str], int] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["method"], labels["route"], labels["status"])
                    routes[key] = int(sample.value)
        with self._lock:
            recent = list(self._recent)
        p50 = p95 = None
        if len(recent) >= 2:
            cuts = statistics.quantiles(recent, n=20, method="inclusive")
            p50, p95 = cuts[9] * 1000, cuts[18] * 1000
        elif recent:
            p50 = p95 = recent[0] * 1000
        return {
            "requests": sum(routes.values()),
            "rate_limited": sum(n for (_, _, status), n in routes.items() if status == "429"),
            "routes": routes,
            "p50_ms": p50,
            "p95_ms": p95,
        }

    def text(self) -> str:
        return generate_latest(self.registry).decode() + self.engine.embeddings.prometheus()
