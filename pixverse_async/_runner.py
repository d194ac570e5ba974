"""`pixverse-async run`: a manifest's rows through `as_completed`, each video downloaded as it is ready, with a
journal that makes a rerun resume instead of paying twice.

Before anything is sent, the run checks that `--out` takes files, takes the journal's lock (one run per journal)
and checks that the journal belongs to this manifest. Then the journal decides each row's fate: `succeeded`
rows whose file is there with the size and sha256 the journal recorded are skipped (a missing or changed file is
fetched again through task-result), `submitted` rows are polled by task id, `submitting` rows (the process died
while the request was out) become `uncertain`, and `uncertain` and `failed` rows are reported and left alone
unless `--resubmit-uncertain` / `--retry-failed` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TextIO, final

import anyio
import attrs

from ._bulk import EventKind, Job, JobEvent, JobResult
from ._client import PixVerseClient
from ._exceptions import (
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
from ._journal import STATES, Journal, JournalInUse, JournalLock, JournalRow
from ._manifest import ManifestRow, read_manifest

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

    @property
    def journal_path(self) -> Path:
        return self.journal or self.out / DEFAULT_JOURNAL_NAME


@final
class Progress:
    """A live status line on a terminal (done/failed/running/queued, ETA); plain log lines elsewhere."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.live = stream.isatty()
        self.running = self.done = self.failed = 0
        self.started = time.monotonic()

    def log(self, line: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K")
        print(line, file=self.stream, flush=True)
        self.draw()

    def draw(self) -> None:
        if not self.live:
            return
        finished = self.done + self.failed
        queued = self.total - finished - self.running
        elapsed = time.monotonic() - self.started
        eta = f"ETA {elapsed / finished * (self.total - finished):.0f}s" if finished else "ETA --"
        filled = 24 * finished // max(self.total, 1)
        self.stream.write(
            f"\r\x1b[2K[{'#' * filled}{'.' * (24 - filled)}] {self.done} done, {self.failed} failed, "
            f"{self.running} running, {queued} queued, {elapsed:.0f}s, {eta}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()


@final
class ManifestRun:
    """One `run`: the rows, their journal, and the client that does the work."""

    def __init__(self, options: RunOptions, client: PixVerseClient, stream: TextIO) -> None:
        self.options = options
        self.client = client
        self.stream = stream
        self.rows = read_manifest(options.manifest)
        self.by_key = {row.key: row for row in self.rows}
        check_output_folder(options.out)
        with contextlib.ExitStack() as opened:
            try:
                lock = JournalLock(options.journal_path)
            except JournalInUse as error:
                raise RunAborted(f"{error}; nothing was sent (wait for it to end)") from None
            opened.callback(lock.release)
            self.journal = Journal(options.journal_path)
            opened.callback(self.journal.close)
            self._claim_journal()
            self._opened = opened.pop_all()
        self.progress = Progress(len(self.rows), stream)
        self.refetching: dict[str, str] = {}  # key -> what was wrong with the row's file

    def close(self) -> None:
        self._opened.close()  # the journal, then its lock

    def _claim_journal(self) -> None:
        """Refuse a journal made from another manifest: the same file (even edited) or the same rows (moved)."""
        path = str(self.options.manifest.resolve())
        rows = hashlib.sha256("".join(f"{r.key}\0{r.fingerprint}\n" for r in self.rows).encode()).hexdigest()
        known_path, known_rows = self.journal.meta("manifest_path"), self.journal.meta("manifest_rows")
        if known_path is not None and known_path != path and known_rows != rows:
            raise RunAborted(
                f"the journal {self.journal.path} belongs to another manifest ({known_path}); nothing was sent"
                " (use --journal FILE to give this manifest a journal of its own)"
            )
        self.journal.set_meta("manifest_path", path)
        self.journal.set_meta("manifest_rows", rows)

    def plan(self) -> tuple[list[Job], dict[int, str]]:
        """Bring the journal up to date with the manifest and list the work: requests and task ids to poll."""
        journal_rows = {row.key: row for row in self.journal}
        changed = [
            f"line {row.line}: row {row.key!r} changed since it was submitted (task {entry.task_id or '?'});"
            " use another --journal to run it as a new job"
            for row in self.rows
            if (entry := journal_rows.get(row.key)) is not None
            and entry.fingerprint != row.fingerprint
            and entry.state not in ("todo", "failed")
        ]
        if changed:
            raise RunAborted("\n".join(changed))
        jobs: list[Job] = []
        keys: dict[int, str] = {}
        for row in self.rows:
            entry = journal_rows.get(row.key)
            if entry is None:
                self.journal.add(row.key, row.line, row.fingerprint)
                entry = JournalRow(row.key, row.line, row.fingerprint, "todo")
            job = self._job_for(row, entry)
            if job is not None:
                jobs.append(job)
                keys[id(job)] = row.key
        return jobs, keys

    def _job_for(self, row: ManifestRow, entry: JournalRow) -> Job | None:
        if entry.fingerprint != row.fingerprint or entry.state == "todo":
            self.journal.reset(row.key, row.fingerprint)
            return row.request
        if entry.state == "submitting":
            # Died while the request was out: the task may exist. Never guess: report it.
            self.journal.uncertain(row.key, "the run stopped while this row's submission was being sent")
            entry = attrs.evolve(entry, state="uncertain")
        if entry.state == "uncertain":
            if self.options.resubmit_uncertain:
                self.journal.reset(row.key, row.fingerprint)
                return row.request
            self.progress.log(f"row {row.key} (line {row.line}): uncertain, left alone (--resubmit-uncertain)")
            self.progress.failed += 1
            return None
        if entry.state == "failed":
            if self.options.retry_failed:
                self.journal.reset(row.key, row.fingerprint)
                return row.request
            self.progress.failed += 1
            return None
        if entry.state == "succeeded":
            problem = self._file_problem(row, entry)
            if problem is None:
                self.progress.done += 1
                return None
            # Paid for, but its video is not the one downloaded: fetch it again (a fresh link), never resubmit.
            self.refetching[row.key] = problem
            self.journal.refetch(row.key, f"{problem}; fetching it again")
            self.progress.log(f"row {row.key}: {problem}; fetching it again through task-result")
        return entry.task_id

    def _file_problem(self, row: ManifestRow, entry: JournalRow) -> str | None:
        """What is wrong with a succeeded row's file, or None if it is the one the journal recorded."""
        path = self.options.out / row.file_name
        if not path.is_file():
            return f"{path} is missing"
        if entry.size is None or entry.sha256 is None:
            return f"{path} has no size and sha256 in the journal to check it by"
        size = path.stat().st_size
        if size != entry.size or _size_and_sha256(path) != (entry.size, entry.sha256):
            return f"{path} is not the video downloaded (its size or sha256 differs from the journal's)"
        return None

    async def execute(self) -> None:
        jobs, keys = self.plan()
        self.progress.draw()
        try:
            async with (
                anyio.create_task_group() as downloads,
                self.client.as_completed(jobs, on_event=self._on_event(keys)) as results,
            ):
                download_slots = anyio.Semaphore(_DOWNLOADS_AT_ONCE)
                async for result in results:
                    key = keys[id(result.request)]
                    if result.ok:
                        await download_slots.acquire()
                        downloads.start_soon(self._download, key, result, download_slots)
                    else:
                        self._record_failure(key, result)
        finally:
            self.progress.close()

    def _on_event(self, keys: dict[int, str]) -> Callable[[JobEvent], None]:
        def on_event(event: JobEvent) -> None:
            key = keys[id(event.request)]
            if event.kind is EventKind.SUBMITTING:
                self.journal.submitting(key)
            elif event.kind is EventKind.SUBMITTED and event.task_id is not None:
                if isinstance(event.request, str):  # resumed: already journaled as submitted
                    self.progress.running += 1
                    return
                self.journal.submitted(key, event.task_id)
                self.progress.running += 1
                self.progress.log(f"submitted row {key} as task {event.task_id}")
            elif event.kind is EventKind.RETRIED:
                self.progress.log(f"row {key}: retrying the submission ({event.error})")

        return on_event

    def _record_failure(self, key: str, result: JobResult) -> None:
        error = result.error
        self.progress.failed += 1
        if result.task_id is not None:
            self.progress.running -= 1
            if result.status is None and not isinstance(error, NotFoundError):
                # Polling gave up (an outage, say): the task is still ours, and a rerun polls it again.
                if key in self.refetching:
                    self.journal.not_downloaded(key, f"{self.refetching[key]}; not fetched again: {error}")
                self.progress.log(f"row {key}: task {result.task_id} not finished ({error}); rerun to resume")
                return
        elif isinstance(error, SubmissionUncertainError):
            self.journal.uncertain(key, str(error))
            self.progress.log(f"row {key}: UNCERTAIN, a task may have been created: {error}")
            return
        elif isinstance(error, _NOTHING_CREATED):
            # The API created nothing: the row stays to do for the next run.
            self.journal.reset(key, self.by_key[key].fingerprint)
            if isinstance(error, APIConnectionError):
                raise RunAborted(f"cannot reach the API at {self.client.base_url}: {error}")
            self.progress.log(f"row {key} not submitted: {error}")
            return
        self.journal.failed(key, str(error), result.task_id)
        self.progress.log(f"row {key} failed: {error}")

    async def _download(self, key: str, result: JobResult, slots: anyio.Semaphore) -> None:
        row = self.by_key[key]
        target = self.options.out / row.file_name
        try:
            try:
                await self.client.download(result.videos[0], target)
            except VideoExpiredError:
                fresh = await self.client.get_task(result.task_id or "")
                await self.client.download(fresh, target)
            size, digest = await anyio.to_thread.run_sync(_size_and_sha256, target)
        except PixVerseError as error:
            if isinstance(error, DownloadError) and isinstance(error.__cause__, OSError):
                raise RunAborted(str(error)) from None
            self.journal.not_downloaded(key, f"video not downloaded: {error}")
            self.progress.log(f"row {key}: download failed ({error}); rerun to fetch it again")
            self.progress.failed += 1
            return
        finally:
            self.progress.running -= 1
            slots.release()
        self.journal.succeeded(key, row.file_name, size, digest)
        self.progress.done += 1
        self.progress.log(f"row {key} done: {target} ({size} bytes)")

    def summary(self) -> tuple[str, bool]:
        """A table of the rows' states, and whether every row succeeded."""
        # Only this manifest's rows count: a row dropped from the manifest is kept in the journal, not reported.
        entries = [entry for entry in self.journal.rows() if entry.key in self.by_key]
        counts = Counter(entry.state for entry in entries)
        lines = ["", "state        rows"]
        lines += [f"{state:<12} {counts[state]:>4}" for state in STATES if counts[state]]
        lines.append(f"{'total':<12} {len(entries):>4}")
        problems = [entry for entry in entries if entry.state != "succeeded"]
        if problems:
            lines += ["", f"{'row':<14} {'line':>5}  {'state':<10} detail"]
            lines += [
                f"{entry.key:<14} {entry.line:>5}  {entry.state:<10} {entry.reason or entry.task_id or ''}"
                for entry in problems
            ]
        lines.append(f"\njournal: {self.journal.path}")
        return "\n".join(lines), not problems


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


async def run_manifest(options: RunOptions, client: PixVerseClient, stream: TextIO = sys.stdout) -> int:
    """Run a manifest with an open client; the exit code: 0 only if every row succeeded."""
    run = ManifestRun(options, client, stream)
    try:
        await run.execute()
        table, all_succeeded = run.summary()
        print(table, file=stream, flush=True)
        return 0 if all_succeeded else 1
    finally:
        run.close()
