"""Command palette: what the visible pane can do, plus switching panes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider


class PaneCommands(Provider):
    def _commands(self) -> list[tuple[str, str, Callable[[], Any]]]:
        from tui.app import EmbedscopeApp

        app = self.app
        assert isinstance(app, EmbedscopeApp)
        commands: list[tuple[str, str, Callable[[], Any]]] = []
        pane = app.active_pane()
        if pane is not None:
            for binding in pane.palette_bindings():
                commands.append(
                    (
                        f"{pane.title}: {binding.description}",
                        f"{binding.id} ({binding.key})",
                        partial(pane.run_action, binding.action),
                    )
                )
        for name in ("search", "index", "compare", "metrics"):
            commands.append((f"Show {name.title()} pane", "", partial(app.action_show_pane, name)))
        return commands

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
