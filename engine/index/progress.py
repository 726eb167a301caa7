"""Progress events and cooperative cancellation shared by the CLI and the app."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


class CancelToken:
    """Set from any thread; the indexer checks it between batches and stops cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class IndexProgress:
    phase: str  # scanning, indexing, removing, saving, done
    files_total: int
    files_done: int
    chunks_done: int
    tokens: int
    chunks_per_s: float
    eta_s: float | None
    current: str = ""


@dataclass(frozen=True)
class FileFailure:
    path: str
    reason: str


@dataclass
class IndexReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_embedded: int = 0
    model_calls: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "chunks_embedded": self.chunks_embedded,
            "model_calls": self.model_calls,
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 3),
        }
