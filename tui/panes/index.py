"""Build and switch indexes: pick a folder, model, index type and vector store; watch progress;
cancel."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import (
    Button,
    DataTable,
    DirectoryTree,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)

from tui.keys import INDEX_BINDINGS
from tui.messages import IndexFinished, IndexOpened, IndexProgressed
from tui.panes.base import Pane
from tui.widgets.paths import FolderSuggester

if TYPE_CHECKING:
    from engine.index import CancelToken, CorpusIndex, IndexProgress, IndexReport, IndexStats

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
# Where a new index keeps its vectors (engine.store.factory.BACKENDS, not imported: no faiss).
BACKENDS = (("FAISS (this machine)", "faiss"), ("Milvus (index.milvus.uri)", "milvus"))
# Progress arrives once per file; painting it more often than this only costs the UI loop.
PAINT_EVERY_S = 0.1


def default_index_name(corpus: Path) -> str:
    """`sample_corpus` -> `sample`: the folder name without a trailing corpus word."""
    name = corpus.resolve().name
    for suffix in ("_corpus", "-corpus"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def describe_stats(stats: IndexStats, frozen: bool) -> str:
    when = "never"
    if stats.last_indexed:
        local = time.localtime(stats.last_indexed)
        when = "—" if frozen else time.strftime("%Y-%m-%d %H:%M", local)
    return (
        f"[b]{stats.name}[/b]  model [b]{stats.model}[/b] ({stats.dimension} dims, "
        f"{stats.backend} {stats.index_type})\n"
        f"{stats.documents} documents · {stats.chunks} chunks · "
        f"{'—' if frozen else human_bytes(stats.bytes_on_disk)} on disk · last indexed {when}\n"
        f"[dim]{stats.path}[/dim]"
    )


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe_progress(p: IndexProgress, frozen: bool) -> str:
    """Three short lines, so a narrow pane cuts only the file name."""
    rate = "—" if frozen else f"{p.chunks_per_s:.0f}"
    eta = "—" if frozen else format_eta(p.eta_s)
    return (
        f"{p.phase}: files {p.files_done}/{p.files_total} · chunks {p.chunks_done}\n"
        f"{rate} chunks/s · ETA {eta}\n"
        f"{p.current}"
    )


class IndexPane(Pane):
    title = "Index"
    BINDINGS = INDEX_BINDINGS

    def __init__(self) -> None:
        super().__init__(id="index-pane")
        self._token: CancelToken | None = None
        self._models: list[str] = []
        self._unpainted: IndexProgress | None = None
        self._painter: Timer | None = None
        # The store the picker shows until the user picks one: index.backend once known.
        self._default_backend = "faiss"
        self._backend_picked = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="index-top"):
            with Vertical(id="index-form"):
                yield Label("Open index")
                yield Select([], prompt="(no indexes yet)", id="index-select")
                yield Label("Index name")
                yield Input(placeholder="(default: the folder's name)", id="index-name")
                yield Label("Folder to index")
                yield Input(placeholder="path/to/folder", id="folder", suggester=FolderSuggester())
                yield DirectoryTree(".", id="folder-tree")
                with Horizontal(classes="row"):
                    with Vertical():
                        yield Label("Model")
                        yield Select([], prompt="(loading)", id="model")
                    with Vertical():
                        yield Label("Index type")
                        yield Select(
                            [(t, t) for t in INDEX_TYPES],
                            value="auto",
                            allow_blank=False,
                            id="index-type",
                        )
                yield Label("Vector store")
                yield Select(
                    BACKENDS, value=self._default_backend, allow_blank=False, id="backend"
                )
                with Horizontal(classes="row buttons"):
                    yield Button("Start  ^g", id="start", variant="primary")
                    yield Button("Cancel  esc", id="cancel", variant="error", disabled=True)
            with Vertical(id="index-status"):
                yield Static("No index open.", id="index-stats")
                yield ProgressBar(total=1, id="progress", show_eta=False)
                yield Static("Idle.", id="progress-line")
                yield Label("Skipped files")
                yield DataTable(id="skipped", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#folder-tree", DirectoryTree).display = False
        table = self.query_one("#skipped", DataTable)
        table.add_column("File", key="path", width=40)
        table.add_column("Reason", key="reason")

    @property
    def running(self) -> bool:
        return self._token is not None

    def set_models(self, names: list[str], default: str) -> None:
        self._models = list(names)
        select = self.query_one("#model", Select)
        select.set_options([(n, n) for n in names])
        if default in names:
            select.value = default

    def set_default_backend(self, backend: str) -> None:
        """Show the config's `index.backend`, unless the user has already picked a store."""
        if self._backend_picked or backend not in {value for _, value in BACKENDS}:
            return
        self._default_backend = backend
        with self.prevent(Select.Changed):
            self.query_one("#backend", Select).value = backend

    @on(Select.Changed, "#backend")
    def _backend_changed(self, event: Select.Changed) -> None:
        self._backend_picked = event.value != self._default_backend

    def set_index_names(self, names: list[str], current: str | None) -> None:
        select = self.query_one("#index-select", Select)
        with self.prevent(Select.Changed):
            select.set_options([(n, n) for n in names])
            if current in names:
                select.value = current

    @work(thread=True, exclusive=True, group="index-stats", exit_on_error=False)
    def show_index(self, index: CorpusIndex) -> None:
        """In a thread: the counts wait on the store's lock while a commit holds it."""
        stats = index.stats()
        self.app.call_from_thread(self._show_stats, stats)

    def _show_stats(self, stats: IndexStats) -> None:
        self.query_one("#index-stats", Static).update(describe_stats(stats, self.embedscope.frozen))
        if stats.model in self._models:
            self.query_one("#model", Select).value = stats.model

    @on(Select.Changed, "#index-select")
    def _switch(self, event: Select.Changed) -> None:
        if event.value is not Select.BLANK and not self.running:
            self.query_one("#index-name", Input).value = str(event.value)
            self.switch_index(str(event.value))

    @work(exclusive=True, group="index-open", exit_on_error=False)
    async def switch_index(self, name: str) -> None:
        engine = self.embedscope.engine
        if engine is None:
            self.app.notify("The engine is still starting.", severity="warning")
            return
        index = await engine.indexes.open(name)
        self.post_message(IndexOpened(index))

    @on(DirectoryTree.DirectorySelected, "#folder-tree")
    def _tree_pick(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#folder", Input).value = str(event.path)

    def action_toggle_tree(self) -> None:
        tree = self.query_one("#folder-tree", DirectoryTree)
        tree.display = not tree.display
        if tree.display:
            tree.focus()

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            self.app.notify("An indexing run is already going; Esc cancels it.", severity="warning")
            return
        folder_text = self.query_one("#folder", Input).value.strip()
        name = self.query_one("#index-name", Input).value.strip()
        if not folder_text:
            self.app.notify("Pick a folder to index first.", severity="warning")
            return
        folder = Path(folder_text).expanduser()
        if not folder.is_dir():
            self.app.notify(f"{folder} is not a folder.", severity="error")
            return
        if not name:
            name = default_index_name(folder)
        picked = self.query_one("#model", Select).value
        model = None if picked is Select.BLANK else str(picked)
        index_type = str(self.query_one("#index-type", Select).value)
        backend = str(self.query_one("#backend", Select).value)
        self.start_indexing(name, [folder], model, index_type, backend)

    def start_indexing(
        self,
        name: str,
        paths: list[Path],
        model: str | None,
        index_type: str = "auto",
        backend: str | None = None,
    ) -> None:
        """``backend``: for a new index (None: index.backend); an existing one keeps its own."""
        from engine.index import CancelToken

        self._token = CancelToken()
        self._set_running(True)
        self.query_one("#skipped", DataTable).clear()
        self.query_one("#progress-line", Static).update(f"Preparing index {name}…", layout=False)
        self.run_indexing(name, paths, model, index_type, backend, self._token)

    @work(exclusive=True, group="indexing", exit_on_error=False)
    async def run_indexing(
        self,
        name: str,
        paths: list[Path],
        model: str | None,
        index_type: str,
        backend: str | None,
        token: CancelToken,
    ) -> None:
        engine = self.embedscope.engine
        if engine is None:
            self._finish_run()
            self.app.notify("The engine is still starting; try again in a moment.")
            return
        try:
            index = await engine.indexes.open_or_create(
                name, model=model, index_type=index_type, backend=backend
            )
            self.post_message(IndexOpened(index))
            report = await index.index_path(
                paths, progress=lambda p: self.post_message(IndexProgressed(p)), cancel=token
            )
        except BaseException:
            self._finish_run()
            self.query_one("#progress-line", Static).update("Failed; see the notice.")
            raise
        self.post_message(IndexFinished(index, report))

    def action_cancel(self) -> None:
        if self._token is None:
            return
        self._token.cancel()
        self._stop_painting()
        self.query_one("#progress-line", Static).update(
            "Cancelling after the current batch…", layout=False
        )

    def _set_running(self, running: bool) -> None:
        """While running, the progress line has a fixed height, so repaints skip layout."""
        self.query_one("#start", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running
        self.query_one("#progress-line", Static).set_class(running, "-running")

    def _finish_run(self) -> None:
        self._token = None
        self._stop_painting()
        self._set_running(False)

    def _stop_painting(self) -> None:
        if self._painter is not None:
            self._painter.stop()
            self._painter = None
        self._unpainted = None

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(IndexProgressed)
    def _progress(self, message: IndexProgressed) -> None:
        """Keeps the newest figures; the first is painted at once, later ones at most
        every PAINT_EVERY_S."""
        message.stop()
        if not self.running:
            return
        self._unpainted = message.progress
        if self._painter is None:
            self._paint_progress()
            self._painter = self.set_interval(PAINT_EVERY_S, self._paint_progress)

    def _paint_progress(self) -> None:
        p = self._unpainted
        if p is None:
            return
        self._unpainted = None
        self.query_one("#progress", ProgressBar).update(
            total=max(p.files_total, 1), progress=p.files_done
        )
        self.query_one("#progress-line", Static).update(
            describe_progress(p, self.embedscope.frozen), layout=False
        )

    def finished(self, report: IndexReport) -> None:
        """Called by the app once it has handled IndexFinished."""
        self._finish_run()
        table = self.query_one("#skipped", DataTable)
        table.clear()
        for failure in report.failed:
            table.add_row(failure.path, failure.reason)
        state = "Cancelled" if report.cancelled else "Done"
        took = "" if self.embedscope.frozen else f" in {report.seconds:.1f} s"
        self.query_one("#progress-line", Static).update(
            f"{state}{took}: {report.added} added, {report.updated} updated, "
            f"{report.removed} removed, {report.unchanged} unchanged, "
            f"{report.chunks_embedded} chunks embedded, {len(report.failed)} skipped."
        )
        if not report.cancelled:
            bar = self.query_one("#progress", ProgressBar)
            bar.update(total=bar.total or 1, progress=bar.total or 1)
