"""Command-line front of the engine.

`--json` prints one JSON document on stdout and nothing else, so scripts can pipe it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from engine.config import Config, ConfigError, load_config
from engine.embedding import OverloadedError
from engine.engine import Engine
from engine.models import ModelError

Handler = Callable[[argparse.Namespace, Config], Coroutine[Any, Any, int]]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedscope",
        description="Build, explore and compare semantic-search indexes. No command opens the app.",
    )
    parser.add_argument("--config", type=Path, help="config file (default: the user config file)")
    parser.add_argument("--corpus", type=Path, help="app: index this folder on first launch")
    parser.add_argument("--index", dest="index_name", help="app: open this named index")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models, available or not and why")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("embed", help="embed texts and report cache hits and timing")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", "-m", help="model name (default: default_model)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--vectors", action="store_true", help="include the vectors in --json output")
    return parser


@command("models")
async def cmd_models(args: argparse.Namespace, config: Config) -> int:
    engine = Engine(config)
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
                "device": config.device,
                "location": a.location,
                "description": a.description,
                "default": name == config.default_model,
                **a.extra,
            }
        )
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
    print(f"\n* default model; device setting: {config.device}")
    return 0


@command("embed")
async def cmd_embed(args: argparse.Namespace, config: Config) -> int:
    async with Engine(config) as engine:
        result = await engine.embeddings.encode_detailed(args.texts, args.model)
        model = await engine.embeddings.model(args.model)
        device = model.info().device
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
        "seconds": round(result.seconds, 4),
        "texts": per_text,
    }
    if args.json:
        emit_json(payload)
        return 0
    print(
        f"model {payload['model']} ({payload['dimension']} dims, {device}) in {result.seconds:.3f}s"
    )
    for row in per_text:
        note = " (truncated)" if row["truncated"] else ""
        print(f"  {row['cache']:<4} {row['tokens']:>5} tokens{note}  {row['text'][:70]}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed engine command; known failures print one clear line, not a traceback."""
    try:
        config = load_config(args.config)
        return asyncio.run(COMMANDS[args.command](args, config))
    except (ConfigError, ModelError, OverloadedError, ValueError, FileNotFoundError) as exc:
        print(f"embedscope {args.command}: {exc}", file=sys.stderr)
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
    sys.exit(main())
