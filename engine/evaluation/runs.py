"""Evaluation runs saved as JSON under `<data_dir>/evals/`, so the Compare pane can show history."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LIBRARIES = ("embedscope", "sentence-transformers", "torch", "faiss-cpu", "ir-measures", "numpy")
REQUIRED = ("kind", "dataset", "created", "models", "ranking")


class RunError(ValueError):
    """A run file cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class EvalRun:
    path: Path
    kind: str
    dataset: str
    split: str | None
    created: float
    models: dict[str, dict[str, Any]]
    ranking: dict[str, list[str]]
    data: dict[str, Any]


def evals_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "evals"


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def save_run(data_dir: Path, payload: dict[str, Any]) -> Path:
    """Atomic write (temp file, fsync, rename): a crash leaves the old state, never half a run."""
    folder = evals_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    created = float(payload.setdefault("created", time.time()))
    payload.setdefault("date", datetime.fromtimestamp(created, UTC).isoformat())
    payload.setdefault("schema", SCHEMA_VERSION)
    payload.setdefault("versions", library_versions())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(payload.get("dataset", "run")))[:40]
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{stamp}-{payload.get('kind', 'eval')}-{slug}-{uuid.uuid4().hex[:6]}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_run(path: Path) -> EvalRun:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read evaluation run {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"evaluation run {path} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise RunError(f"evaluation run {path} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise RunError(f"evaluation run {path} lacks {', '.join(missing)}")
    if not isinstance(data["models"], dict) or not isinstance(data["ranking"], dict):
        raise RunError(f"evaluation run {path}: 'models' and 'ranking' must be objects")
    if not isinstance(data["created"], int | float):
        raise RunError(f"evaluation run {path}: 'created' must be a unix time")
    return EvalRun(
        path=path,
        kind=str(data["kind"]),
        dataset=str(data["dataset"]),
        split=None if data.get("split") is None else str(data["split"]),
        created=float(data["created"]),
        models=data["models"],
        ranking=data["ranking"],
        data=data,
    )


def list_runs(data_dir: Path) -> list[EvalRun]:
    """Past runs, newest first; a damaged file is logged and skipped so history always shows."""
    folder = evals_dir(data_dir)
    if not folder.is_dir():
        return []
    runs: list[EvalRun] = []
    for path in folder.glob("*.json"):
        if path.name.startswith(".tmp-"):
            continue
        try:
            runs.append(load_run(path))
        except RunError as exc:
            log.warning("skipping %s", exc)
    runs.sort(key=lambda r: (r.created, r.path.name), reverse=True)
    return runs
