"""Per-model embedding metrics: one snapshot dict, and the same figures as Prometheus text."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WINDOW = 4096


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(np.fromiter(values, float), [50, 95, 99]) * 1000.0
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}


@dataclass
class ModelMetrics:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    truncations: int = 0
    errors: int = 0
    overloads: int = 0
    embedded: int = 0
    busy_s: float = 0.0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    request_latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    batch_latency: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    # (unix time, request latency in ms): the app draws its sparkline from this.
    timeline: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=600))

    def snapshot(self) -> dict[str, Any]:
        lookups = self.l1_hits + self.l2_hits + self.misses
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "batch_size_histogram": {str(k): self.batch_sizes[k] for k in sorted(self.batch_sizes)},
            "mean_batch_size": round(self.embedded / self.batches, 2) if self.batches else None,
            "l1_hits": self.l1_hits,
            "l2_hits": self.l2_hits,
            "misses": self.misses,
            "hit_rate": round((self.l1_hits + self.l2_hits) / lookups, 4) if lookups else None,
            "truncations": self.truncations,
            "errors": self.errors,
            "overloads": self.overloads,
            "request_latency_ms": _percentiles(self.request_latency),
            "encode_latency_ms": _percentiles(self.batch_latency),
            "texts_per_s": round(self.embedded / self.busy_s, 1) if self.busy_s else None,
            "timeline": list(self.timeline)[-120:],
        }


class Metrics:
    """Thread-safe counters written by the service and read by the app and exporters."""

    def __init__(self) -> None:
        self._models: dict[str, ModelMetrics] = {}
        self._lock = threading.Lock()
        self.started = time.time()
        # Remote models' own figures (breaker, usage, endpoint latency), read on each snapshot.
        self._status: dict[str, Callable[[], dict[str, Any] | None]] = {}

    def watch(self, name: str, status: Callable[[], dict[str, Any] | None]) -> None:
        with self._lock:
            self._status[name] = status

    def model(self, name: str) -> ModelMetrics:
        with self._lock:
            return self._models.setdefault(name, ModelMetrics())

    def record_request(
        self,
        name: str,
        *,
        texts: int,
        l1: int,
        l2: int,
        misses: int,
        truncated: int,
        seconds: float,
    ) -> None:
        m = self.model(name)
        with self._lock:
            m.requests += 1
            m.texts += texts
            m.l1_hits += l1
            m.l2_hits += l2
            m.misses += misses
            m.truncations += truncated
            m.request_latency.append(seconds)
            m.timeline.append((time.time(), seconds * 1000.0))

    def record_batch(self, name: str, size: int, seconds: float, ok: bool) -> None:
        m = self.model(name)
        bucket = next((b for b in BATCH_BUCKETS if size <= b), BATCH_BUCKETS[-1])
        with self._lock:
            m.batches += 1
            m.batch_sizes[bucket] += 1
            m.batch_latency.append(seconds)
            if ok:
                m.embedded += size
                m.busy_s += seconds
            else:
                m.errors += 1

    def record_overload(self, name: str) -> None:
        m = self.model(name)
        with self._lock:
            m.overloads += 1

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {name: m.snapshot() for name, m in self._models.items()}
            watched = dict(self._status)
        for name, status in watched.items():
            remote = status()
            if remote is not None:
                out.setdefault(name, ModelMetrics().snapshot())["remote"] = remote
        return out

    def prometheus(self) -> str:
        # Imported here: prometheus_client (and the http.server it brings) would add ~50 ms to
        # every cold command, which never exports metrics.
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry).decode()


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self._metrics.snapshot()
        counters = {
            "requests": "Embedding requests",
            "texts": "Texts asked for",
            "batches": "Model batches run",
            "l1_hits": "In-memory cache hits",
            "l2_hits": "On-disk cache hits",
            "misses": "Cache misses embedded by the model",
            "truncations": "Texts cut to the model window",
            "errors": "Failed model batches",
            "overloads": "Requests refused because the queue was full",
        }
        for key, doc in counters.items():
            family = CounterMetricFamily(f"embedscope_{key}", doc, labels=["model"])
            for model, m in snap.items():
                family.add_metric([model], m[key])
            yield family
        latency = GaugeMetricFamily(
            "embedscope_request_latency_ms", "Request latency percentiles", labels=["model", "q"]
        )
        for model, m in snap.items():
            for q, value in m["request_latency_ms"].items():
                if value is not None:
                    latency.add_metric([model, q], value)
        yield latency
        sizes = HistogramMetricFamily(
            "embedscope_batch_size", "Texts per model batch", labels=["model"]
        )
        with self._metrics._lock:
            models = dict(self._metrics._models)
        for model, m in models.items():
            cumulative, buckets = 0, []
            for bound in BATCH_BUCKETS:
                cumulative += m.batch_sizes.get(bound, 0)
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", cumulative))
            sizes.add_metric([model], buckets, sum_value=float(m.embedded))
        yield sizes
        yield from _remote_families(snap)


REMOTE_COUNTERS = {
    "requests": "Requests sent to the remote endpoint (attempts, retries included)",
    "retries": "Attempts retried after a transient failure",
    "failed": "Failed attempts",
    "prompt_tokens": "Prompt tokens the endpoint reported in usage",
    "cost_usd": "Cost in USD: usage.prompt_tokens x price_per_1m_tokens",
}
BREAKER_COUNTERS = {
    "opened": "Times the circuit breaker opened",
    "rejected": "Calls refused at once while the breaker was open",
}
BREAKER_STATES = ("closed", "open", "half_open")


def _remote_families(snap: dict[str, dict[str, Any]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    remote = {model: m["remote"] for model, m in snap.items() if "remote" in m}
    if not remote:
        return
    for key, doc in REMOTE_COUNTERS.items():
        family = CounterMetricFamily(f"embedscope_remote_{key}", doc, labels=["model"])
        for model, r in remote.items():
            family.add_metric([model], float(r[key]))
        yield family
    for key, doc in BREAKER_COUNTERS.items():
        family = CounterMetricFamily(f"embedscope_breaker_{key}", doc, labels=["model"])
        for model, r in remote.items():
            family.add_metric([model], float(r["breaker"][key]))
        yield family
    state = GaugeMetricFamily(
        "embedscope_breaker_state", "1 for the breaker's current state", labels=["model", "state"]
    )
    failures = GaugeMetricFamily(
        "embedscope_breaker_consecutive_failures", "Failed attempts in a row", labels=["model"]
    )
    flight = GaugeMetricFamily(
        "embedscope_remote_in_flight", "Requests in flight now", labels=["model"]
    )
    latency = GaugeMetricFamily(
        "embedscope_remote_latency_ms", "Endpoint latency per request", labels=["model", "q"]
    )
    for model, r in remote.items():
        for name in BREAKER_STATES:
            state.add_metric([model, name], 1.0 if r["breaker"]["state"] == name else 0.0)
        failures.add_metric([model], float(r["breaker"]["consecutive_failures"]))
        flight.add_metric([model], float(r["in_flight"]))
        for q in ("p50", "p95"):
            if r["latency_ms"][q] is not None:
                latency.add_metric([model, q], float(r["latency_ms"][q]))
    yield from (state, failures, flight, latency)
