"""Who may call a route: a Bearer key with the route's scope, counted against the key's rate.

With no key ever made and a loopback host, the server is open (the CLI says so at start-up);
once a key exists every route but the health checks needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.errors import ForbiddenError, RateLimitedError, UnauthorizedError
from engine.serve.keys import ApiKey

bearer = HTTPBearer(auto_error=False, description="an embedscope API key")


def require(scope: str) -> Callable[..., Awaitable[ApiKey | None]]:
    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> ApiKey | None:
        server = request.app.state.serve
        if server.is_open():
            return None
        if credentials is None:
            raise UnauthorizedError(
                "this server needs an API key: send `Authorization: Bearer KEY` (make one with "
                "`embedscope keys create NAME --scopes read`)"
            )
        token = credentials.credentials
        if server.keys.known(token):
            key = server.keys.verify(token)
        else:
            # The one scrypt check a key costs runs off the event loop.
            key = await asyncio.to_thread(server.keys.verify, token)
        if key is None:
            raise UnauthorizedError(
                "the API key is not valid (unknown, mistyped or revoked); check the key, or "
                "make a new one with `embedscope keys create NAME`"
            )
        request.state.key_id = key.id
        if not key.allows(scope):
            raise ForbiddenError(
                f"key '{key.name}' has scopes {', '.join(key.scopes)}; this route needs "
                f"'{scope}'; use a key made with --scopes {scope}"
            )
        try:
            server.limiter.hit(key.id, key.rate)
        except RateLimitedError:
            server.metrics.rejected.labels(key.id).inc()
            raise
        return key

    return dependency
