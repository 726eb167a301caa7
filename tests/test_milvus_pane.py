"""The Index pane's vector-store picker starts on the configured `index.backend`, and a store
the user picked is kept. No server is needed: nothing is indexed here."""

from __future__ import annotations

from pathlib import Path

from test_app_pilot import wait_for
from textual.widgets import Select

from tui.app import EmbedscopeApp
from tui.panes.index import IndexPane


def app_with(tmp_path: Path, config_text: str) -> EmbedscopeApp:
    config = tmp_path / "config.yaml"
    config.write_text(config_text, encoding="utf-8")
    return EmbedscopeApp(
        config_path=config, start_engine=False, settings_path=tmp_path / "app.yaml"
    )


async def test_the_backend_picker_starts_on_the_configured_backend(tmp_path: Path) -> None:
    app = app_with(tmp_path, "index:\n  backend: milvus\n")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        picker = app.query_one("#backend", Select)
        await wait_for(pilot, lambda: picker.value == "milvus", timeout=60)
        # The user's pick wins over the config, even if the config is applied again.
        picker.value = "faiss"
        await pilot.pause()
        app.query_one(IndexPane).set_default_backend("milvus")
        await pilot.pause()
        assert picker.value == "faiss"


async def test_the_backend_picker_stays_on_faiss_by_default(tmp_path: Path) -> None:
    app = app_with(tmp_path, "index:\n  chunk_overlap: 16\n")
    async with app.run_test(size=(120, 40)) as pilot:
        models = app.query_one("#model", Select)
        # The catalog (which carries the config's backend) has arrived once models are listed.
        await wait_for(pilot, lambda: models.value is not Select.BLANK, timeout=60)
        assert app.query_one("#backend", Select).value == "faiss"
