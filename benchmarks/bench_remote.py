"""A remote (OpenAI-compatible) model against the raw `openai` client, measured in the same run.

Usage: .venv/bin/python benchmarks/bench_remote.py [--quick] [--passages N] [--repeats R]
       [--base-url URL --key-env VAR]

SciFact passages go to an infinity-emb server serving MiniLM (started here in its own virtualenv,
as the tests do, unless --base-url names a running one): through embedscope's remote model with
the cache bypassed, and through `openai.AsyncOpenAI` directly, sending the same texts (the model's
truncated texts, in the same order) in the same request sizes with the same number of requests in
flight. Both sides alternate per repeat; ratios are medians. Then the same texts again from the
in-memory cache (warm_vs_cold), and, through the tests' fault server on loopback, a request that
is answered 429 (Retry-After: 0) then 200 against one answered 200 (retry_overhead_ms).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    REPO,
    SCIFACT,
    bench_config,
    bench_home,
    emit,
    log,
    machine,
    median,
    parser,
    read_jsonl,
)

from engine import Engine

sys.path.insert(0, str(REPO / "tests"))
from remote_servers import SERVED_NAME, run_fault_server, run_infinity

PER_REQUEST = 32
IN_FLIGHT = 4
RETRY_SAMPLES = 30
TARGETS = {"remote_vs_raw_client": 0.95, "warm_vs_cold": 50.0}
KEY_ENV = "EMBEDSCOPE_BENCH_REMOTE_KEY"


def passages(n: int) -> list[str]:
    rows = read_jsonl(SCIFACT / "corpus.jsonl")
    texts = [f"{r.get('title', '')} {r.get('text', '')}".strip() for r in rows]
    return [t for t in texts if t][:n]


@contextlib.contextmanager
def infinity_server(base_url: str | None, key_env: str | None, log_dir: Path) -> Iterator[str]:
    """The given server (its key stays in `key_env`), or one started here and stopped after."""
    if base_url is not None:
        if not key_env or not os.environ.get(key_env):
            raise SystemExit("--base-url needs --key-env naming a set environment variable")
        os.environ[KEY_ENV] = os.environ[key_env]
        yield base_url
        return
    log("starting infinity (its virtualenv is built once under .cache/)")
    with run_infinity(log_dir) as server:
        os.environ[KEY_ENV] = server.key
        yield server.base_url


def remote_options(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "openai",
        "model": SERVED_NAME,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "dimensions": 384,
        "tokenizer": "minilm",
        "max_inputs_per_request": PER_REQUEST,
        "max_concurrent_requests": IN_FLIGHT,
        "timeout_s": 600,
        **extra,
    }


def config_for(home: Path, **models: dict[str, Any]) -> Any:
    config = bench_config(home)
    minilm = config.models["minilm"]
    raw = {**config.raw, "models": {"minilm": minilm, **models}}
    return dataclasses.replace(config, raw=raw)


async def raw_client(base_url: str, texts: list[str]) -> float:
    """The baseline: the official client alone, same request sizes, same requests in flight."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=os.environ[KEY_ENV], max_retries=0,
                                timeout=600)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(batch: list[str]) -> np.ndarray:
        async with gate:
            answer = await client.embeddings.create(
                input=batch, model=SERVED_NAME, encoding_format="base64"
            )
        rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in answer.data]
        return np.stack(rows)

    started = time.perf_counter()
    parts = await asyncio.gather(
        *(one(texts[i : i + PER_REQUEST]) for i in range(0, len(texts), PER_REQUEST))
    )
    seconds = time.perf_counter() - started
    assert sum(len(p) for p in parts) == len(texts)
    await client.close()
    return seconds


async def engine_cold(engine: Engine, texts: list[str]) -> float:
    started = time.perf_counter()
    await engine.embeddings.encode_detailed(texts, "remote", use_cache=False)
    return time.perf_counter() - started


async def throughput(base_url: str, home: Path, texts: list[str], repeats: int) -> dict[str, Any]:
    async with Engine(config_for(home, remote=remote_options(base_url))) as engine:
        model = await engine.embeddings.model("remote")
        # The same texts the engine sends: cut to the model window, and in the order its
        # batcher sends them (shortest first), so both sides send identical requests.
        sent = sorted(model.truncate(texts).texts, key=len)
        await engine.embeddings.encode(sent[:8], "remote")  # connection, tokenizer, warm server
        await raw_client(base_url, sent[:8])
        ratios, raw_s, ours_s = [], [], []
        for r in range(repeats):
            if r % 2 == 0:
                raw_t = await raw_client(base_url, sent)
                ours_t = await engine_cold(engine, sent)
            else:
                ours_t = await engine_cold(engine, sent)
                raw_t = await raw_client(base_url, sent)
            log(f"repeat {r + 1}: raw {raw_t:.2f}s, remote model {ours_t:.2f}s")
            ratios.append(raw_t / ours_t)
            raw_s.append(raw_t)
            ours_s.append(ours_t)
        cold_started = time.perf_counter()
        await engine.embeddings.encode(sent, "remote")
        cold = time.perf_counter() - cold_started
        warm_runs = []
        for _ in range(5):
            started = time.perf_counter()
            await engine.embeddings.encode(sent, "remote")
            warm_runs.append(time.perf_counter() - started)
        status = model.status()
    return {
        "remote_vs_raw_client": round(median(ratios), 3),
        "remote_vs_raw_client_per_repeat": [round(x, 3) for x in ratios],
        "raw_client_texts_per_s": round(len(texts) / median(raw_s), 1),
        "remote_texts_per_s": round(len(texts) / median(ours_s), 1),
        "warm_vs_cold": round(cold / median(warm_runs), 1),
        "cold_s": round(cold, 3),
        "warm_ms": round(median(warm_runs) * 1000, 3),
        "requests_in_flight_max": status["in_flight_max"],
        "requests": status["requests"],
        "prompt_tokens": status["prompt_tokens"],
    }


async def retry_overhead(home: Path, samples: int) -> dict[str, Any]:
    """429 (Retry-After: 0) then 200, against a plain 200: what one honoured retry costs."""
    with run_fault_server(dim=384) as server:
        os.environ[KEY_ENV] = server.key
        options = remote_options(server.base_url, backoff_initial_s=0.0, max_retries=2)
        async with Engine(config_for(home / "fault", fault=options)) as engine:
            model = await engine.embeddings.model("fault")
            await model.encode(["warm the connection"])
            plain, retried = [], []
            for i in range(samples):
                text = [f"retry overhead sample {i}"]
                started = time.perf_counter()
                await model.encode(text)
                plain.append(time.perf_counter() - started)
                server.script = ["429:0"]
                started = time.perf_counter()
                await model.encode(text)
                retried.append(time.perf_counter() - started)
            assert model.status()["retries"] == samples
    return {
        "retry_overhead_ms": round((median(retried) - median(plain)) * 1000, 3),
        "plain_request_ms": round(median(plain) * 1000, 3),
        "retried_request_ms": round(median(retried) * 1000, 3),
    }


async def run(args: Any) -> dict[str, Any]:
    n = args.passages or (40 if args.smoke else 300 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    texts = passages(n)
    log(f"{len(texts)} SciFact passages, {repeats} repeat(s)")
    with bench_home(args.data_dir) as home:
        with infinity_server(args.base_url, args.key_env, home) as base_url:
            figures = await throughput(base_url, home, texts, repeats)
        figures.update(await retry_overhead(home, 3 if args.smoke else RETRY_SAMPLES))
    return {
        "benchmark": "remote",
        "passages": len(texts),
        "repeats": repeats,
        "request_size": PER_REQUEST,
        "requests_in_flight_limit": IN_FLIGHT,
        **figures,
        "targets": TARGETS,
        "meets_targets": {k: figures[k] >= v for k, v in TARGETS.items()},
        "machine": machine(),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=None, help="SciFact passages (default 2000)")
    p.add_argument("--base-url", default=None, help="a running OpenAI-compatible server's /v1")
    p.add_argument("--key-env", default=None, help="environment variable holding its key")
    args = p.parse_args()
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
