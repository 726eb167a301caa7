"""The app leaves with its terminal: closing the terminal while it indexes ends the process as
Ctrl+Q would (the run is cancelled, what it committed is saved), whether the app is the
terminal's own process or runs under `make run`, where make takes the hang-up and waits."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = [
    pytest.mark.slow,  # each test starts the real app, torch and the model in a terminal
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals only"),
]

EXIT_WITHIN_S = 45.0
# An app that spins on its dead terminal burns a core for as long as it lives; a clean exit
# (cancel the batch, save the vectors, stop the model thread) costs a few CPU seconds.
CPU_AFTER_HANGUP_S = 10.0


def _controlling_tty() -> None:
    """In the child, after setsid: the pty on stdin becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A real pseudo-terminal whose far end runs `argv` as the session's controlling process."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_controlling_tty,
        )
        os.close(slave)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        """Keep the pty drained, as a terminal does, so the app never blocks on output."""
        while True:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def close(self) -> None:
        """What closing a window or `tmux kill-session` does: the master side goes away."""
        os.close(self.master)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the app exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the app did not start indexing in time"
        time.sleep(0.2)


def gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def make_corpus(folder: Path, docs: int) -> Path:
    folder.mkdir()
    for i in range(docs):
        body = " ".join(f"Paragraph {j} of note {i} on rivers, bread and stars." for j in range(40))
        (folder / f"note-{i:04d}.md").write_text(f"# Note {i}\n\n{body}\n", encoding="utf-8")
    return folder


def committed_chunks(folder: Path) -> int:
    if not (folder / "meta.sqlite").exists():
        return 0
    try:
        with sqlite3.connect(f"file:{folder / 'meta.sqlite'}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
    except sqlite3.Error:
        return 0  # created but not yet initialised


def assert_index_saved_whole(folder: Path) -> None:
    """Every chunk SQLite committed has its vector in the saved FAISS file: the shutdown ran
    the run's `finally` (save), which a process killed by the hang-up never reaches."""
    from engine.store.faiss_store import FaissVectorStore

    chunks = committed_chunks(folder)
    vectors = FaissVectorStore.open(folder / "vectors.esvs").count
    assert chunks > 0 and vectors == chunks, (chunks, vectors)


def hang_up_and_measure(term: Terminal, app_pid: int) -> None:
    before = cpu_seconds(app_pid)
    hung_up = time.monotonic()
    term.close()
    cpu_at_exit = before
    while not gone_within(app_pid, 0.5):
        cpu_at_exit = cpu_seconds(app_pid)
        if time.monotonic() - hung_up > EXIT_WITHIN_S:
            pytest.fail(
                f"the app (pid {app_pid}) still runs {EXIT_WITHIN_S:.0f} s after its terminal "
                f"closed, having used {cpu_at_exit - before:.1f} CPU seconds since"
            )
    assert cpu_at_exit - before < CPU_AFTER_HANGUP_S


def test_closing_the_terminal_ends_the_app_started_directly(
    tmp_path: Path, isolated_home: Path
) -> None:
    corpus = make_corpus(tmp_path / "notes", 300)
    term = Terminal([sys.executable, "-m", "tui.cli", "--corpus", str(corpus)], REPO)
    try:
        folder = isolated_home / "indexes" / "notes"
        wait_for(lambda: committed_chunks(folder) > 0, 180, term.proc)
        hang_up_and_measure(term, term.proc.pid)
        # 129 = 128 + SIGHUP from the app's own exit; a process the signal killed reports -1.
        assert term.proc.wait(10) == 129
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert_index_saved_whole(folder)


def test_closing_the_terminal_ends_the_app_under_make_run(isolated_home: Path) -> None:
    # -o: never rebuild the venv from a test, even if pyproject.toml is newer than its stamp.
    term = Terminal(["make", "--no-print-directory", "-o", ".venv/.installed", "run"], REPO)
    app_pids: list[int] = []
    try:
        folder = isolated_home / "indexes" / "sample"

        def indexing() -> bool:
            app_pids[:] = children(term.proc.pid)
            return bool(app_pids) and committed_chunks(folder) > 0

        wait_for(indexing, 180, term.proc)
        (app_pid,) = app_pids
        hang_up_and_measure(term, app_pid)
        # make takes the same SIGHUP and passes it on to itself once its child has gone; when
        # the child's exit (129) reaches it first, it reports the failed recipe (2) instead.
        # Either way make is gone at once, as the terminal is.
        assert term.proc.wait(10) in (-signal.SIGHUP, 2)
    finally:
        for pid in app_pids:
            if not gone_within(pid, 0):
                os.kill(pid, signal.SIGKILL)
        if term.proc.poll() is None:
            term.proc.kill()
    assert_index_saved_whole(folder)
