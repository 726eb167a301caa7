"""The terminal driver: a closed terminal (window, tmux kill-session, ssh drop) ends the app.

Textual's Linux driver reads EOF from a hung-up terminal as "stdin is piped" and keeps polling it
(a core at 100%), and its writer thread dies on the first EIO, after which the UI blocks on the
writer's full queue. SIGHUP alone cannot be relied on: under `make run` make is the terminal's
controlling process, takes the SIGHUP and waits for its child without passing it on. So this
driver watches the terminal itself, drops output once it is gone, and tells the app.
"""

from __future__ import annotations

import select
import signal
import sys
import threading
from typing import IO, Any

from textual.drivers.linux_driver import LinuxDriver

from tui.messages import TerminalLost

# How often the watcher thread checks whether the app stopped it; a hang-up wakes it at once.
WATCH_S = 0.5


class _Output:
    """The terminal as Textual's writer thread sees it: once the terminal is gone, writes are
    dropped instead of raising EIO, which would kill the thread and then block the UI."""

    def __init__(self, file: IO[str], lost: threading.Event, on_lost: Any) -> None:
        self._file = file
        self._lost = lost
        self._on_lost = on_lost

    def write(self, text: str) -> None:
        if not self._lost.is_set():
            try:
                self._file.write(text)
            except OSError:
                self._on_lost()

    def flush(self) -> None:
        if not self._lost.is_set():
            try:
                self._file.flush()
            except OSError:
                self._on_lost()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class TerminalDriver(LinuxDriver):
    """LinuxDriver that notices a hang-up (SIGHUP, or HUP/ERR on the terminal) and ends input,
    output and the app cleanly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lost = threading.Event()
        self._file = _Output(sys.__stderr__, self._lost, self._terminal_lost)
        # Set to stop the current watcher thread (a new one per application mode).
        self._stop_watch: threading.Event | None = None
        self._previous_sighup: Any = None

    def start_application_mode(self) -> None:
        super().start_application_mode()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        if self.input_tty:
            self._stop_watch = threading.Event()
            threading.Thread(
                target=self._watch, args=(self._stop_watch,), name="terminal-watch", daemon=True
            ).start()

    def stop_application_mode(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch.set()
            self._stop_watch = None
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        super().stop_application_mode()

    def _watch(self, stop: threading.Event) -> None:
        """Registered for no events, poll reports only HUP, ERR and NVAL: input is untouched."""
        poller = select.poll()
        poller.register(self.fileno, 0)
        while not stop.is_set():
            if poller.poll(WATCH_S * 1000):
                self._terminal_lost()
                return

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._terminal_lost()

    def _sigcont_application(self, *args: Any) -> None:
        # The kernel follows a hang-up's SIGHUP with SIGCONT: never restart on a dead terminal.
        if not self._lost.is_set():
            super()._sigcont_application(*args)

    def _terminal_lost(self) -> None:
        """From any thread, once: stop output and the input thread, and ask the app to leave."""
        if self._lost.is_set():
            return
        self._lost.set()
        # The input thread's loop ends on this event; it would otherwise spin on EOF.
        self.exit_event.set()
        self.send_message(TerminalLost())
