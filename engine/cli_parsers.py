"""Arguments of the commands whose code lives in other packages: `eval`, `eval-index`,
`eval-sts` (engine/evaluation/cli.py) and `finetune` (engine/training/cli.py).

Every command builds the whole parser, and importing either package loads all of it; declared
here, they cost a cold `search` nothing. `engine.cli.run` imports a command's module when it runs
(`HANDLERS`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Command -> the module whose `@command` handler runs it.
HANDLERS = {
    "eval": "engine.evaluation.cli",
    "eval-index": "engine.evaluation.cli",
    "eval-sts": "engine.evaluation.cli",
    "finetune": "engine.training.cli",
}
# engine.training.finetune.LOSSES (tests check they agree).
FINETUNE_LOSSES = ("cosine", "mnrl")


def add_eval_parsers(sub: Any) -> None:
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


def add_finetune_parser(sub: Any) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on JSONL pairs or a BEIR train split; saved and registered",
    )
    p.add_argument("--base", required=True, help="a declared sentence-transformers model")
    p.add_argument("--pairs", type=Path, help='JSONL: {"text1": …, "text2": …, "label": 0.8}')
    p.add_argument("--dataset", type=Path, help="a BEIR folder (for --split, --eval-split)")
    p.add_argument("--split", help="train on this BEIR qrels split as query-passage pairs")
    p.add_argument("--eval-split", help="score on this BEIR split (default test with --dataset)")
    p.add_argument(
        "--eval-max-docs",
        type=int,
        metavar="N",
        help="score against the judged documents plus others up to N (default: whole corpus)",
    )
    p.add_argument(
        "--loss", choices=FINETUNE_LOSSES, help="default: cosine for pairs, mnrl for --split"
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5, help="learning rate (default 2e-5)")
    p.add_argument("--name", help="the new model's name (default: BASE-ft-TIMESTAMP)")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 is faster on busy CPUs)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
