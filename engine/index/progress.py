"""Progress events and reports of indexing runs, shared by the CLI and the app."""

from __future__ import annotations

from dataclasses import dataclass, field


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
