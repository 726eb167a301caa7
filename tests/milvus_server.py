"""A real Milvus standalone server on loopback for the tests (imported, not a conftest).

PyPI's `milvus` package (the dev extra) ships the server binaries; `milvus-server` unpacks them
into its data dir (~900 MB, ~30 s) and starts `milvus run standalone` as its child. The data
dir is `.cache/milvus` under the repo (git-ignored), so the unpack happens once per machine;
every session drops the collections an earlier one left there.

- Ready when the banner names the child's PID and `/healthz` on the child's METRICS_PORT answers
  `OK`; the gRPC port is read from the config the wrapper rewrites on every start (a busy port
  silently moves to the next one).
- Stopped by PID only: TERM the child (graceful, ~11 s with common.gracefulStopTimeout=10),
  then INT the wrapper. A server left by a killed session is found through the PID file and
  stopped the same way, after checking the PID still runs this data dir's binary.
- One server per data dir at a time: an flock on `DIR/.lock` is held while it runs, so the
  benchmark and a test session never share a dir.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".cache" / "milvus"
EXTRA_CONFIG = ("proxy.timeTickInterval=20", "common.gracefulStopTimeout=10")
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 40.0
LOCK_TIMEOUT_S = 600.0
_BANNER_PID = re.compile(r"Process:\s+(\d+)")


class MilvusServerError(RuntimeError):
    """The server could not be started or stopped; the message carries its log tail."""


def _alive(pid: int) -> bool:
    """Running and not a zombie (a TERMed child stays a zombie until the wrapper reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


class MilvusServer:
    """One `milvus-server` process tree on `data`; `uri` is its gRPC address on loopback."""

    def __init__(self, data: Path = DATA) -> None:
        self.data = data
        self.wrapper: subprocess.Popen[bytes] | None = None
        self.child_pid: int | None = None
        self.port = 0
        self.metrics_port = 0
        self._lock: IO[str] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data / "embedscope-pids.json"

    @property
    def log_file(self) -> Path:
        return self.data / "wrapper.log"

    def start(self) -> None:
        """Start and wait until it serves (bounded); MilvusServerError with the log if not."""
        self.data.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._take_lock()
        self._stop_leftover()
        exe = Path(sys.executable).with_name("milvus-server")
        if not exe.is_file():
            found = shutil.which("milvus-server")
            if found is None:
                raise MilvusServerError(
                    "milvus-server is not installed; install the dev extra: "
                    ".venv/bin/pip install -e '.[dev]' (it pins milvus==2.3.5)"
                )
            exe = Path(found)
        cmd = [str(exe), "--data", str(self.data)]
        for item in EXTRA_CONFIG:
            cmd += ["--extra-config", item]
        self._log = self.log_file.open("wb")
        self.wrapper = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        handle = (self.data / ".lock").open("w")
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.close()
                    raise MilvusServerError(
                        f"another process has run a Milvus server on {self.data} for over "
                        f"{LOCK_TIMEOUT_S:.0f} s (lock {self.data / '.lock'})"
                    ) from None
                time.sleep(1.0)
        self._lock = handle

    def _stop_leftover(self) -> None:
        """A server whose session was killed: stop it by its recorded PIDs, if they still run
        this data dir's binaries."""
        try:
            pids = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        child, wrapper = int(pids.get("child", 0)), int(pids.get("wrapper", 0))
        if child and _alive(child) and str(self.data / "bin" / "milvus") in _cmdline(child):
            os.kill(child, signal.SIGTERM)
            if not _wait_gone(child, STOP_TIMEOUT_S):
                os.kill(child, signal.SIGKILL)
        if wrapper and _alive(wrapper) and "milvus-server" in _cmdline(wrapper):
            os.kill(wrapper, signal.SIGINT)
            if not _wait_gone(wrapper, 10):
                os.kill(wrapper, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def _log_tail(self) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        logs = self.data / "logs" / "milvus-stderr.log"
        extra = logs.read_text(errors="replace")[-2000:] if logs.is_file() else ""
        return f"{text[-2000:]}\n--- {logs} ---\n{extra}"

    def _wait_ready(self) -> None:
        assert self.wrapper is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.child_pid is None:
            match = _BANNER_PID.search(self.log_file.read_text(errors="replace"))
            if match:
                self.child_pid = int(match[1])
                break
            if self.wrapper.poll() is not None or time.monotonic() > deadline:
                raise MilvusServerError(
                    f"milvus-server did not start within {READY_TIMEOUT_S:.0f} s "
                    f"(exit {self.wrapper.poll()}):\n{self._log_tail()}"
                )
            time.sleep(0.5)
        self.pid_file.write_text(
            json.dumps({"wrapper": self.wrapper.pid, "child": self.child_pid})
        )
        environ = Path(f"/proc/{self.child_pid}/environ").read_bytes().split(b"\0")
        metrics = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"METRICS_PORT=")]
        self.metrics_port = int(metrics[0]) if metrics else 9091
        config = yaml.safe_load((self.data / "configs" / "milvus.yaml").read_text())
        self.port = int(config["proxy"]["port"])
        while not self._healthy():
            if not _alive(self.child_pid) or time.monotonic() > deadline:
                raise MilvusServerError(
                    f"Milvus (pid {self.child_pid}) never answered OK on "
                    f"http://127.0.0.1:{self.metrics_port}/healthz:\n{self._log_tail()}"
                )
            time.sleep(0.5)

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().strip() == b"OK"
        except OSError:
            return False

    def stop(self) -> None:
        """TERM the child and wait for it, then INT the wrapper; escalate to KILL by PID."""
        if self.child_pid is not None and _alive(self.child_pid):
            os.kill(self.child_pid, signal.SIGTERM)
            if not _wait_gone(self.child_pid, STOP_TIMEOUT_S):
                os.kill(self.child_pid, signal.SIGKILL)
                _wait_gone(self.child_pid, 5)
        if self.wrapper is not None and self.wrapper.poll() is None:
            os.kill(self.wrapper.pid, signal.SIGINT)
            try:
                self.wrapper.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.wrapper.kill()
                self.wrapper.wait(timeout=5)
        self.wrapper = None
        self.child_pid = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def release(self) -> None:
        """Stop and give up the data dir."""
        self.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def drop_all_collections(self) -> None:
        """The data dir is the tests' own: what an earlier session left is removed."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, timeout=10, dedicated=True)
        try:
            for name in client.list_collections():
                client.drop_collection(name)
        finally:
            client.close()


def settings_for(server: MilvusServer, **extra: Any) -> dict[str, Any]:
    """`index.milvus` settings pointing at `server`."""
    return {"uri": server.uri, "consistency": "Session", **extra}


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusServer]:
    """One real server for the session, with no collections at the start."""
    server = MilvusServer()
    started = time.perf_counter()
    server.start()
    print(f"\nMilvus up on {server.uri} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        server.drop_all_collections()
        yield server
    finally:
        server.release()
