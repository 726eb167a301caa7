"""No request exhausts memory: k, query, filters and texts to embed are bounded in the engine,
with a message that says what, the limit and how to raise it; the CLI prints it, no traceback."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_index_errors import TOPICS, write_notes

from engine.config import Config, ConfigError, load_config
from engine.engine import Engine
from engine.index import MODES
from engine.limits import RequestLimitError

HUGE_KS = (10**9, 99999999999999999999)
# Far below the 18-30 GB a k of 1e9 used to allocate, far above what a search needs (~1.5 GB).
ADDRESS_SPACE = 4 * 2**30


async def test_engine_refuses_huge_k_in_every_mode(config: Config, tmp_path: Path) -> None:
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([write_notes(tmp_path / "notes")])
        for k in HUGE_KS:
            for mode in MODES:
                with pytest.raises(RequestLimitError) as info:
                    await index.search("ocean tides", k, mode=mode)
                err = info.value
                assert (err.what, err.got, err.limit) == ("k", k, 10_000)
                assert str(err) == (
                    f"k is {k}, but at most 10,000 results are returned per request; ask for "
                    "fewer, or raise limits.max_k in the config file"
                )
            with pytest.raises(RequestLimitError, match=f"k is {k}, but at most 10,000"):
                await index.more_like_this("tides.md", k)
        for bad in (0, -3, True, 2.5, "10"):
            with pytest.raises(RequestLimitError, match="k must be"):
                await index.search("ocean tides", bad)  # type: ignore[arg-type]


async def test_k_past_the_index_returns_every_chunk(config: Config, tmp_path: Path) -> None:
    folder = write_notes(tmp_path / "notes")
    for name in TOPICS:  # one shared word, so keyword search can match every chunk too
        with (folder / name).open("a", encoding="utf-8") as fh:
            fh.write("\nA note worth keeping.\n")
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([folder])
        chunks = index.stats().chunks
        assert chunks == len(TOPICS)
        for mode in MODES:
            hits = await index.search("note", 10_000, mode=mode)
            assert len(hits) == chunks, mode
            assert len({h.chunk_id for h in hits}) == chunks
        filtered = await index.search("note", 10_000, mode="vector", filters=["path=t*"])
        assert {h.doc_key for h in filtered} == {"tides.md", "tax.md"}
        assert len(await index.more_like_this("tides.md", 10_000)) == chunks - 1


async def test_query_filters_and_texts_are_bounded(config: Config, tmp_path: Path) -> None:
    async with Engine(config) as engine:
        index = await engine.indexes.create("notes")
        await index.index_path([write_notes(tmp_path / "notes")])
        assert await index.search("tide " * 800, 3, mode="keyword")  # 4,000 characters: allowed
        with pytest.raises(RequestLimitError, match="the query is 4,001 characters long, over"):
            await index.search("tide " * 800 + "x", 3)
        with pytest.raises(RequestLimitError, match="65 filters were given, over the limit"):
            await index.search("tides", 3, filters=[f"size>={i}" for i in range(65)])
        with pytest.raises(RequestLimitError, match="65 filters were given"):
            await index.search("tides", 3, filters=" ".join(f"size>={i}" for i in range(65)))
        long_list = "title=" + ",".join(f"t{i}" for i in range(2000))
        with pytest.raises(RequestLimitError, match=r"filters are [\d,]+ characters long, over"):
            await index.search("tides", 3, filters=[long_list])
        with pytest.raises(RequestLimitError, match="the document key is 4,001 characters"):
            await index.more_like_this("x" * 4001)
        with pytest.raises(RequestLimitError, match="1,001 texts were given"):
            await engine.embeddings.encode_request([f"text {i}" for i in range(1001)])
        with pytest.raises(RequestLimitError, match=r"texts\[1\] is 100,001 characters long"):
            await engine.embeddings.encode_request(["fine", "w" * 100_001])
        result = await engine.embeddings.encode_request(["fine", "word " * 20_000])
        assert result.vectors.shape == (2, 384) and result.truncated == [False, True]


async def test_limits_come_from_the_config(tmp_path: Path) -> None:
    user = tmp_path / "config.yaml"
    user.write_text("limits:\n  max_k: 3\n  max_embed_texts: 2\n", encoding="utf-8")
    config = load_config(user)
    async with Engine(config) as engine:
        with pytest.raises(RequestLimitError, match="3 texts were given, over the limit of 2"):
            await engine.embeddings.encode_request(["a", "b", "c"])
        assert engine.registry.created("minilm") is None, "refused before the model loaded"
        index = await engine.indexes.create("notes")
        await index.index_path([write_notes(tmp_path / "notes")])
        assert len(await index.search("tides", 3)) == 3
        with pytest.raises(RequestLimitError, match="k is 4, but at most 3 results"):
            await index.search("tides", 4)
    for bad in (0, 2**31):
        user.write_text(f"# limits\nlimits:\n  max_k: {bad}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=rf"{user}:3: 'limits.max_k' must be >= 1 and <="):
            load_config(user)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The `embedscope` entry point in a process that cannot map more than ADDRESS_SPACE: a
    regression fails with a MemoryError here instead of eating the machine's memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=cap,
    )


@pytest.mark.slow  # CLI processes; the last loads torch and the model under the memory cap
def test_cli_prints_the_limit_without_a_traceback(config: Config, tmp_path: Path) -> None:
    built = cli("index", str(write_notes(tmp_path / "notes")), "--name", "notes")
    assert built.returncode == 0, built.stderr
    for k in HUGE_KS:
        runs = [cli("search", "tides", "-n", "notes", "-k", str(k), "--mode", m) for m in MODES]
        runs.append(cli("similar", "tides.md", "-n", "notes", "-k", str(k)))
        for run in runs:
            assert (run.returncode, run.stdout) == (2, ""), run.stderr
            command = run.args[3]
            assert run.stderr == (
                f"embedscope {command}: k is {k}, but at most 10,000 results are returned per "
                "request; ask for fewer, or raise limits.max_k in the config file\n"
            )
    many = cli("embed", *[f"t{i}" for i in range(1001)])
    assert many.returncode == 2 and "Traceback" not in many.stderr
    assert many.stderr.startswith("embedscope embed: 1,001 texts were given, over the limit")
    found = cli("search", "tides", "-n", "notes", "-k", "10000", "--mode", "hybrid", "--json")
    assert found.returncode == 0, found.stderr
    assert found.stdout.count('"chunk_id"') == len(TOPICS)
