"""Live engine figures, refreshed each second; only widgets whose text changed are repainted."""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widgets import Label, Sparkline, Static

from tui.keys import METRICS_BINDINGS
from tui.panes.base import Pane
from tui.panes.index import human_bytes
from tui.widgets.barchart import BarChart

CARDS = (
    ("requests", "Requests"),
    ("l1_hits", "L1 hits"),
    ("l2_hits", "L2 hits"),
    ("misses", "Misses"),
    ("hit_rate", "Hit rate"),
    ("texts_per_s", "Texts/s"),
    ("p50", "Encode p50"),
    ("p95", "Encode p95"),
    ("p99", "Encode p99"),
    ("index_bytes", "Index size"),
    ("cache_bytes", "Cache L1/L2"),
    ("rss", "Process RSS"),
)
PLACEHOLDER = "—"


def rss_bytes() -> int:
    """Resident memory now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _ms(value: float | None) -> str:
    return PLACEHOLDER if value is None else f"{value:.1f} ms"


def summarise(snapshot: dict[str, Any]) -> tuple[dict[str, str], list[float], dict[str, int]]:
    """Card texts, latency timeline and batch histogram, summed over models.

    Latency figures come from the busiest model: percentiles cannot be summed.
    """
    models: dict[str, dict[str, Any]] = snapshot.get("models", {})
    total = {
        k: sum(int(m.get(k) or 0) for m in models.values())
        for k in ("requests", "l1_hits", "l2_hits", "misses")
    }
    lookups = total["l1_hits"] + total["l2_hits"] + total["misses"]
    busiest = max(models.values(), key=lambda m: m.get("requests", 0), default={})
    enc = busiest.get("encode_latency_ms", {})
    rate = sum(float(m.get("texts_per_s") or 0.0) for m in models.values())
    cache = snapshot.get("cache", {})
    cards = {
        "requests": f"{total['requests']:,}",
        "l1_hits": f"{total['l1_hits']:,}",
        "l2_hits": f"{total['l2_hits']:,}",
        "misses": f"{total['misses']:,}",
        "hit_rate": f"{(total['l1_hits'] + total['l2_hits']) / lookups:.1%}"
        if lookups
        else PLACEHOLDER,
        "texts_per_s": f"{rate:,.0f}" if rate else PLACEHOLDER,
        "p50": _ms(enc.get("p50")),
        "p95": _ms(enc.get("p95")),
        "p99": _ms(enc.get("p99")),
        "cache_bytes": f"{human_bytes(int(cache.get('l1_bytes', 0)))} / "
        f"{human_bytes(int(cache.get('l2_bytes', 0)))}",
    }
    timeline = [float(ms) for _, ms in busiest.get("timeline", [])]
    histogram: dict[str, int] = {}
    for m in models.values():
        for size, count in m.get("batch_size_histogram", {}).items():
            histogram[size] = histogram.get(size, 0) + int(count)
    return cards, timeline, histogram


def remote_lines(snapshot: dict[str, Any]) -> str:
    """One line per remote model: endpoint state, breaker, endpoint latency, usage and cost."""
    lines = []
    for name, m in snapshot.get("models", {}).items():
        r = m.get("remote")
        if not r:
            continue
        b = r["breaker"]
        p50 = r["latency_ms"]["p50"]
        lines.append(
            f"{name} → {r['endpoint']}: {r['state']} · breaker {b['state']} "
            f"({b['consecutive_failures']} failures in a row, opened {b['opened']}×, "
            f"{b['rejected']} refused) · API p50 {_ms(p50)} · {r['requests']:,} requests, "
            f"{r['retries']:,} retries · {r['prompt_tokens']:,} tokens, ${r['cost_usd']:.4f}"
        )
    return "\n".join(lines)


def api_lines(url: str, summary: dict[str, Any]) -> str:
    """The in-app API server: totals, latency, 429s, then the busiest routes by status."""
    n = summary["requests"]
    head = (
        f"API {url} · {n:,} request{'s' if n != 1 else ''} · p50 {_ms(summary['p50_ms'])} · "
        f"p95 {_ms(summary['p95_ms'])} · {summary['rate_limited']:,} rate-limited (429)"
    )
    busiest = sorted(summary["routes"].items(), key=lambda kv: -kv[1])[:6]
    routes = " · ".join(f"{m} {route} {status} ×{c:,}" for (m, route, status), c in busiest)
    return f"{head}\n{routes}" if routes else head


class MetricsPane(Pane):
    title = "Metrics"
    BINDINGS = METRICS_BINDINGS
    can_focus = True

    def __init__(self) -> None:
        super().__init__(id="metrics-pane")
        self._shown: dict[str, str] = {}
        self._timeline: list[float] = []
        self._histogram: dict[str, int] = {}
        self.live = True

    def compose(self) -> ComposeResult:
        with Grid(id="cards"):
            for key, label in CARDS:
                with Vertical(classes="card"):
                    yield Label(label, classes="card-label")
                    yield Static(PLACEHOLDER, id=f"card-{key}", classes="card-value")
        yield Label("Request latency over time (ms)", id="latency-label")
        yield Sparkline([], id="latency")
        yield BarChart(id="batches")
        yield Static("", id="metrics-state")
        yield Static("", id="remote-state", markup=False)
        yield Static("", id="api-state", markup=False)

    def on_mount(self) -> None:
        self.query_one("#batches", BarChart).set_data("Batch sizes (batches per bucket)", [])
        self.query_one("#remote-state", Static).display = False
        self.query_one("#api-state", Static).display = False
        if not self.embedscope.frozen:
            self.set_interval(1.0, self.refresh_figures)

    def action_toggle_live(self) -> None:
        self.live = not self.live
        self.query_one("#metrics-state", Static).update("" if self.live else "Paused (ctrl+r).")

    def refresh_figures(self) -> None:
        """Skips work while hidden, paused, or while the last gathering still waits on SQLite:
        an exclusive worker cancels its predecessor, but a thread already blocked runs on."""
        if not (self.live and self.embedscope.engine is not None and self.is_on_screen):
            return
        if any(w.node is self and w.group == "metrics" and not w.is_finished for w in self.workers):
            return
        self.gather_figures()

    @work(thread=True, exclusive=True, group="metrics", exit_on_error=False)
    def gather_figures(self) -> None:
        """In a thread: the index size reads SQLite, whose lock a commit may hold for a while."""
        engine = self.embedscope.engine
        if engine is None:
            return
        snapshot = engine.embeddings.snapshot()
        cards, timeline, histogram = summarise(snapshot)
        index = self.embedscope.index
        cards["index_bytes"] = human_bytes(index.stats().bytes_on_disk) if index else PLACEHOLDER
        cards["rss"] = human_bytes(rss_bytes())
        self.app.call_from_thread(self._show_figures, cards, timeline, histogram)
        self.app.call_from_thread(self._show_line, "remote", remote_lines(snapshot))
        api = self.embedscope.api
        served = api.metrics() if api is not None and api.running else None
        text = api_lines(api.url, served.summary()) if api is not None and served else ""
        self.app.call_from_thread(self._show_line, "api", text)

    def _show_line(self, key: str, text: str) -> None:
        """Hidden while empty (no remote model used, no API served), so layouts stay as were."""
        if self._shown.get(key, "") != text:
            widget = self.query_one(f"#{key}-state", Static)
            widget.update(text)
            widget.display = bool(text)
            self._shown[key] = text

    def _show_figures(
        self, cards: dict[str, str], timeline: list[float], histogram: dict[str, int]
    ) -> None:
        """Only widgets whose text changed are repainted."""
        for key, text in cards.items():
            if self._shown.get(key) != text:
                self.query_one(f"#card-{key}", Static).update(text)
                self._shown[key] = text
        if timeline != self._timeline:
            self._timeline = timeline
            self.query_one("#latency", Sparkline).data = timeline
        if histogram != self._histogram:
            self._histogram = histogram
            ordered = sorted(histogram.items(), key=lambda kv: int(kv[0]))
            rows = [(f"≤{k}", float(v)) for k, v in ordered]
            self.query_one("#batches", BarChart).set_data(
                "Batch sizes (batches per bucket)", rows, lambda v: f"{v:,.0f}"
            )
