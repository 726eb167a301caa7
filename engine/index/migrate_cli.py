"""The `migrate` command; `engine.cli.build_parser` adds it via `add_parsers`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from engine.cli import command, emit_json

if TYPE_CHECKING:
    from engine.config import Config


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "migrate", help="move an index's vectors to another backend (no re-embedding)"
    )
    p.add_argument("name")
    p.add_argument("--to", required=True, choices=("faiss", "milvus"), help="target backend")
    p.add_argument("--uri", help="Milvus server for --to milvus (default: index.milvus.uri)")
    p.add_argument("--batch", type=int, default=1024, help="vectors per copy batch (1-16384)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--wait", action="store_true", help="wait for another writer of the index to finish"
    )


class _Progress:
    """One line per batch on stderr (a killed run can be resumed from any of them)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, done: int, total: int) -> None:
        sys.stderr.write(f"migrate {self.name}: {done}/{total} vectors\n")
        sys.stderr.flush()


@command("migrate")
async def cmd_migrate(args: argparse.Namespace, config: Config) -> int:
    from engine.engine import Engine
    from engine.index.errors import CorpusIndexError
    from engine.index.migrate import migrate

    if not 1 <= args.batch <= 16_384:
        raise CorpusIndexError(f"--batch must be 1-16384, got {args.batch}")
    settings = config.store_settings(args.to)
    if args.uri:
        if args.to != "milvus":
            raise CorpusIndexError("--uri applies to --to milvus only")
        settings["uri"] = args.uri
    async with Engine(config) as engine:
        index = await engine.indexes.open(args.name)
        async with index.writing(args.wait):
            result = await migrate(
                index, args.to, settings, batch=args.batch, progress=_Progress(args.name)
            )
    if args.json:
        emit_json(result)
        return 0
    resumed = " (resumed)" if result["resumed"] else ""
    print(
        f"index '{result['index']}': {result['chunks']} vectors moved from {result['from']} to "
        f"{result['to']}{resumed} in {result['seconds']:.1f}s, verified (ids sha256 "
        f"{result['checksum'][:16]}); no model calls"
    )
    return 0
