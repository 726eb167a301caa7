"""Modal screens: the key help and the export dialog."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static

from tui.keys import ALL_BINDINGS, describe


class HelpScreen(ModalScreen[None]):
    """Every binding, with the keys the user's keymap gives it."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 84; max-width: 95%; height: 80%; border: round $primary; background: $surface;
        padding: 0 1;
    }
    HelpScreen DataTable { height: 1fr; }
    HelpScreen .hint { color: $text-muted; }
    """

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self._keymap = keymap

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Keys[/b]")
            yield DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
            yield Static(
                "Remap any key in app.yaml: keymap: {search.mode: ctrl+t}. Esc closes.",
                classes="hint",
            )

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Pane", "Keys", "Action", "Id")
        for pane, bindings in ALL_BINDINGS.items():
            for keys, description, binding_id in describe(bindings, self._keymap):
                table.add_row(pane, keys, description, binding_id)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)


class ExportScreen(ModalScreen[Path | None]):
    """Asks where to write the results; the suffix (.jsonl or .csv) picks the format."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]
    DEFAULT_CSS = """
    ExportScreen { align: center middle; }
    ExportScreen > Vertical {
        width: 80; max-width: 95%; height: auto; border: round $primary; background: $surface;
        padding: 0 1;
    }
    ExportScreen #export-error { color: $error; height: auto; }
    ExportScreen .hint { color: $text-muted; }
    """

    def __init__(self, default: Path, count: int) -> None:
        super().__init__()
        self._default = default
        self._count = count
        self._confirm_overwrite: Path | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"[b]Export {self._count} results[/b]")
            yield Input(str(self._default), id="export-path")
            yield Static("", id="export-error")
            yield Static("Enter writes the file (.jsonl or .csv); Esc cancels.", classes="hint")

    @on(Input.Submitted, "#export-path")
    def submit(self, event: Input.Submitted) -> None:
        error = self.query_one("#export-error", Static)
        path = Path(event.value.strip()).expanduser()
        if path.suffix.lower() not in {".jsonl", ".csv"}:
            error.update(f"{path.name or 'the path'}: use a .jsonl or .csv file name")
            return
        if not path.parent.is_dir():
            error.update(f"folder {path.parent} does not exist; create it or pick another")
            return
        if path.exists() and self._confirm_overwrite != path:
            self._confirm_overwrite = path
            error.update(f"{path} exists; press Enter again to overwrite it")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
