"""`embedscope serve` over real HTTP on loopback: the openai client, the engine's own remote
model, httpx for search and ingestion, every error status, the schema, and a bounded load."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from serve_harness import Served, documents, running, serve_config

from engine.config import load_config
from engine.engine import Engine
from engine.serve.app import ServeOptions

TEXTS = [
    "How do black holes form?",
    "Bread rises because yeast makes carbon dioxide.",
    "A bicycle chain needs oil every few hundred kilometres.",
]
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Served]:
    """One open server (no key exists, loopback) for the module: start-up loads the model."""
    config = serve_config(tmp_path_factory.mktemp("serve-data"), shared_cache)
    with running(ServeOptions(config, max_body_bytes=MAX_BODY)) as s:
        yield s


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


def in_process(served: Served, texts: list[str], model: str | None = None):
    async def run():
        async with Engine(served.options.config) as engine:
            return await engine.embeddings.encode_request(texts, model)

    return asyncio.run(run())


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]["message"]


def test_openai_client_gets_the_in_process_vectors(served: Served) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    expected = in_process(served, TEXTS)
    # The client asks for base64 unless told otherwise, and decodes it itself.
    got = client.embeddings.create(input=TEXTS, model="minilm")
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected.vectors, atol=1e-6)
    assert [d.index for d in got.data] == [0, 1, 2]
    assert got.usage.prompt_tokens == sum(expected.token_counts) > len(TEXTS)
    floats = client.embeddings.create(input=TEXTS[0], model="minilm", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, expected.vectors[0], atol=1e-6)
    assert [m.id for m in client.models.list().data] == served.state.engine.registry.names()


def test_base64_is_little_endian_float32(http: httpx.Client, served: Served) -> None:
    r = http.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]]
    np.testing.assert_allclose(np.stack(rows), in_process(served, TEXTS).vectors, atol=1e-6)
    ok = http.post("/v1/embeddings", json={"input": "one", "dimensions": 384})
    assert ok.status_code == 200
    message = error(
        http.post("/v1/embeddings", json={"input": "x", "dimensions": 64}), 400, "bad_request"
    )
    assert "384" in message


def test_remote_model_pointed_at_serve(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> None:
    """The engine's own OpenAI-compatible model, configured like any remote endpoint."""
    monkeypatch.setenv("EMBEDSCOPE_TEST_SERVE_KEY", "unused-on-an-open-server")
    path = tmp_path / "config.yaml"
    remote = {
        "kind": "openai",
        "model": "minilm",
        "base_url": f"{served.url}/v1",
        "api_key_env": "EMBEDSCOPE_TEST_SERVE_KEY",
        "dimensions": 384,
        "tokenizer": "minilm",
        "max_retries": 0,
    }
    path.write_text(yaml.safe_dump({"models": {"via-serve": remote}}))
    config = load_config(path, use_user_file=False)

    async def run():
        async with Engine(config) as engine:
            return await engine.embeddings.encode(TEXTS, "via-serve")

    np.testing.assert_allclose(asyncio.run(run()), in_process(served, TEXTS).vectors, atol=1e-6)


def test_ingest_search_similar_delete(http: httpx.Client) -> None:
    docs = documents(4) + documents(3, topic="cycling")
    r = http.put("/v1/indexes/notes/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (first["added"], first["documents"]) == (7, 7) and first["chunks_embedded"] >= 7
    again = http.put("/v1/indexes/notes/documents", json={"documents": docs}).json()
    assert (again["unchanged"], again["chunks_embedded"], again["added"]) == (7, 0, 0)
    changed = {**docs[0], "text": docs[0]["text"] + " Season to taste."}
    one = http.put("/v1/indexes/notes/documents", json={"documents": [changed]}).json()
    assert (one["updated"], one["documents"]) == (1, 7)

    query = {"index": "notes", "query": "cycling technique", "k": 3, "mode": "vector"}
    hits = http.post("/v1/search", json=query).json()["results"]
    assert len(hits) == 3 and all(h["doc_key"].startswith("cycling/") for h in hits)
    cooking = http.post("/v1/search", json={**query, "filters": ["category=cooking"]}).json()
    assert {h["metadata"]["category"] for h in cooking["results"]} == {"cooking"}
    chunks = http.post("/v1/search", json={**query, "per": "chunk", "mode": "keyword"}).json()
    assert chunks["results"] and chunks["degraded"] is None

    like = http.post("/v1/similar", json={"index": "notes", "id": "cycling/note-0", "k": 2})
    assert like.status_code == 200
    assert "cycling/note-0" not in [h["doc_key"] for h in like.json()["results"]]
    info = http.get("/v1/indexes/notes").json()
    assert (info["documents"], info["model"]) == (7, "minilm")
    assert "notes" in [i["name"] for i in http.get("/v1/indexes").json()["indexes"]]

    gone = http.delete("/v1/indexes/notes/documents/cycling/note-0")
    assert gone.json() == {"index": "notes", "key": "cycling/note-0", "deleted": True}
    rest = http.post("/v1/search", json={**query, "k": 10}).json()["results"]
    keys = [h["doc_key"] for h in rest]
    assert "cycling/note-0" not in keys and len(keys) == 6
    error(http.delete("/v1/indexes/notes/documents/cycling/note-0"), 404, "document_not_found")


def test_each_error_has_its_status_and_code(http: httpx.Client) -> None:
    http.put("/v1/indexes/errs/documents", json={"documents": documents(2)})
    search = {"index": "errs", "query": "cooking"}
    error(http.post("/v1/search", json={**search, "index": "nope"}), 404, "index_not_found")
    error(http.get("/v1/indexes/nope"), 404, "index_not_found")
    # An index name is one folder name: nothing reaches outside the data dir.
    error(http.post("/v1/search", json={**search, "index": "../../etc"}), 400, "bad_index_name")
    error(
        http.put("/v1/indexes/.trash/documents", json={"documents": documents(1)}),
        400,
        "bad_index_name",
    )
    error(http.post("/v1/search", json={**search, "filters": ["no operator"]}), 400, "bad_filter")
    error(http.post("/v1/search", json={**search, "query": "   "}), 400, "bad_request")
    message = error(http.post("/v1/search", json={**search, "k": 10**9}), 422, "request_limit")
    assert "limits.max_k" in message
    long_query = {**search, "query": "word " * 2000}
    assert "max_query_chars" in error(
        http.post("/v1/search", json=long_query), 422, "request_limit"
    )
    error(http.post("/v1/search", json={"index": "errs"}), 422, "invalid_request")
    error(
        http.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    error(http.post("/v1/embeddings", json={"input": [], "model": "minilm"}), 400, "bad_request")
    error(http.post("/v1/embeddings", json={"input": "x", "model": "nope"}), 404, "model_not_found")
    error(
        http.post("/v1/similar", json={"index": "errs", "id": "missing"}), 404, "document_not_found"
    )
    error(http.post("/v1/similar", json={"index": "errs", "id": 10**12}), 404, "document_not_found")
    mismatch = {"documents": documents(1), "model": "minilm-static"}
    error(http.put("/v1/indexes/errs/documents", json=mismatch), 409, "index_model_mismatch")
    big = {"input": ["x" * 1000] * (MAX_BODY // 1000 + 10)}
    assert "--max-body-mb" in error(http.post("/v1/embeddings", json=big), 413, "body_too_large")
    chunks = (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 2))  # no Content-Length
    streamed = http.post(
        "/v1/embeddings", content=chunks, headers={"content-type": "application/json"}
    )
    error(streamed, 413, "body_too_large")
    error(http.get("/v2/nothing"), 404, "not_found")
    error(http.delete("/v1/search"), 405, "method_not_allowed")


def test_overload_is_503_with_retry_after(tmp_path: Path, shared_cache: Path) -> None:
    config = serve_config(tmp_path / "data", shared_cache, embedding={"max_queue": 2})
    with running(ServeOptions(config)) as s, httpx.Client(base_url=s.url) as http:
        r = http.post("/v1/embeddings", json={"input": [f"new text {i}" for i in range(5)]})
        error(r, 503, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
        assert http.get("/readyz").status_code == 200
        assert 'embedscope_overloads_total{model="minilm"} 1.0' in http.get("/metrics").text


def test_health_ready_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok", "reasons": []}
    assert http.get("/readyz").json()["status"] == "ready"
    http.post("/v1/embeddings", json={"input": TEXTS})
    text = http.get("/metrics").text
    labels = 'method="POST",route="/v1/embeddings",status="200"'
    assert f"embedscope_http_requests_total{{{labels}}}" in text
    assert "embedscope_http_request_seconds_bucket" in text
    assert "embedscope_embedding_queue_depth 0.0" in text
    for family in ("embedscope_l1_hits_total", "embedscope_batch_size_bucket"):
        assert family in text


def test_schemathesis_finds_no_server_error(served: Served, tmp_path: Path) -> None:
    """A bounded schema-driven run: no 5xx anywhere, every response as the schema says."""
    st = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [
            str(st),
            "--no-color",
            "run",
            f"{served.url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
            "--max-examples",
            "4",
            "--phases",
            "examples,fuzzing",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its cache folder stays out of the repository
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    operations = sum(len(methods) for methods in served.app.openapi()["paths"].values())
    assert f"Tested: {operations}" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_load_32_clients_loses_nothing(served: Served) -> None:
    """32 concurrent clients, ~500 mixed requests under a time cap: every answer a success,
    every acknowledged document searchable, the server ready afterwards."""
    acknowledged: list[str] = []

    async def client(n: int, http: httpx.AsyncClient) -> list[int]:
        statuses = []
        for i in range(16):
            kind = (n + i) % 4
            if kind == 0:
                r = await http.post("/v1/search", json={"index": "load", "query": TEXTS[i % 3]})
            elif kind == 1:
                r = await http.post("/v1/embeddings", json={"input": TEXTS[: 1 + i % 3]})
            elif kind == 2:
                docs = documents(1, start=n * 100 + i, topic="load")
                r = await http.put("/v1/indexes/load/documents", json={"documents": docs})
                if r.status_code == 200:
                    acknowledged.append(docs[0]["key"])
            else:
                r = await http.post("/v1/similar", json={"index": "load", "id": "seed/note-0"})
            statuses.append(r.status_code)
        return statuses

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as http:
            seed = documents(2, topic="seed")
            await http.put("/v1/indexes/load/documents", json={"documents": seed})
            results = await asyncio.wait_for(
                asyncio.gather(*(client(n, http) for n in range(32))), timeout=240
            )
        return [s for r in results for s in r]

    started = time.monotonic()
    statuses = asyncio.run(run())
    assert len(statuses) == 512 and set(statuses) == {200}, sorted(set(statuses))
    with httpx.Client(base_url=served.url, timeout=60) as http:
        info = http.get("/v1/indexes/load").json()
        assert info["documents"] == len(acknowledged) + 2
        assert http.get("/readyz").status_code == 200
    assert time.monotonic() - started < 240
