"""One peer (txtai or chromadb) through the peer benchmark's steps; prints one JSON object.

Usage (bench_peers.py runs this inside the peers' own virtualenv):
    .cache/peers-venv/bin/python benchmarks/peers_worker.py --system txtai --spec SPEC --work DIR

Each system runs in its own process so its peak memory is its own. The worker only measures and
returns raw rankings; bench_peers.py scores them (ir-measures, in the project's venv), so every
system is judged by the same code. Only the standard library is imported at module level:
bench_peers.py imports the shared helpers below without txtai or chromadb installed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One query's results: document id -> score, best first.
Ranking = dict[str, float]


def document_text(doc: dict[str, Any]) -> str:
    """Title + text, exactly as BEIR and `embedscope eval` build a document."""
    return (str(doc.get("title") or "") + " " + str(doc.get("text") or "")).strip()


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_queries(
    search: Callable[[str], Ranking], queries: list[dict[str, str]], warmup: list[str]
) -> tuple[dict[str, Ranking], list[float]]:
    """Warm latency: untimed queries the measured set never repeats (so no system gets a cache
    hit for free), then each measured query once."""
    for text in warmup:
        search(text)
    run: dict[str, Ranking] = {}
    times: list[float] = []
    for query in queries:
        started = time.perf_counter()
        run[query["_id"]] = search(query["text"])
        times.append((time.perf_counter() - started) * 1000)
    return run, times


def updated_docs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents whose text the update step changes, with their new text."""
    changed = spec["updates"]
    return [{**d, "text": changed[d["_id"]]} for d in spec["docs"] if d["_id"] in changed]


def run_txtai(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    from txtai import Embeddings

    field, value = spec["filter"]["field"], spec["filter"]["value"]

    def rows(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"id": d["_id"], "text": document_text(d), field: d[field]} for d in docs]

    folder = work / "txtai-index"
    started = time.perf_counter()
    # maxlength=True reads the model's own window (256), as the others use; txtai's default is
    # the tokenizer's 512, which MiniLM was not trained for.
    embeddings = Embeddings(path=spec["model_path"], content=True, maxlength=True)
    load_s = time.perf_counter() - started

    def build(docs: list[dict[str, Any]], upsert: bool = False) -> float:
        started = time.perf_counter()
        (embeddings.upsert if upsert else embeddings.index)(rows(docs))
        embeddings.save(str(folder))
        return time.perf_counter() - started

    build_s = build(spec["docs"])
    disk = folder_bytes(folder)
    k = spec["k"]

    def search(text: str) -> Ranking:
        return {r["id"]: float(r["score"]) for r in embeddings.search(text, k)}

    sql = f"select id, score from txtai where similar(:q) and [{field}] = :v"

    def filtered(text: str) -> Ranking:
        hits = embeddings.search(sql, k, parameters={"q": text, "v": value})
        return {r["id"]: float(r["score"]) for r in hits}

    run, times = time_queries(search, spec["queries"], spec["warmup"])
    filtered_run = {q["_id"]: filtered(q["text"]) for q in spec["queries"]}
    return {
        "version": version("txtai"),
        "load_s": load_s,
        "build_s": build_s,
        "query_ms": times,
        "run": run,
        "filtered_run": filtered_run,
        "disk_bytes": disk,
        # The user's path to a re-index: run the same script again (txtai re-embeds all).
        "reindex_unchanged_s": build(spec["docs"]),
        "update_s": build(updated_docs(spec), upsert=True),
        "documents_after_update": embeddings.count(),
        "disk_bytes_after_update": folder_bytes(folder),
    }


def run_chromadb(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings
    from chromadb.utils.embedding_functions import SentenceTransformerEmbeddingFunction

    field, value = spec["filter"]["field"], spec["filter"]["value"]
    folder = work / "chroma-db"
    started = time.perf_counter()
    # Chroma's default function fetches an ONNX model; this one reads the same local folder.
    function = SentenceTransformerEmbeddingFunction(
        model_name=spec["model_path"], device="cpu", normalize_embeddings=True
    )
    client = chromadb.PersistentClient(
        path=str(folder), settings=Settings(anonymized_telemetry=False)
    )
    collection = client.create_collection(
        "bench", embedding_function=function, configuration={"hnsw": {"space": "cosine"}}
    )
    load_s = time.perf_counter() - started
    batch = client.get_max_batch_size()

    def build(docs: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        for at in range(0, len(docs), batch):
            part = docs[at : at + batch]
            collection.upsert(
                ids=[d["_id"] for d in part],
                documents=[document_text(d) for d in part],
                metadatas=[{field: d[field]} for d in part],
            )
        return time.perf_counter() - started

    build_s = build(spec["docs"])
    disk = folder_bytes(folder)
    k = spec["k"]

    def query(text: str, where: dict[str, str] | None) -> Ranking:
        found = collection.query(query_texts=[text], n_results=k, where=where)
        # Cosine distance is 1 - cosine similarity.
        pairs = zip(found["ids"][0], found["distances"][0], strict=True)
        return {i: 1.0 - float(d) for i, d in pairs}

    run, times = time_queries(lambda t: query(t, None), spec["queries"], spec["warmup"])
    filtered_run = {q["_id"]: query(q["text"], {field: value}) for q in spec["queries"]}
    return {
        "version": version("chromadb"),
        "load_s": load_s,
        "build_s": build_s,
        "query_ms": times,
        "run": run,
        "filtered_run": filtered_run,
        "disk_bytes": disk,
        # The user's path to a re-index: upsert everything again (chroma re-embeds all).
        "reindex_unchanged_s": build(spec["docs"]),
        "update_s": build(updated_docs(spec)),
        "documents_after_update": collection.count(),
        "disk_bytes_after_update": folder_bytes(folder),
    }


SYSTEMS = {"txtai": run_txtai, "chromadb": run_chromadb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    p.add_argument("--spec", type=Path, required=True, help="the run's spec.json")
    p.add_argument("--work", type=Path, required=True, help="an empty folder for this system")
    args = p.parse_args()
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    args.work.mkdir(parents=True, exist_ok=True)
    result = SYSTEMS[args.system](spec, args.work)
    result["peak_rss_bytes"] = peak_rss_bytes()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
