"""Models side by side: availability and live latency, and the scores of saved evaluation runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.widgets import DataTable, Label, Static

from tui.keys import COMPARE_BINDINGS
from tui.panes.base import Pane
from tui.widgets.barchart import BarChart

FIGURES = (
    "ndcg@10",
    "recall@10",
    "recall@100",
    "mrr@10",
    "map@100",
    "query_p50_ms",
    "docs_per_s",
    "memory_mb",
    "cost_per_1k",
)
PROBES = ("how do tides work", "best way to proof bread dough", "index funds versus bonds")


@dataclass(frozen=True)
class ModelRow:
    name: str
    available: bool
    reason: str
    kind: str
    dimension: int | None
    device: str
    loaded: bool = False
    # Time spent loading the model (every runtime it loaded), shown apart from query time.
    load_seconds: float | None = None
    # Median model time of a lone query, loading excluded (ModelInfo.query_p50_ms); None, shown
    # as "—", until a query has been measured.
    latency_p50_ms: float | None = None


@dataclass
class RunView:
    """A saved evaluation run, read defensively: a run written by a newer version still shows."""

    label: str
    dataset: str
    split: str
    figures: dict[str, dict[str, float]]
    rankings: dict[str, list[str]] = field(default_factory=dict)


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def run_view(run: Any, source: Path | None = None) -> RunView:
    per_model = _get(run, "models", "per_model", "results") or {}
    figures: dict[str, dict[str, float]] = {}
    for model, values in dict(per_model).items():
        row = values if isinstance(values, Mapping) else vars(values)
        figures[str(model)] = {
            k: float(v) for k, v in row.items() if isinstance(v, int | float) and k in FIGURES
        }
    rankings = _get(run, "ranking", "rankings") or {}
    created = _get(run, "created", "timestamp", "started")
    label = source.stem if source else str(created or "run")
    return RunView(
        label=label,
        dataset=str(_get(run, "dataset") or "?"),
        split=str(_get(run, "split") or "?"),
        figures=figures,
        rankings={str(k): [str(m) for m in v] for k, v in dict(rankings).items()},
    )


def load_runs(data_dir: Path) -> list[RunView] | None:
    """Saved runs, newest first; None when the evaluation module is not installed yet."""
    try:
        from engine.evaluation import list_runs
    except ImportError:
        return None
    return [run_view(run, Path(run.path)) for run in list_runs(data_dir)]


def fmt_figure(name: str) -> Any:
    if name.endswith("_ms") or name in {"docs_per_s", "memory_mb"}:
        return lambda v: f"{v:,.1f}"
    if name == "cost_per_1k":
        return lambda v: f"${v:.4f}"
    return lambda v: f"{v:.3f}"


class ComparePane(Pane):
    title = "Compare"
    BINDINGS = COMPARE_BINDINGS

    def __init__(self) -> None:
        super().__init__(id="compare-pane")
        self.models: list[ModelRow] = []
        self._cells: dict[str, dict[str, str]] = {}
        self.runs: list[RunView] = []
        self._figure = 0

    def compose(self) -> ComposeResult:
        yield Label("Models")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Label("Evaluation runs")
        yield Static("Loading evaluation runs…", id="runs-state")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield BarChart(id="chart")
        yield Static("", id="ranking")

    def on_mount(self) -> None:
        models = self.query_one("#models", DataTable)
        for label, key in (
            ("Model", "name"),
            ("Status", "status"),
            ("Kind", "kind"),
            ("Dim", "dim"),
            ("Device", "device"),
            ("Load s", "load"),
            ("Query p50 ms", "latency"),
        ):
            models.add_column(label, key=key)
        runs = self.query_one("#runs", DataTable)
        for label, key in (("Run", "run"), ("Dataset", "dataset"), ("Split", "split")):
            runs.add_column(label, key=key)
        runs.add_column("Models", key="models")
        runs.display = False
        if not self.embedscope.frozen:
            self.set_interval(2.0, self._tick)

    def _tick(self) -> None:
        if self.is_on_screen:
            self.embedscope.refresh_models()

    def set_models(self, rows: list[ModelRow]) -> None:
        """Rebuild when the set of models changes; otherwise update only the cells that changed."""
        table = self.query_one("#models", DataTable)
        frozen = self.embedscope.frozen
        cells = {
            r.name: {
                "name": r.name,
                "status": ("loaded" if r.loaded else "available") if r.available else r.reason,
                "kind": r.kind,
                "dim": str(r.dimension or "?"),
                "device": r.device,
                "load": "—" if frozen or r.load_seconds is None else f"{r.load_seconds:.2f}",
                "latency": "—" if frozen or r.latency_p50_ms is None else f"{r.latency_p50_ms:.1f}",
                **(self._remote_cells(r.name) if r.kind == "openai" and r.available else {}),
            }
            for r in rows
        }
        if [r.name for r in rows] != [r.name for r in self.models]:
            table.clear()
            for name, row in cells.items():
                table.add_row(*row.values(), key=name)
        else:
            for name, row in cells.items():
                for key, value in row.items():
                    if self._cells.get(name, {}).get(key) != value:
                        table.update_cell(name, key, value, update_width=True)
        self.models = rows
        self._cells = cells

    def _remote_cells(self, name: str) -> dict[str, str]:
        """A remote model's endpoint, its live state (reachable, failing, breaker open) and the
        endpoint's own latency, read from the model the engine holds."""
        engine = self.embedscope.engine
        if engine is None:
            return {"device": "remote"}
        model = engine.registry.created(name)
        status = model.status() if model is not None else None
        if status is None:
            host = engine.registry.check(name).extra.get("endpoint", "")
            return {"status": "not contacted", "device": f"remote {host}"}
        p50 = status["latency_ms"]["p50"]
        return {
            "status": status["state"],
            "device": f"remote {status['endpoint']}",
            "latency": "—" if self.embedscope.frozen or p50 is None else f"{p50:.1f}",
        }

    def set_runs(self, runs: list[RunView] | None) -> None:
        state = self.query_one("#runs-state", Static)
        table = self.query_one("#runs", DataTable)
        if not runs:
            self.runs = []
            state.update(
                "No evaluation runs yet. Run one with `embedscope eval --dataset DIR --models "
                "a,b`; its scores (nDCG@10, recall, MRR, latency, cost) will be charted here."
            )
            state.display = True
            table.display = False
            self.query_one("#chart", BarChart).set_data("", [])
            self.query_one("#chart", BarChart).display = False
            return
        self.runs = runs
        state.display = False
        table.display = True
        self.query_one("#chart", BarChart).display = True
        table.clear()
        for i, run in enumerate(runs):
            table.add_row(run.label, run.dataset, run.split, ", ".join(run.figures), key=str(i))
        self._draw_chart()

    @on(DataTable.RowHighlighted, "#runs")
    def _run_highlighted(self) -> None:
        self._draw_chart()

    def _selected_run(self) -> RunView | None:
        if not self.runs:
            return None
        row = self.query_one("#runs", DataTable).cursor_row
        return self.runs[min(max(row, 0), len(self.runs) - 1)]

    def _draw_chart(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        present = [f for f in FIGURES if any(f in v for v in run.figures.values())] or ["ndcg@10"]
        figure = present[self._figure % len(present)]
        rows = [(model, values.get(figure)) for model, values in run.figures.items()]
        self.query_one("#chart", BarChart).set_data(
            f"{figure} · {run.dataset}/{run.split}  (ctrl+t: next figure)",
            rows,
            fmt_figure(figure),
        )
        ranking = "  ".join(f"[b]{case}[/b]: {' > '.join(m)}" for case, m in run.rankings.items())
        self.query_one("#ranking", Static).update(ranking)

    def action_next_figure(self) -> None:
        self._figure += 1
        self._draw_chart()

    def action_measure(self) -> None:
        self.measure()

    @work(exclusive=True, group="measure", exit_on_error=False)
    async def measure(self) -> None:
        """Time a few fresh queries on every loaded model; loading others is left to the user."""
        engine = self.embedscope.engine
        if engine is None:
            self.app.notify("The engine is still starting.", severity="warning")
            return
        remote = [r.name for r in self.models if r.kind == "openai" and r.available]
        for name in remote:
            model = await engine.registry.aget(name)
            if hasattr(model, "probe"):
                await model.probe()
        loaded = [r.name for r in self.models if r.loaded and r.name not in remote]
        for name in loaded:
            for probe in PROBES:
                await engine.embeddings.encode([f"{probe} {time.time_ns()}"], model=name)
                await asyncio.sleep(0)
        skipped = [
            r.name for r in self.models if r.available and not r.loaded and r.name not in remote
        ]
        note = f"; not loaded (skipped): {', '.join(skipped)}" if skipped else ""
        measured = [*loaded, *remote]
        self.app.notify(f"Measured {', '.join(measured) or 'no models'}{note}.")
        self.embedscope.refresh_models()
