"""Cooperative cancellation shared by long jobs (indexing, fine-tuning, evaluation)."""

from __future__ import annotations

import threading


class CancelToken:
    """Set from any thread (the UI, a signal handler); jobs check it between batches or steps
    and stop cleanly, leaving what they finished committed."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
