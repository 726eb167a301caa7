"""Indexing throughput of `CorpusIndex.index_path` against a bare `model.encode` of its chunks.

Usage: .venv/bin/python benchmarks/bench_index.py [--quick] [--docs N] [--layout jsonl|folder]
       [--model minilm-int8]

SciFact documents are written to a temporary folder (one jsonl, or one .txt per document) and
indexed into a new flat index with an empty embedding cache; the baseline is
`SentenceTransformer.encode` over exactly the chunk texts the index stored, same batch size.
The ratio of chunks per second is everything the pipeline adds: discovery, loading, chunking,
cache look-ups and writes, SQLite and FAISS. Sides alternate in order between repeats.

Chunking alone is measured the same way: `Chunker.chunk` over SciFact abstracts (the engine's
default window and overlap) against a bare tokenization of the same abstracts with the same
tokenizer, the one pass chunking cannot avoid (`chunking_vs_tokenizing`).

`index_peak_rss_mb` is the peak memory of indexing alone: the same documents through
`embedscope index` in its own process, with an empty data dir and cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    SCIFACT,
    bench_home,
    ceiling_targets,
    check_positive,
    embedscope_command,
    emit,
    floor_targets,
    load_sentence_transformer,
    log,
    machine,
    median,
    model_config,
    model_path,
    parser,
    read_jsonl,
)

from engine import Engine

BATCH = 32
TARGETS = {"index_vs_direct": 1.0, "chunking_vs_tokenizing": 0.5}
# Issue 10: peak memory of an indexing run alone (`embedscope index` in its own process).
CEILINGS = {"index_peak_rss_mb": 900.0}


def write_docs(folder: Path, docs: list[dict[str, Any]], layout: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "jsonl":
        lines = [
            json.dumps({"_id": d["_id"], "title": d["title"], "text": d["text"]}) for d in docs
        ]
        (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        for d in docs:
            body = f"{d['title']}\n\n{d['text']}\n"
            (folder / f"doc-{d['_id']}.txt").write_text(body, encoding="utf-8")
    return folder


async def time_index(home: Path, source: Path, model: str | None) -> dict[str, Any]:
    """A new index with an empty cache: every chunk goes through the model once. Peak RSS is
    the process's, the direct baseline's model included (loaded first)."""
    async with Engine(model_config(home, model)) as engine:
        model = await engine.embeddings.model()
        await model.load()
        index = await engine.indexes.create("bench-index", index_type="flat")
        started = time.perf_counter()
        report = await index.index_path([source])
        seconds = time.perf_counter() - started
        if report.failed:
            raise RuntimeError(f"indexing failed for {report.failed[:3]}")
        ids = index.store.chunk_ids()
        texts = index.store.chunk_texts(ids)
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "chunks": report.chunks_embedded,
        "model_calls": report.model_calls,
        "texts": texts,
    }


def cli_index_peak_rss_mb(source: Path, home: Path, model: str | None) -> float:
    """`embedscope index` as a user runs it, in its own process with an empty data dir and
    cache: the peak RSS of indexing alone (the in-process figure carries the baseline's model).

    Read as the child's own high-water mark (VmHWM), polled until it exits: the rusage of a
    child starts from its parent's peak on Linux (the memory it was forked from counts)."""
    cmd = [*embedscope_command(), "index", str(source), "--name", "rss", "--json"]
    cmd += ["--index-type", "flat"]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "EMBEDSCOPE_HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}
    peak_kb = 0
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        status = Path(f"/proc/{child.pid}/status")
        while child.poll() is None:
            peak_kb = max(peak_kb, _vm_hwm_kb(status))
            time.sleep(0.02)
        if child.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{' '.join(cmd)} failed: {tail}")
    return peak_kb / 1024


def _vm_hwm_kb(status: Path) -> int:
    """The process's peak resident set so far; 0 once it has gone (or is a zombie)."""
    try:
        text = status.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def time_direct(model: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    model.encode(
        texts,
        batch_size=BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return time.perf_counter() - started


def time_chunking(texts: list[str], repeats: int) -> list[dict[str, float]]:
    """Seconds to chunk every text vs to tokenize every text once, per repeat, order alternating."""
    from tokenizers import Tokenizer

    from engine.documents import Chunker

    chunker = Chunker.from_model_dir(model_path())
    bare = Tokenizer.from_file(str(model_path() / "tokenizer.json"))
    bare.no_truncation()
    bare.no_padding()

    def tokenize() -> float:
        started = time.perf_counter()
        for text in texts:
            bare.encode(text, add_special_tokens=False)
        return time.perf_counter() - started

    def chunk() -> float:
        started = time.perf_counter()
        for text in texts:
            chunker.chunk(text)
        return time.perf_counter() - started

    rows = []
    for r in range(repeats):
        if r % 2 == 0:
            tokenize_s = tokenize()
            chunk_s = chunk()
        else:
            chunk_s = chunk()
            tokenize_s = tokenize()
        rows.append({"tokenize_s": tokenize_s, "chunk_s": chunk_s})
    return rows


async def run(args: Any) -> dict[str, Any]:
    n = args.docs or (12 if args.smoke else 150 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    docs = [d for d in read_jsonl(SCIFACT / "corpus.jsonl") if d.get("text", "").strip()][:n]
    log(f"loading sentence-transformers for the direct baseline; {n} docs x {repeats} repeats")
    direct_model = load_sentence_transformer()
    time_direct(direct_model, [d["title"] for d in docs[:BATCH]])
    rows: list[dict[str, float]] = []
    texts: list[str] = []
    with bench_home(args.data_dir) as root:
        run_dir = root / f"bench-index-{time.time_ns()}"
        source = write_docs(run_dir / "source", docs, args.layout)
        for r in range(repeats):
            home = run_dir / f"repeat-{r}"
            if r % 2 == 0 or not texts:
                indexed = await time_index(home, source, args.model)
                texts = indexed["texts"]
                direct = time_direct(direct_model, texts)
            else:
                direct = time_direct(direct_model, texts)
                indexed = await time_index(home, source, args.model)
            log(
                f"repeat {r + 1}: index_path {indexed['chunks']} chunks in "
                f"{indexed['seconds']:.2f}s, direct encode {direct:.2f}s"
            )
            rows.append(
                {
                    "index_s": indexed["seconds"],
                    "direct_s": direct,
                    "chunks": indexed["chunks"],
                    "model_calls": indexed["model_calls"],
                    "peak_rss_mb": indexed["peak_rss_mb"],
                }
            )
        log("peak RSS of `embedscope index` in its own process")
        cli_rss = cli_index_peak_rss_mb(source, run_dir / "cli", args.model)
    abstracts = [d["text"] for d in read_jsonl(SCIFACT / "corpus.jsonl") if d["text"].strip()]
    abstracts = abstracts[: 50 if args.smoke else 500 if args.quick else 2000]
    log(f"chunking vs tokenizing {len(abstracts)} abstracts x {max(repeats, 3)}")
    chunking = time_chunking(abstracts, max(repeats, 3))
    chunks = len(texts)
    ratio = round(median([row["direct_s"] / row["index_s"] for row in rows]), 3)
    chunk_ratio = round(median([row["tokenize_s"] / row["chunk_s"] for row in chunking]), 3)
    result: dict[str, Any] = {
        "benchmark": "index",
        "layout": args.layout,
        "documents": n,
        "chunks": chunks,
        "repeats": repeats,
        "batch_size": BATCH,
        "model": args.model or "minilm",
        "index_vs_direct": ratio,
        "index_chunks_per_s": round(chunks / median([row["index_s"] for row in rows]), 1),
        "direct_chunks_per_s": round(chunks / median([row["direct_s"] for row in rows]), 1),
        "index_s": round(median([row["index_s"] for row in rows]), 3),
        "direct_s": round(median([row["direct_s"] for row in rows]), 3),
        "per_repeat": [{k: round(v, 6) for k, v in row.items()} for row in rows],
        "index_peak_rss_mb": round(cli_rss, 1),
        "chunking_abstracts": len(abstracts),
        "chunking_vs_tokenizing": chunk_ratio,
        "chunk_abstracts_per_s": round(
            len(abstracts) / median([row["chunk_s"] for row in chunking]), 1
        ),
        "tokenize_abstracts_per_s": round(
            len(abstracts) / median([row["tokenize_s"] for row in chunking]), 1
        ),
        "chunking_per_repeat": [{k: round(v, 6) for k, v in row.items()} for row in chunking],
        "machine": machine(),
    }
    result["targets"] = {
        **floor_targets(result, TARGETS),
        **ceiling_targets(result, CEILINGS),
    }
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=None, help="SciFact documents (default 1,000)")
    p.add_argument(
        "--model", help="index with this declared model (default minilm; e.g. minilm-int8)"
    )
    p.add_argument(
        "--layout",
        choices=("jsonl", "folder"),
        default="jsonl",
        help="one jsonl file, or a folder with one .txt per document",
    )
    args = p.parse_args()
    for name in ("repeats", "docs"):
        check_positive(p, f"--{name}", getattr(args, name))
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
