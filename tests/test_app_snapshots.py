"""Each pane at 120x40 and 80x24, with the engine off so no live figure reaches the picture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tui.app import EmbedscopeApp
from tui.panes.compare import ComparePane

PANES = {"search": "f2", "index": "f3", "compare": "f4", "metrics": "f5"}
SIZES = [(120, 40), (80, 24)]
SnapCompare = Callable[..., bool]


async def settle(pilot: Pilot[None]) -> None:
    """Wait for the model catalog (the only thing a still app loads), then one more frame."""
    compare = pilot.app.query_one(ComparePane)
    for _ in range(200):
        if compare.models:
            break
        await pilot.pause(0.05)
    await pilot.pause()


def still_app(tmp_path: Path) -> EmbedscopeApp:
    return EmbedscopeApp(start_engine=False, frozen=True, settings_path=tmp_path / "app.yaml")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pane", list(PANES))
def test_pane_snapshot(
    pane: str, size: tuple[int, int], snap_compare: SnapCompare, tmp_path: Path
) -> None:
    app = still_app(tmp_path)
    assert snap_compare(app, press=[PANES[pane]], terminal_size=size, run_before=settle)


def test_help_modal_snapshot(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app = still_app(tmp_path)
    assert snap_compare(app, press=["f1"], terminal_size=(120, 40), run_before=settle)


def test_light_theme_snapshot(snap_compare: SnapCompare, tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("theme: embedscope-paper\n", encoding="utf-8")
    app = still_app(tmp_path)
    assert snap_compare(app, press=["f3"], terminal_size=(120, 40), run_before=settle)
