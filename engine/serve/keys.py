"""API keys: shown once when made, stored only as a salted scrypt hash in SQLite.

A key reads `es_<id>_<secret>`: the id finds the row, the secret is checked against its hash
with a constant-time compare. Verified keys are remembered in memory by a digest of the whole
key, so scrypt runs once per key and process; every request still reads the row, so a key
revoked from another process (`embedscope keys revoke`) stops working at its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import BadRequestError, ConflictError, NotFoundError

SCOPES = ("read", "write", "admin")
DEFAULT_RATE = "600/minute"
PREFIX = "es_"
# scrypt at n=2**14, r=8: ~16 MB and tens of ms per check, paid once per key and process.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    scopes TEXT NOT NULL,
    rate TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
)
"""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    rate: str
    created: float
    revoked: float | None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "scopes": list(self.scopes)}


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise BadRequestError(
            f"scopes {text!r} are not valid: give a comma-separated list of {', '.join(SCOPES)}"
        )
    return scopes


def check_rate(text: str) -> str:
    from limits import parse

    try:
        parse(text)
    except ValueError:
        raise BadRequestError(
            f"rate {text!r} is not valid: write it as COUNT/PERIOD, e.g. 600/minute or 10/second"
        ) from None
    return text


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)


class KeyStore:
    """One SQLite file under the data dir; safe to share between threads of one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute(SCHEMA)
        self._lock = threading.Lock()
        self._verified: dict[bytes, str] = {}

    def close(self) -> None:
        self._conn.close()

    def create(self, name: str, scopes: tuple[str, ...], rate: str = DEFAULT_RATE) -> str:
        """Store a new key's hash and return the key, which exists nowhere else."""
        if not name.strip():
            raise BadRequestError("a key needs a name, e.g. `embedscope keys create ci-reader`")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        try:
            with self._lock:
                self._conn.execute(
                    "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (key_id, name, salt, _hash(secret, salt), ",".join(scopes), rate, time.time()),
                )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"a key named '{name}' already exists; pick another name, or revoke it first "
                f"(`embedscope keys revoke {name}`)"
            ) from None
        return f"{PREFIX}{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, scopes, rate, created, revoked FROM keys ORDER BY created"
            ).fetchall()
        return [_row(r) for r in rows]

    def revoke(self, name_or_id: str) -> ApiKey:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE keys SET revoked = ? WHERE (name = ? OR id = ?) AND revoked IS NULL",
                (time.time(), name_or_id, name_or_id),
            )
        if cur.rowcount == 0:
            raise NotFoundError(
                f"no active key named '{name_or_id}'; `embedscope keys list` shows them"
            )
        return next(k for k in self.list() if name_or_id in (k.name, k.id))

    def any(self) -> bool:
        """True once any key was made: revoking the last key does not reopen the server."""
        with self._lock:
            return self._conn.execute("SELECT EXISTS (SELECT 1 FROM keys)").fetchone()[0] == 1

    def known(self, token: str) -> bool:
        """True when `token` was verified before: checking it again needs no scrypt."""
        return hashlib.sha256(token.encode()).digest() in self._verified

    def verify(self, token: str) -> ApiKey | None:
        """The active key `token` is, or None (malformed, unknown, wrong secret or revoked)."""
        if not token.startswith(PREFIX) or token.count("_") < 2:
            return None
        key_id, _, secret = token[len(PREFIX) :].partition("_")
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name, scopes, rate, created, revoked, salt, hash FROM keys "
                "WHERE id = ?",
                (key_id,),
            ).fetchone()
        if row is None or row[5] is not None:
            return None
        seen = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(seen)
        if known is None or not hmac.compare_digest(known, key_id):
            if not hmac.compare_digest(_hash(secret, row[6]), row[7]):
                return None
            self._verified[seen] = key_id
        return _row(row[:6])


def _row(row: tuple) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        scopes=tuple(row[2].split(",")),
        rate=row[3],
        created=row[4],
        revoked=row[5],
    )
