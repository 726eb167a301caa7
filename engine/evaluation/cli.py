"""The `eval` and `eval-sts` commands; `engine.cli.build_parser` adds them via `add_parsers`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli import command, emit_json
from engine.config import Config
from engine.engine import Engine
from engine.evaluation.measure import EvalProgress
from engine.evaluation.retrieval import METRICS
from engine.evaluation.runs import EvalRun
from engine.evaluation.scoring import load_use_cases

FIGURES = ("query_p50_ms", "query_p95_ms", "docs_per_s", "memory_mb", "cost_per_1k")


def add_parsers(sub: Any) -> None:
    """Register both commands' arguments on the main parser's subparsers."""
    p = sub.add_parser("eval", help="score models on a BEIR-layout retrieval dataset")
    p.add_argument("--dataset", type=Path, required=True, help="folder with corpus.jsonl, …")
    p.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (default test)")
    p.add_argument(
        "--limit-queries", type=int, metavar="N", help="evaluate only the first N queries"
    )
    _common(p)

    p = sub.add_parser(
        "eval-index", help="score a named index's document search on a BEIR-layout dataset"
    )
    p.add_argument("--dataset", type=Path, required=True, help="folder with corpus.jsonl, …")
    p.add_argument(
        "--name", "-n", required=True, help="an index built from the dataset's corpus.jsonl"
    )
    p.add_argument("--split", default="test", help="qrels/<split>.tsv to evaluate (default test)")
    p.add_argument(
        "--limit-queries", type=int, metavar="N", help="evaluate only the first N queries"
    )
    p.add_argument(
        "--modes", default="hybrid,vector,keyword", help="comma-separated search modes"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("eval-sts", help="score models on an STS tsv file (Spearman)")
    p.add_argument("--file", type=Path, required=True, help="an sts-*.tsv file")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N pairs")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", "-m", help="comma-separated model names (default: default_model)")
    p.add_argument("--use-case", help="rank for this use case only (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document")


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
    from engine.evaluation.retrieval import run_retrieval_eval

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
    from engine.evaluation.beir import load_beir
    from engine.evaluation.index_eval import INDEX_METRICS, K, evaluate_index
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
