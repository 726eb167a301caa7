"""The audit log: one JSON line per request, rotated by size.

It records who (the key id), what (route and method), the outcome, the latency and counts;
never texts, queries, document bodies or keys, so the log can be shared for debugging.
"""

from __future__ import annotations

import json
import logging
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # A logger of its own, not propagated: audit lines never reach the console.
        self._log = logging.getLogger(f"embedscope.audit.{id(self)}")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        self._handler = RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._log.addHandler(self._handler)

    def record(
        self,
        *,
        key: str | None,
        method: str,
        route: str,
        status: int,
        latency_s: float,
        counts: dict[str, Any],
    ) -> None:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "key": key,
            "method": method,
            "route": route,
            "status": status,
            "latency_ms": round(latency_s * 1000, 2),
            "counts": counts,
        }
        self._log.info(json.dumps(line, separators=(",", ":")))

    def close(self) -> None:
        self._log.removeHandler(self._handler)
        self._handler.close()
