"""The app driven by keys, over a real corpus, real SQLite, real FAISS and the real MiniLM model.

Each test starts from its own empty data dir (conftest's isolated_home): none relies on an index
another test built."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import DataTable, Input, Select, Sparkline, Static

from tui.app import EmbedscopeApp
from tui.panes.compare import ComparePane
from tui.panes.metrics import PLACEHOLDER, MetricsPane
from tui.panes.search import SearchPane
from tui.widgets.barchart import BarChart

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
    corpus: Path, tmp_path: Path
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
    corpus: Path, tmp_path: Path
) -> None:
    from tui.messages import IndexFinished

    first = make_app(corpus, tmp_path)
    async with first.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert first.index is not None and first.index.stats().documents == len(DOCS)
    app = make_app(corpus, tmp_path)
    finished = []
    async with app.run_test(size=(120, 40), message_hook=finished.append) as pilot:
        await ready(pilot)
        reports = [m.report for m in finished if isinstance(m, IndexFinished)]
        assert reports and reports[-1].unchanged == len(DOCS)
        assert reports[-1].model_calls == 0 and reports[-1].added == 0
        # Not even a cache hit: the embedding service saw no request at all.
        assert app.engine is not None
        models = app.engine.embeddings.metrics.snapshot()
        assert sum(m["requests"] for m in models.values()) == 0, models


async def test_filter_apply_clear_and_more_like_this(corpus: Path, tmp_path: Path) -> None:
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


async def test_keys_typed_during_a_search_coalesce_and_the_top_hit_comes_with_it(
    corpus: Path, tmp_path: Path
) -> None:
    """A search runs at a time: keys typed meanwhile cost one search for the newest text, not
    one each; the rows arrive with the top hit's detail, painted together."""
    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot)
        assert app.engine is not None
        metrics = app.engine.embeddings.metrics

        def requests() -> int:
            return sum(m["requests"] for m in metrics.snapshot().values())

        pane = await search(pilot, "moon")
        before = requests()
        text = "how do the gravity of the moon and the sun raise the tides"
        box = app.query_one("#query", Input)
        for end in range(1, len(text) + 1):  # keys landing faster than a search
            box.value = text[:end]
        await wait_for(pilot, lambda: pane._shown is not None and pane._shown.text == text)
        # Each search embeds its query once: one search, not one per key.
        assert requests() - before == 1
        assert pane.hits[0].path == "ocean/tides.md"
        table = app.query_one("#results", DataTable)
        assert table.row_count == len(pane.hits)
        assert pane._detail_for == pane.hits[0].chunk_id
        detail = str(app.query_one("#detail", Static).render())
        assert detail.startswith("Tides") and "two high tides" in detail

        # The columns are shares of the table, not of these titles: another query keeps them.
        widths = [c.width for c in table.columns.values()]
        await search(pilot, "sourdough starter")
        assert [c.width for c in table.columns.values()] == widths
        assert "Sourdough" in str(app.query_one("#detail", Static).render())


@pytest.mark.slow
async def test_start_and_cancel_an_indexing_run(corpus: Path, tmp_path: Path) -> None:
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


async def test_export_to_jsonl_and_copy_a_result(corpus: Path, tmp_path: Path) -> None:
    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await ready(pilot)
        pane = await search(pilot, "why does the moon have phases")
        hits = list(pane.hits)
        assert hits and hits[0].path == "astronomy/moon.md"

        out = tmp_path / "hits.jsonl"
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("ctrl+u", *str(out), "enter")
        await wait_for(pilot, lambda: any("Wrote" in n.message for n in app._notifications))
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["doc_key"] for r in rows] == [h.doc_key for h in hits]
        assert [r["rank"] for r in rows] == list(range(1, len(hits) + 1))
        first = rows[0]
        assert first["query"] == "why does the moon have phases"
        assert (first["path"], first["text"]) == (hits[0].path, hits[0].text)
        assert first["score"] == pytest.approx(hits[0].score)
        assert first["metadata"] == json.loads(json.dumps(hits[0].metadata, default=str))

        await pilot.press("ctrl+f", "down")
        target = pane.selected_hit()
        assert target is not None
        await pilot.press("ctrl+y")
        await wait_for(pilot, lambda: any("Copied" in n.message for n in app._notifications))
        assert app.clipboard == f"{target.title}\n{target.path}\n\n{target.text}"
        (note,) = [n.message for n in app._notifications if "Copied" in n.message]
        assert target.title in note


def tui_classes() -> list[type]:
    """Every class the app's own modules define."""
    import importlib
    import inspect
    import pkgutil

    import tui

    found = []
    for info in pkgutil.walk_packages(tui.__path__, "tui."):
        module = importlib.import_module(info.name)
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)]
    return [c for c in found if c.__module__.startswith("tui.")]


async def test_no_default_key_uses_ctrl_a_or_ctrl_b(tmp_path: Path) -> None:
    """The prefixes of screen and tmux: a binding there never reaches the app."""
    from textual.binding import Binding

    forbidden = {"ctrl+a", "ctrl+b"}
    own = [
        (cls.__name__, b if isinstance(b, Binding) else Binding(*b))
        for cls in tui_classes()
        for b in vars(cls).get("BINDINGS", [])
    ]
    assert len(own) >= 20
    for owner, binding in own:
        assert not set(binding.key.split(",")) & forbidden, (owner, binding)

    # What Textual's own widgets bring along (Input's "home,ctrl+a") stays reachable by its
    # other key, so the app never needs ctrl+a or ctrl+b.
    app = EmbedscopeApp(start_engine=False, settings_path=tmp_path / "app.yaml")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        nodes = [app]
        for screen in app.screen_stack:
            nodes += screen.walk_children(with_self=True)
        assert len(nodes) > 50
        for node in nodes:
            keys = node._bindings.key_to_bindings
            for key in forbidden & set(keys):
                for binding in keys[key]:
                    actions = {
                        b.action for k, bs in keys.items() if k not in forbidden for b in bs
                    }
                    assert binding.action in actions, (type(node).__name__, key, binding.action)


BARS = "█▏▎▍▌▋▊▉"


def screen_text(app: EmbedscopeApp) -> str:
    """The characters on the terminal now: what a user can read, nothing clipped away."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def visible(pilot: Pilot[None], widget: Widget) -> str:
    widget.scroll_visible(animate=False, immediate=True)
    await pilot.pause()
    return screen_text(pilot.app)


def write_beir(folder: Path) -> Path:
    """DOCS as a BEIR-layout dataset with three judged queries."""
    (folder / "qrels").mkdir(parents=True)
    rows = [{"_id": key, "title": "", "text": text} for key, text in DOCS.items()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    queries = {"q1": "baking bread with a starter", "q2": "why the moon has phases", "q3": "tides"}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()), "utf-8"
    )
    judged = [("q1", "cooking/sourdough.md"), ("q2", "astronomy/moon.md"), ("q3", "ocean/tides.md")]
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in judged), "utf-8"
    )
    return folder


@pytest.mark.slow
async def test_metrics_and_saved_runs_show_live_figures_unclipped_at_80x24(
    corpus: Path, tmp_path: Path
) -> None:
    from engine.config import load_config
    from engine.engine import Engine
    from engine.evaluation.retrieval import run_retrieval_eval

    dataset = write_beir(tmp_path / "tinybeir")
    async with Engine(load_config(use_user_file=False)) as engine:
        saved = await run_retrieval_eval(engine, dataset, ["minilm"])
    ndcg = saved.models["minilm"]["ndcg@10"]

    app = make_app(corpus, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await search(pilot, "tides and the moon")
        assert app.engine is not None

        await pilot.press("f5")
        metrics = app.query_one(MetricsPane)

        def requests_now() -> str:
            models = app.engine.embeddings.metrics.snapshot()
            return f"{sum(m['requests'] for m in models.values()):,}"

        await wait_for(pilot, lambda: metrics._shown.get("requests") == requests_now(), 10)
        await wait_for(pilot, lambda: metrics._shown.get("index_bytes", "—") != "—", 10)
        assert int(metrics._shown["requests"]) >= 2  # the search's prefix and the whole query
        for key, text in metrics._shown.items():
            assert text != PLACEHOLDER, key
            card = app.query_one(f"#card-{key}", Static)
            assert text in await visible(pilot, card), (key, text)
        assert app.query_one("#latency", Sparkline).data
        chart = app.query_one("#batches", BarChart)
        shown = await visible(pilot, chart)
        assert metrics._histogram
        for size, count in metrics._histogram.items():
            row = rf"≤{size} .*[{BARS}].* {count:,}(?![\d,])"
            assert re.search(row, shown), (size, count, shown)

        await pilot.press("f4")
        compare = app.query_one(ComparePane)
        await wait_for(pilot, lambda: len(compare.runs) == 1, 10)
        runs = app.query_one("#runs", DataTable)
        shown = await visible(pilot, runs)
        assert compare.runs[0].label in shown and "tinybeir" in shown
        shown = await visible(pilot, app.query_one("#chart", BarChart))
        assert "ndcg@10 · tinybeir/test" in shown
        assert re.search(rf"minilm .*[{BARS}].* {ndcg:.3f}(?!\d)", shown), shown
        await wait_for(pilot, lambda: any(r.loaded for r in compare.models), 10)
        shown = await visible(pilot, app.query_one("#models", DataTable))
        assert re.search(r"minilm\s.*loaded", shown), shown
