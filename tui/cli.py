"""The `embedscope` console script: no command opens the app, any command runs in the engine."""

from __future__ import annotations

import sys

from engine.cli import build_parser, run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is not None:
        return run(args)
    from tui.app import EmbedscopeApp

    app = EmbedscopeApp(
        config_path=args.config,
        corpus=args.corpus,
        index_name=args.index_name,
        serve=(args.app_host, args.app_port) if args.serve else None,
    )
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
