"""Horizontal bar charts in block characters: readable in any terminal, no plotting dependency."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.text import Text
from textual.widgets import Static

EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, maximum: float, width: int) -> str:
    """A bar `width` cells long at `maximum`, with eighth-cell precision at the tip."""
    if maximum <= 0 or value <= 0 or width <= 0:
        return ""
    eighths = round(min(value / maximum, 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[part] if part else "")


def render_bars(
    rows: Sequence[tuple[str, float | None]],
    width: int,
    fmt: Callable[[float], str] = lambda v: f"{v:.3f}",
) -> Text:
    """One line per row: label, bar, value; a missing value shows as a dash."""
    text = Text()
    if not rows:
        return text
    label_w = min(max(len(label) for label, _ in rows), 24)
    values = [v for _, v in rows if v is not None]
    top = max(values, default=0.0)
    value_w = max((len(fmt(v)) for v in values), default=1)
    bar_w = max(width - label_w - value_w - 3, 4)
    for i, (label, value) in enumerate(rows):
        if i:
            text.append("\n")
        text.append(f"{label[:label_w]:<{label_w}} ")
        if value is None:
            text.append(f"{'':<{bar_w}} {'—':>{value_w}}", style="dim")
            continue
        text.append(f"{bar(value, top, bar_w):<{bar_w}}")
        text.append(f" {fmt(value):>{value_w}}")
    return text


class BarChart(Static):
    """A titled bar chart that redraws to its own width."""

    DEFAULT_CSS = "BarChart { height: auto; }"

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self._title = ""
        self._rows: list[tuple[str, float | None]] = []
        self._fmt: Callable[[float], str] = lambda v: f"{v:.3f}"

    def set_data(
        self,
        title: str,
        rows: Sequence[tuple[str, float | None]],
        fmt: Callable[[float], str] | None = None,
    ) -> None:
        self._title = title
        self._rows = list(rows)
        if fmt is not None:
            self._fmt = fmt
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        width = max(self.size.width, 30)
        body = Text(self._title + "\n", style="bold") if self._title else Text()
        chart = render_bars(self._rows, width, self._fmt)
        if not self._rows:
            chart = Text("no data", style="dim")
        color = self.app.theme_variables.get("primary", "") if self.is_mounted else ""
        if color:
            for span_start, span_end in _bar_spans(chart.plain):
                chart.stylize(color, span_start, span_end)
        self.update(body + chart)


def _bar_spans(plain: str) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, ch in enumerate(plain):
        is_bar = ch == "█" or ch in EIGHTHS[1:]
        if is_bar and start is None:
            start = i
        elif not is_bar and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(plain)))
    return spans
