"""Command-line front of the engine.

`--json` prints one JSON document on stdout and nothing else, so scripts can pipe it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from engine.cli_parsers import HANDLERS, add_eval_parsers, add_finetune_parser
from engine.config import Config, ConfigError, load_config
from engine.disks import FULL, disk_problem
from engine.embedding import OverloadedError
from engine.engine import Engine
from engine.errors import EmbedscopeError
from engine.index import MODES, PERS, CorpusIndexError, IndexProgress, SearchHit
from engine.index.corpus import folder_bytes
from engine.limits import RequestLimits
from engine.models import EmbeddingModel, ModelError
from engine.store import FILTER_FORMS, StoreError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf")
PER_HELP = "one result per document (default; its best chunk shown) or per chunk"

Handler = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def handler(name: str) -> Handler:
    """A command's handler; one in another package (`HANDLERS`) is imported only now."""
    if name not in COMMANDS and name in HANDLERS:
        importlib.import_module(HANDLERS[name])
    return COMMANDS[name]


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def resolved_device(setting: str) -> str:
    """The device local models will run on; says why when the setting cannot be honoured."""
    from engine.models.local import pick_device

    try:
        return pick_device(setting)
    except ModelError as exc:
        return f"unusable ({exc})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedscope",
        description="Build, explore and compare semantic-search indexes. No command opens the app.",
    )
    parser.add_argument("--config", type=Path, help="config file (default: the user config file)")
    parser.add_argument("--corpus", type=Path, help="app: index this folder on first launch")
    parser.add_argument("--index", dest="index_name", help="app: open this named index")
    parser.add_argument("--serve", action="store_true", help="app: also serve the HTTP API")
    parser.add_argument("--host", dest="app_host", default="127.0.0.1", help="app: --serve on")
    parser.add_argument("--port", dest="app_port", type=int, default=8765, help="app: --serve port")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models, available or not and why")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("embed", help="embed texts and report cache hits and timing")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", "-m", help="model name (default: default_model)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--vectors", action="store_true", help="include the vectors in --json output")

    p = sub.add_parser("index", help="index a folder or file into a named index (incremental)")
    p.add_argument("path", type=Path)
    p.add_argument("--name", "-n", default="default", help="index name (default: default)")
    p.add_argument("--model", "-m", help="model for a new index (default: default_model)")
    p.add_argument("--index-type", "-t", choices=INDEX_TYPES, help="vector index type")
    p.add_argument(
        "--backend", choices=("faiss", "milvus"), help="vector store of a new index (index.backend)"
    )
    p.add_argument("--include", action="append", default=[], metavar="GLOB")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait for another writer of the index to finish"
    )

    p = sub.add_parser("search", help="search a named index")
    p.add_argument("query")
    p.add_argument("--name", "-n", default="default")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--per", choices=PERS, default="document", help=PER_HELP)
    p.add_argument(
        "--filter",
        "-f",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"metadata filter, repeatable: {FILTER_FORMS}",
    )
    p.add_argument("--mode", choices=MODES, default="hybrid")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("similar", help="documents like a document key or chunk id")
    p.add_argument("id", help="a document key (e.g. astronomy/black-holes.md) or a chunk id")
    p.add_argument("--name", "-n", default="default")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--per", choices=PERS, default="document", help=PER_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("info", help="describe one index, or list all")
    p.add_argument("--name", "-n", help="index name (default: list all)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("repair", help="rebuild a damaged index from what is left")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait for another writer of the index to finish"
    )

    p = sub.add_parser("rm-index", help="delete a named index")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait for another writer of the index to finish"
    )

    p = sub.add_parser("snapshot", help="write an index to one verified archive")
    p.add_argument("name")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait for another writer of the index to finish"
    )

    p = sub.add_parser("restore", help="restore an index from a snapshot archive")
    p.add_argument("file", type=Path)
    p.add_argument("--name", "-n", help="restore under another name")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    add_eval_parsers(sub)
    add_finetune_parser(sub)

    from engine.serve.cli import add_parsers as add_serve_parsers

    add_serve_parsers(sub)

    from engine.index.migrate_cli import add_parsers as add_migrate_parser

    add_migrate_parser(sub)
    return parser


@command("models")
async def cmd_models(args: argparse.Namespace, config: Config) -> int:
    engine = Engine(config)
    device = await asyncio.to_thread(resolved_device, config.device)
    rows = []
    for name in engine.registry.names():
        a = engine.registry.check(name)
        rows.append(
            {
                "name": a.name,
                "kind": a.kind,
                "available": a.available,
                "reason": a.reason,
                "dimension": a.dimension,
                "device": device if a.kind != "openai" else "remote",
                "location": a.location,
                "description": a.description,
                "default": name == config.default_model,
                **a.extra,
            }
        )
    await probe_remote(engine, [r for r in rows if r["kind"] == "openai" and r["available"]])
    if args.json:
        emit_json({"models": rows})
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "*" if r["default"] else " "
        state = "available" if r["available"] else "UNAVAILABLE"
        dim = r["dimension"] or "?"
        print(f"{mark} {r['name']:<{width}}  {r['kind']:<21} dim {dim!s:<5} {state}: {r['reason']}")
        if r["description"]:
            print(f"  {'':<{width}}  {r['description']}")
        if "state" in r:
            print(f"  {'':<{width}}  {remote_line(r)}")
    print(f"\n* default model; device: {device} (setting: {config.device})")
    return 0


async def probe_remote(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """One short request to each remote model, side by side: state, latency, breaker."""

    async def probe(row: dict[str, Any]) -> None:
        try:
            model = await engine.registry.aget(row["name"])
            status = await model.probe() if hasattr(model, "probe") else None
        except ModelError as exc:
            row.update(available=False, reason=str(exc))
            return
        if status is not None:
            keys = ("state", "latency_ms", "last_error", "breaker")
            row.update({k: status[k] for k in keys})

    await asyncio.gather(*(probe(r) for r in rows))
    await engine.registry.close()


def remote_line(row: dict[str, Any]) -> str:
    latency = row["latency_ms"]["last"]
    took = f", {latency:.0f} ms" if latency is not None else ""
    error = f"; last error: {row['last_error']}" if row["state"] != "reachable" else ""
    return f"{row['endpoint']}: {row['state']}{took} (breaker {row['breaker']['state']}){error}"


def usage_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens a remote endpoint reported for this command, and what they cost."""
    if before is None or after is None:
        return {}
    tokens = after["prompt_tokens"] - before["prompt_tokens"]
    return {"prompt_tokens": tokens, "cost_usd": tokens * after["price_per_1m_tokens"] / 1e6}


@command("embed")
async def cmd_embed(args: argparse.Namespace, config: Config) -> int:
    async with Engine(config) as engine:
        before = (await engine.embeddings.model(args.model)).status()
        result = await engine.embeddings.encode_request(args.texts, args.model)
        model = await engine.embeddings.model(args.model)
        info = model.info()
        device = info.device
        usage = usage_delta(before, model.status())
    per_text = [
        {
            "text": text,
            "cache": src if src != "model" else "miss",
            "tokens": tokens,
            "truncated": trunc,
            **({"vector": vec.round(6).tolist()} if args.vectors else {}),
        }
        for text, src, tokens, trunc, vec in zip(
            args.texts,
            result.sources,
            result.token_counts,
            result.truncated,
            result.vectors,
            strict=True,
        )
    ]
    payload = {
        "model": result.model,
        "dimension": int(result.vectors.shape[1]),
        "device": device,
        **({"small_batches": info.small_batches} if info.small_batches else {}),
        "seconds": round(result.seconds, 4),
        **({"usage": usage} if usage else {}),
        "texts": per_text,
    }
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"model {payload['model']} ({payload['dimension']} dims, {device}) in {result.seconds:.3f}s"
    )
    if usage:
        print(f"  {usage['prompt_tokens']} prompt tokens (API usage), ${usage['cost_usd']:.6f}")
    for row in per_text:
        note = " (truncated)" if row["truncated"] else ""
        print(f"  {row['cache']:<4} {row['tokens']:>5} tokens{note}  {row['text'][:70]}")
    return 0


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, p: IndexProgress) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and p.phase == "indexing"):
            return
        self._last = now
        total = max(p.files_total, 1)
        filled = int(30 * p.files_done / total)
        eta = f"{p.eta_s:4.0f}s" if p.eta_s is not None else "   ?"
        line = (
            f"\r{p.phase:<9} [{'#' * filled}{'.' * (30 - filled)}] {p.files_done}/{p.files_total} "
            f"files, {p.chunks_done} chunks, {p.chunks_per_s:6.1f}/s, eta {eta} "
        )
        sys.stderr.write(line[:120])
        if p.phase == "done":
            sys.stderr.write("\n")
        sys.stderr.flush()


@command("index")
async def cmd_index(args: argparse.Namespace, config: Config) -> int:
    if not args.path.exists():
        raise CorpusIndexError(f"{args.path} does not exist; give a folder or file to index")
    async with Engine(config) as engine:
        index = await engine.indexes.open_or_create(
            args.name, args.model, args.index_type, wait=args.wait, backend=args.backend
        )
        try:
            report = await index.index_path(
                [args.path],
                include=args.include,
                exclude=args.exclude,
                progress=ProgressBar(not args.json),
                wait=args.wait,
            )
        except ModelError as exc:
            done = index.stats()
            raise ModelError(
                f"{exc}\nindexing stopped: index '{done.name}' keeps the {done.documents} "
                f"documents ({done.chunks} chunks) finished before the failure; run the same "
                "command again to resume (they are not embedded again)"
            ) from None
        stats = index.stats()
    # Measured once the engine has closed the index, so the write-ahead log is folded in: the
    # size `info` reports.
    stats = dataclasses.replace(stats, bytes_on_disk=folder_bytes(stats.path))
    if args.json:
        emit_json({"index": stats.to_dict(), "report": report.to_dict()})
        return 0
    print(
        f"index '{stats.name}': {report.added} added, {report.updated} updated, "
        f"{report.removed} removed, {report.unchanged} unchanged; {report.chunks_embedded} chunks "
        f"embedded in {report.seconds:.1f}s ({report.model_calls} model batches)"
    )
    print(
        f"  {stats.documents} documents, {stats.chunks} chunks, {stats.model}, {stats.index_type}"
    )
    for failure in report.failed:
        print(f"  skipped {failure.path}: {failure.reason}")
    return 0


def print_hits(hits: list[SearchHit]) -> None:
    """Per document, a document with more than one matching chunk says how many."""
    if not hits:
        print("no results")
    for hit in hits:
        page = f" p.{hit.page}" if hit.page else ""
        more = f"  ({hit.matched_chunks} chunks matched)" if hit.matched_chunks > 1 else ""
        print(f"{hit.rank:>3}. {hit.score:8.4f}  {hit.title[:60]}  [{hit.doc_key}{page}]{more}")
        print(f"       {hit.snippet[:150]}")


def model_load_s(model: EmbeddingModel) -> float:
    """Seconds this process has spent loading the model so far."""
    return model.info().load_seconds or 0.0


@command("search")
async def cmd_search(args: argparse.Namespace, config: Config) -> int:
    # The engine checks these too; checking first spares loading a model for a doomed request.
    limits = RequestLimits.from_config(config)
    limits.check_k(args.k)
    limits.check_query(args.query)
    limits.check_filters(args.filter)
    started = time.perf_counter()
    async with Engine(config) as engine:
        index = await engine.indexes.open(args.name)
        opened = time.perf_counter()
        loaded = model_load_s(index.model)
        hits = await index.search(
            args.query, args.k, filters=args.filter, mode=args.mode, per=args.per
        )
        # A query not in the cache loads the model first: that is loading, not searching.
        model_load = model_load_s(index.model) - loaded
        timing = {
            "load_s": round(opened - started + model_load, 4),
            "search_s": round(time.perf_counter() - opened - model_load, 4),
        }
    if hits.degraded:
        print(
            f"embedscope search: warning: {hits.degraded} results only, {hits.reason}",
            file=sys.stderr,
        )
    if args.json:
        degraded = {"degraded": hits.degraded, "degraded_reason": hits.reason}
        emit_json(
            {
                "index": args.name,
                "query": args.query,
                "mode": args.mode,
                "per": args.per,
                **(degraded if hits.degraded else {}),
                "filters": args.filter,
                **timing,
                "results": [h.to_dict() for h in hits],
            }
        )
        return 0
    print_hits(hits)
    return 0


@command("similar")
async def cmd_similar(args: argparse.Namespace, config: Config) -> int:
    RequestLimits.from_config(config).check_k(args.k)
    target: str | int = int(args.id) if args.id.isdecimal() else args.id
    started = time.perf_counter()
    async with Engine(config) as engine:
        index = await engine.indexes.open(args.name)
        opened = time.perf_counter()
        hits = await index.more_like_this(target, args.k, per=args.per)
        timing = {
            "load_s": round(opened - started, 4),
            "search_s": round(time.perf_counter() - opened, 4),
        }
    if args.json:
        emit_json(
            {
                "index": args.name,
                "id": args.id,
                "per": args.per,
                **timing,
                "results": [h.to_dict() for h in hits],
            }
        )
        return 0
    print_hits(hits)
    return 0


@command("info")
async def cmd_info(args: argparse.Namespace, config: Config) -> int:
    engine = Engine(config)
    if args.name is None:
        rows = [s.to_dict() for s in engine.indexes.summaries()]
        if args.json:
            emit_json({"data_dir": str(config.data_dir), "indexes": rows})
        elif not rows:
            print(f"no indexes yet in {config.data_dir}; create one with `embedscope index PATH`")
        for r in [] if args.json else rows:
            print(
                f"{r['name']:<16} {r['documents']:>7} docs {r['chunks']:>8} chunks  "
                f"{r['model']:<8} {r['index_type']:<5} {r['bytes_on_disk'] / 1e6:8.1f} MB  "
                f"{r['source']}"
            )
        return 0
    async with engine:
        index = await engine.indexes.open(args.name)
        info = {
            **index.stats().to_dict(),
            "vectors": index.vectors.info(),
            "fingerprint": index.manifest["fingerprint"],
        }
    if args.json:
        emit_json(info)
    else:
        for key, value in info.items():
            print(f"{key:>14}: {value}")
    return 0


@command("repair")
async def cmd_repair(args: argparse.Namespace, config: Config) -> int:
    async with Engine(config) as engine:
        result = await engine.indexes.repair(args.name, wait=args.wait)
    if args.json:
        emit_json(result)
    else:
        for action in result["actions"]:
            print(f"- {action}")
        print(
            f"index '{args.name}' repaired: {result['documents']} documents, "
            f"{result['chunks']} chunks"
        )
    return 0


@command("rm-index")
async def cmd_rm_index(args: argparse.Namespace, config: Config) -> int:
    await Engine(config).indexes.remove(args.name, wait=args.wait)
    if args.json:
        emit_json({"index": args.name, "removed": True})
        return 0
    print(f"index '{args.name}' removed")
    return 0


@command("snapshot")
async def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    async with Engine(config) as engine:
        result = await engine.indexes.snapshot(args.name, args.file, wait=args.wait)
    if args.json:
        emit_json(result)
        return 0
    print(f"snapshot of '{args.name}' written to {result['archive']} ({result['bytes']} bytes)")
    return 0


@command("restore")
async def cmd_restore(args: argparse.Namespace, config: Config) -> int:
    async with Engine(config) as engine:
        result = await engine.indexes.restore(args.file, args.name)
    if args.json:
        emit_json(result)
        return 0
    print(
        f"index '{result['index']}' restored: {result['documents']} documents, "
        f"{result['chunks']} chunks"
    )
    return 0


def describe(exc: BaseException, data_dir: Path | None) -> str:
    """One line; a full or read-only disk is said so, with what to do, whatever layer hit it."""
    problem = disk_problem(exc, data_dir) if data_dir is not None else None
    if problem == FULL:
        return (
            f"{FULL} under {data_dir}; nothing committed before was lost: free some space and "
            "run the command again"
        )
    if problem is not None:
        return (
            f"cannot write under {data_dir}: {problem}; reading commands (search, similar, "
            "info) work there, others need a writable EMBEDSCOPE_HOME"
        )
    return str(exc)


def run(args: argparse.Namespace) -> int:
    """Run a parsed engine command; known failures print one clear line, not a traceback."""
    config: Config | None = None
    try:
        config = load_config(args.config)
        return asyncio.run(handler(args.command)(args, config))
    except (
        ConfigError,
        ModelError,
        OverloadedError,
        CorpusIndexError,
        StoreError,
        EmbedscopeError,
        ValueError,
        OSError,
        sqlite3.Error,
    ) as exc:
        data_dir = config.data_dir if config is not None else None
        print(f"embedscope {args.command}: {describe(exc, data_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required here (the app starts from `embedscope` itself)")
    return run(args)


if __name__ == "__main__":
    # `python -m engine.cli` runs this file as `__main__`, a second copy of `engine.cli`; the
    # commands other modules register with `@command` go to `engine.cli`, so that copy runs.
    from engine.cli import main as engine_main

    sys.exit(engine_main())
