"""`embedscope serve` and `embedscope keys`; `engine.cli.build_parser` adds them via
`add_parsers`. FastAPI and uvicorn are imported only when the server starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli import command, emit_json
from engine.config import Config
from engine.engine import Engine
from engine.errors import BadRequestError
from engine.index import IndexNotFoundError
from engine.serve.keys import DEFAULT_RATE, KeyStore, check_rate, parse_scopes

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API (OpenAI-compatible embeddings, search)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--index",
        dest="indexes",
        action="append",
        default=[],
        metavar="NAME",
        help="open this index at start-up (repeatable); others open on first use",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument(
        "--max-body-mb", type=float, default=16, help="largest request body (default 16 MB)"
    )

    p = sub.add_parser("keys", help="create, list and revoke API keys for `serve`")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    k = keys.add_parser("create", help="make a key; it is printed once and stored only hashed")
    k.add_argument("name")
    k.add_argument("--scopes", default="read", help="comma-separated: read,write,admin")
    k.add_argument("--rate", default=DEFAULT_RATE, help=f"allowed rate (default {DEFAULT_RATE})")
    k.add_argument("--json", action="store_true", help="print one JSON document")
    k = keys.add_parser("list", help="list keys (never their secrets)")
    k.add_argument("--json", action="store_true", help="print one JSON document")
    k = keys.add_parser("revoke", help="revoke a key by name or id; it stops working at once")
    k.add_argument("name")
    k.add_argument("--json", action="store_true", help="print one JSON document")


def key_store(config: Config) -> KeyStore:
    from engine.serve.app import keys_path

    return KeyStore(keys_path(config))


@command("keys")
async def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    store = key_store(config)
    try:
        if args.keys_command == "create":
            scopes, rate = parse_scopes(args.scopes), check_rate(args.rate)
            secret = store.create(args.name, scopes, rate)
            key = next(k for k in store.list() if k.name == args.name)
            if args.json:
                emit_json({**key.to_dict(), "key": secret})
            else:
                print(secret)
                print(
                    f"key '{key.name}' ({key.id}): scopes {','.join(scopes)}, rate {rate}. "
                    "It is shown only now: store it in a secret manager.",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            rows = [k.to_dict() for k in store.list()]
            if args.json:
                emit_json({"keys": rows})
            for r in [] if args.json else rows:
                state = "revoked" if r["revoked"] else "active"
                scopes = ",".join(r["scopes"])
                print(f"{r['id']}  {r['name']:<20} {scopes:<16} {r['rate']:<12} {state}")
            if not rows and not args.json:
                print("no keys; make one with `embedscope keys create NAME --scopes read`")
        else:
            key = store.revoke(args.name)
            if args.json:
                emit_json(key.to_dict())
            else:
                print(f"key '{key.name}' ({key.id}) revoked")
    finally:
        store.close()
    return 0


@command("serve")
async def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvicorn

    from engine.serve.app import ServeOptions, create_app, is_loopback

    if (args.tls_cert is None) != (args.tls_key is None):
        raise BadRequestError("give both --tls-cert and --tls-key, or neither")
    store = key_store(config)
    try:
        have_keys = store.any()
    finally:
        store.close()
    loopback = is_loopback(args.host)
    if not loopback and not have_keys:
        raise BadRequestError(
            f"refusing to serve on {args.host} without an API key: anyone who can reach it could "
            "use it. Make a key first (`embedscope keys create NAME --scopes read`), or bind "
            f"{DEFAULT_HOST}"
        )
    if not loopback and args.tls_cert is None:
        print(
            f"embedscope serve: warning: serving {args.host} without TLS; keys and texts cross "
            "the network in clear. Pass --tls-cert and --tls-key.",
            file=sys.stderr,
        )
    known = Engine(config).indexes.names()
    for name in args.indexes:
        if name not in known:
            raise IndexNotFoundError(
                f"no index named '{name}' to serve (indexes: {', '.join(known) or 'none'}); "
                f"create it with `embedscope index PATH --name {name}`"
            )
    options = ServeOptions(
        config,
        host=args.host,
        indexes=tuple(args.indexes),
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    scheme = "https" if args.tls_cert else "http"
    access = (
        "API keys required"
        if have_keys
        else "open: no API key exists, so no key is asked for (loopback only)"
    )
    print(f"embedscope serve: {scheme}://{args.host}:{args.port} ({access})", file=sys.stderr)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(options),
            host=args.host,
            port=args.port,
            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
            log_level="warning",
            access_log=False,
        )
    )
    await server.serve()
    return 0
