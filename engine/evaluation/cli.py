"""The `eval`, `eval-index` and `eval-sts` commands, imported when one of them runs (their
arguments are declared in `engine.cli_parsers`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from engine.cli import command, emit_json
from engine.cli_parsers import add_eval_parsers

if TYPE_CHECKING:
    from engine.config import Config
    from engine.evaluation.measure import EvalProgress
    from engine.evaluation.runs import EvalRun

FIGURES = ("query_p50_ms", "query_p95_ms", "docs_per_s", "memory_mb", "cost_per_1k")


def add_parsers(sub: Any) -> None:
    """The commands' arguments, declared in `engine.cli_parsers` (see there why)."""
    add_eval_parsers(sub)


def _models(args: argparse.Namespace, config: Config) -> list[str]:
    names = [n.strip() for n in (args.models or config.default_model).split(",") if n.strip()]
    if not names:
        raise ValueError("--models needs at least one model name, e.g. --models minilm,mpnet")
    if len(set(names)) != len(names):
        raise ValueError(f"--models names a model twice: {args.models}")
    return names


def _use_case_override(args: argparse.Namespace, config: Config) -> str | None:
    if args.use_case is None:
        return None
    from engine.evaluation.scoring import load_use_cases

    known = load_use_cases(config)
    if args.use_case not in known:
        raise ValueError(
            f"unknown use case '{args.use_case}' (known: {', '.join(sorted(known))}); "
            "add it under `use_cases:` in your config"
        )
    return args.use_case


class _StderrProgress:
    """A live line on a terminal, one line per phase otherwise; stdout stays clean for --json."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, str] | None = None

    def __call__(self, p: EvalProgress) -> None:
        text = f"[{p.model}] {p.phase} {p.done}/{p.total}"
        if self.tty:
            end = "\n" if p.done >= p.total else ""
            sys.stderr.write(f"\r{text}{end}")
        elif p.done >= p.total:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _summary(run: EvalRun, keys: tuple[str, ...], use_case: str | None) -> dict[str, Any]:
    ranking = run.ranking if use_case is None else {use_case: run.ranking[use_case]}
    return {
        "dataset": run.dataset,
        "split": run.split,
        "models": {
            name: {k: figures.get(k) for k in (*keys, *FIGURES)}
            for name, figures in run.models.items()
        },
        "ranking": ranking,
    }


def _print_table(summary: dict[str, Any], keys: tuple[str, ...], run: EvalRun) -> None:
    heads = [*keys, "p50 ms", "p95 ms", "docs/s", "MB", "$/1k req"]
    names = list(summary["models"])
    width = max(5, *(len(n) for n in names))
    print(f"{run.kind} evaluation of {summary['dataset']} ({summary['split']})")
    print(f"{'model':<{width}}  " + "  ".join(f"{h:>10}" for h in heads))
    for name in names:
        row = summary["models"][name]
        cells = [f"{row[k]:>10.4f}" for k in keys]
        cells += [f"{row[k]:>10.1f}" if row[k] is not None else f"{'-':>10}" for k in FIGURES[:4]]
        cells.append(f"{row['cost_per_1k']:>10.4f}")
        print(f"{name:<{width}}  " + "  ".join(cells))
    print()
    scores = run.data.get("scores", {})
    for case, order in summary["ranking"].items():
        ranked = ", ".join(f"{n} ({scores.get(case, {}).get(n, 0):.3f})" for n in order)
        print(f"{case}: {ranked}")
    print(f"\nsaved to {run.path}")


@command("eval")
async def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    from engine.engine import Engine
    from engine.evaluation.retrieval import METRICS, run_retrieval_eval

    models = _models(args, config)
    use_case = _use_case_override(args, config)
    async with Engine(config) as engine:
        run = await run_retrieval_eval(
            engine,
            args.dataset,
            models,
            split=args.split,
            limit_queries=args.limit_queries,
            progress=_StderrProgress(),
        )
    keys = tuple(METRICS)
    summary = _summary(run, keys, use_case)
    if args.json:
        emit_json(summary)
    else:
        _print_table(summary, keys, run)
    return 0


@command("eval-index")
async def cmd_eval_index(args: argparse.Namespace, config: Config) -> int:
    from engine.engine import Engine
    from engine.evaluation.beir import load_beir
    from engine.evaluation.index_eval import INDEX_METRICS, K, evaluate_index
    from engine.evaluation.measure import EvalProgress
    from engine.index.search import check_mode

    modes = [check_mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    dataset = load_beir(args.dataset, args.split, limit_queries=args.limit_queries)
    progress = _StderrProgress()
    async with Engine(config) as engine:
        index = await engine.indexes.open(args.name)
        figures = await evaluate_index(
            index,
            dataset,
            modes,
            lambda mode, done, total: progress(EvalProgress(args.name, mode, done, total)),
        )
    payload = {
        "dataset": dataset.name,
        "split": args.split,
        "index": args.name,
        "per": "document",
        "k": K,
        "queries": len(dataset.query_ids),
        "modes": figures,
    }
    if args.json:
        emit_json(payload)
        return 0
    heads = [*INDEX_METRICS, "docs/query", "short"]
    print(f"index '{args.name}' on {dataset.name} ({args.split}), {K} documents per query")
    print(f"{'mode':<8}  " + "  ".join(f"{h:>10}" for h in heads))
    for mode, row in figures.items():
        cells = [f"{row[m]:>10.4f}" for m in INDEX_METRICS]
        cells += [f"{row['documents_per_query']:>10.2f}", f"{row['queries_short_of_10']:>10}"]
        print(f"{mode:<8}  " + "  ".join(cells))
    return 0


@command("eval-sts")
async def cmd_eval_sts(args: argparse.Namespace, config: Config) -> int:
    from engine.engine import Engine
    from engine.evaluation.sts import run_sts_eval

    models = _models(args, config)
    use_case = _use_case_override(args, config)
    async with Engine(config) as engine:
        run = await run_sts_eval(
            engine, args.file, models, limit=args.limit, progress=_StderrProgress()
        )
    summary = _summary(run, ("spearman",), use_case)
    if args.json:
        emit_json(summary)
    else:
        _print_table(summary, ("spearman",), run)
    return 0
