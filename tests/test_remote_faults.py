"""Remote models against a real loopback HTTP server that misbehaves on cue.

Every fault here is one a real endpoint produces (rate limits with Retry-After, 5xx, hangs,
dropped connections, wrong or broken answers); the server is real, the client is the official
`openai` package, and nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from remote_servers import FaultServer, fake_vector, run_fault_server

from engine.config import Config, load_config
from engine.engine import Engine
from engine.models.remote import (
    RemoteAnswerError,
    RemoteAuthError,
    RemoteError,
    RemoteUnavailableError,
    split_requests,
)

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "EMBEDSCOPE_TEST_REMOTE_KEY"
FAST = {
    "timeout_s": 0.5,
    "max_retries": 3,
    "backoff_initial_s": 0.02,
    "backoff_max_s": 0.1,
    "retry_deadline_s": 10,
    "breaker_failures": 50,
    "breaker_cooldown_s": 30,
}


def remote_config(tmp_path: Path, server: FaultServer, **overrides: Any) -> Path:
    options = {
        "kind": "openai",
        "model": "fake-embed",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "dimensions": server.dim,
        "tokenizer": "minilm",
        "price_per_1m_tokens": 0.02,
        **FAST,
        **overrides,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"remote": options}}))
    return path


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with run_fault_server() as server:
        yield server


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, fault_server: FaultServer) -> FaultServer:
    monkeypatch.setenv(KEY_ENV, fault_server.key)
    return fault_server


def load(tmp_path: Path, server: FaultServer, **overrides: Any) -> Config:
    return load_config(remote_config(tmp_path, server, **overrides), use_user_file=False)


def assert_no_key(key: str, *texts: str) -> None:
    for text in texts:
        assert key not in text, f"the API key leaked into: {text[:300]}"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    )


async def test_transient_faults_are_retried_and_retry_after_honoured(
    tmp_path: Path, keyed: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.script = ["429:0.4", "500", "drop", "hang"]
    texts = ["tides follow the moon", "bread needs time to rise"]
    async with Engine(load(tmp_path, keyed, max_retries=4)) as engine:
        result = await engine.embeddings.encode_detailed(texts, "remote")
        status = (await engine.embeddings.model("remote")).status()
    assert [s.action for s in keyed.seen] == ["429:0.4", "500", "drop", "hang", "ok"]
    assert all(s.texts == texts for s in keyed.seen)
    # The wait after the 429 is the server's, not the 0.02 s backoff.
    assert keyed.seen[1].at - keyed.seen[0].at >= 0.4
    expected = np.stack([fake_vector(t, keyed.dim) for t in texts])
    assert np.allclose(result.vectors, expected, atol=1e-6)
    assert result.sources == ["model", "model"]
    assert status["retries"] == 4 and status["ok"] == 1 and status["failed"] == 4
    assert status["state"] == "reachable" and status["breaker"]["state"] == "closed"
    assert status["prompt_tokens"] == sum(len(t.split()) for t in texts)
    retries = [r.getMessage() for r in caplog.records if r.name == "engine.models.remote"]
    assert len(retries) == 4 and all(keyed.base_url in m for m in retries)
    assert_no_key(keyed.key, logged(caplog))


@pytest.mark.parametrize("status", ["400", "401", "403", "404", "422"])
async def test_client_errors_are_not_retried(
    tmp_path: Path, keyed: FaultServer, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.script = [status]
    async with Engine(load(tmp_path, keyed)) as engine:
        with pytest.raises(RemoteError) as caught:
            await engine.embeddings.encode(["one text"], "remote")
        status_after = (await engine.embeddings.model("remote")).status()
    assert len(keyed.seen) == 1, "4xx answers must not be retried"
    message = str(caught.value)
    assert f"HTTP {status}" in message and keyed.base_url in message
    if status in ("401", "403"):
        assert isinstance(caught.value, RemoteAuthError)
        assert f"${KEY_ENV}" in message
    # A 4xx says the endpoint is up: the breaker does not count it against it.
    assert status_after["breaker"]["consecutive_failures"] == 0
    assert_no_key(keyed.key, message, logged(caplog), json.dumps(status_after))


async def test_missing_key_names_the_variable(
    tmp_path: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = load(tmp_path, fault_server)
    async with Engine(config) as engine:
        availability = engine.registry.check("remote")
        assert not availability.available and f"${KEY_ENV} is not set" in availability.reason
        with pytest.raises(RemoteAuthError, match=rf"\${KEY_ENV} is not set"):
            await engine.embeddings.encode(["text"], "remote")
    assert fault_server.seen == []


@pytest.mark.parametrize(
    ("action", "what"),
    [
        ("badjson", "not valid JSON"),
        ("nan", "NaN or infinite"),
        ("dim:15", "15-dimensional vectors, expected 16"),
        ("count", "1 vectors for 2 texts"),
    ],
)
async def test_malformed_answers_are_errors_and_never_stored(
    tmp_path: Path, keyed: FaultServer, action: str, what: str
) -> None:
    texts = ["first text", "second text"]
    keyed.script = [action]
    async with Engine(load(tmp_path, keyed)) as engine:
        with pytest.raises(RemoteAnswerError) as caught:
            await engine.embeddings.encode(texts, "remote")
        assert what in str(caught.value) and keyed.base_url in str(caught.value)
        assert len(keyed.seen) == 1, "a malformed answer is not retried"
        again = await engine.embeddings.encode_detailed(texts, "remote")
    assert again.sources == ["model", "model"], "nothing from the bad answer was cached"
    assert np.isfinite(again.vectors).all()


async def test_requests_are_split_and_run_concurrently(tmp_path: Path, keyed: FaultServer) -> None:
    texts = [f"text number {i} " + "word " * (i % 7) for i in range(24)]
    keyed.default = "slow:0.15"
    config = load(
        tmp_path, keyed, max_inputs_per_request=4, max_concurrent_requests=3, timeout_s=5
    )
    async with Engine(config) as engine:
        vectors = await engine.embeddings.encode(texts, "remote")
        status = (await engine.embeddings.model("remote")).status()
    sizes = [len(s.texts) for s in keyed.seen]
    assert sizes == [4] * 6
    assert sorted(t for s in keyed.seen for t in s.texts) == sorted(texts)
    assert keyed.active_max == 3 and status["in_flight_max"] == 3
    assert np.allclose(vectors, np.stack([fake_vector(t, keyed.dim) for t in texts]), atol=1e-6)


def test_split_requests_respects_both_limits() -> None:
    assert split_requests([5, 5, 5, 5], max_inputs=3, max_tokens=100) == [(0, 3), (3, 4)]
    assert split_requests([5, 5, 5, 5], max_inputs=10, max_tokens=10) == [(0, 2), (2, 4)]
    assert split_requests([50, 1], max_inputs=10, max_tokens=10) == [(0, 1), (1, 2)]
    assert split_requests([], max_inputs=3, max_tokens=10) == []


async def test_breaker_opens_fails_fast_and_sends_one_probe(
    tmp_path: Path, keyed: FaultServer
) -> None:
    keyed.default = "500"
    config = load(tmp_path, keyed, max_retries=0, breaker_failures=3, breaker_cooldown_s=0.5)
    async with Engine(config) as engine:
        model = await engine.embeddings.model("remote")
        for i in range(3):
            with pytest.raises(RemoteUnavailableError, match="HTTP 500"):
                await engine.embeddings.encode([f"text {i}"], "remote")
        assert model.status()["breaker"]["state"] == "open"
        started = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match="circuit breaker open") as caught:
            await model.encode(["while open"])
        assert time.monotonic() - started < 0.1 and len(keyed.seen) == 3
        assert "3 consecutive failures" in str(caught.value)
        await asyncio.sleep(0.6)
        # Half-open: of three concurrent callers exactly one reaches the server; it fails, so
        # the breaker opens again.
        outcomes = await asyncio.gather(
            *(model.encode([f"probe {i}"]) for i in range(3)), return_exceptions=True
        )
        assert len(keyed.seen) == 4
        refused = [o for o in outcomes if "circuit breaker open" in str(o)]
        assert len(refused) == 2 and all(isinstance(o, RemoteUnavailableError) for o in outcomes)
        assert model.status()["breaker"]["opened"] == 2
        await asyncio.sleep(0.6)
        keyed.default = "ok"
        await model.encode(["recovered"])
        snapshot = engine.embeddings.snapshot()["models"]["remote"]["remote"]
        prometheus = engine.embeddings.prometheus()
    assert snapshot["breaker"]["state"] == "closed" and snapshot["state"] == "reachable"
    assert snapshot["breaker"]["rejected"] == 3 and snapshot["breaker"]["opened"] == 2
    assert 'embedscope_breaker_state{model="remote",state="closed"} 1.0' in prometheus
    assert 'embedscope_breaker_opened_total{model="remote"} 2.0' in prometheus
    assert 'embedscope_breaker_rejected_total{model="remote"} 3.0' in prometheus


async def test_retry_after_past_the_deadline_gives_up_at_once(
    tmp_path: Path, keyed: FaultServer
) -> None:
    keyed.script = ["429:120"]
    config = load(tmp_path, keyed, retry_deadline_s=2)
    async with Engine(config) as engine:
        started = time.monotonic()
        with pytest.raises(RemoteUnavailableError, match="retry after 120s, past the 2s") as c:
            await engine.embeddings.encode(["text"], "remote")
    assert time.monotonic() - started < 1.5
    assert len(keyed.seen) == 1 and "retry_deadline_s" in str(c.value)


async def test_fingerprint_separates_endpoints_and_dimensions(
    tmp_path: Path, keyed: FaultServer
) -> None:
    base = load(tmp_path, keyed)
    options = base.models["remote"]
    other_host = {**options, "base_url": keyed.base_url.replace("127.0.0.1", "localhost")}
    raw = {
        **base.raw,
        "models": {
            **base.models,
            "again": dict(options),
            "by-name": other_host,
            "shorter": {**options, "dimensions": 8, "send_dimensions": True},
        },
    }
    config = Config(raw=raw, data_dir=base.data_dir, sources=base.sources)
    async with Engine(config) as engine:
        digests = {}
        for name in ("remote", "again", "by-name", "shorter"):
            model = await engine.embeddings.model(name)
            digests[name] = model.fingerprint.digest
            await engine.embeddings.encode(["the same text"], name)
    assert digests["remote"] != digests["by-name"] != digests["shorter"] != digests["remote"]
    # A second declaration of the same endpoint, model and size shares the cache entries.
    assert len({digests["remote"], digests["again"]}) == 2, "names are part of every fingerprint"
    assert len(keyed.seen) == 4
    assert len(keyed.seen[3].texts) == 1
    assert all(keyed.key not in json.dumps(engine.registry.check(n).extra) for n in digests)


def write_corpus(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    topics = ["tides", "bread", "bicycles", "comets", "compost", "sonatas"]
    for i in range(n):
        topic = topics[i % len(topics)]
        (folder / f"note-{i:03d}.txt").write_text(
            f"Note {i} about {topic}. The {topic} entry number {i} has its own words: "
            f"alpha{i} beta{i} gamma{i}.\n"
        )
    return folder


def embedscope(
    config: Path, env_key: str, *args: str, home: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        KEY_ENV: env_key,
        "EMBEDSCOPE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_failed_indexing_keeps_finished_batches_and_resumes(
    tmp_path: Path, keyed: FaultServer, isolated_home: Path
) -> None:
    corpus = write_corpus(tmp_path / "notes", 300)
    # 32 texts per request, 2 in flight: the first group of 256 chunks is 8 requests; every
    # request after those fails, so the second group cannot be embedded.
    config = remote_config(
        tmp_path, keyed, max_inputs_per_request=32, max_concurrent_requests=2, max_retries=1,
        breaker_failures=2,
    )
    keyed.script = ["ok"] * 8
    keyed.default = "500"
    run = embedscope(config, keyed.key, "index", str(corpus), "--name", "notes", "--model",
                     "remote", home=isolated_home)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert keyed.base_url in run.stderr and "HTTP 500" in run.stderr
    assert "indexing stopped" in run.stderr and "256 chunks" in run.stderr
    assert "run the same command again to resume" in run.stderr
    assert_no_key(keyed.key, run.stderr, run.stdout)
    first = keyed.texts_seen()
    assert len(first) == 256
    async with Engine(load_config(config, use_user_file=False)) as engine:
        index = await engine.indexes.open("notes")
        committed = set(index.store.chunk_texts(index.store.chunk_ids()))
        assert committed == set(first), "every finished batch is committed, and only those"
        assert index.vectors.count == 256
    seen_before = len(keyed.seen)
    keyed.default = "ok"
    again = embedscope(config, keyed.key, "index", str(corpus), "--name", "notes", "--json",
                       home=isolated_home)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)["report"]
    resent = keyed.texts_seen(seen_before)
    assert len(resent) == 44 and not committed & set(resent), "finished batches re-embedded"
    assert report["chunks_embedded"] == 44 and report["unchanged"] == 256
    assert json.loads(again.stdout)["index"]["chunks"] == 300
    for file in isolated_home.rglob("*"):
        if file.is_file():
            assert keyed.key.encode() not in file.read_bytes(), f"key stored in {file}"


async def test_search_falls_back_to_keyword_when_the_server_goes(
    tmp_path: Path, keyed: FaultServer, isolated_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    corpus = write_corpus(tmp_path / "notes", 24)
    config_path = remote_config(tmp_path, keyed, breaker_failures=3)
    async with Engine(load_config(config_path, use_user_file=False)) as engine:
        index = await engine.indexes.create("notes", "remote")
        await index.index_path([corpus])
        healthy = await index.search("compost gamma7", 5)
        assert healthy.degraded is None and healthy.reason is None
        keyword = await index.search("compost gamma7", 5, mode="keyword")
        keyed.stop()  # the plug is pulled: connections are now refused
        started = time.monotonic()
        hits = await index.search("compost gamma7 unseen words", 5)
        assert time.monotonic() - started < 5
        assert hits.degraded == "keyword"
        assert keyed.base_url in str(hits.reason) and "connection failed" in str(hits.reason)
        only_keyword = await index.search("compost gamma7 unseen words", 5, mode="keyword")
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in only_keyword]
        assert [h.chunk_id for h in hits][:1] == [h.chunk_id for h in keyword][:1]
        # The breaker is open now: the next search falls back at once, without a request.
        started = time.monotonic()
        vector = await index.search("tides", 3, mode="vector")
        assert time.monotonic() - started < 1.0
        assert vector.degraded == "keyword" and "circuit breaker open" in str(vector.reason)
        assert vector and all("tides" in h.text.lower() for h in vector)
    # A query never embedded before (one that was is served from the cache, server or not).
    run = embedscope(config_path, keyed.key, "search", "compost beta3", "--name", "notes",
                     "--json", home=isolated_home)
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout)
    assert payload["degraded"] == "keyword" and keyed.base_url in payload["degraded_reason"]
    assert payload["results"] and "warning: keyword results only" in run.stderr
    assert "Traceback" not in run.stderr
    text = embedscope(config_path, keyed.key, "search", "compost", "--name", "notes",
                      home=isolated_home)
    assert text.returncode == 0 and "warning: keyword results only" in text.stderr
    assert_no_key(keyed.key, run.stdout, run.stderr, text.stdout, text.stderr, logged(caplog))


async def test_models_and_embed_show_endpoint_state_and_usage(
    tmp_path: Path, keyed: FaultServer, isolated_home: Path
) -> None:
    config = remote_config(tmp_path, keyed, price_per_1m_tokens=2.5)
    listed = embedscope(config, keyed.key, "models", "--json", home=isolated_home)
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout)["models"] if r["name"] == "remote")
    assert row["available"] and row["device"] == "remote"
    assert row["endpoint"] == f"127.0.0.1:{keyed.port}" and row["state"] == "reachable"
    assert row["latency_ms"]["last"] > 0 and row["breaker"]["state"] == "closed"
    embedded = embedscope(config, keyed.key, "embed", "a b c d", "e f", "--model", "remote",
                          "--json", home=isolated_home)
    assert embedded.returncode == 0, embedded.stderr
    usage = json.loads(embedded.stdout)["usage"]
    assert usage["prompt_tokens"] == 6 and usage["cost_usd"] == pytest.approx(6 * 2.5 / 1e6)
    keyed.default = "500"
    down = embedscope(config, keyed.key, "models", home=isolated_home)
    assert down.returncode == 0 and f"127.0.0.1:{keyed.port}: failing" in down.stdout
    assert "HTTP 500" in down.stdout
    for out in (listed, embedded, down):
        assert_no_key(keyed.key, out.stdout, out.stderr)


def test_config_errors_name_the_key_and_the_fix(tmp_path: Path, keyed: FaultServer) -> None:
    from engine.models import ModelError, ModelRegistry

    bad = remote_config(tmp_path, keyed, max_concurrent_requests=0)
    with pytest.raises(Exception, match=r"config.yaml:\d+: 'models.remote.max_concurrent"):
        load_config(bad, use_user_file=False)
    path = remote_config(tmp_path, keyed)
    data = yaml.safe_load(path.read_text())
    del data["models"]["remote"]["tokenizer"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match=r"config.yaml:\d+: model 'remote' needs `tokenizer:`"):
        ModelRegistry(load_config(path, use_user_file=False))
    data["models"]["remote"].update(tokenizer="minilm", base_url="ftp://x")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match="must be an http:// or https:// URL"):
        ModelRegistry(load_config(path, use_user_file=False))


async def test_app_says_results_are_keyword_only_and_shows_the_breaker(
    tmp_path: Path, keyed: FaultServer
) -> None:
    from textual.widgets import Input, Static

    from tui.app import EmbedscopeApp
    from tui.panes.compare import ComparePane
    from tui.panes.search import SearchPane

    corpus = write_corpus(tmp_path / "notes", 12)
    path = remote_config(tmp_path, keyed, breaker_failures=2, max_retries=1)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "default_model": "remote"}))
    app = EmbedscopeApp(config_path=path, corpus=corpus, settings_path=tmp_path / "app.yaml")

    async def until(check: Any, timeout: float = 120.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if check():
                return
            await pilot.pause(0.05)
        raise AssertionError("timed out")

    def text(selector: str) -> str:
        return str(app.query_one(selector, Static).render())

    async with app.run_test(size=(120, 40)) as pilot:
        await until(lambda: "ready:" in text("#status"), timeout=240)
        keyed.stop()
        pane = app.query_one(SearchPane)
        app.query_one("#query", Input).focus()
        await pilot.press(*"compost gamma7")
        await until(lambda: pane._shown is not None and pane._shown.text == "compost gamma7")
        info = text("#search-info")
        assert "keyword results only" in info and keyed.base_url in info
        assert any("compost" in h.text.lower() for h in pane.hits)
        await pilot.press("f5")
        await until(lambda: "breaker open" in text("#remote-state"), timeout=10)
        assert f"remote → 127.0.0.1:{keyed.port}" in text("#remote-state")
        await pilot.press("f4")
        compare = app.query_one(ComparePane)
        await until(lambda: compare._cells.get("remote", {}).get("status") == "breaker open", 10)
        assert compare._cells["remote"]["device"] == f"remote 127.0.0.1:{keyed.port}"
        assert_no_key(keyed.key, info, text("#remote-state"))


async def test_azure_deployments_route_with_api_version(tmp_path: Path, keyed: FaultServer) -> None:
    base = keyed.base_url.removesuffix("/v1")
    config = load(tmp_path, keyed, base_url=base, api_version="2024-10-21", model="my-deploy")
    async with Engine(config) as engine:
        vectors = await engine.embeddings.encode(["azure text"], "remote")
    (seen,) = keyed.seen
    assert seen.path == "/openai/deployments/my-deploy/embeddings?api-version=2024-10-21"
    assert np.allclose(vectors[0], fake_vector("azure text", keyed.dim), atol=1e-6)
