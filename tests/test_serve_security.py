"""Keys, scopes, rate limits, revocation, the audit log and TLS of `embedscope serve`, over real
HTTP on loopback; keys are made and revoked with the real CLI, as a user would."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_harness import Served, documents, running, serve_config

from engine.cli import main
from engine.serve.app import ServeOptions
from engine.serve.audit import AuditLog
from engine.serve.keys import KeyStore

SECRET_QUERY = "a query that must never reach the audit log"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Iterator[Served]:
    config = serve_config(tmp_path_factory.mktemp("secure-data"), shared_cache)
    store = KeyStore(config.data_dir / "serve" / "keys.sqlite")
    keys = {
        "admin": store.create("admin", ("admin",)),
        "reader": store.create("reader", ("read",)),
        "writer": store.create("writer", ("write",)),
    }
    store.close()
    with running(ServeOptions(config)) as s:
        s.keys = keys  # type: ignore[attr-defined]
        with httpx.Client(base_url=s.url, headers=bearer(keys["writer"])) as http:
            r = http.put("/v1/indexes/secure/documents", json={"documents": documents(3)})
            assert r.status_code == 200, r.text
        yield s


@pytest.fixture
def cli_home(served: Served, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI works on the server's data dir, as `embedscope keys` beside a running server."""
    monkeypatch.setenv("EMBEDSCOPE_HOME", str(served.options.config.data_dir))
    return served.options.config.data_dir


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def search(http: httpx.Client, key: str | None, query: str = "cooking") -> httpx.Response:
    headers = bearer(key) if key else {}
    return http.post("/v1/search", json={"index": "secure", "query": query}, headers=headers)


def code(response: httpx.Response) -> str:
    assert "Traceback" not in response.text
    return response.json()["error"]["code"]


def create_key(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["keys", "create", *args]) == 0
    return capsys.readouterr().out.strip()


def test_each_scope_gets_its_routes_only(served: Served) -> None:
    keys = served.keys  # type: ignore[attr-defined]
    with httpx.Client(base_url=served.url) as http:
        missing = search(http, None)
        assert (missing.status_code, code(missing)) == (401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = search(http, keys["reader"][:-4] + "AAAA")
        assert (wrong.status_code, code(wrong)) == (401, "unauthorized")
        assert search(http, "not-even-a-key").status_code == 401
        assert search(http, keys["reader"]).status_code == 200
        put = http.put(
            "/v1/indexes/secure/documents",
            json={"documents": documents(1)},
            headers=bearer(keys["reader"]),
        )
        assert (put.status_code, code(put)) == (403, "forbidden")
        assert "--scopes write" in put.json()["error"]["message"]
        assert search(http, keys["writer"]).status_code == 403
        assert http.get("/metrics", headers=bearer(keys["reader"])).status_code == 403
        assert http.get("/metrics", headers=bearer(keys["admin"])).status_code == 200
        assert search(http, keys["admin"]).status_code == 200
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200


def test_keys_cli_shows_a_key_once_and_stores_a_hash(
    served: Served, cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_key(capsys, "ci", "--scopes", "read,write")
    assert key.startswith("es_")
    assert main(["keys", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert key not in listed and "ci" in [k["name"] for k in json.loads(listed)["keys"]]
    secret = key.rsplit("_", 1)[1].encode()
    assert secret not in (cli_home / "serve" / "keys.sqlite").read_bytes()
    assert main(["keys", "create", "ci"]) == 2  # a name is used once
    assert "already exists" in capsys.readouterr().err
    assert main(["keys", "create", "x", "--scopes", "root"]) == 2
    assert main(["keys", "create", "y", "--rate", "fast"]) == 2
    with httpx.Client(base_url=served.url) as http:
        assert search(http, key).status_code == 200


def test_rate_limit_answers_429_with_retry_after(
    served: Served, cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_key(capsys, "slow", "--rate", "2/minute")
    with httpx.Client(base_url=served.url) as http:
        assert [search(http, key).status_code for _ in range(2)] == [200, 200]
        refused = search(http, key)
        assert (refused.status_code, code(refused)) == (429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        text = http.get("/metrics", headers=bearer(served.keys["admin"])).text  # type: ignore[attr-defined]
        assert "embedscope_http_rate_limited_total" in text


def test_key_revoked_while_in_use_stops_at_once(
    served: Served, cli_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = create_key(capsys, "temp")
    with httpx.Client(base_url=served.url) as http:  # one kept-alive connection throughout
        assert search(http, key).status_code == 200
        assert main(["keys", "revoke", "temp"]) == 0
        revoked = search(http, key)
        assert (revoked.status_code, code(revoked)) == (401, "unauthorized")
    assert main(["keys", "revoke", "temp"]) == 2


def test_audit_log_has_counts_never_texts_or_keys(served: Served) -> None:
    keys = served.keys  # type: ignore[attr-defined]
    with httpx.Client(base_url=served.url) as http:
        assert search(http, keys["reader"], SECRET_QUERY).status_code == 200
    path = served.options.config.data_dir / "serve" / "audit.jsonl"
    reader = keys["reader"].split("_")[1]
    # The line is written once the response is sent, so the client can read the file first.
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text()
        lines = [json.loads(line) for line in text.splitlines()]
        mine = [r for r in lines if r["route"] == "/v1/search" and r["status"] == 200]
        if (mine and mine[-1]["key"] == reader) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert mine and mine[-1]["key"] == reader
    assert mine[-1]["counts"]["results"] >= 1 and mine[-1]["latency_ms"] > 0
    assert {r["status"] for r in lines} >= {200, 401, 403}
    assert SECRET_QUERY not in text and "cooking" not in text
    assert not any(key.rsplit("_", 1)[1] in text for key in keys.values())


def test_audit_log_rotates_by_size(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", max_bytes=1000, backups=2)
    for _ in range(40):
        audit.record(
            key="k",
            method="GET",
            route="/v1/indexes",
            status=200,
            latency_s=0.001,
            counts={"results": 1},
        )
    audit.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name in files:
        for line in (tmp_path / name).read_text().splitlines():
            assert json.loads(line)["route"] == "/v1/indexes"


def test_refuses_a_public_host_without_any_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0 without an API key" in err
    assert "Traceback" not in err


def test_warns_beyond_loopback_without_tls(served: Served) -> None:
    env = {**os.environ, "EMBEDSCOPE_HOME": str(served.options.config.data_dir)}
    code = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ["serve", "--host", "0.0.0.0", "--port", "0", "--index", "missing-index"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    # Keys exist, so the host is allowed, with a warning; the missing index then stops it
    # before anything binds.
    assert "warning: serving 0.0.0.0 without TLS" in proc.stderr
    assert proc.returncode == 2 and "no index named 'missing-index'" in proc.stderr
    args = ["serve", "--host", "0.0.0.0", "--port", "0", "--tls-cert", "only-one.pem"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "both --tls-cert and --tls-key" in proc.stderr


def test_tls_with_a_generated_certificate(tmp_path: Path, shared_cache: Path) -> None:
    import trustme

    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(pem)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    config = serve_config(tmp_path / "data", shared_cache)
    with running(ServeOptions(config), certfile=pem, keyfile=pem) as s:
        assert s.url.startswith("https://")
        with httpx.Client(base_url=s.url, verify=trusted) as http:
            assert http.get("/healthz").status_code == 200
            r = http.post("/v1/embeddings", json={"input": "over TLS"})
            assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
        with pytest.raises(httpx.ConnectError), httpx.Client(base_url=s.url) as untrusting:
            untrusting.get("/healthz")  # the system store does not know this CA
        plain = s.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError), httpx.Client(base_url=plain) as http:
            http.get("/healthz")
