"""`--journal redis://HOST:PORT/DB`: one run shared by every process started with the same manifest and URL.

Redis holds the run (see `redis_scripts` for its keys and the rules of claims and leases); each operation is
one Lua script, registered once, in one round trip. Rows are claimed one at a time, atomically, and only while
fewer than `--concurrency` rows are claimed by all workers together: that bounds the whole run.

What a worker learns while Redis cannot be reached (task ids, finished rows) waits in order in its outbox
and is written as soon as Redis answers again; until then the worker takes no new row, so it submits
nothing, and says so on its display. Each record is written first, synced, to the worker's own log
(`OUT/.pixverse-workers/<worker>.jsonl`, on the shared `OUT`), so that a task id it learnt is never lost
with it: a worker that takes over the row of a dead one reads the dead one's log (see `_adopt`).

A run's keys are `pixverse-async:{run:NAME}:*` (`run_keys`), NAME being `--run-name`, by default the
manifest's file name: several runs share one Redis database, each under its own hash tag (one Cluster slot
for all the keys a script touches). Two manifests of the same file name meet in the same keys, and the
second is refused before anything is sent (`JOIN`'s "same manifest" rule): it needs a `--run-name`.

`redis` is imported only when a redis:// journal is used: the command line works without the extra.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import attrs

from .._clock import Clock, SystemClock
from .._redis_common import keys_of, namespace, outage_wait, process_id, redis_asyncio, register_scripts, shown_url
from . import redis_scripts
from .journal import JournalError, JournalRow, ListenerSpan, Work
from .transitions import TRANSITIONS, Record, State, another_manifest, changes
from .worker_logs import ROW_FIELDS, WorkerLog, precise_stamp, row_fields, rows_from_logs

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from .manifest import ManifestRow

#: How long a worker's claims last unless it renews them (real seconds, Redis's: `--lease`).
DEFAULT_CLAIM_LEASE_REAL_SECONDS: Final = 30.0
# How many leases a worker waits for an unreachable Redis before it stops (what it learnt stays in its log).
OUTAGE_LEASES: Final = 20
_KEY_PREFIX = "pixverse-async"
_KEY_PARTS = ("meta", "rows", "claims", "leases", "queue")
_RUN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


class RedisJournalError(JournalError):
    """The Redis journal cannot be used (no `redis` package, a bad URL, another manifest's run, a lost run)."""


def redis_module() -> Any:
    try:
        return redis_asyncio("a redis:// journal")
    except ImportError as error:
        raise RedisJournalError(str(error)) from None


def default_run_name(manifest: Path) -> str:
    """The run's name when `--run-name` is not given: the manifest's file name, the same on every machine
    whatever the folder it is mounted at (characters a name cannot take become `_`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", manifest.name)[:100] or "run"


def check_run_name(name: str) -> str:
    if not _RUN_NAME.fullmatch(name):
        raise ValueError(f"must be 1-100 letters, digits or _.- characters, not {name!r}")
    return name


def run_keys(run_name: str) -> list[str]:
    """The keys of one run, in the order the scripts take them (`KEYS[1..5]`)."""
    return keys_of(namespace(_KEY_PREFIX, f"run:{run_name}"), _KEY_PARTS)


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _row_from(key: str, raw: str) -> JournalRow:
    fields = json.loads(raw)
    return JournalRow(
        key=key,
        line=int(fields["line"]),
        fingerprint=str(fields["fingerprint"]),
        state=fields["state"],
        **{name: fields.get(name) for name in ROW_FIELDS},
        updated_at=str(fields.get("updated_at", "")),
    )


def _listed(value: object) -> list[Any]:
    # cjson writes an empty Lua table as {}, whatever it was meant to be.
    return value if isinstance(value, list) else []


@final
class RedisJournal:
    """A run's journal in Redis, shared by many workers (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        out: Path,
        concurrency: int,
        run_name: str,
        lease: float = DEFAULT_CLAIM_LEASE_REAL_SECONDS,
        say: Callable[[str], None] = print,
        clock: Clock | None = None,
    ) -> None:
        module = redis_module()
        timeout = min(5.0, max(0.1, lease / 3))
        try:
            self._redis: Redis = module.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError as error:
            raise RedisJournalError(f"--journal {shown_url(url)}: {error}") from None
        self.where = f"{shown_url(url)} (run {run_name})"
        self.worker = process_id()
        self.say = say
        self._out = out
        self._concurrency = concurrency
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        # Real time, as Redis's leases are: waits for a free claim, or for Redis to come back.
        self._clock = clock or SystemClock()
        self._keys = run_keys(run_name)
        self._scripts: dict[str, AsyncScript] = register_scripts(
            self._redis,
            {name: getattr(redis_scripts, name) for name in ("JOIN", "SNAPSHOT", "CLAIM", "RECORD", "LEAVE")},
        )
        self._outage_rng = random.Random()  # jitter of the waits for an unreachable Redis
        self._run_id = ""
        self._identity: tuple[str, str, Sequence[ManifestRow]] | None = None
        self._log: WorkerLog | None = None
        self._outbox: deque[dict[str, Any]] = deque()
        self._outbox_changed = anyio.Event()
        self._flushing = anyio.Lock()
        self._snapshot: dict[str, JournalRow] = {}
        self._fingerprints: dict[str, str] = {}
        self._planning = True
        self._unreachable: str | None = None
        self._unreachable_since = 0.0
        # When the last call that renewed this worker's lease was sent (the lease runs from no earlier).
        self._renewed_at = -math.inf
        # The rows this worker holds: whether the request of a row claimed to submit has gone out.
        self._held: dict[str, bool] = {}
        self._row_ended = anyio.Event()

    # -- calls to Redis ---------------------------------------------------------------------------------

    async def _call(self, script: str, *args: str | int) -> Any:
        """One script call and its JSON answer; `_RunLost` if Redis no longer holds this run."""
        sent_at = self._clock.now()
        answer = await self._scripts[script](keys=self._keys, args=[self._run_id, *args])
        decoded = json.loads(answer)
        if isinstance(decoded, dict) and decoded.get("lost"):
            raise _RunLost
        if script in ("CLAIM", "RECORD"):
            self._renewed_at = max(self._renewed_at, sent_at)
        return decoded

    async def _reachable(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`, retried while Redis cannot be reached (saying so once when it goes and when it is back),
        and after making the run again from the workers' logs if Redis lost it."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        rejoin = False
        failures = 0
        while True:
            try:
                if rejoin:
                    await self._join()
                    rejoin = False
                result = await call()
            except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as error:
                if self._unreachable is None:
                    self._unreachable = str(error) or type(error).__name__
                    self._unreachable_since = self._clock.now()
                    self.say(
                        f"Redis journal {self.where} unreachable ({self._unreachable}): no new row is submitted"
                        " until it is back"
                    )
                elif self._clock.now() - self._unreachable_since > OUTAGE_LEASES * self._lease:
                    raise RedisJournalError(
                        f"the Redis journal {self.where} has been unreachable for {OUTAGE_LEASES} leases"
                        f" ({self._unreachable}); this worker stops; what it learnt is in {self._log_path()}"
                    ) from None
                failures += 1
                await self._clock.sleep(outage_wait(failures, longest=min(1.0, self._lease / 10), rng=self._outage_rng))
                continue
            except _RunLost:
                self.say(
                    f"Redis journal {self.where} no longer holds this run (restarted without its data?):"
                    " making it again from the workers' logs"
                )
                rejoin = True
                continue
            if self._unreachable is not None:
                self._unreachable = None
                self.say(f"Redis journal {self.where} is back: going on")
            return result

    # -- the run's start --------------------------------------------------------------------------------

    async def join(self, manifest_path: str, manifest_rows: str, rows: Sequence[ManifestRow]) -> list[JournalRow]:
        """Join the run of this manifest (refusing another manifest's), adding its new rows; the rows no other
        live worker holds, for this worker to plan."""
        self._identity = (manifest_path, manifest_rows, rows)
        self._fingerprints = {row.key: row.fingerprint for row in rows}
        self._log = WorkerLog(self._out, self.worker)
        self._log.write({"at": precise_stamp(), "manifest_path": manifest_path, "manifest_rows": manifest_rows})
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            await self._join()
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as error:
            raise RedisJournalError(
                f"cannot reach the Redis journal {self.where} ({error}); nothing was sent"
            ) from None
        snapshot = await self._reachable(lambda: self._call("SNAPSHOT", _stamp()))
        if swept := _listed(snapshot.get("swept")):
            await self._adopt(swept)
            snapshot = await self._reachable(lambda: self._call("SNAPSHOT", _stamp()))
        claims = snapshot.get("claims") or {}
        found = snapshot.get("rows") or {}
        self._snapshot = {key: _row_from(key, raw) for key, raw in found.items() if key not in claims}
        return sorted(self._snapshot.values(), key=lambda row: row.line)

    async def _join(self) -> None:
        """The JOIN script; a run Redis does not hold is made from the manifest and every worker's log."""
        assert self._identity is not None
        manifest_path, manifest_rows, rows = self._identity
        entries = json.dumps([[row.key, row.line, row.fingerprint] for row in rows])
        seed = json.dumps(rows_from_logs(self._out, manifest_path, manifest_rows) or {})
        joined = await self._scripts["JOIN"](
            keys=self._keys, args=[secrets.token_hex(8), manifest_path, manifest_rows, _stamp(), entries, seed]
        )
        answer = json.loads(joined)
        if "other" in answer:
            raise RedisJournalError(
                another_manifest(
                    self.where,
                    answer["other"],
                    hint="name this manifest's run with --run-name, or use another database",
                )
            )
        self._run_id = str(answer["ok"])
        if self._held:  # a run made again: this worker holds its rows again (they were in its log)
            ops = [{"key": key, "claim": True} for key in self._held]
            await self._scripts["RECORD"](
                keys=self._keys, args=[self._run_id, self.worker, self._lease_ms, _stamp(), json.dumps(ops)]
            )

    async def _adopt(self, swept: list[list[str]]) -> None:
        """Rows whose worker died: its log says whether the request went out and what answer it got, which
        Redis may not have heard (Redis was unreachable, or the worker died before telling it)."""
        ops: list[dict[str, Any]] = []
        logs: dict[str, list[dict[str, Any]]] = {}
        for key, owner, state in swept:
            if owner not in logs:
                logs[owner] = WorkerLog.read(self._out, owner)
            records = [record for record in logs[owner] if record.get("key") == key]
            task_id = next((r["task_id"] for r in reversed(records) if r.get("task_id")), None)
            ended = next((r for r in reversed(records) if r.get("state") in ("succeeded", "failed")), None)
            if ended is not None and state in ("uncertain", "submitted"):
                ops.append(self._op(key, ended["state"], row_fields(ended), expect=state))
            elif state == "uncertain" and task_id is not None:
                ops.append(self._op(key, "submitted", {"task_id": task_id}, expect=state, queue=True))
            elif state == "uncertain" and not any(r.get("op") == "sending" for r in records):
                # Claimed, but its request was never sent: nothing was bought, the row is to do again.
                ops.append(self._op(key, "todo", {"reason": None}, expect=state, queue=True))
            elif state == "uncertain":
                self.say(
                    f"row {key}: UNCERTAIN, its worker {owner} stopped while its submission was on the way;"
                    " left alone (--resubmit-uncertain)"
                )
        if ops:
            await self._reachable(functools.partial(self._write, ops))

    # -- records (synchronous: written to this worker's log now, to Redis by `keep_alive`) ---------------

    @staticmethod
    def _op(
        key: str,
        state: State | None,
        fields: dict[str, Any] | None = None,
        *,
        expect: str | None = None,
        ends: bool = False,
        queue: bool = False,
    ) -> dict[str, Any]:
        fields = fields or {}
        op: dict[str, Any] = {"key": key, "ends": ends, "queue": queue}
        if state is not None:
            op["state"] = state
        if given := {name: value for name, value in fields.items() if value is not None}:
            op["set"] = given
        if unset := [name for name, value in fields.items() if value is None]:
            op["unset"] = unset
        if expect is not None:
            op["expect"] = expect
        return op

    def _write_log(self, key: str, **record: Any) -> None:
        assert self._log is not None
        fingerprint = self._fingerprints.get(key)
        self._log.write({"at": precise_stamp(), "key": key, "fingerprint": fingerprint, **record})

    def _record(
        self, key: str, state: State | None, fields: dict[str, Any] | None = None, *, ends: bool = False
    ) -> None:
        # Before the rows are taken, a worker's decisions apply only to rows still as it read them (or as its
        # decision before this one left them).
        planning = self._planning and key in self._snapshot
        expect = self._snapshot[key].state if planning else None
        if planning and state is not None:
            self._snapshot[key] = attrs.evolve(self._snapshot[key], state=state)
        op = self._op(key, state, fields, expect=expect, ends=ends, queue=planning and state in ("todo", "submitted"))
        self._write_log(key, state=state, **(fields or {}))
        if ends:
            self._held.pop(key, None)
            self._row_ended.set()
        self._outbox.append(op)
        self._outbox_changed.set()

    def add(self, key: str, line: int, fingerprint: str) -> None:
        pass  # `join` added every row of the manifest

    def _apply(self, key: str, record: Record, **given: Any) -> None:
        # What the record sets and clears is the table's (`transitions`), as for the SQLite journal.
        state, fields = changes(record, **given)
        self._record(key, state, fields, ends=TRANSITIONS[record].ends)

    def reset(self, key: str, fingerprint: str) -> None:
        self._apply(key, "reset", fingerprint=fingerprint)

    def submitting(self, key: str, webhook_token: str | None, sent_at: float) -> None:
        # Redis marked the row `submitting` when this worker claimed it; the log says the request goes out.
        # A worker whose lease may have lapsed (it stalled, or lost Redis) may have lost the row to a worker
        # that read in its log that it was never sent: it stops rather than send it too. A healthy worker
        # renews every third of a lease.
        renewed = self._clock.now() - self._renewed_at
        if renewed > self._lease / 2:
            raise RedisJournalError(
                f"row {key}: not sent, this worker's lease may have lapsed (renewed {renewed:.1f} s ago, lease"
                f" {self._lease:g} s); it stops taking rows"
            )
        state, fields = changes("submitting", webhook_token=webhook_token, sent_at=sent_at)
        self._write_log(key, op="sending", **fields)
        self._held[key] = True
        self._outbox.append(self._op(key, state, fields))
        self._outbox_changed.set()

    def submitted(self, key: str, task_id: str) -> None:
        self._apply(key, "submitted", task_id=task_id)

    def succeeded(self, key: str, file: str, size: int, sha256: str) -> None:
        self._apply(key, "succeeded", file=file, size=size, sha256=sha256)

    def refetch(self, key: str, reason: str) -> None:
        self._apply(key, "refetch", reason=reason)

    def not_downloaded(self, key: str, reason: str) -> None:
        self._apply(key, "not_downloaded", reason=reason)

    def failed(self, key: str, reason: str, task_id: str | None = None) -> None:
        self._apply(key, "failed", reason=reason, task_id=task_id or None)

    def uncertain(self, key: str, reason: str, likely_created: bool | None = None) -> None:
        self._apply(key, "uncertain", reason=reason, likely_created=likely_created)

    def release(self, key: str) -> None:
        if self._held.get(key) is False:  # claimed to submit, never sent: to do again, by anyone
            self._write_log(key, state="todo")
            self._outbox.append(self._op(key, "todo", ends=True, queue=True))
            self._held.pop(key)
            self._outbox_changed.set()
            return
        self._record(key, None, ends=True)

    def listening(self, span: ListenerSpan) -> None:
        pass  # a shared run keeps no record of its workers' receivers: a missing delivery proves nothing there

    async def listener_spans(self) -> list[ListenerSpan]:
        return []

    # -- the run ----------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the outbox to Redis, in order, in one round trip; retried while Redis is unreachable."""
        async with self._flushing:
            while self._outbox:
                batch = list(self._outbox)
                answer = await self._reachable(functools.partial(self._write, batch))
                for _ in batch:
                    self._outbox.popleft()
                for op, result in zip(batch, _listed(answer.get("results")), strict=False):
                    if result == "taken" and "expect" not in op:
                        self.say(f"row {op['key']}: another worker took it over (this worker's lease had lapsed)")

    async def _write(self, ops: list[dict[str, Any]]) -> Any:
        return await self._call("RECORD", self.worker, self._lease_ms, _stamp(), json.dumps(ops))

    async def keep_alive(self) -> None:
        """Runs beside the run until cancelled: writes the outbox as it fills, and renews this worker's lease."""
        while True:
            # A timer in real seconds, as the lease is.
            with anyio.move_on_after(self._lease / 3):
                if not self._outbox:
                    self._outbox_changed = anyio.Event()
                    await self._outbox_changed.wait()
            if self._outbox:
                await self._flush()  # which renews the lease too
            else:
                await self._reachable(functools.partial(self._write, []))

    async def work(self, planned: Sequence[Work]) -> AsyncIterator[Work]:
        """The rows this worker works on, claimed one by one from the run's queue (which the starts of this
        and every other worker filled), while the run's claims leave room. Ends when nothing is queued and no
        other worker holds a row (one that dies leaves its rows to the queue)."""
        del planned  # queued by this worker's records at its start
        await self._flush()
        self._planning = False
        while True:
            await self._flush()
            answer = await self._reachable(
                lambda: self._call("CLAIM", self.worker, self._lease_ms, self._concurrency, _stamp())
            )
            if swept := _listed(answer.get("swept")):
                await self._adopt(swept)  # which may give the queue rows back
                if "key" not in answer:
                    continue
            if "key" in answer:
                row = _row_from(answer["key"], answer["row"])
                submit = answer["kind"] == "submit"
                if submit:
                    self._write_log(row.key, op="claimed")
                self._held[row.key] = not submit
                yield Work(row.key, None if submit else row.task_id)
            elif "empty" in answer and not answer["empty"]:
                return
            else:
                # The run is full (or others hold the last rows): look again soon, or as soon as a row of this
                # worker ends. A timer in real seconds, as the lease is.
                self._row_ended = anyio.Event()
                with anyio.move_on_after(min(1.0, self._lease / 10)):
                    await self._row_ended.wait()

    async def entries(self) -> list[JournalRow]:
        entries: list[JournalRow] = await self._reachable(lambda: _entries(self._redis, self._keys))
        return entries

    def _log_path(self) -> str:
        return str(self._log.path) if self._log is not None else "this worker's log"

    async def aclose(self, *, flush_timeout: float) -> None:
        """Write what is left (waiting up to `flush_timeout` for Redis), and give back what this worker holds:
        a row claimed to submit whose request never went out is to do again."""
        for key, sent in list(self._held.items()):
            if not sent:
                self.release(key)
        if not self._run_id:  # never joined: nothing to write, nothing held
            flush_timeout = 0
        try:
            with anyio.move_on_after(flush_timeout):
                await self._flush()
                left = await self._reachable(lambda: self._call("LEAVE", self.worker, _stamp()))
                await self._adopt(_listed(left.get("swept")))
            if self._outbox:
                self.say(
                    f"Redis journal {self.where} still unreachable: {len(self._outbox)} record(s) not written;"
                    f" they are in {self._log_path()}, which the next run reads"
                )
        finally:
            if self._log is not None:
                self._log.close()
            await self._redis.aclose()


class _RunLost(Exception):
    """Redis answered, but no longer holds the run this worker joined."""


async def run_names(client: Redis) -> list[str]:
    """The names of the runs a database holds (the runs' `meta` keys, found with SCAN)."""
    start, end = f"{_KEY_PREFIX}:{{run:", "}:meta"
    names = [_text(key)[len(start) : -len(end)] async for key in client.scan_iter(match=f"{start}*{end}")]
    return sorted(names)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _entries(client: Redis, keys: Sequence[str]) -> list[JournalRow]:
    found = await client.hgetall(keys[_KEY_PARTS.index("rows")])
    rows = [_row_from(_text(key), _text(raw)) for key, raw in found.items()]
    return sorted(rows, key=lambda row: row.line)


async def read_run(url: str, run_name: str | None) -> tuple[list[JournalRow], dict[str, str]]:
    """`status` and `run --dry-run` with a redis:// journal: every row of the run, and its manifest's identity;
    read only. Without a `run_name` (`status`), the one run of the database (`RedisJournalError` if several)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    module = redis_module()
    try:
        client: Redis = module.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
    except ValueError as error:
        raise RedisJournalError(f"--journal {shown_url(url)}: {error}") from None
    try:
        if run_name is None:
            names = await run_names(client)
            if len(names) > 1:
                raise RedisJournalError(
                    f"the Redis journal {shown_url(url)} holds several runs: name one with --run-name"
                    f" ({', '.join(names)})"
                )
            if not names:
                return [], {}
            run_name = names[0]
        keys = run_keys(run_name)
        meta = await client.hgetall(keys[_KEY_PARTS.index("meta")])
        if not meta:
            return [], {}
        return await _entries(client, keys), {_text(k): _text(v) for k, v in meta.items()}
    except (RedisConnectionError, RedisTimeoutError) as error:
        raise RedisJournalError(f"cannot reach the Redis journal {shown_url(url)}: {error}") from None
    finally:
        await client.aclose()
