"""The FastAPI application: one Engine started and stopped by the lifespan, errors mapped to
JSON in one place, and an outer layer that bounds bodies, times, counts and audits requests."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.config import Config
from engine.engine import Engine
from engine.errors import EmbedscopeError, TooLargeError
from engine.serve.audit import AuditLog
from engine.serve.keys import KeyStore
from engine.serve.metrics import ServerMetrics
from engine.serve.ratelimit import KeyRateLimiter
from engine.serve.routes import router

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY_MB = 16
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_path(config: Config) -> Path:
    return config.data_dir / "serve" / "keys.sqlite"


@dataclass
class ServeOptions:
    config: Config
    host: str = "127.0.0.1"
    indexes: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_MB * 1024 * 1024
    audit_path: Path | None = None
    # The app's engine, started and stopped by the app: the server then shares it, not owns it.
    engine: Engine | None = None


@dataclass
class ServerState:
    options: ServeOptions
    engine: Engine
    keys: KeyStore
    audit: AuditLog
    metrics: ServerMetrics
    limiter: KeyRateLimiter = field(default_factory=KeyRateLimiter)
    ready: bool = False

    def is_open(self) -> bool:
        """No key was ever made and only this machine can connect: no key is asked for."""
        return is_loopback(self.options.host) and not self.keys.any()


def error_response(exc: EmbedscopeError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    body = {
        "error": {
            "code": exc.code,
            "message": str(exc),
            "type": STATUS_TYPES.get(exc.status, "server_error"),
        }
    }
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _error(status: int, code: str, message: str) -> JSONResponse:
    exc = EmbedscopeError(message)
    exc.status, exc.code = status, code
    return error_response(exc)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) + "; see /openapi.json for the request's shape"


def create_app(options: ServeOptions) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shared = options.engine
        engine = shared or Engine(options.config)
        keys = KeyStore(keys_path(options.config))
        audit = AuditLog(options.audit_path or options.config.data_dir / "serve" / "audit.jsonl")
        state = ServerState(options, engine, keys, audit, ServerMetrics(engine))
        app.state.serve = state
        try:
            async with nullcontext() if shared else engine:
                # The default model answers the first request warm; named indexes are open.
                if shared is None:
                    await engine.embeddings.encode(["embedscope serve warm-up"])
                for name in options.indexes:
                    await engine.indexes.open(name)
                state.ready = True
                yield
                state.ready = False
        finally:
            keys.close()
            audit.close()

    app = FastAPI(
        title="embedscope",
        summary="Embeddings (OpenAI-compatible), search and ingestion over embedscope indexes",
        version="1",
        lifespan=lifespan,
    )
    app.include_router(router)

    @app.exception_handler(EmbedscopeError)
    async def family(request: Request, exc: EmbedscopeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        if exc.status_code == 413:
            return error_response(too_large(options.max_body_bytes))
        return _error(exc.status_code, code, f"{exc.detail}; see /openapi.json for the routes")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error; the server log has the details")

    app.add_middleware(RequestLayer, max_body_bytes=options.max_body_bytes)
    return app


def too_large(limit: int) -> TooLargeError:
    return TooLargeError(
        f"the request body is over {limit:,} bytes; send fewer documents or texts per request, "
        "or start the server with a larger --max-body-mb"
    )


class RequestLayer:
    """Refuses bodies over the limit (413) before they are read whole, and records every
    request's route, status and latency in the metrics and the audit log.

    FastAPI's own `max_body_size` answers in plain text, past the app's error handlers, so
    a client would get no `code`; this layer answers as every other error does."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receiving() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # FastAPI turns other errors raised while it reads a body into a 400.
                    raise HTTPException(413)
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                await error_response(too_large(self.max_body))(scope, receive, sending)
            else:
                await self.app(scope, receiving, sending)
        finally:
            self.record(scope, status, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        app = scope.get("app")
        server: ServerState | None = getattr(getattr(app, "state", None), "serve", None)
        if server is None:
            return
        # The route's template (/v1/indexes/{name}), never the raw path: bounded label values.
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"]
        server.metrics.observe(method, route, status, seconds)
        state: dict[str, Any] = scope.get("state") or {}
        server.audit.record(
            key=state.get("key_id"),
            method=method,
            route=route,
            status=status,
            latency_s=seconds,
            counts=state.get("counts", {}),
        )
