"""Typed messages: workers end by posting one of these, and the UI reacts to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from rich.text import Text

    from engine import Engine
    from engine.index import CorpusIndex, IndexProgress, IndexReport, SearchHit


class FirstPaint(Message):
    """The first frame is on screen; heavy imports may start now."""


class TerminalLost(Message):
    """The terminal the app runs in is gone; the app leaves as Ctrl+Q does."""


class EngineReady(Message):
    """The engine (and faiss) are loaded; the model may still be loading."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine


class ModelReady(Message):
    def __init__(self, model: str, seconds: float) -> None:
        super().__init__()
        self.model = model
        self.seconds = seconds


class IndexOpened(Message):
    def __init__(self, index: CorpusIndex) -> None:
        super().__init__()
        self.index = index


class IndexProgressed(Message):
    """Many arrive per second; only the newest matters, so queued ones are replaced."""

    def __init__(self, progress: IndexProgress) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, IndexProgressed)


class IndexFinished(Message):
    def __init__(self, index: CorpusIndex, report: IndexReport) -> None:
        super().__init__()
        self.index = index
        self.report = report


@dataclass(frozen=True)
class Query:
    """Everything that determines a result list; results are shown only if it is still current."""

    text: str
    mode: str
    filters: str
    like: str | int | None = None
    # "document": one row per document (its best chunk); "chunk": one row per chunk.
    per: str = "document"


class ResultsReady(Message):
    """Results with their table cells (cut to `widths`) and the top hit's detail, both built
    off the UI loop, so the loop only swaps them in and paints once."""

    def __init__(
        self,
        query: Query,
        hits: list[SearchHit],
        seconds: float,
        rows: list[tuple[str, str, Text, Text, Text, Text]],
        widths: tuple[int, int, int],
        detail: Text | None,
    ) -> None:
        super().__init__()
        self.query = query
        self.hits = hits
        self.seconds = seconds
        self.rows = rows
        self.widths = widths
        self.detail = detail
