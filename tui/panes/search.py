"""Search as you type: one search at a time for the newest query, and no stale result shown.

A keystroke after a pause searches at once; keys typed while a search runs are coalesced into one
search for the latest text. The worker also builds the table's cells (cut to their columns) and
the top hit's detail in a thread, so the UI loop only swaps them in and paints once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Input, Select, Static

from tui.clipboard import copy_system
from tui.export import default_export_path, write_results
from tui.keys import SEARCH_BINDINGS
from tui.messages import Query, ResultsReady
from tui.panes.base import Pane
from tui.widgets.modals import ExportScreen

if TYPE_CHECKING:
    from engine.index import CorpusIndex, SearchHit

MODES = ("hybrid", "vector", "keyword")
TOP_K = 20
CONTEXT_CHUNKS = 1
RANK_WIDTH = 3
SCORE_WIDTH = 6
# How many of a document's chunks matched (per document; blank per chunk).
MATCHED_WIDTH = 6
MIN_WIDTH = 8
TITLE_SHARE = 0.4
PATH_SHARE = 0.2


def one_line(value: str) -> Text:
    """A cell that ends in "…" where its column cuts it."""
    return Text(value.replace("\n", " "), no_wrap=True, overflow="ellipsis")


def highlighted(snippet: str, spans: list[tuple[int, int]], style: str = "bold reverse") -> Text:
    text = one_line(snippet)
    for start, end in spans:
        text.stylize(style, start, end)
    return text


def result_widths(space: int) -> tuple[int, int, int]:
    """Title, path and snippet widths that share `space` cells.

    Fixed shares of the table's width, never of what one result set holds: the columns stay
    put while the user types, and new results repaint the rows without rebuilding the columns.
    """
    space = max(space, 3 * MIN_WIDTH)
    title = max(MIN_WIDTH, round(space * TITLE_SHARE))
    path = max(MIN_WIDTH, round(space * PATH_SHARE))
    return title, path, space - title - path


Row = tuple[str, str, Text, Text, Text, Text]


def result_rows(
    hits: Sequence[SearchHit], widths: tuple[int, int, int], per_document: bool
) -> list[Row]:
    """Each hit's cells, already cut to their columns: runs in a thread, so the UI loop's
    table renders short texts instead of whole snippets."""
    title, path, snippet = widths
    rows = []
    for hit in hits:
        cells = (
            (one_line(hit.title), title),
            (one_line(hit.path), path),
            (highlighted(hit.snippet, hit.highlights), snippet),
        )
        for text, width in cells:
            text.truncate(width, overflow="ellipsis")
        rows.append(
            (
                str(hit.rank),
                f"{hit.score:.3f}",
                cells[0][0],
                cells[1][0],
                Text(str(hit.matched_chunks) if per_document else "", justify="right"),
                cells[2][0],
            )
        )
    return rows


def detail_text(index: CorpusIndex, hit: SearchHit, per_document: bool) -> Text:
    """The hit's chunk between its neighbours, for the detail view (SQLite: call in a thread)."""
    chunk, siblings = index.chunk_context(hit.chunk_id)
    nearby = [c for c in siblings if abs(c.ordinal - chunk.ordinal) <= CONTEXT_CHUNKS]
    body = Text()
    page = f"  page {hit.page}" if hit.page is not None else ""
    body.append(f"{hit.title}\n", style="bold")
    matched = ""
    if per_document and len(siblings) > 1:
        matched = f", best of {hit.matched_chunks} matching"
    body.append(
        f"{hit.path}{page}  chunk {chunk.ordinal + 1} of {len(siblings)}{matched}\n\n",
        style="dim",
    )
    if nearby and nearby[0].ordinal > 0:
        body.append("…\n", style="dim")
    for c in nearby:
        body.append(c.text.strip() + "\n\n", style="bold" if c.id == chunk.id else "dim")
    if nearby and nearby[-1].ordinal < len(siblings) - 1:
        body.append("…", style="dim")
    return body


class SearchPane(Pane):
    title = "Search"
    BINDINGS = SEARCH_BINDINGS

    def __init__(self) -> None:
        super().__init__(id="search-pane")
        self.hits: list[SearchHit] = []
        self._like: Query | None = None
        self._shown: Query | None = None
        self._widths: tuple[int, int, int] | None = None
        self._per = "document"
        # The newest query not yet searched, and whether the search worker is running.
        self._wanted: Query | None = None
        self._searching = False
        self._searching_for: Query | None = None
        # The hit the detail view shows, so the table's own highlight does not fetch it again.
        self._detail_for: int | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="search-bar"):
            yield Input(placeholder="Search… (type to search)", id="query")
            yield Select([(m, m) for m in MODES], value="hybrid", allow_blank=False, id="mode")
        yield Input(
            placeholder="Filter: category=astronomy  date>=2023-01-01  type=markdown,pdf",
            id="filter",
        )
        yield Static("", id="filter-error")
        yield Static("Open or build an index (F3), then type a query.", id="search-info")
        yield DataTable(id="results", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="detail-scroll"):
            yield Static("", id="detail")

    def on_mount(self) -> None:
        self._fill_results()

    def on_resize(self) -> None:
        """Columns follow the table's width; the highlighted row stays where it was."""
        if self._column_widths() != self._widths:
            table = self.query_one("#results", DataTable)
            row = table.cursor_row
            self._fill_results()
            table.move_cursor(row=row)

    def _column_widths(self) -> tuple[int, int, int]:
        table = self.query_one("#results", DataTable)
        fixed = RANK_WIDTH + SCORE_WIDTH + MATCHED_WIDTH + 6 * 2 * table.cell_padding
        return result_widths(table.size.width - table.styles.scrollbar_size_vertical - fixed)

    def _fill_results(self, rows: list[Row] | None = None) -> None:
        """Rows for `hits` (`rows`: their cells, built for the current widths); the columns are
        rebuilt only when the table's width changes them."""
        table = self.query_one("#results", DataTable)
        widths = self._column_widths()
        if widths == self._widths:
            table.clear()
        else:
            self._widths = widths
            title, path, snippet = widths
            table.clear(columns=True)
            table.add_column("#", key="rank", width=RANK_WIDTH)
            table.add_column("Score", key="score", width=SCORE_WIDTH)
            table.add_column("Title", key="title", width=title)
            table.add_column("Path", key="path", width=path)
            table.add_column("Chunks", key="matched", width=MATCHED_WIDTH)
            table.add_column("Snippet", key="snippet", width=snippet)
            rows = None
        if rows is None:
            rows = result_rows(self.hits, widths, self._per_document())
        for hit, row in zip(self.hits, rows, strict=True):
            table.add_row(*row, key=str(hit.chunk_id))

    def _per_document(self) -> bool:
        return self._shown is None or self._shown.per == "document"

    # The query as the inputs say it now; results for anything else are stale.
    def current_query(self) -> Query:
        if self._like is not None:
            return self._like
        return Query(
            text=self.query_one("#query", Input).value.strip(),
            mode=str(self.query_one("#mode", Select).value),
            filters=self.query_one("#filter", Input).value.strip(),
            per=self._per,
        )

    @on(Input.Changed, "#query")
    @on(Input.Changed, "#filter")
    @on(Select.Changed, "#mode")
    def _inputs_changed(self) -> None:
        self._like = None
        if self._searching and self.current_query() == self._searching_for:
            # Keys that landed while this very text is being searched: nothing new to ask.
            self._wanted = None
            return
        self.request_search()

    def request_search(self) -> None:
        query = self.current_query()
        if not self._filter_ok(query.filters):
            return
        if query.like is None and not query.text:
            # A search still running is left to finish; its results are stale and dropped.
            self._wanted = None
            self._show(query, [], None)
            return
        if self.embedscope.index is None:
            self._info("No index open yet: build one in the Index pane (F3).")
            return
        self._search(query)

    def _search(self, query: Query) -> None:
        self._wanted = query
        if not self._searching:
            self._searching = True
            self.run_searches()

    def _filter_ok(self, text: str) -> bool:
        """Checked before searching, so a typo in a filter says what is wrong at once.

        No filter needs no parser: importing it pulls in the engine (~150 ms) on the UI loop,
        which at start-up would delay the first frame.
        """
        error = self.query_one("#filter-error", Static)
        box = self.query_one("#filter", Input)
        if text:
            from engine.store.filters import FilterError, parse_filters

            try:
                parse_filters(text)
            except FilterError as exc:
                error.update(str(exc))
                error.display = True
                box.add_class("-invalid-filter")
                return False
        error.display = False
        box.remove_class("-invalid-filter")
        return True

    @work(group="search", exit_on_error=False)
    async def run_searches(self) -> None:
        """Searches for the newest wanted query until none is left: never two at once, so fast
        typing costs one search per pause, not one per key, and the engine's threads are never
        left running for a query already abandoned."""
        try:
            while self._wanted is not None:
                query, self._wanted = self._wanted, None
                self._searching_for = query
                await self._search_once(query)
        finally:
            self._searching = False
            self._searching_for = None

    async def _search_once(self, query: Query) -> None:
        from engine.store.filters import FilterError

        index = self.embedscope.index
        if index is None:
            return
        started = time.perf_counter()
        try:
            if query.like is not None:
                hits = await index.more_like_this(
                    query.like, TOP_K, filters=query.filters or None, per=query.per
                )
            else:
                hits = await index.search(
                    query.text,
                    TOP_K,
                    filters=query.filters or None,
                    mode=query.mode,  # type: ignore[arg-type]
                    per=query.per,
                )
        except FilterError as exc:
            if query == self.current_query():
                self.query_one("#filter-error", Static).update(str(exc))
                self.query_one("#filter-error", Static).display = True
            return
        if query != self.current_query():
            return
        widths = self._widths or self._column_widths()
        per_document = query.per == "document"
        rows, detail = await asyncio.to_thread(
            lambda: (
                result_rows(hits, widths, per_document),
                detail_text(index, hits[0], per_document) if hits else None,
            )
        )
        seconds = time.perf_counter() - started
        self.post_message(ResultsReady(query, hits, seconds, rows, widths, detail))

    @on(ResultsReady)
    def _results_ready(self, message: ResultsReady) -> None:
        message.stop()
        if message.query != self.current_query():
            return
        if message.widths == self._widths:
            self._show(message.query, message.hits, message.seconds, message.rows, message.detail)
        else:  # the table was resized meanwhile: cells cut for the old widths would not fit
            self._show(message.query, message.hits, message.seconds)

    def _show(
        self,
        query: Query,
        hits: list[SearchHit],
        seconds: float | None,
        rows: list[Row] | None = None,
        detail: Text | None = None,
    ) -> None:
        self.hits = hits
        self._shown = query
        self._fill_results(rows)
        self._detail_for = None
        if seconds is None:
            self._info("Type a query.")
            self.query_one("#detail", Static).update("")
            return
        took = "" if self.embedscope.frozen else f" in {seconds * 1000:.0f} ms"
        what = "more like this" if query.like is not None else query.mode
        degraded = getattr(hits, "degraded", None)
        if degraded:
            # Never silently: these are not the mode asked for, and the reason is the fix.
            reason = escape(str(getattr(hits, "reason", "")))
            self._info(f"⚠ {len(hits)} {degraded} results only{took}: {reason}")
        else:
            self._info(f"{len(hits)} results ({what}, by {query.per}){took}")
        if not hits:
            self.query_one("#detail", Static).update("No matches. Try another mode or filter.")
        elif detail is not None:
            # Painted in the same frame as the rows: one layout, not one per result set and hit.
            self._detail_for = hits[0].chunk_id
            self.query_one("#detail", Static).update(detail)

    def _info(self, text: str) -> None:
        # One line high whatever it says: repainting it needs no layout of the whole screen.
        self.query_one("#search-info", Static).update(text, layout=False)

    def selected_hit(self) -> SearchHit | None:
        table = self.query_one("#results", DataTable)
        if not self.hits or table.cursor_row < 0 or table.cursor_row >= len(self.hits):
            return None
        return self.hits[table.cursor_row]

    @on(DataTable.RowHighlighted, "#results")
    def _row_highlighted(self) -> None:
        hit = self.selected_hit()
        if hit is not None and hit.chunk_id != self._detail_for:
            self.show_detail(hit)

    @work(exclusive=True, group="detail", exit_on_error=False)
    async def show_detail(self, hit: SearchHit) -> None:
        index = self.embedscope.index
        if index is None:
            return
        body = await asyncio.to_thread(detail_text, index, hit, self._per_document())
        if self.selected_hit() is hit:
            self._detail_for = hit.chunk_id
            self.query_one("#detail", Static).update(body)

    def action_toggle_per(self) -> None:
        """One row per document (each by its best chunk) or one per chunk, for the same query."""
        self._per = "chunk" if self._per == "document" else "document"
        if self._like is not None:
            self._like = replace(self._like, per=self._per)
        self.app.notify(f"Results by {self._per}.", timeout=2)
        self.request_search()

    def action_cycle_mode(self) -> None:
        select = self.query_one("#mode", Select)
        select.value = MODES[(MODES.index(str(select.value)) + 1) % len(MODES)]

    def action_focus_query(self) -> None:
        self.query_one("#query", Input).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_results(self) -> None:
        self.query_one("#results", DataTable).focus()

    def action_more_like_this(self) -> None:
        hit = self.selected_hit()
        if hit is None:
            self.app.notify("Select a result first.", severity="warning")
            return
        filters = self.query_one("#filter", Input).value.strip()
        self._like = Query(
            text=hit.title, mode="vector", filters=filters, like=hit.doc_key, per=self._per
        )
        self._info(f"Finding documents like “{hit.title}”…")
        self._search(self._like)

    def action_copy(self) -> None:
        hit = self.selected_hit()
        if hit is None:
            self.app.notify("Select a result to copy.", severity="warning")
            return
        text = f"{hit.title}\n{hit.path}\n\n{hit.text}"
        self.app.copy_to_clipboard(text)
        self.copy_fallback(text, hit.title)

    @work(thread=True, group="clipboard", exit_on_error=False)
    def copy_fallback(self, text: str, title: str) -> None:
        tool = copy_system(text)
        via = f"terminal and {tool}" if tool else "terminal (OSC 52)"
        self.app.notify(f"Copied “{title}” via {via}.")

    def action_export(self) -> None:
        if not self.hits or self._shown is None:
            self.app.notify("Nothing to export: run a search first.", severity="warning")
            return
        hits, query = list(self.hits), self._shown.text

        def done(path: Path | None) -> None:
            if path is not None:
                self.export(hits, query, path)

        self.app.push_screen(ExportScreen(default_export_path(query), len(hits)), done)

    @work(thread=True, group="export", exit_on_error=False)
    def export(self, hits: list[SearchHit], query: str, path: Path) -> None:
        n = write_results(hits, query, path)
        self.app.notify(f"Wrote {n} results to {path}.")
