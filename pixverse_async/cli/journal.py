"""The journal of a bulk run: one SQLite row per manifest row, written before and after each submission.

States: `todo` -> `submitting` (written and synced *before* the request is sent) -> `submitted` (task id) ->
`succeeded` (file, size, sha256) or `failed` (reason). `uncertain` marks a submission whose answer was lost,
and a `submitting` found at start-up (the process died while the request was out): either way the task may
exist and be billed, so it is never resubmitted unless the user says so. Each change is its own committed
transaction with `synchronous=FULL`, so `kill -9` at any moment loses nothing that was written.

A journal has one writer at a time: `JournalLock` holds an OS lock on the journal file itself (so on what it is,
whatever name reaches it) for the whole run, which the OS drops when the process ends, however it ends. The
`meta` table names the manifest the journal belongs to.
Journals from earlier versions get the columns and tables they lack when opened.

`RunJournal` is what a run needs of a journal: this file (`SQLiteJournal`), or a run shared by many processes
through Redis (`redis_journal.RedisJournal`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, final, get_args

import anyio
import attrs

from .transitions import Record, State, another_manifest, changes, same_manifest

if TYPE_CHECKING:
    from .manifest import ManifestRow

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
    updated_at TEXT NOT NULL,
    webhook_token TEXT,
    sent_at REAL,
    likely_created INTEGER
)
"""
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
# When each run's webhook receiver listened (`ListenerSpan`), for `listener.missed_delivery`.
_LISTENERS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS listeners (started REAL PRIMARY KEY, url TEXT NOT NULL, alive REAL NOT NULL)"
)
# Columns that journals of earlier versions may lack, added (empty) when such a journal is opened.
_LATER_COLUMNS = {
    "task_id": "TEXT",
    "file": "TEXT",
    "size": "INTEGER",
    "sha256": "TEXT",
    "reason": "TEXT",
    "webhook_token": "TEXT",
    "sent_at": "REAL",
    "likely_created": "INTEGER",
}
_ROW_COLUMNS = "key, line, fingerprint, state, task_id, file, size, sha256, reason, updated_at, webhook_token, sent_at,"
_ROW_COLUMNS += " likely_created"


def _verdict(value: object) -> bool | None:
    return None if value is None else bool(value)  # SQLite keeps it as 0 or 1


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
    #: The token the submission's webhook URL carried, and when it was sent (wall-clock seconds).
    webhook_token: str | None = None
    sent_at: float | None = None
    #: An uncertain row's verdict: False when judged not created, None when unknown.
    likely_created: bool | None = attrs.field(default=None, converter=_verdict)


@attrs.frozen
class ListenerSpan:
    """A run's webhook receiver listened at `url` from `started` to at least `alive` (wall-clock seconds; its
    last heartbeat)."""

    url: str
    started: float
    alive: float


@final
class Journal:
    """A run's journal file. Not shared between processes: one run at a time per journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # By the real path: SQLite names the write-ahead log after it, and a symlink must reach the same log.
        self._db = sqlite3.connect(path.resolve(), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(_META_SCHEMA)
        self._db.execute(_LISTENERS_SCHEMA)
        present = {column[1] for column in self._db.execute("PRAGMA table_info(rows)")}
        for name, kind in _LATER_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE rows ADD COLUMN {name} {kind}")

    @classmethod
    def open_existing(cls, path: Path) -> Journal:
        if not path.is_file():
            raise FileNotFoundError(f"no journal at {path}")
        return cls(path)

    def close(self) -> None:
        self._db.close()

    def rows(self) -> list[JournalRow]:
        cursor = self._db.execute(f"SELECT {_ROW_COLUMNS} FROM rows ORDER BY line")
        return [JournalRow(*values) for values in cursor]

    def __iter__(self) -> Iterator[JournalRow]:
        return iter(self.rows())

    def meta(self, name: str) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def listening(self, span: ListenerSpan) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO listeners (started, url, alive) VALUES (?, ?, ?)",
            (span.started, span.url, span.alive),
        )

    def listener_spans(self) -> list[ListenerSpan]:
        cursor = self._db.execute("SELECT url, started, alive FROM listeners ORDER BY started")
        return [ListenerSpan(str(url), float(started), float(alive)) for url, started, alive in cursor]

    def add(self, key: str, line: int, fingerprint: str) -> None:
        """Record a manifest row as `todo` (a row seen before keeps its state)."""
        self._db.execute(
            "INSERT INTO rows (key, line, fingerprint, state, updated_at) VALUES (?, ?, ?, 'todo', ?)"
            " ON CONFLICT (key) DO UPDATE SET line = excluded.line",
            (key, line, fingerprint, _now()),
        )

    # The records: see `transitions.TRANSITIONS` for what each sets and clears.

    def reset(self, key: str, fingerprint: str) -> None:
        self.apply(key, "reset", fingerprint=fingerprint)

    def submitting(self, key: str, webhook_token: str | None, sent_at: float) -> None:
        self.apply(key, "submitting", webhook_token=webhook_token, sent_at=sent_at)

    def submitted(self, key: str, task_id: str) -> None:
        self.apply(key, "submitted", task_id=task_id)

    def succeeded(self, key: str, file: str, size: int, sha256: str) -> None:
        self.apply(key, "succeeded", file=file, size=size, sha256=sha256)

    def refetch(self, key: str, reason: str) -> None:
        self.apply(key, "refetch", reason=reason)

    def not_downloaded(self, key: str, reason: str) -> None:
        self.apply(key, "not_downloaded", reason=reason)

    def failed(self, key: str, reason: str, task_id: str | None = None) -> None:
        self.apply(key, "failed", reason=reason, task_id=task_id or None)

    def uncertain(self, key: str, reason: str, likely_created: bool | None = None) -> None:
        self.apply(key, "uncertain", reason=reason, likely_created=likely_created)

    def apply(self, key: str, record: Record, **given: Any) -> None:
        state, columns = changes(record, **given)
        self._set(key, state, **columns)

    def _set(self, key: str, state: State, **columns: object) -> None:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        sql = f"UPDATE rows SET state = ?, updated_at = ?{', ' if columns else ''}{assignments} WHERE key = ?"
        self._db.execute(sql, (state, _now(), *columns.values(), key))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class JournalError(Exception):
    """A journal that cannot be used for this run: one line for the user; nothing was sent."""


class JournalInUse(JournalError):
    """Another process holds the journal's lock."""

    def __init__(self, journal: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder is not None else "pid unknown"
        super().__init__(f"the journal {journal} is in use by another run ({who})")
        self.holder = holder


class JournalUnusable(JournalError):
    """The journal's file cannot be opened for writing, or cannot be told apart from other names of it."""


@final
class JournalLock:
    """An exclusive OS lock on the journal file itself, so on its inode: every name that reaches it (a symlink, a
    bind mount, `--journal` beside another `--out`) meets the same lock. Also locked, and holding the holder's
    pid for the message, is `<journal>.lock` beside the journal's real path (earlier versions locked only that
    file, so they are kept out too). Never stale: the OS releases both when the process ends, even by `kill -9`.
    The `.lock` file stays: removing it would let two processes lock two different files of the same name.

    A journal with more than one hard link is refused: SQLite names its write-ahead log after the path it was
    opened by, so a run through another name would not see what a killed run left in the log, and pay again."""

    def __init__(self, journal: Path) -> None:
        real = journal.resolve()  # the write-ahead log and the pid file are named after this path
        self.path = real.with_name(real.name + ".lock")
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
            journal_fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise JournalUnusable(f"the journal {journal} cannot be opened for writing: {error.strerror}") from None
        self._journal_fd: int | None = journal_fd
        self._file: IO[str] | None = None
        self._held = False
        try:
            self._lock(journal, real, journal_fd)
        except BaseException:
            self.release()
            raise

    def _lock(self, journal: Path, real: Path, journal_fd: int) -> None:
        if (links := os.fstat(journal_fd).st_nlink) > 1:
            raise JournalUnusable(
                f"the journal {journal} has {links} names (hard links): SQLite keeps its recent records under one"
                " name, so a run through another would not see them; remove the other names (copy the file, do"
                " not link it)"
            )
        try:
            self._file = self.path.open("a+", encoding="ascii")
        except OSError as error:
            raise JournalUnusable(f"the journal {journal} cannot be locked ({self.path}): {error.strerror}") from None
        try:
            if _LOCKS_THE_JOURNAL_ITSELF:
                _lock_exclusively(journal_fd)
            _lock_exclusively(self._file.fileno())
        except OSError:
            self._file.seek(0)
            holder = self._file.read(32).strip()
            raise JournalInUse(journal, int(holder) if holder.isdigit() else None) from None
        if not os.path.samestat(os.fstat(journal_fd), os.stat(real)):
            raise JournalUnusable(f"the journal {journal} was replaced while it was being opened")
        self._held = True
        self._file.truncate(0)
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        """Drop the locks (closing the files drops them). Only once the journal's database is closed: closing
        any descriptor of a file drops the POSIX locks SQLite holds on it in this process."""
        file, self._file = self._file, None
        if file is not None:
            if self._held:  # the pid is another run's unless this one holds the lock
                with contextlib.suppress(OSError):
                    file.truncate(0)
            file.close()
        journal_fd, self._journal_fd = self._journal_fd, None
        if journal_fd is not None:
            os.close(journal_fd)


if sys.platform == "win32":
    import msvcrt

    # Windows' byte-range locks are mandatory and SQLite takes its own in the journal file, so only the pid file
    # is locked there (the journal's real path and the refused hard links keep every name on that one file).
    _LOCKS_THE_JOURNAL_ITSELF = False

    def _lock_exclusively(fd: int) -> None:
        # Windows locks byte ranges; a byte far past the pid lets other processes read who holds the lock.
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        os.lseek(fd, 0, os.SEEK_SET)

else:
    import fcntl

    # flock() locks are apart from the POSIX locks SQLite takes in the same file: neither disturbs the other.
    _LOCKS_THE_JOURNAL_ITSELF = True

    def _lock_exclusively(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@attrs.frozen
class Work:
    """A row a run works on: submit its request (`task_id` None), or follow its task; with a `webhook_token`,
    wait for the delivery of an earlier run's submission (`UncertainSubmission`)."""

    key: str
    task_id: str | None = None
    webhook_token: str | None = None
    delivery_may_have_been_missed: bool = False


class RunJournal(Protocol):
    """What a run needs of its journal. The records are synchronous and durable when they return (a shared
    journal makes them durable locally and writes them to the shared store in order, soon after)."""

    @property
    def where(self) -> str:
        """The journal's name, for messages."""
        ...

    async def join(self, manifest_path: str, manifest_rows: str, rows: Sequence[ManifestRow]) -> list[JournalRow]:
        """Check the journal belongs to this manifest (`JournalError` if not), record the manifest's identity;
        the rows this process may plan (a shared journal leaves out the rows other workers hold)."""
        ...

    def work(self, planned: Sequence[Work]) -> AsyncIterator[Work]:
        """The rows to work on: `planned`, or, shared, the rows claimed one by one from the whole run."""
        ...

    async def keep_alive(self) -> None:
        """What the journal does beside the run until cancelled."""
        ...

    async def entries(self) -> list[JournalRow]: ...

    def add(self, key: str, line: int, fingerprint: str) -> None: ...
    def reset(self, key: str, fingerprint: str) -> None: ...
    def submitting(self, key: str, webhook_token: str | None, sent_at: float) -> None:
        """Before the request goes out: the token its webhook URL carries (None without webhooks) and when
        (wall-clock seconds)."""
        ...

    def submitted(self, key: str, task_id: str) -> None: ...
    def succeeded(self, key: str, file: str, size: int, sha256: str) -> None: ...
    def refetch(self, key: str, reason: str) -> None: ...
    def not_downloaded(self, key: str, reason: str) -> None: ...
    def failed(self, key: str, reason: str, task_id: str | None = None) -> None: ...
    def uncertain(self, key: str, reason: str, likely_created: bool | None = None) -> None: ...

    def release(self, key: str) -> None:
        """This run is done with the row for now (its task is left running, for a rerun)."""
        ...

    def listening(self, span: ListenerSpan) -> None:
        """This run's webhook receiver is up (a heartbeat: the same `started`, a later `alive`)."""
        ...

    async def listener_spans(self) -> list[ListenerSpan]:
        """When earlier runs listened for webhooks (empty if the journal keeps no such record)."""
        ...

    async def aclose(self, *, flush_timeout: float) -> None: ...


class JournalOfAnotherManifest(JournalError):
    def __init__(self, journal: str, known_path: str) -> None:
        super().__init__(
            another_manifest(journal, known_path, hint="use --journal FILE to give this manifest a journal of its own")
        )


def check_manifest_identity(journal: Journal, manifest_path: str, manifest_rows: str) -> None:
    """Refuse a journal made from another manifest (`transitions.same_manifest`)."""
    known_path, known_rows = journal.meta("manifest_path"), journal.meta("manifest_rows")
    if known_path is not None and not same_manifest(known_path, known_rows, manifest_path, manifest_rows):
        raise JournalOfAnotherManifest(str(journal.path), known_path)


@final
class SQLiteJournal:
    """The journal file of a run on one machine: one run at a time holds it (`JournalLock`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: JournalLock | None = None
        self._journal: Journal | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    @property
    def _db(self) -> Journal:
        assert self._journal is not None, "join() first"
        return self._journal

    async def join(self, manifest_path: str, manifest_rows: str, rows: Sequence[ManifestRow]) -> list[JournalRow]:
        try:
            self._lock = JournalLock(self.path)
        except JournalInUse as error:
            raise JournalError(f"{error}; nothing was sent (wait for it to end)") from None
        except JournalUnusable as error:
            raise JournalError(f"{error}; nothing was sent") from None
        try:
            self._journal = Journal(self.path)
            check_manifest_identity(self._journal, manifest_path, manifest_rows)
            self._journal.set_meta("manifest_path", manifest_path)
            self._journal.set_meta("manifest_rows", manifest_rows)
        except BaseException:
            self._close()
            raise
        return self._journal.rows()

    async def work(self, planned: Sequence[Work]) -> AsyncIterator[Work]:
        for work in planned:
            yield work

    async def keep_alive(self) -> None:
        await anyio.sleep_forever()

    async def entries(self) -> list[JournalRow]:
        return self._db.rows()

    def add(self, key: str, line: int, fingerprint: str) -> None:
        self._db.add(key, line, fingerprint)

    def reset(self, key: str, fingerprint: str) -> None:
        self._db.reset(key, fingerprint)

    def submitting(self, key: str, webhook_token: str | None, sent_at: float) -> None:
        self._db.submitting(key, webhook_token, sent_at)

    def submitted(self, key: str, task_id: str) -> None:
        self._db.submitted(key, task_id)

    def succeeded(self, key: str, file: str, size: int, sha256: str) -> None:
        self._db.succeeded(key, file, size, sha256)

    def refetch(self, key: str, reason: str) -> None:
        self._db.refetch(key, reason)

    def not_downloaded(self, key: str, reason: str) -> None:
        self._db.not_downloaded(key, reason)

    def failed(self, key: str, reason: str, task_id: str | None = None) -> None:
        self._db.failed(key, reason, task_id)

    def uncertain(self, key: str, reason: str, likely_created: bool | None = None) -> None:
        self._db.uncertain(key, reason, likely_created)

    def release(self, key: str) -> None:
        pass  # the row stays `submitted`: the next run polls it

    def listening(self, span: ListenerSpan) -> None:
        self._db.listening(span)

    async def listener_spans(self) -> list[ListenerSpan]:
        return self._db.listener_spans()

    async def aclose(self, *, flush_timeout: float) -> None:
        self._close()

    def _close(self) -> None:
        journal, self._journal = self._journal, None
        lock, self._lock = self._lock, None
        if journal is not None:
            journal.close()
        if lock is not None:
            lock.release()  # after the journal: the next run opens it once the lock is free
