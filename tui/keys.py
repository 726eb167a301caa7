"""Every binding with its id, in one place: the help modal, the keymap check and docs read this.

No default uses ctrl+a or ctrl+b (screen and tmux prefixes) or keys an Input consumes while typing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from textual.binding import Binding

APP_BINDINGS = [
    Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    Binding("f1,question_mark", "help", "Help", id="app.help", key_display="?"),
    Binding("f2", "show_pane('search')", "Search", id="app.pane.search"),
    Binding("f3", "show_pane('index')", "Index", id="app.pane.index"),
    Binding("f4", "show_pane('compare')", "Compare", id="app.pane.compare"),
    Binding("f5", "show_pane('metrics')", "Metrics", id="app.pane.metrics"),
]

SEARCH_BINDINGS = [
    Binding("ctrl+r", "cycle_mode", "Mode", id="search.mode"),
    Binding("ctrl+f", "focus_query", "Query", id="search.query", show=False),
    Binding("ctrl+l", "focus_filter", "Filter", id="search.filter"),
    Binding("down", "focus_results", "Results", id="search.results", show=False),
    Binding("ctrl+n", "more_like_this", "More like this", id="search.more"),
    Binding("ctrl+g", "toggle_per", "Docs/chunks", id="search.per"),
    Binding("ctrl+y", "copy", "Copy", id="search.copy"),
    Binding("ctrl+o", "export", "Export", id="search.export"),
]

INDEX_BINDINGS = [
    Binding("ctrl+g", "start", "Start indexing", id="index.start"),
    Binding("escape", "cancel", "Cancel indexing", id="index.cancel"),
    Binding("ctrl+t", "toggle_tree", "Folder tree", id="index.tree"),
]

COMPARE_BINDINGS = [
    Binding("ctrl+r", "measure", "Measure latency", id="compare.measure"),
    Binding("ctrl+t", "next_figure", "Next figure", id="compare.figure"),
]

METRICS_BINDINGS = [
    Binding("ctrl+r", "toggle_live", "Pause/resume", id="metrics.live"),
]

ALL_BINDINGS: dict[str, list[Binding]] = {
    "App": APP_BINDINGS,
    "Search": SEARCH_BINDINGS,
    "Index": INDEX_BINDINGS,
    "Compare": COMPARE_BINDINGS,
    "Metrics": METRICS_BINDINGS,
}

FORBIDDEN_KEYS = frozenset({"ctrl+a", "ctrl+b"})


def binding_ids() -> set[str]:
    return {b.id for group in ALL_BINDINGS.values() for b in group if b.id}


def check_keymap(keymap: Mapping[str, str]) -> list[str]:
    """Problems in a user keymap, each naming the id and the fix; empty when it is fine."""
    known = binding_ids()
    problems = []
    for binding_id, keys in keymap.items():
        if binding_id not in known:
            problems.append(
                f"keymap: unknown binding id '{binding_id}' (known: {', '.join(sorted(known))})"
            )
        elif not keys.strip():
            problems.append(f"keymap: '{binding_id}' has no key; give one, e.g. 'ctrl+t'")
    return problems


def describe(bindings: Iterable[Binding], keymap: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(keys as the user has them, description, id) rows for the help modal."""
    rows = []
    for b in bindings:
        keys = keymap.get(b.id or "", b.key_display or b.key)
        rows.append((keys, b.description, b.id or ""))
    return rows
