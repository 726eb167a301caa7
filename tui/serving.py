"""The HTTP API served from inside the app: the same FastAPI app as `embedscope serve`, on the
app's event loop and sharing its Engine. FastAPI and uvicorn are imported only when it starts."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from engine.errors import EmbedscopeError

if TYPE_CHECKING:
    from engine import Engine
    from engine.serve.metrics import ServerMetrics

STOP_TIMEOUT_S = 10.0


class ServeStartError(EmbedscopeError):
    """The API server could not start; the message says why and what to change."""


def check_host(engine: Engine, host: str) -> None:
    """`serve`'s rule: a host other machines can reach needs an API key to exist first."""
    from engine.serve.app import is_loopback
    from engine.serve.cli import key_store

    if is_loopback(host):
        return
    store = key_store(engine.config)
    try:
        have_keys = store.any()
    finally:
        store.close()
    if not have_keys:
        raise ServeStartError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could use "
            "it. Make a key first (`embedscope keys create NAME --scopes read`), or serve on "
            "127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """Bound here, not by uvicorn, whose failure to bind ends the whole process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
        raise ServeStartError(
            f"port {port} on {host} {reason}: another program (or another embedscope) may be "
            "serving there. Stop it, or start the app with --serve --port N"
        ) from exc
    return sock


class ApiServer:
    """One uvicorn server on the app's loop. `start` returns once it accepts connections."""

    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.url = ""
        self._server: Any = None
        self._app: Any = None
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import uvicorn

        from engine.serve.app import ServeOptions, create_app

        check_host(self.engine, self.host)
        self._sock = bind(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"
        options = ServeOptions(self.engine.config, host=self.host, engine=self.engine)
        self._app = create_app(options)
        # log_config=None: uvicorn leaves logging alone, so nothing writes over the screen.
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, timeout_graceful_shutdown=5
        )
        self._server = quiet_server(config)
        self._task = asyncio.create_task(self._serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise ServeStartError("the API server stopped while starting")
            await asyncio.sleep(0.02)

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._sock])
        except SystemExit as exc:
            # uvicorn ends the process when the app's start-up fails; here only the server ends.
            raise ServeStartError(
                "the API server could not start its app; the app log has the details"
            ) from exc
        finally:
            if self._sock is not None:
                self._sock.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def metrics(self) -> ServerMetrics | None:
        """The server's ServerMetrics, or None before its app has started."""
        state = getattr(getattr(self._app, "state", None), "serve", None)
        return None if state is None else cast("ServerMetrics", state.metrics)

    async def stop(self) -> None:
        """Graceful: open requests finish (up to uvicorn's timeout), then the lifespan ends."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
        if not self._task.done():
            self._task.cancel()


def quiet_server(config: Any) -> Any:
    """A uvicorn server that leaves the process's signals to the app: uvicorn's own handlers
    would stop only the server, then re-raise the signal at the app."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)
