"""What every pane shares: failed workers go to the app's one handler; actions feed the palette."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.binding import Binding
from textual.containers import Vertical
from textual.worker import Worker

if TYPE_CHECKING:
    from tui.app import EmbedscopeApp


class Pane(Vertical):
    """A tab's content. `title` names it in the palette and help."""

    title = ""

    @property
    def embedscope(self) -> EmbedscopeApp:
        from tui.app import EmbedscopeApp

        assert isinstance(self.app, EmbedscopeApp)
        return self.app

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        self.embedscope.report_worker(event)

    def palette_bindings(self) -> list[Binding]:
        return [b for b in self.BINDINGS if isinstance(b, Binding) and b.description]
