"""The `finetune` command, imported when it runs (its arguments are declared in
`engine.cli_parsers`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from engine.cli import command, emit_json
from engine.cli_parsers import add_finetune_parser
from engine.config import Config
from engine.models import ModelRegistry
from engine.training.finetune import (
    CancelToken,
    FinetuneError,
    FinetuneProgress,
    beir_pairs,
    finetune,
    read_pairs,
)


def add_parsers(sub: Any) -> None:
    """The command's arguments, declared in `engine.cli_parsers` (see there why)."""
    add_finetune_parser(sub)


def _plan(args: argparse.Namespace) -> tuple[str, Path | None, str]:
    """Loss, evaluation dataset and evaluation split, with the options' mistakes named."""
    if (args.pairs is None) == (args.split is None):
        raise FinetuneError(
            "give training data either as --pairs FILE or as --dataset DIR --split train"
        )
    if args.split is not None and args.dataset is None:
        raise FinetuneError("--split needs --dataset DIR (a BEIR folder)")
    if args.eval_split is not None and args.dataset is None:
        raise FinetuneError("--eval-split needs --dataset DIR (a BEIR folder)")
    eval_split = args.eval_split or "test"
    if args.split is not None and eval_split == args.split:
        raise FinetuneError(
            f"--eval-split {eval_split} is the training split; score on held-out data "
            "(e.g. --split train --eval-split test)"
        )
    loss = args.loss or ("cosine" if args.pairs is not None else "mnrl")
    if args.split is not None and loss == "cosine":
        raise FinetuneError(
            "BEIR pairs are all positives (label 1.0), so the cosine loss learns nothing from "
            "them; use --loss mnrl"
        )
    return loss, args.dataset, eval_split


class _StderrProgress:
    """One redrawn line on a terminal, a line per phase otherwise; stdout stays clean for --json."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, p: FinetuneProgress) -> None:
        done = p.step >= p.total
        now = time.monotonic()
        if not done and (not self.tty or now - self._last < 0.2):
            return
        self._last = now
        loss = f" loss {p.loss:.4f}" if p.loss is not None else ""
        text = f"{p.phase} {p.step}/{p.total}{loss}"
        sys.stderr.write(f"\r{text:<60}" + ("\n" if done else "") if self.tty else text + "\n")
        sys.stderr.flush()


@command("finetune")
async def cmd_finetune(args: argparse.Namespace, config: Config) -> int:
    loss, eval_dataset, eval_split = _plan(args)
    if args.pairs is not None:
        pairs = read_pairs(args.pairs, need_labels=loss == "cosine")
        source = str(args.pairs.resolve())
    else:
        pairs = beir_pairs(args.dataset, args.split)
        source = f"{args.dataset.resolve()} ({args.split})"
    registry = ModelRegistry(config)
    cancel = CancelToken()
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(
        None,
        lambda: finetune(
            registry,
            args.base,
            pairs,
            data_source=source,
            loss=loss,
            epochs=args.epochs,
            batch_size=args.batch_size,
            name=args.name,
            eval_dataset=eval_dataset,
            eval_split=eval_split,
            eval_max_docs=args.eval_max_docs,
            learning_rate=args.lr,
            threads=args.threads,
            progress=_StderrProgress(),
            cancel=cancel,
        ),
    )
    try:
        result = await job
    except asyncio.CancelledError:
        # Ctrl-C cancels this task; the training thread stops at its next step, saving nothing.
        cancel.cancel()
        raise
    lineage = result.lineage
    if args.json:
        emit_json({"name": result.name, "folder": str(result.folder), "lineage": lineage})
        return 0
    print(
        f"fine-tuned '{result.name}' from {args.base} in {lineage['seconds']:.0f}s "
        f"({lineage['steps']} steps, training {lineage['train_seconds']:.0f}s)"
    )
    print(f"  {result.metric}: {result.before:.4f} before, {result.after:.4f} after")
    print(f"  saved to {result.folder}; listed by `embedscope models`")
    return 0
