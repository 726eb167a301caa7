"""The Textual app. Paints first; the engine (and torch) load in a worker afterwards."""

from __future__ import annotations

from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Static


class EmbedscopeApp(App[None]):
    TITLE = "embedscope"
    BINDINGS = [Binding("q", "quit", "Quit", id="app.quit")]

    def __init__(
        self,
        *,
        config_path: Path | None = None,
        corpus: Path | None = None,
        index_name: str | None = None,
    ) -> None:
        super().__init__()
        self.config_path = config_path
        self.corpus = corpus
        self.index_name = index_name

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("embedscope — semantic search workbench", id="status")
        yield Footer()
