"""`embedscope --serve`: the HTTP API served from inside the app, on its loop and its engine,
hit over real HTTP while the Metrics pane counts the requests."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from tui.app import EmbedscopeApp
from tui.panes.index import default_index_name


async def wait_for(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await pilot.pause(0.05)
    app = pilot.app
    notices = [n.message for n in app._notifications]
    raise AssertionError(
        f"timed out; status: {app.query_one('#status', Static).render()}; notices: {notices}"
    )


def api_text(app: EmbedscopeApp) -> str:
    widget = app.query_one("#api-state", Static)
    return str(widget.render()) if widget.display else ""


def notices(app: EmbedscopeApp) -> list[str]:
    return [n.message for n in app._notifications]


def palette(app: EmbedscopeApp) -> list[str]:
    return [c.title for c in app.get_system_commands(app.screen)]


async def test_served_requests_show_in_metrics(tmp_path: Path) -> None:
    corpus = tmp_path / "kitchen"
    corpus.mkdir()
    (corpus / "bread.md").write_text("# Bread\n\nKnead the dough and bake the loaf.", "utf-8")
    (corpus / "tides.md").write_text("# Tides\n\nThe Moon pulls the oceans twice a day.", "utf-8")
    app = EmbedscopeApp(corpus=corpus, settings_path=tmp_path / "app.yaml", serve=("127.0.0.1", 0))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.api is not None and app.api.running)
        api = app.api
        assert api is not None and api.engine is app.engine, "the server shares the app's engine"
        assert api.url.startswith("http://127.0.0.1:") and api.port != 0
        await wait_for(pilot, lambda: "ready:" in str(app.query_one("#status").render()))
        # The server runs on this loop: a blocking client would wait on itself.
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            found = await client.post(
                "/v1/search", json={"index": default_index_name(corpus), "query": "baking bread"}
            )
            missing = await client.post("/v1/search", json={"index": "nope", "query": "x"})
        assert found.status_code == 200, found.text
        assert found.json()["results"][0]["title"] == "Bread"
        assert missing.status_code == 404
        await pilot.press("f5")
        await wait_for(pilot, lambda: "2 requests" in api_text(app), timeout=10)
        text = api_text(app)
        assert f"API {api.url}" in text
        assert "POST /v1/search 200 ×1" in text and "POST /v1/search 404 ×1" in text
        assert "0 rate-limited (429)" in text and "p50 —" not in text
        assert "Stop API server" in palette(app)
    assert not api.running, "closing the app stops the server"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", api.port), timeout=2).close()


async def test_port_in_use_and_public_host_are_notices(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = EmbedscopeApp(settings_path=tmp_path / "app.yaml", serve=("127.0.0.1", port))
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: any("in use" in n for n in notices(app)))
            assert f"port {port} on 127.0.0.1 is in use" in " ".join(notices(app))
            assert app.is_running and app.api is None
            assert "Start API server" in palette(app)
            app.serve_at = ("0.0.0.0", 0)
            app.start_api()
            await wait_for(pilot, lambda: any("refusing" in n for n in notices(app)), timeout=10)
            assert app.is_running and app.api is None
