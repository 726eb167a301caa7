"""Fine-tune a sentence-transformers model on domain pairs; score it before and after, held out.

A plain torch loop over the model and the sentence-transformers loss objects: the library's trainer
needs the `datasets` package, which this project does not ship. Every input is checked before torch
loads, so a typo in the pairs file costs milliseconds, not a model load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.cancel import CancelToken
from engine.evaluation.beir import BeirDataset, load_beir
from engine.models.registry import FINETUNED, LINEAGE

if TYPE_CHECKING:
    from engine.models import ModelRegistry

LOSSES = ("cosine", "mnrl")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EXAMPLE = '{"text1": "...", "text2": "...", "label": 0.8}'
# Below this, a 10% held-out split has too few pairs to score anything.
MIN_PAIRS = 10
HELD_OUT = 0.1
ENCODE_BLOCK = 256
VERSIONED = ("sentence-transformers", "transformers", "torch", "tokenizers", "numpy")


class FinetuneError(ValueError):
    """Fine-tuning input is unusable; the message names the file, line or option and the fix."""


class FinetuneCancelled(RuntimeError):
    """Raised at the first step boundary after a cancel; nothing is saved."""


@dataclass(frozen=True)
class Pair:
    text1: str
    text2: str
    label: float | None = None


@dataclass(frozen=True)
class FinetuneProgress:
    phase: str  # "eval-before", "train", "eval-after" or "saving"
    step: int
    total: int
    loss: float | None = None


ProgressFn = Callable[[FinetuneProgress], None]


@dataclass(frozen=True)
class FinetuneResult:
    name: str
    folder: Path
    lineage: dict[str, Any]

    @property
    def metric(self) -> str:
        return str(self.lineage["evaluation"]["metric"])

    @property
    def before(self) -> float:
        return float(self.lineage["evaluation"]["before"][self.metric])

    @property
    def after(self) -> float:
        return float(self.lineage["evaluation"]["after"][self.metric])


def read_pairs(path: Path, *, need_labels: bool) -> list[Pair]:
    """JSONL pairs, one object per line; every fault names its line."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(
            f"pairs file {path} not found; give a JSONL file with one {EXAMPLE} per line"
        )
    pairs: list[Pair] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FinetuneError(
                    f"{where}: not valid JSON ({exc.msg}); each line must be one object like "
                    f"{EXAMPLE}"
                ) from None
            if not isinstance(row, dict):
                raise FinetuneError(f"{where}: expected a JSON object like {EXAMPLE}")
            for key in ("text1", "text2"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise FinetuneError(f"{where}: '{key}' must be a non-empty string")
            label = row.get("label")
            if label is None and need_labels:
                raise FinetuneError(
                    f"{where}: missing 'label' (a float similarity, e.g. 0.0 to 1.0), which the "
                    "cosine loss needs; add labels or use --loss mnrl"
                )
            if label is not None and (
                isinstance(label, bool)
                or not isinstance(label, int | float)
                or not math.isfinite(label)
            ):
                raise FinetuneError(f"{where}: 'label' must be a number, got {label!r}")
            pairs.append(Pair(row["text1"], row["text2"], None if label is None else float(label)))
    if not pairs:
        raise FinetuneError(f"pairs file {path} holds no pairs")
    return pairs


def beir_pairs(dataset: Path, split: str = "train") -> list[Pair]:
    """Query-passage pairs from a BEIR split's positive judgments (passage = title + text)."""
    data = load_beir(Path(dataset), split)
    texts = dict(zip(data.doc_ids, data.doc_texts, strict=True))
    pairs: list[Pair] = []
    for qid, query in zip(data.query_ids, data.query_texts, strict=True):
        for doc_id, grade in data.qrels[qid].items():
            if grade <= 0:
                continue
            if doc_id not in texts:
                raise FinetuneError(
                    f"{data.path}/qrels/{split}.tsv: query '{qid}' judges document '{doc_id}', "
                    "which is not in corpus.jsonl"
                )
            pairs.append(Pair(query, texts[doc_id], 1.0))
    if not pairs:
        raise FinetuneError(f"{data.path}/qrels/{split}.tsv has no positive judgments to train on")
    return pairs


def pairs_digest(pairs: Sequence[Pair]) -> str:
    """sha256 of the pairs as canonical JSON lines: the same data gives the same digest."""
    digest = hashlib.sha256()
    for p in pairs:
        row = {"text1": p.text1, "text2": p.text2, "label": p.label}
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def _batches(
    pairs: Sequence[Pair], size: int, rng: random.Random, *, unique: bool
) -> list[list[Pair]]:
    """Shuffled batches; with `unique`, no text repeats inside a batch, because an in-batch
    negative that equals the positive (one query, two relevant passages) teaches the wrong thing."""
    order = list(pairs)
    rng.shuffle(order)
    if not unique:
        return [order[i : i + size] for i in range(0, len(order), size)]
    batches: list[list[Pair]] = []
    while order:
        batch: list[Pair] = []
        seen: set[str] = set()
        deferred: list[Pair] = []
        for p in order:
            if len(batch) < size and p.text1 not in seen and p.text2 not in seen:
                batch.append(p)
                seen.update((p.text1, p.text2))
            else:
                deferred.append(p)
        batches.append(batch)
        order = deferred
    return batches


def _encode(
    model: Any,
    texts: list[str],
    phase: str,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
) -> np.ndarray:
    blocks = []
    for start in range(0, len(texts), ENCODE_BLOCK):
        _check_cancel(cancel)
        blocks.append(
            model.encode(
                texts[start : start + ENCODE_BLOCK],
                batch_size=32,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        )
        if progress:
            progress(FinetuneProgress(phase, min(start + ENCODE_BLOCK, len(texts)), len(texts)))
    return np.ascontiguousarray(np.concatenate(blocks), dtype=np.float32)


def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise FinetuneCancelled("fine-tuning cancelled; nothing was saved")


@dataclass(frozen=True)
class _Evaluator:
    """Held-out scoring: nDCG@10 on a BEIR split, or the 10% of the pairs kept out of training."""

    kind: str
    metric: str
    held_out: list[Pair]
    dataset: BeirDataset | None = None
    doc_ids: tuple[str, ...] = ()
    doc_texts: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        if self.dataset is None:
            return {"kind": self.kind, "metric": self.metric, "held_out_pairs": len(self.held_out)}
        return {
            "kind": self.kind,
            "metric": self.metric,
            "dataset": str(self.dataset.path.resolve()),
            "split": self.dataset.split,
            "queries": len(self.dataset.query_ids),
            "documents": len(self.doc_ids),
        }

    def score(
        self, model: Any, phase: str, progress: ProgressFn | None, cancel: CancelToken | None
    ) -> dict[str, float]:
        if self.dataset is not None:
            from engine.evaluation.retrieval import exhaustive_top_k, score_run, to_run

            docs = _encode(model, list(self.doc_texts), phase, progress, cancel)
            queries = _encode(model, self.dataset.query_texts, phase, None, cancel)
            idx, scores = exhaustive_top_k(queries, docs)
            run = to_run(self.dataset.query_ids, list(self.doc_ids), idx, scores)
            return score_run(self.dataset.qrels, run)
        left = _encode(model, [p.text1 for p in self.held_out], phase, None, cancel)
        right = _encode(model, [p.text2 for p in self.held_out], phase, progress, cancel)
        if self.metric == "spearman":
            from scipy.stats import spearmanr

            cosines = np.sum(left * right, axis=1)
            labels = [p.label for p in self.held_out]
            return {"spearman": float(spearmanr(cosines, labels).statistic)}
        hits = np.argmax(left @ right.T, axis=1) == np.arange(len(self.held_out))
        return {"pair_accuracy@1": float(np.mean(hits))}


def _evaluator(
    pairs: list[Pair],
    rng: random.Random,
    eval_dataset: Path | None,
    eval_split: str,
    eval_max_docs: int | None,
) -> tuple[_Evaluator, list[Pair]]:
    """The evaluator and the pairs left to train on."""
    if eval_dataset is not None:
        data = load_beir(Path(eval_dataset), eval_split)
        doc_ids, doc_texts = data.doc_ids, data.doc_texts
        if eval_max_docs is not None:
            if eval_max_docs < 1:
                raise FinetuneError(f"--eval-max-docs must be at least 1, got {eval_max_docs}")
            # Every judged document stays, so the restricted score is still a fair comparison.
            judged = {d for q in data.qrels.values() for d in q}
            keep = [i for i, d in enumerate(doc_ids) if d in judged]
            others = [i for i, d in enumerate(doc_ids) if d not in judged]
            keep = sorted(keep + others[: max(0, eval_max_docs - len(keep))])
            doc_ids = [doc_ids[i] for i in keep]
            doc_texts = [doc_texts[i] for i in keep]
        evaluator = _Evaluator("beir", "ndcg@10", [], data, tuple(doc_ids), tuple(doc_texts))
        return evaluator, pairs
    if len(pairs) < MIN_PAIRS:
        raise FinetuneError(
            f"{len(pairs)} pairs are too few: at least {MIN_PAIRS} are needed, because "
            f"{HELD_OUT:.0%} are held out to score the model before and after (or evaluate on a "
            "BEIR dataset with --dataset DIR --eval-split test)"
        )
    order = list(pairs)
    rng.shuffle(order)
    n_held = max(3, round(len(order) * HELD_OUT))
    held, train = order[:n_held], order[n_held:]
    labels = {p.label for p in held}
    metric = "spearman" if None not in labels and len(labels) > 1 else "pair_accuracy@1"
    return _Evaluator("held-out", metric, held), train


def _check_name(registry: ModelRegistry, base: str, name: str | None) -> tuple[str, Path]:
    if name is None:
        name = f"{base}-ft-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    if not NAME_PATTERN.fullmatch(name):
        raise FinetuneError(
            f"model name {name!r} is not usable: use letters, digits, '.', '_' or '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    target = registry.models_dir / FINETUNED / name
    if name in registry.names() or target.exists():
        raise FinetuneError(
            f"a model named '{name}' already exists; choose another --name"
            + (f" or delete {target}" if target.exists() else "")
        )
    return name, target


def finetune(
    registry: ModelRegistry,
    base: str,
    pairs: list[Pair],
    *,
    data_source: str,
    loss: str = "cosine",
    epochs: int = 1,
    batch_size: int = 16,
    name: str | None = None,
    eval_dataset: Path | None = None,
    eval_split: str = "test",
    eval_max_docs: int | None = None,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> FinetuneResult:
    """Train `base` on `pairs`, score it before and after, save it with its lineage and register
    it. Blocking (torch runs here): call it from a worker thread in async code.

    `threads` sets torch's CPU threads for this run only: on a 2-core machine shared with other
    work, 1 thread measured 3x faster per step than 2 threads spin-waiting on each other.
    """
    if threads is not None and threads < 1:
        raise FinetuneError(f"threads must be at least 1, got {threads}")
    if loss not in LOSSES:
        raise FinetuneError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if epochs < 1 or batch_size < (2 if loss == "mnrl" else 1):
        raise FinetuneError(
            f"epochs must be >= 1 and batch size >= {2 if loss == 'mnrl' else 1} (the mnrl loss "
            f"needs in-batch negatives); got epochs={epochs}, batch size={batch_size}"
        )
    if not 0 < learning_rate < 1 or not 0 <= warmup_ratio < 1:
        raise FinetuneError("learning rate must be in (0, 1) and warmup ratio in [0, 1)")
    if loss == "cosine" and any(p.label is None for p in pairs):
        raise FinetuneError("the cosine loss needs a 'label' on every pair; or use --loss mnrl")
    spec = registry.spec(base)
    if spec.kind != "sentence-transformers":
        raise FinetuneError(
            f"model '{base}' is a {spec.kind} model; fine-tuning needs a sentence-transformers "
            f"model (one of: {', '.join(n for n in registry.names() if n != base)})"
        )
    name, target = _check_name(registry, base, name)
    rng = random.Random(seed)
    evaluator, train = _evaluator(pairs, rng, eval_dataset, eval_split, eval_max_docs)
    folder = registry.resolve_folder(spec)
    base_fp = registry.fingerprint(spec, folder)
    started = time.perf_counter()

    with _torch_threads(threads):
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.losses import (
            CosineSimilarityLoss,
            MultipleNegativesRankingLoss,
        )
        from sentence_transformers.util import batch_to_device

        from engine.models.local import pick_device

        torch.manual_seed(seed)
        device = pick_device(registry.config.device)
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        model.max_seq_length = base_fp.max_seq_length
        model.eval()
        before = evaluator.score(model, "eval-before", progress, cancel)
        eval_seconds = time.perf_counter() - started

        criterion = (
            MultipleNegativesRankingLoss(model) if loss == "mnrl" else CosineSimilarityLoss(model)
        )
        plan = [
            b
            for _ in range(epochs)
            for b in _batches(train, batch_size, rng, unique=loss == "mnrl")
        ]
        warmup = int(len(plan) * warmup_ratio)
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                (step + 1) / (warmup + 1)
                if step < warmup
                else max(0.0, (len(plan) - step) / max(1, len(plan) - warmup))
            ),
        )
        train_started = time.perf_counter()
        losses: list[float] = []
        model.train()
        for step, batch in enumerate(plan, 1):
            _check_cancel(cancel)
            features = [
                batch_to_device(model.preprocess([p.text1 for p in batch]), model.device),
                batch_to_device(model.preprocess([p.text2 for p in batch]), model.device),
            ]
            labels = torch.tensor([p.label or 0.0 for p in batch], device=model.device)
            value = criterion(features, labels)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(float(value.detach()))
            if progress:
                progress(FinetuneProgress("train", step, len(plan), losses[-1]))
        train_seconds = time.perf_counter() - train_started
        model.eval()
        after = evaluator.score(model, "eval-after", progress, cancel)
        _check_cancel(cancel)

        if progress:
            progress(FinetuneProgress("saving", 0, 1))
        metric = evaluator.metric
        lineage = {
            "name": name,
            "base": base,
            "base_weights_digest": base_fp.weights_digest,
            "base_location": str(folder),
            "data": {
                "source": data_source,
                "digest": pairs_digest(train),
                "training_pairs": len(train),
            },
            "loss": loss,
            "epochs": epochs,
            "batch_size": batch_size,
            "steps": len(plan),
            "learning_rate": learning_rate,
            "warmup_ratio": warmup_ratio,
            "seed": seed,
            "threads": threads,
            "device": device,
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "evaluation": {**evaluator.describe(), "before": before, "after": after},
            "train_seconds": round(train_seconds, 2),
            "eval_seconds_before": round(eval_seconds, 2),
            "seconds": round(time.perf_counter() - started, 2),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {pkg: version(pkg) for pkg in VERSIONED},
            "description": (
                f"fine-tuned from {base} on {data_source} ({loss}, {epochs} epoch(s)); "
                f"{metric} {before[metric]:.4f} -> {after[metric]:.4f}"
            ),
        }
        _save(model, target, lineage)
        registry.scan_finetuned()
        if progress:
            progress(FinetuneProgress("saving", 1, 1))
        return FinetuneResult(name, target, lineage)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count is process-wide: restore it so the app's own models are unaffected."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _save(model: Any, target: Path, lineage: dict[str, Any]) -> None:
    """Model and lineage appear together or not at all: the registry trusts any lineage.json."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save(str(staging), create_model_card=False)
        (staging / LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
        os.replace(staging, target)
    except OSError as exc:
        raise FinetuneError(f"cannot save the fine-tuned model to {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
