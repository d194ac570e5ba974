"""`pixverse-async run`: a manifest's rows through `as_completed`, each video downloaded as it is ready, with a
journal that makes a rerun resume instead of paying twice.

Before anything is sent, the run checks that `--out` takes files, takes the journal's lock (one run per journal)
and checks that the journal belongs to this manifest. Then the journal decides each row's fate: `succeeded`
rows whose file is there with the size and sha256 the journal recorded are skipped (a missing or changed file is
fetched again through task-result), `submitted` rows are polled by task id, `submitting` rows (the process died
while the request was out) become `uncertain`, and `uncertain` and `failed` rows are reported and left alone
unless `--resubmit-uncertain` (rows judged not created only), `--resubmit-unknown-may-pay-twice` (every
uncertain row) or `--retry-failed` is given. With `--webhook-url`, an uncertain row whose submission carried a
webhook token is awaited instead (`UncertainSubmission`): its late delivery resolves it (see `listener`).
`plan_rows` decides that without writing anything, so that `run --dry-run` shares it; a run then writes its
decisions to the journal.

The journal is a `RunJournal`: the SQLite file, or a run shared by many processes through Redis
(`redis_journal`), where each worker plans the rows no other worker holds and then takes its rows one at a
time from the whole run's queue, within the run's `--concurrency`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO, final

import anyio
import attrs
from rich.console import Console, RenderableType
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
from .._models import JobResult, UncertainSubmission
from .journal import (
    JournalError,
    JournalRow,
    ListenerSpan,
    RunJournal,
    SQLiteJournal,
    Work,
)
from .listener import WebhookListener, missed_delivery
from .manifest import ManifestRow, read_manifest
from .progress import Display, PlainDisplay, RunProgress, console_for, display_for, problems_table, summary_table
from .redis_journal import DEFAULT_CLAIM_LEASE_REAL_SECONDS, default_run_name

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
    # Resubmit every uncertain row, those whose creation is unknown too (they may be paid twice).
    resubmit_unknown: bool = False
    # `--webhook-url` and `--webhook-listen` (host, port): the run's own webhook receiver.
    webhook_url: str | None = None
    webhook_listen: tuple[str, int] | None = None
    # `--time-scale`: real seconds per API second (to read the journal's wall-clock times in API seconds).
    time_scale: float = 1.0

    @property
    def journal_path(self) -> Path:
        return self.journal or self.out / DEFAULT_JOURNAL_NAME

    @property
    def shared_run_name(self) -> str:
        return self.run_name or default_run_name(self.manifest)


Action = Literal["submit", "poll", "fetch_again", "done", "await", "uncertain", "failed"]


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
    # An uncertain row's verdict (False: judged not created; None: unknown).
    likely_created: bool | None = None
    # `await`: the token its delivery names, and why that delivery may have come while no run listened.
    webhook_token: str | None = None
    missed: str | None = None


@attrs.frozen
class Listening:
    """This run's webhook receiver (`url`, up since `since`, wall clock) and the earlier runs' (`spans`)."""

    url: str
    since: float
    spans: Sequence[ListenerSpan]
    time_scale: float

    def missed(self, entry: JournalRow) -> str | None:
        return missed_delivery(
            entry.sent_at, self.url, self.spans, listening_since=self.since, time_scale=self.time_scale
        )


def plan_rows(
    rows: Sequence[ManifestRow],
    journal_rows: Iterable[JournalRow],
    options: RunOptions,
    listening: Listening | None = None,
) -> list[RowPlan]:
    """Decide every row's fate from the journal, as `run` and `run --dry-run` both do; changes nothing.
    `listening`: webhooks are on (uncertain rows with a token are awaited).

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
    return [_plan_row(row, entries.get(row.key), options, listening) for row in rows]


def _plan_row(row: ManifestRow, entry: JournalRow | None, options: RunOptions, listening: Listening | None) -> RowPlan:
    if entry is None:
        return RowPlan(row, "submit", in_journal=False)
    if entry.fingerprint != row.fingerprint or entry.state == "todo":
        return RowPlan(row, "submit")
    was_submitting = entry.state == "submitting"
    if was_submitting or entry.state == "uncertain":
        # Died while the request was out, or the answer was lost: the task may exist. Never guess.
        reason = _DIED_SUBMITTING if was_submitting else entry.reason
        verdict = None if was_submitting else entry.likely_created
        plan = functools.partial(RowPlan, row, was_submitting=was_submitting, reason=reason, likely_created=verdict)
        if options.resubmit_unknown or (options.resubmit_uncertain and verdict is False):
            return plan("submit")
        # Its delivery is awaited unless a run awaited it to the end already (and judged it).
        unjudged = was_submitting or entry.reason == _DIED_SUBMITTING
        if listening is not None and entry.webhook_token and unjudged:
            missed = listening.missed(entry)
            if not missed or "another URL" not in missed:
                return plan("await", webhook_token=entry.webhook_token, missed=missed)
        return plan("uncertain")
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


def left_alone(plan: RowPlan) -> str:
    if plan.likely_created is False:
        return "judged not created, left alone (--resubmit-uncertain resubmits it)"
    return "created or not unknown, left alone (--resubmit-unknown-may-pay-twice resubmits it, and may pay twice)"


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
        self.listener: WebhookListener | None = None
        # Rows without a task id whose submission carried a webhook token: token -> row key (see `_delivered`),
        # and back.
        self._awaited: dict[str, str] = {}
        self._token_of: dict[str, str] = {}
        # Rows whose task a delivery named (row key -> task id).
        self._found: dict[str, str] = {}

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
        try:
            if self.listener is not None:
                await self.listener.aclose()
        finally:
            await self.journal.aclose(flush_timeout=2 * self.options.lease)

    async def plan(self) -> list[Work]:
        """Join the journal (refusing another manifest's), start the webhook receiver if asked, bring the
        journal up to date with the manifest and list the work: rows to submit, tasks to follow, deliveries to
        await. A shared run plans the rows no other worker holds."""
        manifest_path, manifest_rows = manifest_identity(self.options.manifest, self.rows)
        try:
            entries = await self.journal.join(manifest_path, manifest_rows, self.rows)
        except JournalError as error:
            raise RunAborted(str(error)) from None
        listening = await self._listen()
        rows = self.rows
        if self.shared:
            free = {entry.key for entry in entries}
            rows = [row for row in self.rows if row.key in free]
        work: list[Work] = []
        awaiting: list[Work] = []
        tokens = {entry.key: entry.webhook_token for entry in entries if entry.state in ("submitting", "uncertain")}
        for plan in plan_rows(rows, entries, self.options, None if self.shared else listening):
            row = plan.row
            if not plan.in_journal:
                self.journal.add(row.key, row.line, row.fingerprint)
            if plan.was_submitting:
                self.journal.uncertain(row.key, _DIED_SUBMITTING)
            if plan.action != "submit" and (token := tokens.get(row.key)):
                self._await(token, row.key)  # a late delivery still names its task
            if plan.action == "await" and plan.webhook_token is not None:
                awaiting.append(Work(row.key, None, plan.webhook_token, plan.missed is not None))
                missed = f"; {plan.missed}, so if none comes it stays unknown" if plan.missed else ""
                self.display.log(f"row {row.key} (line {row.line}): uncertain, awaiting its webhook delivery{missed}")
            elif plan.action == "submit":
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
                    self.display.log(f"row {row.key} (line {row.line}): uncertain, {left_alone(plan)}")
        if self.shared:  # the rows this worker takes are counted as it takes them
            self.progress.total = self.progress.already_done + self.progress.left_alone
        # Each awaited row holds a running-task slot while it waits, which the slow start grows only as tasks are
        # accepted: taken first, they would hold its first slots meanwhile. After twice as many other rows, the
        # window has room for them, and the waits run beside the work.
        later = 2 * len(awaiting)
        return work[:later] + awaiting + work[later:]

    async def _listen(self) -> Listening | None:
        """Start the webhook receiver (before anything is sent; a port in use aborts the run)."""
        options = self.options
        if options.webhook_url is None or options.webhook_listen is None:
            return None
        spans = await self.journal.listener_spans()
        host, port = options.webhook_listen
        self.listener = WebhookListener(
            self.client,
            self.journal,
            url=options.webhook_url,
            host=host,
            port=port,
            time_scale=options.time_scale,
            on_delivery=self._delivered,
        )
        try:
            since = await self.listener.start()
        except OSError as error:
            self.listener = None
            reason = error.strerror or error
            raise RunAborted(
                f"--webhook-listen {host}:{port}: cannot listen there ({reason}); nothing was sent"
            ) from None
        self.display.log(f"listening for webhook deliveries on {host}:{port} ({options.webhook_url})")
        return Listening(options.webhook_url, since, spans, options.time_scale)

    def _await(self, token: str, key: str) -> None:
        self._awaited[token] = key
        self._token_of[key] = token

    def _delivered(self, token: str, task_id: str) -> None:
        """A delivery named a row's token: its task exists. Journaled before the delivery is answered."""
        key = self._awaited.pop(token, None)
        if key is None:
            return
        self._token_of.pop(key, None)
        self._found[key] = task_id
        self.journal.submitted(key, task_id)
        self.display.log(f"row {key}: its webhook delivery names task {task_id}")

    async def _jobs(self, work: Sequence[Work]) -> AsyncIterator[KeyedJob]:
        async for item in self.journal.work(work):
            row = self.by_key.get(item.key)
            if row is None:  # a row of the shared run that this worker's manifest does not have
                self.journal.release(item.key)
                continue
            if self.shared:
                self.progress.total += 1
            if item.webhook_token is not None:
                found = self._found.get(item.key)  # its delivery came while it waited its turn
                yield (
                    item.key,
                    found
                    or UncertainSubmission(
                        row.request,
                        item.webhook_token,
                        delivery_may_have_been_missed=item.delivery_may_have_been_missed,
                    ),
                )
                continue
            yield (item.key, row.request if item.task_id is None else item.task_id)

    async def execute(self, *, live: bool = True) -> None:
        work = await self.plan()
        self.display = display_for(self.console, self.progress, live=live)
        try:
            async with anyio.create_task_group() as beside:
                beside.start_soon(self.journal.keep_alive)
                if self.listener is not None:
                    beside.start_soon(self.listener.keep_alive)
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
            if event.webhook_token is not None:
                self._await(event.webhook_token, key)
        elif event.kind is EventKind.SUBMITTED and event.task_id is not None:
            if isinstance(event.request, str) or self._found.get(key) == event.task_id:  # already journaled
                self.display.refresh()
                return
            self._awaited.pop(self._token_of.pop(key, ""), None)
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
            if key in self._found:  # its delivery came once the job had given up: the task is journaled
                self.display.log(f"row {key}: task {self._found[key]} found by its late delivery; rerun to fetch it")
                return
            self.journal.uncertain(key, str(error), error.likely_created)
            verdict = "judged not created" if error.likely_created is False else "a task may have been created"
            self.display.log(f"row {key}: UNCERTAIN, {verdict}: {error}")
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
