"""Per-model embedding metrics: one snapshot dict, and the same figures as Prometheus text."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

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
            return {name: m.snapshot() for name, m in self._models.items()}

    def prometheus(self) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry).decode()


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
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
