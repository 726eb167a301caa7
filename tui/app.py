"""The Textual app. It paints first; faiss, torch and the model load in workers afterwards."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.driver import Driver
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane, Tabs
from textual.worker import Worker, WorkerState

from tui.commands import PaneCommands
from tui.keys import APP_BINDINGS, check_keymap
from tui.messages import (
    EngineReady,
    FirstPaint,
    IndexFinished,
    IndexOpened,
    ModelReady,
    TerminalLost,
)
from tui.panes.base import Pane
from tui.panes.compare import ComparePane, ModelRow, load_runs
from tui.panes.index import IndexPane, default_index_name
from tui.panes.metrics import MetricsPane
from tui.panes.search import SearchPane
from tui.settings import DEFAULT_THEME, AppSettings, SettingsError
from tui.themes import ThemeFileError, load_themes

if TYPE_CHECKING:
    from engine import Engine
    from engine.index import CorpusIndex
    from tui.serving import ApiServer

HERE = Path(__file__).parent
PANES = ("search", "index", "compare", "metrics")
PANE_FOCUS = {
    "search": "#query",
    "index": "#folder",
    "compare": "#models",
    "metrics": "#metrics-pane",
}


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After each full collection, freeze what survived it. A full collection walks every
    unfrozen object, and the UI's render caches (Textual strips, ~70k objects) grow back
    after boot's freeze: a gen-2 collection while re-indexing 1,000 chunks measured 91-177 ms,
    on the loop or on a worker thread holding the GIL (bench_app's reindex lag). Frozen, the
    next one walks only what is newer. The cost: a cycle that becomes garbage after being
    frozen is reclaimed only when the app exits (`on_unmount` unfreezes)."""
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()


def friendly_error(error: BaseException) -> str:
    """One line a user can act on; engine errors already say what, where and how to fix."""
    text = str(error).strip() or type(error).__name__
    return text if len(text) < 600 else text[:600] + "…"


class EmbedscopeApp(App[None]):
    TITLE = "embedscope"
    CSS_PATH = [
        HERE / "app.tcss",
        HERE / "panes" / "search.tcss",
        HERE / "panes" / "index.tcss",
        HERE / "panes" / "compare.tcss",
        HERE / "panes" / "metrics.tcss",
    ]
    BINDINGS = APP_BINDINGS
    COMMANDS = App.COMMANDS | {PaneCommands}

    def __init__(
        self,
        *,
        config_path: Path | None = None,
        corpus: Path | None = None,
        index_name: str | None = None,
        start_engine: bool = True,
        frozen: bool = False,
        settings_path: Path | None = None,
        serve: tuple[str, int] | None = None,
    ) -> None:
        """`start_engine=False` with `frozen=True` is the still, repeatable app snapshots need.
        `serve` (host, port): serve the HTTP API once the engine is up."""
        super().__init__()
        self.config_path = config_path
        self.corpus = corpus
        self.index_name = index_name
        self.start_engine = start_engine
        self.frozen = frozen
        self.engine: Engine | None = None
        self.index: CorpusIndex | None = None
        self.serve_at = serve
        self.api: ApiServer | None = None
        self._loaded_models: set[str] = set()
        self._landing_after_index = False
        self._startup_problems: list[str] = []
        self.first_paint_at: float | None = None
        try:
            self.settings = AppSettings.load(settings_path)
        except SettingsError as exc:
            self._startup_problems.append(f"{exc} — using defaults.")
            self.settings = AppSettings(path=settings_path) if settings_path else AppSettings()
        try:
            for theme in load_themes():
                self.register_theme(theme)
        except ThemeFileError as exc:
            self._startup_problems.append(str(exc))
        wanted = self.settings.theme
        if wanted not in self.available_themes:
            self._startup_problems.append(
                f"theme '{wanted}' (in {self.settings.path}) is not installed; "
                f"choose one with ctrl+p → Theme"
            )
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        problems = check_keymap(self.settings.keymap)
        self._startup_problems.extend(f"{p} (in {self.settings.path})" for p in problems)
        if not problems:
            self.set_keymap(self.settings.keymap)

    def get_driver_class(self) -> type[Driver]:
        """On POSIX terminals, a driver that ends the app when its terminal closes."""
        chosen = super().get_driver_class()
        if sys.platform == "win32":
            return chosen
        from textual.drivers.linux_driver import LinuxDriver

        from tui.terminal import TerminalDriver

        return TerminalDriver if chosen is LinuxDriver else chosen

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◇")
        with TabbedContent(id="panes", initial="search"):
            with TabPane("Search", id="search"):
                yield SearchPane()
            with TabPane("Index", id="index"):
                yield IndexPane()
            with TabPane("Compare", id="compare"):
                yield ComparePane()
            with TabPane("Metrics", id="metrics"):
                yield MetricsPane()
        yield Static("Starting…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        if self.frozen:
            for box in self.query(Input):
                box.cursor_blink = False
        for problem in self._startup_problems:
            self.notify(problem, severity="warning", timeout=10)
        self.watch(self, "theme", self._remember_theme, init=False)
        self.query_one("#query", Input).focus()
        self.call_after_refresh(self._first_paint)

    def _first_paint(self) -> None:
        """Heavy work starts only once a frame is on screen, so start-up never looks frozen."""
        self.first_paint_at = time.perf_counter()
        self.post_message(FirstPaint())

    @on(FirstPaint)
    def _start_loading(self) -> None:
        self.load_catalog()
        if self.start_engine:
            self.set_status("Loading the search engine (faiss, torch)…")
            self.boot()
        else:
            self.set_status("Engine not started.")

    async def on_unmount(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.engine is not None:
            await self.engine.stop()
        if _freeze_survivors in gc.callbacks:
            gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()

    @on(TerminalLost)
    def _terminal_lost(self) -> None:
        """The terminal closed: leave as Ctrl+Q does (a running index is cancelled and keeps
        what it committed); 129 = 128 + SIGHUP, the status a shell gives a hang-up."""
        self.exit(return_code=129)

    def set_status(self, text: str) -> None:
        """Workers report here; one finishing while the app closes finds no status line."""
        for status in self.query("#status").results(Static):
            status.update(text)

    def active_pane(self) -> Pane | None:
        active = self.query_one("#panes", TabbedContent).active
        panes = list(self.query(f"#{active} Pane").results(Pane)) if active else []
        return panes[0] if panes else None

    def _remember_theme(self, theme: str) -> None:
        if theme != self.settings.theme:
            self.settings.theme = theme
            self.save_settings()

    @work(thread=True, group="settings", exit_on_error=False)
    def save_settings(self) -> None:
        self.settings.save()

    def report_worker(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker becomes a notice: the user never sees a traceback."""
        if event.state != WorkerState.ERROR or event.worker.error is None:
            return
        error = event.worker.error
        group = event.worker.group
        self.notify(friendly_error(error), title=f"{group} failed", severity="error", timeout=12)
        if group == "engine":
            self.set_status(f"Engine failed to start: {friendly_error(error)}")
        elif group in {"search", "detail"}:
            self.set_status("Search failed; see the notice. Edit the query to retry.")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.report_worker(event)

    @work(thread=True, group="catalog", exit_on_error=False)
    def load_catalog(self) -> None:
        """Model availability from the config alone: no weights, no torch."""
        from engine.config import load_config
        from engine.models import ModelRegistry

        config = load_config(self.config_path)
        registry = ModelRegistry(config)
        rows = []
        for name in registry.names():
            a = registry.check(name)
            rows.append(ModelRow(name, a.available, a.reason, a.kind, a.dimension, config.device))
        runs = load_runs(config.data_dir)
        self.call_from_thread(
            self._show_catalog, rows, runs, config.default_model, config.index_backend
        )

    def _show_catalog(
        self, rows: list[ModelRow], runs: object, default: str, backend: str
    ) -> None:
        compare = self.query_one(ComparePane)
        if not compare.models:
            compare.set_models(rows)
        compare.set_runs(runs if isinstance(runs, list) else None)
        index_pane = self.query_one(IndexPane)
        index_pane.set_models([r.name for r in rows], default)
        index_pane.set_default_backend(backend)

    @work(exclusive=True, group="engine", exit_on_error=False)
    async def boot(self) -> None:
        """Heavy imports in a thread, then the engine, the model, and the first index."""
        await asyncio.to_thread(importlib.import_module, "engine.store.faiss_store")
        from engine import Engine

        engine = Engine(config_path=self.config_path)
        await engine.start()
        self.engine = engine
        self.post_message(EngineReady(engine))
        name = engine.config.default_model
        self.set_status(f"Loading model {name}…")
        started = time.perf_counter()
        model = await engine.embeddings.model(name)
        await model.load()
        # The heap now holds ~500k objects (torch, the model, the UI) that live as long as the app;
        # frozen, they are no longer walked by each full garbage collection, a ~200 ms stall of
        # the UI loop while indexing.
        gc.freeze()
        if _freeze_survivors not in gc.callbacks:
            gc.callbacks.append(_freeze_survivors)
        self._loaded_models.add(name)
        self.post_message(ModelReady(name, time.perf_counter() - started))
        await self._open_first_index(engine)

    async def _open_first_index(self, engine: Engine) -> None:
        manager = engine.indexes
        if self.corpus is not None:
            name = self.index_name or default_index_name(self.corpus)
            index = await manager.open_or_create(name)
            self.post_message(IndexOpened(index))
            first = (await asyncio.to_thread(index.stats)).chunks == 0
            if first:
                self.action_show_pane("index")
            self._landing_after_index = True
            self.set_status(f"Indexing {self.corpus} into '{name}'…" if first else "Ready.")
            self.query_one(IndexPane).start_indexing(name, [self.corpus], None)
            return
        if self.index_name is not None:
            self.post_message(IndexOpened(await manager.open(self.index_name)))
            return
        found = await asyncio.to_thread(manager.summaries)
        summaries = sorted(found, key=lambda s: s.last_indexed or 0.0)
        if summaries:
            self.post_message(IndexOpened(await manager.open(summaries[-1].name)))
        else:
            self.set_status("Ready. No index yet: pick a folder in the Index pane (F3).")
            self.action_show_pane("index")

    @on(EngineReady)
    def _engine_ready(self) -> None:
        self.refresh_models()
        if self.serve_at is not None:
            self.start_api()

    def get_system_commands(self, screen: Screen) -> Iterator[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.api is not None and self.api.running:
            yield SystemCommand("Stop API server", f"stop serving {self.api.url}", self.stop_api)
        else:
            yield SystemCommand("Start API server", "serve the HTTP API here", self.start_api)

    @work(group="api", exit_on_error=False)
    async def start_api(self) -> None:
        """Same app and rules as `embedscope serve`, sharing this app's engine; a failure to
        start (port in use, no key for a public host) becomes a notice via report_worker."""
        if self.api is not None and self.api.running:
            self.notify(f"The API is already served at {self.api.url}.")
            return
        if self.engine is None:
            self.notify("The engine is still starting; start the API server once it is ready.")
            return
        # Imported here: it pulls in the whole engine package, which must not delay first paint.
        from tui.serving import ApiServer

        host, port = self.serve_at or ("127.0.0.1", 8765)
        api = ApiServer(self.engine, host, port)
        await api.start()
        self.api = api
        self.notify(f"Serving the HTTP API at {api.url}; watch it in the Metrics pane (F5).")

    @work(group="api", exit_on_error=False)
    async def stop_api(self) -> None:
        api, self.api = self.api, None
        if api is not None:
            await api.stop()
            self.notify(f"Stopped the API server at {api.url}.")

    @on(ModelReady)
    def _model_ready(self, message: ModelReady) -> None:
        took = "" if self.frozen else f" in {message.seconds:.1f} s"
        self.set_status(f"Model {message.model} loaded{took}. Ready.")
        self.refresh_models()

    @on(IndexOpened)
    def _index_opened(self, message: IndexOpened) -> None:
        """The manager hands out one object per index, so a second notice changes nothing."""
        if message.index is self.index:
            return
        self.index = message.index
        self.sub_title = message.index.name
        index_pane = self.query_one(IndexPane)
        index_pane.show_index(message.index)
        if self.engine is not None:
            index_pane.set_index_names(self.engine.indexes.names(), message.index.name)
        self.query_one(SearchPane).request_search()

    @on(IndexFinished)
    def _index_finished(self, message: IndexFinished) -> None:
        index_pane = self.query_one(IndexPane)
        index_pane.finished(message.report)
        if self.index is None or self.index.name == message.index.name:
            self.index = message.index
            index_pane.show_index(message.index)
        if self.engine is not None:
            index_pane.set_index_names(self.engine.indexes.names(), message.index.name)
        report = message.report
        if report.cancelled:
            self.notify(f"Indexing of '{message.index.name}' cancelled; what was done is kept.")
        else:
            self.set_status(
                f"Index '{message.index.name}' ready: {report.added} added, "
                f"{report.updated} updated, {len(report.failed)} skipped."
            )
        if self._landing_after_index:
            self._landing_after_index = False
            self.action_show_pane("search")
            self.query_one("#query", Input).focus()
        self.query_one(SearchPane).request_search()

    def refresh_models(self) -> None:
        engine = self.engine
        found = self.query(ComparePane)
        # No pane: the app is closing while the engine worker still reports.
        if engine is None or not found or not found.first().models:
            return
        compare = found.first()
        snapshot = engine.embeddings.snapshot()["models"]
        self._loaded_models.update(snapshot)
        rows = []
        for row in compare.models:
            model = engine.registry.created(row.name) if row.name in self._loaded_models else None
            if model is not None:
                info = model.info()
                onnx = info.small_batches.startswith("onnxruntime")
                row = ModelRow(
                    row.name,
                    row.available,
                    row.reason,
                    row.kind,
                    info.dimension,
                    f"{info.device} + onnx" if onnx else info.device,
                    info.loaded,
                    info.load_seconds,
                    info.query_p50_ms,
                )
            rows.append(row)
        compare.set_models(rows)

    def action_show_pane(self, name: str) -> None:
        """Focus moves with the pane: focus left in a hidden pane would switch straight back."""
        if name not in PANES:
            return
        tabs = self.query_one("#panes", TabbedContent)
        tabs.active = name
        self._focus_pane(name)

    def _focus_pane(self, name: str) -> None:
        target = PANE_FOCUS.get(name)
        if target is not None:
            self.query_one(target).focus()
        else:
            self.query_one("#panes", TabbedContent).query_one(Tabs).focus()

    @on(TabbedContent.TabActivated, "#panes")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id or ""
        focused = self.focused
        if (
            focused is not None
            and not isinstance(focused, Tabs)
            and pane not in {a.id for a in focused.ancestors_with_self}
        ):
            self._focus_pane(pane)

    def action_help(self) -> None:
        from tui.widgets.modals import HelpScreen

        self.push_screen(HelpScreen(self.settings.keymap))
