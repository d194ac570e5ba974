"""The journal of a bulk run: one SQLite row per manifest row, written before and after each submission.

States: `todo` -> `submitting` (written and synced *before* the request is sent) -> `submitted` (task id) ->
`succeeded` (file, size, sha256) or `failed` (reason). `uncertain` marks a submission whose answer was lost,
and a `submitting` found at start-up (the process died while the request was out): either way the task may
exist and be billed, so it is never resubmitted unless the user says so. Each change is its own committed
transaction with `synchronous=FULL`, so `kill -9` at any moment loses nothing that was written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, final, get_args

import attrs

State = Literal["todo", "submitting", "submitted", "succeeded", "failed", "uncertain"]
STATES: tuple[State, ...] = get_args(State)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    key TEXT PRIMARY KEY,
    line INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    task_id TEXT,
    file TEXT,
    size INTEGER,
    sha256 TEXT,
    reason TEXT,
    updated_at TEXT NOT NULL
)
"""


@attrs.frozen
class JournalRow:
    key: str
    line: int
    fingerprint: str
    state: State
    task_id: str | None = None
    file: str | None = None
    size: int | None = None
    sha256: str | None = None
    reason: str | None = None
    updated_at: str = ""


@final
class Journal:
    """A run's journal file. Not shared between processes: one run at a time per journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        if not path.is_file():
            raise FileNotFoundError(f"no journal at {path}")
        return cls(path)

    def close(self) -> None:
        self._db.close()

    def rows(self) -> list[JournalRow]:
        cursor = self._db.execute(
            "SELECT key, line, fingerprint, state, task_id, file, size, sha256, reason, updated_at"
            " FROM rows ORDER BY line"
        )
        return [JournalRow(*values) for values in cursor]

    def __iter__(self) -> Iterator[JournalRow]:
        return iter(self.rows())

    def add(self, key: str, line: int, fingerprint: str) -> None:
        """Record a manifest row as `todo` (a row seen before keeps its state)."""
        self._db.execute(
            "INSERT INTO rows (key, line, fingerprint, state, updated_at) VALUES (?, ?, ?, 'todo', ?)"
            " ON CONFLICT (key) DO UPDATE SET line = excluded.line",
            (key, line, fingerprint, _now()),
        )

    def reset(self, key: str, fingerprint: str) -> None:
        """Start a row again from `todo` (a changed row that was never paid for, or one the user retries)."""
        self._set(key, "todo", fingerprint=fingerprint, task_id=None, reason=None)

    def submitting(self, key: str) -> None:
        self._set(key, "submitting")

    def submitted(self, key: str, task_id: str) -> None:
        self._set(key, "submitted", task_id=task_id)

    def succeeded(self, key: str, file: str, size: int, sha256: str) -> None:
        self._set(key, "succeeded", file=file, size=size, sha256=sha256, reason=None)

    def failed(self, key: str, reason: str, task_id: str | None = None) -> None:
        self._set(key, "failed", reason=reason, **({"task_id": task_id} if task_id else {}))

    def uncertain(self, key: str, reason: str) -> None:
        self._set(key, "uncertain", reason=reason)

    def _set(self, key: str, state: State, **columns: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        sql = f"UPDATE rows SET state = ?, updated_at = ?{', ' if columns else ''}{assignments} WHERE key = ?"
        self._db.execute(sql, (state, _now(), *columns.values(), key))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
