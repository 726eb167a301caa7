"""A real `embedscope serve` app under uvicorn on a loopback port the OS picks, in a thread.

The server owns its engine, event loop and data dir, as the CLI's server does; tests talk to it
over real HTTP (httpx, the openai client, the engine's own remote model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from engine.config import Config, load_config
from engine.serve.app import ServeOptions, ServerState, create_app

START_TIMEOUT_S = 120.0


def serve_config(data_dir: Path, cache: Path, **sections: dict[str, Any]) -> Config:
    """Package defaults rooted at `data_dir`, sharing the session's ONNX exports under `cache`,
    with `sections` merged over the defaults (e.g. embedding={"max_queue": 2})."""
    config = load_config(use_user_file=False)
    raw = {**config.raw, "cache_dir": str(cache / "embedscope")}
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return dataclasses.replace(config, raw=raw, data_dir=data_dir)


@dataclass
class Served:
    url: str
    options: ServeOptions
    app: Any

    @property
    def state(self) -> ServerState:
        return self.app.state.serve


@contextlib.contextmanager
def running(
    options: ServeOptions, *, certfile: Path | None = None, keyfile: Path | None = None
) -> Iterator[Served]:
    app = create_app(options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(certfile) if certfile else None,
            ssl_keyfile=str(keyfile) if keyfile else None,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start; see the log above")
        time.sleep(0.05)
    scheme = "https" if certfile else "http"
    try:
        yield Served(f"{scheme}://127.0.0.1:{port}", options, app)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def documents(n: int, *, start: int = 0, topic: str = "cooking") -> list[dict[str, Any]]:
    """Short distinct documents with metadata, made here rather than shipped."""
    return [
        {
            "key": f"{topic}/note-{i}",
            "title": f"{topic.title()} note {i}",
            "text": f"Note {i} about {topic}: step {i} explains how to proceed with care. "
            f"The {topic} technique number {i} works best when practised slowly.",
            "metadata": {"category": topic, "number": i},
        }
        for i in range(start, start + n)
    ]
