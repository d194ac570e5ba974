"""`pixverse-async run`: a manifest's rows through `as_completed`, each video downloaded as it is ready, with a
journal that makes a rerun resume instead of paying twice.

Before anything is sent, the run checks that `--out` takes files, takes the journal's lock (one run per journal)
and checks that the journal belongs to this manifest. Then the journal decides each row's fate: `succeeded`
rows whose file is there with the size and sha256 the journal recorded are skipped (a missing or changed file is
fetched again through task-result), `submitted` rows are polled by task id, `submitting` rows (the process died
while the request was out) become `uncertain`, and `uncertain` and `failed` rows are reported and left alone
unless `--resubmit-uncertain` / `--retry-failed` is given. `plan_rows` decides that
without writing anything, so that `run --dry-run` shares it; a run then writes its decisions to the journal.

The journal is a `RunJournal`: the SQLite file, or a run shared by many processes through Redis
(`redis_journal`), where each worker plans the rows no other worker holds and then takes its rows one at a
time from the whole run's queue, within the run's `--concurrency`.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO, final

import anyio
import attrs
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from .._bulk import EventKind, JobEvent, KeyedJob
from .._client import PixVerseClient
from .._exceptions import (
    APIConnectionError,
    AuthenticationError,
    DownloadError,
    InsufficientBalanceError,
    NotFoundError,
    PermissionDeniedError,
    PixVerseError,
    RateLimitError,
    SubmissionUncertainError,
    VideoExpiredError,
)
from .._models import JobResult
from .journal import (
    Journal,
    JournalError,
    JournalRow,
    RunJournal,
    SQLiteJournal,
    Work,
    check_manifest_identity,
)
from .manifest import ManifestRow, read_manifest
from .progress import Display, PlainDisplay, RunProgress, console_for, display_for, problems_table, summary_table
from .redis_journal import DEFAULT_CLAIM_LEASE_REAL_SECONDS, default_run_name
from .transitions import another_manifest, same_manifest

if TYPE_CHECKING:
    from .redis_journal import RedisJournal

DEFAULT_JOURNAL_NAME = "pixverse-journal.sqlite"
_DOWNLOADS_AT_ONCE = 4


# Submission errors after which the API certainly created no task (and a rerun should try the row again).
_NOTHING_CREATED = (
    APIConnectionError,
    AuthenticationError,
    InsufficientBalanceError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)


class RunAborted(Exception):
    """The run cannot go on (unreachable API, full disk...): one line for the user; the journal is intact."""


@attrs.frozen
class RunOptions:
    manifest: Path
    out: Path
    journal: Path | None = None
    concurrency: int = 16
    resubmit_uncertain: bool = False
    retry_failed: bool = False
    # A run shared through Redis (`--journal redis://...`) instead of a journal file, and its workers' lease.
    journal_url: str | None = None
    lease: float = DEFAULT_CLAIM_LEASE_REAL_SECONDS
    # The run's name in Redis (None: the manifest's file name).
    run_name: str | None = None

    @property
    def journal_path(self) -> Path:
        return self.journal or self.out / DEFAULT_JOURNAL_NAME

    @property
    def shared_run_name(self) -> str:
        return self.run_name or default_run_name(self.manifest)


Action = Literal["submit", "poll", "fetch_again", "done", "uncertain", "failed"]


@attrs.frozen
class RowPlan:
    """What a run does with one manifest row, decided from the journal before anything is sent."""

    row: ManifestRow
    action: Action
    task_id: str | None = None
    in_journal: bool = True
    # The journal says `submitting`: the process died while the request was out. It becomes `uncertain`.
    was_submitting: bool = False
    reason: str | None = None


def plan_rows(rows: Sequence[ManifestRow], journal_rows: Iterable[JournalRow], options: RunOptions) -> list[RowPlan]:
    """Decide every row's fate from the journal, as `run` and `run --dry-run` both do; changes nothing.

    Raises `RunAborted` when a row that was paid for changed in the manifest since."""
    entries = {entry.key: entry for entry in journal_rows}
    changed = [
        f"line {row.line}: row {row.key!r} changed since it was submitted (task {entry.task_id or '?'});"
        " use another --journal to run it as a new job"
        for row in rows
        if (entry := entries.get(row.key)) is not None
        and entry.fingerprint != row.fingerprint
        and entry.state not in ("todo", "failed")
    ]
    if changed:
        raise RunAborted("\n".join(changed))
    return [_plan_row(row, entries.get(row.key), options) for row in rows]


def _plan_row(row: ManifestRow, entry: JournalRow | None, options: RunOptions) -> RowPlan:
    if entry is None:
        return RowPlan(row, "submit", in_journal=False)
    if entry.fingerprint != row.fingerprint or entry.state == "todo":
        return RowPlan(row, "submit")
    was_submitting = entry.state == "submitting"
    if was_submitting or entry.state == "uncertain":
        # Died while the request was out, or the answer was lost: the task may exist. Never guess.
        reason = _DIED_SUBMITTING if was_submitting else entry.reason
        action: Action = "submit" if options.resubmit_uncertain else "uncertain"
        return RowPlan(row, action, was_submitting=was_submitting, reason=reason)
    if entry.state == "failed":
        return RowPlan(row, "submit" if options.retry_failed else "failed", reason=entry.reason)
    if entry.state == "succeeded":
        problem = _file_problem(options.out / row.file_name, entry)
        if problem is None:
            return RowPlan(row, "done", entry.task_id)
        # Paid for, but its file is gone or not the one downloaded: poll the task for a fresh link, never resubmit.
        return RowPlan(row, "fetch_again", entry.task_id, reason=problem)
    return RowPlan(row, "poll", entry.task_id)


_DIED_SUBMITTING = "the run stopped while this row's submission was being sent"


def _file_problem(path: Path, entry: JournalRow) -> str | None:
    """What is wrong with a succeeded row's file, or None if it is the one the journal recorded."""
    if not path.is_file():
        return f"{path} is missing"
    if entry.size is None or entry.sha256 is None:
        return f"{path} has no size and sha256 in the journal to check it by"
    if path.stat().st_size != entry.size or _size_and_sha256(path) != (entry.size, entry.sha256):
        return f"{path} is not the video downloaded (its size or sha256 differs from the journal's)"
    return None


@final
class ManifestRun:
    """One `run`: the rows, their journal, and the client that does the work."""

    def __init__(self, options: RunOptions, client: PixVerseClient, console: Console) -> None:
        self.options = options
        self.client = client
        self.console = console
        self.rows = read_manifest(options.manifest)
        self.by_key = {row.key: row for row in self.rows}
        check_output_folder(options.out)
        self.progress = RunProgress(total=len(self.rows))
        self.display: Display = PlainDisplay(console)
        self.refetching: dict[str, str] = {}  # key -> what was wrong with the row's file
        self.shared = options.journal_url is not None
        self.journal: RunJournal = (
            SQLiteJournal(options.journal_path) if options.journal_url is None else self._redis_journal()
        )

    def _redis_journal(self) -> RedisJournal:
        from .redis_journal import RedisJournal

        assert self.options.journal_url is not None
        return RedisJournal(
            self.options.journal_url,
            out=self.options.out,
            concurrency=self.options.concurrency,
            run_name=self.options.shared_run_name,
            lease=self.options.lease,
            say=lambda line: self.display.log(line),
        )

    async def aclose(self) -> None:
        await self.journal.aclose(flush_timeout=2 * self.options.lease)

    async def plan(self) -> list[Work]:
        """Join the journal (refusing another manifest's), bring it up to date with the manifest and list the
        work: rows to submit, tasks to follow. A shared run plans the rows no other worker holds."""
        manifest_path, manifest_rows = manifest_identity(self.options.manifest, self.rows)
        try:
            entries = await self.journal.join(manifest_path, manifest_rows, self.rows)
        except JournalError as error:
            raise RunAborted(str(error)) from None
        rows = self.rows
        if self.shared:
            free = {entry.key for entry in entries}
            rows = [row for row in self.rows if row.key in free]
        work: list[Work] = []
        for plan in plan_rows(rows, entries, self.options):
            row = plan.row
            if not plan.in_journal:
                self.journal.add(row.key, row.line, row.fingerprint)
            if plan.was_submitting:
                self.journal.uncertain(row.key, _DIED_SUBMITTING)
            if plan.action == "submit":
                self.journal.reset(row.key, row.fingerprint)
                work.append(Work(row.key))
            elif plan.action in ("poll", "fetch_again"):
                if plan.action == "fetch_again" and plan.reason is not None:
                    # Paid for, but its video is not the one downloaded: fetch it again (a fresh link).
                    self.refetching[row.key] = plan.reason
                    self.journal.refetch(row.key, f"{plan.reason}; fetching it again")
                    self.display.log(f"row {row.key}: {plan.reason}; fetching it again through task-result")
                work.append(Work(row.key, plan.task_id or ""))
            elif plan.action == "done":
                self.progress.already_done += 1
            else:
                self.progress.left_alone += 1
                if plan.action == "uncertain":
                    self.display.log(f"row {row.key} (line {row.line}): uncertain, left alone (--resubmit-uncertain)")
        if self.shared:  # the rows this worker takes are counted as it takes them
            self.progress.total = self.progress.already_done + self.progress.left_alone
        return work

    async def _jobs(self, work: Sequence[Work]) -> AsyncIterator[KeyedJob]:
        async for item in self.journal.work(work):
            row = self.by_key.get(item.key)
            if row is None:  # a row of the shared run that this worker's manifest does not have
                self.journal.release(item.key)
                continue
            if self.shared:
                self.progress.total += 1
            yield (item.key, row.request if item.task_id is None else item.task_id)

    async def execute(self, *, live: bool = True) -> None:
        work = await self.plan()
        self.display = display_for(self.console, self.progress, live=live)
        try:
            async with anyio.create_task_group() as beside:
                beside.start_soon(self.journal.keep_alive)
                async with (
                    anyio.create_task_group() as downloads,
                    self.client.as_completed(self._jobs(work), on_event=self._on_event) as results,
                ):
                    self.progress.batch = results.counts
                    download_slots = anyio.Semaphore(_DOWNLOADS_AT_ONCE)
                    async for result in results:
                        key = str(result.key)
                        if result.ok:
                            await download_slots.acquire()
                            downloads.start_soon(self._download, key, result, download_slots)
                        else:
                            self._record_failure(key, result)
                        self.display.refresh()
                beside.cancel_scope.cancel()
        finally:
            self.display.close()

    def _on_event(self, event: JobEvent) -> None:
        key = str(event.key)
        if event.kind is EventKind.SUBMITTING:
            self.journal.submitting(key, event.webhook_token, time.time())
        elif event.kind is EventKind.SUBMITTED and event.task_id is not None:
            if isinstance(event.request, str):  # resumed: already journaled as submitted
                self.display.refresh()
                return
            self.journal.submitted(key, event.task_id)
            self.display.log(f"submitted row {key} as task {event.task_id}")
        elif event.kind is EventKind.RETRIED:
            self.display.log(f"row {key}: retrying the submission ({event.error})")
        else:
            self.display.refresh()

    def _record_failure(self, key: str, result: JobResult) -> None:
        error = result.error
        if result.task_id is not None:
            if result.status is None and not isinstance(error, NotFoundError):
                # Polling gave up (an outage, say): the task is still ours, and a rerun polls it again.
                if key in self.refetching:
                    self.journal.not_downloaded(key, f"{self.refetching[key]}; not fetched again: {error}")
                self.journal.release(key)
                self.display.log(f"row {key}: task {result.task_id} not finished ({error}); rerun to resume")
                return
        elif isinstance(error, SubmissionUncertainError):
            self.journal.uncertain(key, str(error))
            self.display.log(f"row {key}: UNCERTAIN, a task may have been created: {error}")
            return
        elif isinstance(error, _NOTHING_CREATED):
            # The API created nothing: the row stays to do for the next run.
            self.journal.reset(key, self.by_key[key].fingerprint)
            if isinstance(error, APIConnectionError):
                raise RunAborted(f"cannot reach the API at {self.client.base_url}: {error}")
            self.display.log(f"row {key} not submitted: {error}")
            return
        self.journal.failed(key, str(error), result.task_id)
        self.display.log(f"row {key} failed: {error}")

    async def _download(self, key: str, result: JobResult, slots: anyio.Semaphore) -> None:
        row = self.by_key[key]
        target = self.options.out / row.file_name
        try:
            try:
                await self.client.download(result, target)
            except VideoExpiredError:
                fresh = await self.client.get_task(result.task_id or "")
                await self.client.download(fresh, target)
            size, digest = await anyio.to_thread.run_sync(_size_and_sha256, target)
        except PixVerseError as error:
            if isinstance(error, DownloadError) and isinstance(error.__cause__, OSError):
                raise RunAborted(str(error)) from None
            self.journal.not_downloaded(key, f"video not downloaded: {error}")
            self.progress.download_failed += 1
            self.display.log(f"row {key}: download failed ({error}); rerun to fetch it again")
            return
        finally:
            slots.release()
        self.journal.succeeded(key, row.file_name, size, digest)
        self.progress.downloaded += 1
        self.display.log(f"row {key} done: {target} ({size} bytes)")

    async def summary(self) -> tuple[list[RenderableType], bool]:
        """Tables of the rows' states, and whether every row succeeded."""
        # Only this manifest's rows count: a row dropped from the manifest is kept in the journal, not reported.
        entries = [entry for entry in await self.journal.entries() if entry.key in self.by_key]
        tables: list[RenderableType] = [summary_table(entries)]
        problems = problems_table(entries)
        if problems is not None:
            tables.append(problems)
        tables.append(Text(f"journal: {self.journal.where}", overflow="fold"))
        return tables, problems is None


def manifest_identity(manifest: Path, rows: Sequence[ManifestRow]) -> tuple[str, str]:
    """What a journal records of its manifest: its resolved path, and a hash of its rows."""
    path = str(manifest.resolve())
    return path, hashlib.sha256("".join(f"{r.key}\0{r.fingerprint}\n" for r in rows).encode()).hexdigest()


def check_output_folder(out: Path) -> None:
    """Refuse, before anything is paid for, an `--out` where a video cannot be saved (created, renamed)."""
    if out.exists() and not out.is_dir():
        raise RunAborted(f"--out {out}: is not a folder; nothing was sent")
    probe = out / f".pixverse-probe-{secrets.token_hex(4)}.part"
    saved = probe.with_suffix(".mp4")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with probe.open("xb") as file:
            file.write(b"\0" * 1024)
        probe.replace(saved)
    except OSError as error:
        reason = error.strerror or error
        raise RunAborted(f"--out {out}: cannot save videos there ({reason}); nothing was sent") from None
    finally:
        for leftover in (probe, saved):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def run_manifest(
    options: RunOptions, client: PixVerseClient, stream: TextIO = sys.stdout, *, live: bool = True
) -> int:
    """Run a manifest with an open client; the exit code: 0 only if every row succeeded.

    On a terminal (and with `live`) a progress bar is drawn; elsewhere each event is a plain line."""
    console = console_for(stream)
    run = ManifestRun(options, client, console)
    try:
        await run.execute(live=live)
        tables, all_succeeded = await run.summary()
        console.print()
        for table in tables:
            console.print(table)
        return 0 if all_succeeded else 1
    finally:
        with anyio.CancelScope(shield=True):  # what this worker learnt is written even when it is cancelled
            await run.aclose()


def dry_run(options: RunOptions, *, base_url: str, has_key: bool, stream: TextIO = sys.stdout) -> int:
    """`run --dry-run`: check the manifest and the journal as a run would, say what it would do, send nothing.

    The journal is read, never written (nor created); `out` is not created either."""
    rows = read_manifest(options.manifest)
    identity = manifest_path, manifest_rows = manifest_identity(options.manifest, rows)
    entries: list[JournalRow] = []
    if options.journal_url is not None:
        from .._redis_common import shown_url
        from .redis_journal import read_run

        where = f"{shown_url(options.journal_url)} (run {options.shared_run_name})"
        entries, meta = anyio.run(read_run, options.journal_url, options.shared_run_name)
        known_path = meta.get("manifest_path")
        if known_path is not None and not same_manifest(known_path, meta.get("manifest_rows"), *identity):
            hint = "name this manifest's run with --run-name, or use another database"
            raise RunAborted(another_manifest(where, known_path, hint=hint))
        exists = bool(meta)
    else:
        where, exists = str(options.journal_path), options.journal_path.is_file()
        if exists:
            journal = Journal.open_existing(options.journal_path)
            try:
                check_manifest_identity(journal, manifest_path, manifest_rows)  # refused as the run would
                entries = journal.rows()
            except JournalError as error:
                raise RunAborted(str(error)) from None
            finally:
                journal.close()
    plans = plan_rows(rows, entries, options)
    console = console_for(stream)
    journal_note = "" if exists else ", not created yet"
    console.print(
        Text(
            f"dry run: nothing was sent. {len(rows)} rows in {options.manifest}; journal {where}"
            f"{journal_note}; API {base_url}",
            overflow="fold",
        )
    )
    console.print(plan_table(plans))
    for plan in plans:
        if plan.action == "uncertain":
            console.print(
                Text(
                    f"row {plan.row.key} (line {plan.row.line}): uncertain, left alone: {plan.reason}", overflow="fold"
                )
            )
    if not has_key:
        console.print("note: no API key ($PIXVERSE_API_KEY): the real run needs one (a dry run does not)")
    return 0


def plan_table(plans: Sequence[RowPlan]) -> Table:
    """What a run would do, by action; the rows to submit by resolution and fast mode."""
    by_action = Counter(plan.action for plan in plans)
    table = Table(title="what the run would do", title_justify="left")
    table.add_column("action", overflow="fold")
    table.add_column("rows", justify="right")
    table.add_row("submit (paid)", str(by_action["submit"]))
    by_kind = Counter(
        (plan.row.request.resolution, plan.row.request.fast_mode) for plan in plans if plan.action == "submit"
    )
    for (resolution, fast_mode), count in sorted(by_kind.items()):
        table.add_row(f"  {resolution}{', fast mode' if fast_mode else ''}", str(count))
    for action, label in _ACTION_LABELS.items():
        if by_action[action]:
            table.add_row(label, str(by_action[action]))
    table.add_row("total", str(len(plans)), style="bold")
    return table


_ACTION_LABELS: dict[Action, str] = {
    "poll": "poll (submitted earlier)",
    "fetch_again": "fetch again (file missing)",
    "done": "already done",
    "uncertain": "left alone: uncertain (--resubmit-uncertain)",
    "failed": "left alone: failed (--retry-failed)",
}
