"""The app driven by keys, over a real corpus, real SQLite, real FAISS and the real MiniLM model."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from tui.app import EmbedscopeApp
from tui.panes.compare import ComparePane
from tui.panes.search import SearchPane

DOCS = {
    "cooking/sourdough.md": (
        "# Sourdough bread\n\nFeed the starter with flour and water the night before. "
        "A lively starter doubles in a few hours; then mix the dough, let it rise slowly "
        "and bake the loaf in a hot dutch oven until the crust is deep brown."
    ),
    "cooking/pasta.md": (
        "# Fresh pasta\n\nMake a well of flour, crack the eggs into it and knead until "
        "smooth. Rest the dough, roll it thin and cut tagliatelle. Boil in salted water."
    ),
    "astronomy/moon.md": (
        "# Phases of the Moon\n\nThe Moon shows phases because we see different parts of its "
        "sunlit half as it orbits Earth: new moon, crescent, quarter, gibbous and full moon."
    ),
    "astronomy/stars.md": (
        "# How stars shine\n\nStars fuse hydrogen into helium in their cores. The energy "
        "released by nuclear fusion makes them shine for billions of years."
    ),
    "ocean/tides.md": (
        "# Tides\n\nThe gravity of the Moon and the Sun pulls the oceans into bulges, so most "
        "coasts see two high tides and two low tides a day."
    ),
    "gardening/tomatoes.md": (
        "# Growing tomatoes\n\nPlant tomatoes in full sun, water deeply at the roots and "
        "stake the vines. Pinch out side shoots for bigger fruit."
    ),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "notes_corpus"
    for rel, text in DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the module: the first test builds the index, later ones reopen it."""
    return tmp_path_factory.mktemp("appdata")


@pytest.fixture
def app_home(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(shared_data))
    yield shared_data


async def wait_for(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 120.0) -> None:
    steps = int(timeout / 0.05)
    for _ in range(steps):
        if check():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out; status: {status(pilot.app)}")


def status(app: object) -> str:
    assert isinstance(app, EmbedscopeApp)
    return str(app.query_one("#status", Static).render())


def info(app: EmbedscopeApp) -> str:
    return str(app.query_one("#search-info", Static).render())


def make_app(corpus: Path, tmp_path: Path) -> EmbedscopeApp:
    return EmbedscopeApp(corpus=corpus, settings_path=tmp_path / "app.yaml")


async def ready(pilot: Pilot[None]) -> None:
    await wait_for(pilot, lambda: "ready:" in status(pilot.app), timeout=240)


async def search(pilot: Pilot[None], text: str) -> SearchPane:
    app = pilot.app
    assert isinstance(app, EmbedscopeApp)
    pane = app.query_one(SearchPane)
    box = app.query_one("#query", Input)
    box.focus()
    box.value = ""
    await pilot.press(*text)
    await wait_for(pilot, lambda: pane._shown is not None and pane._shown.text == text)
    return pane


async def test_first_launch_indexes_then_lands_on_search_and_searches(
    app_home: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await ready(pilot)
        assert app.index is not None and app.index.name == "notes"
        assert app.index.stats().documents == len(DOCS)
        assert app.query_one("#panes").active == "search"

        pane = await search(pilot, "how to bake bread with a starter")
        ranks = [h.rank for h in pane.hits]
        assert ranks == list(range(1, len(ranks) + 1))
        assert pane.hits[0].path == "cooking/sourdough.md"
        assert "results" in info(app)

        # Typing on: the list shown always belongs to the text in the box.
        await pilot.press("backspace", *" at home")
        await wait_for(pilot, lambda: pane._shown.text == pane.current_query().text)
        assert app.query_one("#query", Input).value == pane._shown.text

        out = tmp_path / "hits.csv"
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("ctrl+u", *str(out), "enter")
        await wait_for(pilot, lambda: any("Wrote" in n.message for n in app._notifications))
        with out.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["doc_key"] for r in rows] == [h.doc_key for h in pane.hits]
        assert rows[0]["rank"] == "1" and rows[0]["query"] == pane._shown.text

        # Compare shows the loaded model live: its runtime, load time and query latency.
        await pilot.press("f4")
        compare = app.query_one(ComparePane)
        await wait_for(pilot, lambda: any(r.latency_p50_ms for r in compare.models), timeout=10)
        (row,) = [r for r in compare.models if r.name == "minilm"]
        assert row.loaded and row.load_seconds and row.device == "cpu + onnx"


async def test_second_launch_reuses_the_index_without_model_calls(
    app_home: Path, corpus: Path, tmp_path: Path
) -> None:
    app = make_app(corpus, tmp_path)
    finished = []
    async with app.run_test(size=(120, 40), message_hook=finished.append) as pilot:
        await ready(pilot)
        from tui.messages import IndexFinished

        reports = [m.report for m in finished if isinstance(m, IndexFinished)]
        assert reports and reports[-1].unchanged == len(DOCS)
        assert reports[-1].model_calls == 0 and reports[-1].added == 0


async def test_filter_apply_clear_and_more_like_this(
    app_home: Path, corpus: Path, tmp_path: Path
) -> None:
    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        pane = await search(pilot, "moon")
        assert {h.path.split("/")[0] for h in pane.hits} > {"astronomy"}

        await pilot.press("ctrl+l", *"path=astronomy/*")
        await wait_for(pilot, lambda: pane._shown.filters == "path=astronomy/*")
        assert pane.hits and all(h.path.startswith("astronomy/") for h in pane.hits)

        error = app.query_one("#filter-error", Static)
        await pilot.press("ctrl+u", *"year>=soon")
        await wait_for(pilot, lambda: error.display)
        assert "year" in str(error.render()) and "soon" in str(error.render())

        await pilot.press("ctrl+u")
        await wait_for(pilot, lambda: pane._shown.filters == "" and not error.display)
        assert len({h.path.split("/")[0] for h in pane.hits}) > 1

        await pilot.press("ctrl+f", "down")
        target = pane.selected_hit()
        assert target is not None
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: pane._shown is not None and pane._shown.like is not None)
        assert pane.hits and target.doc_key not in {h.doc_key for h in pane.hits}
        assert "more like this" in info(app)


@pytest.mark.slow
async def test_start_and_cancel_an_indexing_run(
    app_home: Path, corpus: Path, tmp_path: Path
) -> None:
    """Long files, so the run is still embedding when Esc lands: the engine checks the token
    between files and lets an embedding group in flight finish."""
    big = tmp_path / "big"
    for i in range(150):
        (big / f"d{i // 30}").mkdir(parents=True, exist_ok=True)
        words = " ".join(f"topic{i}-{j} observation {j * i} about subject {i}" for j in range(120))
        (big / f"d{i // 30}" / f"note{i}.md").write_text(f"# Note {i}\n\n{words}", "utf-8")
    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        await pilot.press("f3")
        assert app.focused is app.query_one("#folder", Input)
        await pilot.press(*str(big), "ctrl+g")
        line = app.query_one("#progress-line", Static)
        assert app.query_one("#start").disabled is True
        assert app.query_one("#cancel").disabled is False
        await pilot.press("escape")
        await wait_for(pilot, lambda: str(line.render()).startswith("Cancelled"), timeout=120)
        stats = app.index.stats() if app.index else None
        assert stats is not None and stats.name == "big"
        assert stats.documents < 150
        assert app.query_one("#start").disabled is False


async def test_a_failing_worker_becomes_a_notice_and_the_app_stays_usable(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedding:\n  max_batch_size: lots\n", encoding="utf-8")
    app = EmbedscopeApp(config_path=bad, settings_path=tmp_path / "app.yaml")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await wait_for(pilot, lambda: "failed" in status(pilot.app), timeout=60)
        assert "max_batch_size" in status(app)
        assert any("max_batch_size" in n.message for n in app._notifications)
        await pilot.press("f3")
        assert app.query_one("#panes").active == "index"


async def test_theme_from_the_palette_is_remembered(tmp_path: Path) -> None:
    settings = tmp_path / "app.yaml"
    app = EmbedscopeApp(start_engine=False, settings_path=settings)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "embedscope-dusk"
        await pilot.press("ctrl+p", *"theme")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.3)
        await pilot.press(*"embedscope-paper")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.theme == "embedscope-paper", timeout=10)
        await wait_for(pilot, settings.exists, timeout=10)
    assert yaml.safe_load(settings.read_text())["theme"] == "embedscope-paper"
    again = EmbedscopeApp(start_engine=False, settings_path=settings)
    async with again.run_test(size=(100, 30)):
        assert again.theme == "embedscope-paper"
        assert not again.current_theme.dark


async def test_a_key_remapped_in_config_works_and_help_shows_it(tmp_path: Path) -> None:
    settings = tmp_path / "app.yaml"
    settings.write_text(yaml.safe_dump({"keymap": {"search.mode": "ctrl+t"}}), "utf-8")
    app = EmbedscopeApp(start_engine=False, settings_path=settings)
    async with app.run_test(size=(120, 40)) as pilot:
        mode = app.query_one("#mode", Select)
        assert mode.value == "hybrid"
        await pilot.press("ctrl+r")
        assert mode.value == "hybrid"
        await pilot.press("ctrl+t")
        assert mode.value == "vector"
        await pilot.press("f1")
        await pilot.pause()
        from textual.widgets import DataTable

        rows = [
            app.screen.query_one(DataTable).get_row_at(i)
            for i in range(app.screen.query_one(DataTable).row_count)
        ]
        assert ["Search", "ctrl+t", "Mode", "search.mode"] in [list(r) for r in rows]
        await pilot.press("escape")
        assert app.screen is app.screen_stack[0]


async def test_an_unknown_keymap_id_is_reported(tmp_path: Path) -> None:
    settings = tmp_path / "app.yaml"
    settings.write_text(json.dumps({"keymap": {"search.moed": "ctrl+t"}}), "utf-8")
    app = EmbedscopeApp(start_engine=False, settings_path=settings)
    async with app.run_test(size=(100, 30), notifications=True):
        messages = [n.message for n in app._notifications]
        assert any("search.moed" in m and "search.mode" in m for m in messages)
