"""Remote OpenAI-compatible embedding models (OpenAI, Azure, infinity, TEI, vLLM, Ollama).

Requests go through the official `openai` async client with its own retries off: retries are
ours (tenacity: exponential backoff with jitter, `Retry-After` honoured, a total deadline) so that
every attempt passes the model's circuit breaker and is counted. A remote model is latency-bound,
so one batch is split into several requests in flight at once.

The API key is read from the environment on use and exists nowhere else: not in the fingerprint,
the cache, the index, `info()`, logs or errors (every message is scrubbed of it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engine.models.base import EmbeddingModel, Fingerprint, ModelError, ModelInfo, Truncated
from engine.models.breaker import HALF_OPEN, OPEN, BreakerOpen, CircuitBreaker
from engine.models.tokens import TokenCounter

log = logging.getLogger(__name__)

# Retried: rate limits, timeouts at a proxy (408), conflicts OpenAI documents as transient, 5xx.
RETRY_STATUS = frozenset({408, 409, 429})
PROBE_TEXT = "ping"
# Rounds of max_concurrent_requests requests per model call (see preferred_batch_size).
CALL_ROUNDS = 16
PROBE_TIMEOUT_S = 10.0


class RemoteError(ModelError):
    """A remote model could not embed; the message names the endpoint, never the key."""


class RemoteAuthError(RemoteError):
    """The key is missing or the endpoint refused it."""


class RemoteUnavailableError(RemoteError):
    """The endpoint kept failing through every retry, or its circuit breaker is open."""


class RemoteAnswerError(RemoteError):
    """The endpoint answered, but not with one finite vector of the right size per text."""


class _Transient(Exception):
    """One failed attempt worth retrying; `retry_after` is the server's own wait, if it sent one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RemoteSettings:
    """A `kind: openai` declaration; defaults here are the documented ones in defaults.yaml."""

    model: str
    base_url: str
    api_key_env: str
    dimensions: int
    send_dimensions: bool = False
    api_version: str | None = None
    price_per_1m_tokens: float = 0.0
    timeout_s: float = 30.0
    max_inputs_per_request: int = 64
    max_tokens_per_request: int = 300_000
    max_concurrent_requests: int = 4
    encoding_format: str = "base64"
    max_retries: int = 4
    retry_deadline_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RemoteSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in known})

    @property
    def endpoint(self) -> str:
        """scheme://host[:port]/path: what errors and the UI name; user info and query dropped."""
        parts = urlsplit(self.base_url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"

    @property
    def host(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def check_base_url(url: str) -> str | None:
    """What is wrong with a base_url, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1"
    return None


def remote_fingerprint(name: str, settings: RemoteSettings, window: int) -> Fingerprint:
    """Endpoint, model and dimensions decide the vectors; the key never enters it."""
    identity = {
        "endpoint": settings.endpoint,
        "model": settings.model,
        "dimensions": settings.dimensions,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Fingerprint(
        name=name,
        weights_digest=f"remote:{digest}",
        dimension=settings.dimensions,
        normalized=True,
        max_seq_length=window,
    )


def split_requests(counts: list[int], max_inputs: int, max_tokens: int) -> list[tuple[int, int]]:
    """[start, end) ranges in order, each within both limits (a lone oversized text goes alone:
    the server, not we, decides whether it fits)."""
    ranges: list[tuple[int, int]] = []
    start = tokens = 0
    for i, n in enumerate(counts):
        if i > start and (i - start >= max_inputs or tokens + n > max_tokens):
            ranges.append((start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(counts):
        ranges.append((start, len(counts)))
    return ranges


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, retry-after seconds or HTTP date."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value) if scale == 1.0 else None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    return None


@dataclass
class RemoteStats:
    attempts: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    texts: int = 0
    prompt_tokens: int = 0
    in_flight: int = 0
    in_flight_max: int = 0
    last_error: str = ""
    last_ok_at: float = 0.0
    last_failure_at: float = 0.0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=512))


@dataclass
class _LoopClient:
    client: Any
    semaphore: asyncio.Semaphore
    key_digest: str


class OpenAIModel(EmbeddingModel):
    kind = "openai"

    def __init__(
        self, name: str, settings: RemoteSettings, fingerprint: Fingerprint, tokens: TokenCounter
    ) -> None:
        self.name = name
        self.settings = settings
        self.tokens = tokens
        # The tokenizer's folder: the index chunks with it, as it would with a local model.
        self.folder = tokens.folder
        self._fingerprint = fingerprint
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self.stats = RemoteStats()
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}

    @property
    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    @property
    def preferred_batch_size(self) -> int:
        """Texts per model call. The batcher waits for one call before the next, and the tail
        of each call leaves request slots idle, so a call spans many rounds of requests."""
        s = self.settings
        return s.max_inputs_per_request * s.max_concurrent_requests * CALL_ROUNDS

    async def load(self) -> None:
        """Nothing to load: the tokenizer was checked when the model was created."""

    def truncate(self, texts: list[str], *, count: bool = True) -> Truncated:
        return self.tokens.truncate(texts)

    # -- the key, redaction, the client ---------------------------------------------------

    def _key(self) -> str:
        env = self.settings.api_key_env
        key = os.environ.get(env, "").strip()
        if not key:
            raise RemoteAuthError(
                f"model '{self.name}': the environment variable ${env} is not set; put the API "
                f"key for {self.settings.host} in it (export {env}=...)"
            )
        return key

    def redact(self, text: str) -> str:
        key = os.environ.get(self.settings.api_key_env, "").strip()
        return text.replace(key, "[redacted]") if len(key) >= 4 else text

    def _client(self) -> _LoopClient:
        """One client per event loop: its connection pool belongs to the loop that made it."""
        loop = asyncio.get_running_loop()
        key = self._key()
        digest = hashlib.sha256(key.encode()).hexdigest()
        entry = self._clients.get(loop)
        if entry is None or entry.key_digest != digest:
            import openai

            s = self.settings
            common: dict[str, Any] = {"api_key": key, "timeout": s.timeout_s, "max_retries": 0}
            if s.api_version:
                client = openai.AsyncAzureOpenAI(
                    azure_endpoint=s.base_url, api_version=s.api_version, **common
                )
            else:
                client = openai.AsyncOpenAI(base_url=s.base_url, **common)
            entry = _LoopClient(client, asyncio.Semaphore(s.max_concurrent_requests), digest)
            self._clients = {k: v for k, v in self._clients.items() if not k.is_closed()}
            self._clients[loop] = entry
        return entry

    # -- embedding ------------------------------------------------------------------------

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Split into requests within the size limits, run up to max_concurrent_requests at
        once; the first failure cancels the rest and is raised."""
        s = self.settings
        entry = self._client()
        # The texts are already cut to the window and a token spans at least one byte, so this
        # bounds each text's tokens without tokenizing it a second time (measured: tokenizing
        # 2,000 SciFact abstracts again cost more than sending them).
        window, special = self.tokens.window, self.tokens.special_tokens
        counts = [min(len(t.encode()) + special, window) for t in texts]
        ranges = split_requests(counts, s.max_inputs_per_request, s.max_tokens_per_request)

        async def one(start: int, end: int) -> np.ndarray:
            async with entry.semaphore:
                return await self._request(entry.client, texts[start:end])

        tasks = [asyncio.create_task(one(a, b)) for a, b in ranges]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def _request(self, client: Any, texts: list[str]) -> np.ndarray:
        from tenacity import (
            AsyncRetrying,
            RetryCallState,
            retry_if_exception_type,
            stop_after_attempt,
            stop_before_delay,
            wait_exponential_jitter,
        )

        s = self.settings
        backoff = wait_exponential_jitter(
            multiplier=s.backoff_initial_s, max=s.backoff_max_s, jitter=s.backoff_initial_s
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            hint = exc.retry_after if isinstance(exc, _Transient) else None
            return hint if hint is not None else float(backoff(state))

        def before_sleep(state: RetryCallState) -> None:
            self.stats.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "model '%s': %s: %s; retry %d of %d in %.1fs",
                self.name,
                s.endpoint,
                self.redact(str(exc)),
                state.attempt_number,
                s.max_retries,
                state.upcoming_sleep,
            )

        started = time.monotonic()
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.max_retries + 1) | stop_before_delay(s.retry_deadline_s),
            wait=wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        vectors: np.ndarray | None = None
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    vectors = await self._attempt(client, texts, s.timeout_s)
        except _Transient as exc:
            waited = time.monotonic() - started
            hint = ""
            if exc.retry_after is not None and attempts <= s.max_retries:
                hint = (
                    f"; it asked to retry after {exc.retry_after:.0f}s, past the "
                    f"{s.retry_deadline_s:g}s retry deadline (retry_deadline_s)"
                )
            raise RemoteUnavailableError(
                self.redact(
                    f"model '{self.name}': {s.endpoint} failed {attempts} time(s) in "
                    f"{waited:.1f}s: {exc}{hint}. Check that the server is up, or raise "
                    "max_retries / retry_deadline_s"
                )
            ) from None
        assert vectors is not None
        return vectors

    async def _attempt(self, client: Any, texts: list[str], timeout: float) -> np.ndarray:
        """One request through the breaker; every outcome is counted once."""
        import openai

        s = self.settings
        try:
            self.breaker.acquire()
        except BreakerOpen as exc:
            raise RemoteUnavailableError(
                self.redact(
                    f"model '{self.name}': {s.endpoint} is failing "
                    f"({self.breaker.consecutive_failures} consecutive failures, last: "
                    f"{self.stats.last_error or 'unknown'}); {exc}"
                )
            ) from None
        extra: dict[str, Any] = {"dimensions": s.dimensions} if s.send_dimensions else {}
        stats = self.stats
        stats.attempts += 1
        stats.in_flight += 1
        stats.in_flight_max = max(stats.in_flight_max, stats.in_flight)
        started = time.perf_counter()
        try:
            response = await client.embeddings.create(
                input=texts,
                model=s.model,
                encoding_format=s.encoding_format,
                timeout=timeout,
                **extra,
            )
            vectors, tokens = self._parse(response, len(texts))
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in RETRY_STATUS or status >= 500:
                raise self._failed(
                    _Transient(_status_text(exc), retry_after_s(exc.response.headers))
                ) from None
            self.breaker.success()
            raise self._refused(exc) from None
        except openai.APITimeoutError:
            raise self._failed(_Transient(f"no answer within timeout_s={timeout:g}s")) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise self._failed(
                _Transient(f"connection failed ({type(cause).__name__}: {cause})")
            ) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            bad = self._malformed(f"an answer that is not valid JSON ({exc})")
            raise self._failed(bad) from None
        except RemoteAnswerError as exc:
            raise self._failed(exc) from None
        except BaseException:
            # Cancelled, or something unforeseen: the endpoint's health is unknown.
            self.breaker.release()
            raise
        finally:
            stats.in_flight -= 1
        seconds = time.perf_counter() - started
        self.breaker.success()
        stats.ok += 1
        stats.texts += len(texts)
        stats.prompt_tokens += tokens
        stats.latency.append(seconds)
        stats.last_ok_at = time.time()
        return vectors

    def _failed(self, exc: Exception) -> Exception:
        self.breaker.failure()
        self.stats.failed += 1
        self.stats.last_error = self.redact(str(exc))
        self.stats.last_failure_at = time.time()
        return exc

    def _refused(self, exc: Any) -> RemoteError:
        """A 4xx other than 408/409/429: retrying cannot help; say what to fix."""
        s = self.settings
        status = exc.status_code
        self.stats.failed += 1
        self.stats.last_failure_at = time.time()
        if status in (401, 403):
            error: RemoteError = RemoteAuthError(
                f"model '{self.name}': {s.endpoint} refused the API key ({_status_text(exc)}); "
                f"set the environment variable ${s.api_key_env} to a valid key for it"
            )
        elif status == 404:
            error = RemoteError(
                f"model '{self.name}': {s.endpoint} has no model '{s.model}' or no embeddings "
                f"route ({_status_text(exc)}); check `model` and `base_url`"
            )
        else:
            error = RemoteError(
                f"model '{self.name}': {s.endpoint} rejected the request ({_status_text(exc)}); "
                "check `model`, `dimensions`, `send_dimensions` and max_inputs_per_request"
            )
        self.stats.last_error = self.redact(str(error))
        return type(error)(self.stats.last_error)

    def _malformed(self, what: str) -> RemoteAnswerError:
        return RemoteAnswerError(
            f"model '{self.name}': {self.settings.endpoint} sent {what}; nothing was stored"
        )

    def _parse(self, response: Any, n: int) -> tuple[np.ndarray, int]:
        """One finite vector of `dimensions` floats per text, in the order of `index`."""
        dim = self.settings.dimensions
        data = getattr(response, "data", None)
        if not isinstance(data, list):
            raise self._malformed(f"an answer without a list of embeddings ({type(response)})")
        if len(data) != n:
            raise self._malformed(f"{len(data)} vectors for {n} texts")
        out = np.empty((n, dim), dtype=np.float32)
        seen: set[int] = set()
        for item in data:
            index = getattr(item, "index", None)
            if not isinstance(index, int) or not 0 <= index < n or index in seen:
                raise self._malformed(f"a vector with index {index!r} for {n} texts")
            seen.add(index)
            vec = self._decode(getattr(item, "embedding", None))
            if vec.shape != (dim,):
                raise self._malformed(
                    f"{vec.size}-dimensional vectors, expected {dim}; set `dimensions` to what "
                    "the model returns (or send_dimensions: true if it can shorten them)"
                )
            if not np.isfinite(vec).all():
                raise self._malformed("a vector with NaN or infinite values")
            out[index] = vec
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None)
        return out, tokens if isinstance(tokens, int) and tokens >= 0 else 0

    def _decode(self, embedding: Any) -> np.ndarray:
        if isinstance(embedding, str):
            try:
                raw = base64.b64decode(embedding, validate=True)
            except (binascii.Error, ValueError):
                raise self._malformed("an embedding that is not valid base64") from None
            if len(raw) % 4:
                raise self._malformed(f"a base64 embedding of {len(raw)} bytes (not float32)")
            return np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if isinstance(embedding, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in embedding
        ):
            return np.asarray(embedding, dtype=np.float32)
        raise self._malformed(f"an embedding of type {type(embedding).__name__}")

    # -- health ---------------------------------------------------------------------------

    async def probe(self) -> dict[str, Any]:
        """One short request, no retries: whether the endpoint embeds now, and how fast."""
        try:
            entry = self._client()
            timeout = min(self.settings.timeout_s, PROBE_TIMEOUT_S)
            await self._attempt(entry.client, [PROBE_TEXT], timeout)
        except RemoteAuthError as exc:
            self.stats.last_error = self.redact(str(exc))
            self.stats.last_failure_at = time.time()
        except (RemoteError, _Transient):
            pass
        return self.status()

    def state(self) -> str:
        if self.breaker.state == OPEN:
            return "breaker open"
        if self.breaker.state == HALF_OPEN:
            return "probing"
        if self.stats.last_failure_at > self.stats.last_ok_at:
            return "failing"
        return "reachable" if self.stats.ok else "not contacted"

    def status(self) -> dict[str, Any]:
        s, st = self.settings, self.stats
        latency = np.fromiter(st.latency, float) * 1000.0 if st.latency else None
        return {
            "endpoint": s.host,
            "url": s.endpoint,
            "remote_model": s.model,
            "api_key_env": s.api_key_env,
            "api_key_set": bool(os.environ.get(s.api_key_env, "").strip()),
            "state": self.state(),
            "last_error": st.last_error,
            "latency_ms": {
                "p50": None if latency is None else round(float(np.percentile(latency, 50)), 1),
                "p95": None if latency is None else round(float(np.percentile(latency, 95)), 1),
                "last": None if latency is None else round(float(latency[-1]), 1),
            },
            "requests": st.attempts,
            "ok": st.ok,
            "failed": st.failed,
            "retries": st.retries,
            "in_flight": st.in_flight,
            "in_flight_max": st.in_flight_max,
            "texts": st.texts,
            "prompt_tokens": st.prompt_tokens,
            "price_per_1m_tokens": s.price_per_1m_tokens,
            "cost_usd": st.prompt_tokens * s.price_per_1m_tokens / 1e6,
            "breaker": self.breaker.snapshot(),
        }

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            kind=self.kind,
            dimension=self.settings.dimensions,
            max_seq_length=self._fingerprint.max_seq_length,
            device="remote",
            loaded=True,
            # No weights are held here: a remote model costs this machine no model memory.
            parameter_bytes=0,
            source=f"{self.settings.model} at {self.settings.endpoint}",
            extra=self.status(),
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        entry = self._clients.pop(loop, None)
        self._clients.clear()
        if entry is not None:
            await entry.client.close()


def _status_text(exc: Any) -> str:
    status = exc.status_code
    message = ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = str(inner.get("message", "") if isinstance(inner, dict) else inner)
    elif isinstance(body, str):
        message = body
    reason = getattr(exc.response, "reason_phrase", "") or ""
    detail = f": {message[:200]}" if message else ""
    return f"HTTP {status} {reason}".rstrip() + detail
