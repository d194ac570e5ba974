"""`client.as_completed(jobs)`: many jobs in, one `JobResult` out per job, in the order they finish.

Input is pulled lazily: the next job is taken only once a running-task slot is free and fewer than
`max_concurrency` results wait to be read, so memory stays flat however long the input. A fixed pool of
`max_submissions_in_flight` submitters does the submitting; the client's shared poller follows every task
(when a first poll is due at once, the submitter makes it itself: see `Poller.follow`).
Leaving early (break, exception, cancellation) cancels the feeding and the waiting at once; submissions
already on the wire are allowed to get their answer, so every task that was paid for is listed in
`unfinished` (still running) or `unread` (ended, with its outcome).

The submitters wait for slots side by side, then take turns at the input (`_job_source.py`), and only the one
whose turn it is holds a slot while it waits for the next job: one that finds the turn taken gives its slot
back and waits for the turn without it. A job already taken (a submission retried after a 429) goes first: no
new slot is taken while it waits for one, and it may take the slot of the turn's holder. An input may wait a
long time, even on this run's own jobs (a shared run's queue waits for the rows other workers hold): slots
kept idle by submitters waiting for it would starve the retries, and the run would never end. Waiting for
slots in turns would cost a turn of the event loop per job: the slots freed together are taken together.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, Self, final

import anyio
import attrs
from anyio.abc import TaskGroup

from ._budget import Slot
from ._clock import Clock
from ._exceptions import (
    AuthenticationError,
    ContentPolicyError,
    InsufficientBalanceError,
    InvalidRequestError,
    PixVerseError,
    TaskFailedError,
)
from ._forecast import kind_of
from ._job_source import EXHAUSTED, JobSource
from ._models import (
    REQUEST_TYPES,
    ImageToVideo,
    Job,
    JobResult,
    Task,
    TaskResult,
    TaskStatus,
    TextToVideo,
    UncertainSubmission,
)
from ._poller import Outcome, Poller, Waiter
from ._submission import Submitted, Submitter, WireShield
from ._validation import check_number, task_id_problem

# A job with a key of the caller's (a row id, a database key), given back on its result and events.
_JOB_KINDS = "an ImageToVideo, a TextToVideo, a Task, an UncertainSubmission or a task id"
KeyedJob = tuple[Hashable, Job]
_log = logging.getLogger("pixverse_async")


class EventKind(enum.Enum):
    """What a `JobEvent` reports.

    SUBMITTING comes just before a job's first request is sent, so a journal can write it down first: if the
    callback raises on it, that job is not sent, no new job is started, and the exception is raised once the
    running jobs are yielded. An exception on any other event is logged and the batch goes on.
    """

    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    RETRIED = "retried"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@attrs.frozen
class JobEvent:
    """Something that happened to one job, for progress bars and metrics (`as_completed(on_event=...)`).

    `progress_percent`/`eta` are set on PROGRESS, with `status` and `raw_status` (the server's word: a status
    this library does not know is `TaskStatus.UNKNOWN`, and keeps being polled); `error` on FAILED (any
    failure: task failed, timed out, rejected, uncertain) and on RETRIED (what was retried; `attempt` is the
    try that failed). `key` is the job's key, as on its `JobResult`. `webhook_token` is set on SUBMITTING with
    webhooks on: the token the submission's webhook URL carries, for a journal to keep (see
    `UncertainSubmission`).
    """

    kind: EventKind
    request: Job
    task_id: str | None = None
    progress_percent: float | None = None
    eta: float | None = None
    error: PixVerseError | None = None
    attempt: int | None = None
    key: Hashable = None
    status: TaskStatus | None = None
    raw_status: str = ""
    webhook_token: str | None = None


EventCallback = Callable[[JobEvent], None]


@attrs.define
class BatchCounts:
    """Running totals of one `as_completed` run, kept up to date as events happen. `content_refused` counts
    the jobs refused by moderation at submission (`ContentPolicyError`, nothing billed), apart from `failed`
    (every other failure)."""

    submitting: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    content_refused: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.content_refused


@final
class AsCompleted:
    """What `client.as_completed()` returns: an async iterator of `JobResult`, and an async context manager.

    Use it as `async with client.as_completed(jobs) as results: async for r in results: ...`. Leaving the
    block, by any way, stops submitting and polling at once, and waits for the answers of submissions already
    on the wire. Plain `async for r in client.as_completed(jobs)` also stops submitting and polling at once
    when it is left (break, exception, cancellation), but cannot wait for those answers: a task whose answer
    comes later is still listed in `unfinished`.
    """

    def __init__(
        self,
        jobs: Iterable[Job | KeyedJob] | AsyncIterable[Job | KeyedJob],
        *,
        timeout: float | None,
        on_event: EventCallback | None,
        submitter: Submitter,
        poller: Poller,
        background: TaskGroup,
        clock: Clock,
        max_concurrency: int,
        max_submissions_in_flight: int,
    ) -> None:
        """Built by `client.as_completed()`, from the open client's parts: its submitter, its poller, the task
        group its background tasks run in (this run's feeding among them), and its limits."""
        # Not 0: every job would be paid for and time out at once.
        check_number("timeout", timeout, above=0, none_means="no limit")
        if not isinstance(jobs, Iterable | AsyncIterable) or isinstance(jobs, str | bytes):
            raise InvalidRequestError(
                "jobs", f"must be an iterable or async iterable of jobs, not {type(jobs).__name__}"
            )
        self._submissions = submitter
        self._poller = poller
        self._background = background
        self._clock = clock
        self._max_concurrency = max_concurrency
        self._max_submissions_in_flight = max_submissions_in_flight
        self._jobs = jobs
        self._timeout = timeout
        self._on_event = on_event
        self.counts = BatchCounts()
        self._ready: deque[JobResult] = deque()
        self._changed = anyio.Event()
        self._feeding_done = anyio.Event()
        # What stops new submissions and is raised once the running jobs are yielded: an account-wide API
        # error, an exception from the input iterable, or an on_event callback that refused a SUBMITTING.
        self._stop_error: BaseException | None = None
        self._started = False
        self._in_context = False
        self._closed = False
        self._scope = anyio.CancelScope()
        # Submitted tasks not yet yielded: their waiter, or just (key, job) when its answer came after the run
        # closed.
        self._running: dict[str, _JobWaiter | tuple[Hashable, Job]] = {}
        # The slot held by the submitter whose turn it is at the input, while it waits for the next job: a job
        # already taken that needs a slot may take it (None: taken, or no one waits for the input).
        self._slot_at_the_input: Slot | None = None
        self._taken_jobs_waiting_for_a_slot = 0

    @property
    def unfinished(self) -> list[Task]:
        """Tasks submitted (and paid for) that had not ended when you last looked: pass them (or their ids) to
        `as_completed()` or `wait()` to pick them up. Read it after leaving early. Jobs that had ended but
        were not read are in `unread`, with their outcome: they need no more polling."""
        return [Task(task_id, _request_of(job), key=key) for task_id, (key, job) in map(_parts, self._running.items())]

    @property
    def unread(self) -> list[JobResult]:
        """Jobs that ended (succeeded, failed, refused) but were not yielded, in the order they ended. Read it
        after leaving early: a succeeded one's videos are here, ready to download."""
        return list(self._ready)

    async def __aenter__(self) -> Self:
        self._start()
        self._in_context = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop submitting and polling now; submissions already sent may finish, to learn their task ids."""
        if self._closed:
            return
        self._stop()
        if self._started:
            # Bounded: the only work left is answers to requests already on the wire (read timeout).
            with anyio.CancelScope(shield=True):
                await self._feeding_done.wait()
        self._stop()

    def _stop(self) -> None:
        """Cancel the feeding and stop polling the tasks nobody will read (they stay in `unfinished`)."""
        self._closed = True
        self._scope.cancel()
        for task_id, entry in self._running.items():
            if isinstance(entry, _JobWaiter):
                self._poller.abandon(task_id, entry)
        self._notify()

    def __aiter__(self) -> AsyncIterator[JobResult]:
        # Inside `async with`, leaving the block stops the run: iterate directly. A plain `async for` gets an
        # iterator of its own that stops the run when the loop lets go of it.
        return self if self._in_context else _PlainIteration(self)

    async def __anext__(self) -> JobResult:
        self._start()
        while True:
            if self._ready:
                result = self._ready.popleft()
                self._notify()
                return result
            if self._closed or (self._feeding_done.is_set() and not self._running):
                error = self._stop_error
                if error is not None and not self._closed:
                    self._closed = True
                    raise error
                raise StopAsyncIteration
            await self._wait_changed()

    def _start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise RuntimeError("this as_completed() run is closed")
        self._started = True
        self._background.start_soon(self._run, name="pixverse-as-completed")

    def _notify(self) -> None:
        self._changed.set()

    async def _wait_changed(self) -> None:
        """Wait for the next `_notify()`. Callers check their condition just before, and nothing else runs
        between that check and this call, so an event already set is stale: it is renewed, not returned."""
        if self._changed.is_set():
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- feeding ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        # A fixed pool of submitters, each pulling its next job itself: the submissions on the wire are
        # bounded apart from max_concurrency, and a job costs no task of its own.
        submitters = min(self._max_submissions_in_flight, self._max_concurrency)
        jobs = JobSource(self._jobs)
        try:
            with self._scope:
                async with anyio.create_task_group() as group:
                    for _ in range(submitters):
                        group.start_soon(self._submitter, jobs)
        except Exception as error:  # the input iterable raised: report it after the running jobs
            self._stop_error = self._stop_error or error
        finally:
            self._feeding_done.set()
            self._notify()

    async def _submitter(self, jobs: JobSource) -> None:
        """Take the next job only when a running-task slot is free and the results are being read, so that
        memory stays flat however long the input."""
        backlog_limit = self._max_concurrency
        with anyio.CancelScope() as scope:
            shield = WireShield(scope=scope, stop=self._scope)
            while self._stop_error is None and not self._closed and not jobs.exhausted:
                if len(self._ready) >= backlog_limit:
                    await self._wait_changed()
                    continue
                jobs.waiting_to_read.add(scope)  # the slot first, the turn after (see the module docstring)
                try:
                    taken = await self._slot_for_a_new_job()
                finally:
                    jobs.waiting_to_read.discard(scope)
                slot: Slot | None = taken
                try:
                    jobs.turn.acquire_nowait()
                except anyio.WouldBlock:
                    # The holder of the turn waits for the input with its slot: this submitter waits for the
                    # turn without one, so that one slot at most stays idle at the input.
                    taken.release()
                    slot = None
                    await jobs.turn.acquire()
                try:
                    if jobs.exhausted:  # found so by the submitter whose turn it was
                        if slot is not None:
                            slot.release()
                        return
                    if slot is None:
                        slot = await self._slot_for_a_new_job()
                    if len(self._ready) >= backlog_limit or jobs.exhausted:
                        # Results landed while this submitter waited for the slot: nobody is reading them.
                        slot.release()
                        continue
                    self._slot_at_the_input = slot
                    job: Any = EXHAUSTED  # if the input raises: the slot is given back
                    try:
                        job = await jobs.next()
                    finally:
                        kept, self._slot_at_the_input = self._slot_at_the_input, None
                        if kept is not None and (job is EXHAUSTED or self._stop_error is not None):
                            kept.release()
                finally:
                    jobs.turn.release()
                if job is EXHAUSTED or self._stop_error is not None:
                    return
                # A retry took the slot while this submitter waited for the job: the job waits for one as a
                # retry does.
                await self._start_job(job, kept or await self._slot_for_a_taken_job(), shield)

    async def _slot_for_a_new_job(self) -> Slot:
        """A slot to take the next job from the input with, once no job already taken waits for one."""
        while True:
            while self._taken_jobs_waiting_for_a_slot:
                await self._wait_changed()
            slot = await self._submissions.take_slot()
            if not self._taken_jobs_waiting_for_a_slot:
                return slot
            slot.release()  # a job taken before waits for a slot since: it goes first

    async def _slot_for_a_taken_job(self) -> Slot:
        """A slot for a job already taken from the input (a retry): the one held at the input if any, else
        the budget's next, before any new job's."""
        slot, self._slot_at_the_input = self._slot_at_the_input, None
        if slot is not None:
            return slot
        self._taken_jobs_waiting_for_a_slot += 1
        try:
            return await self._submissions.take_slot()
        finally:
            self._taken_jobs_waiting_for_a_slot -= 1
            self._notify()

    async def _start_job(self, job: Job | KeyedJob, slot: Slot, shield: WireShield) -> None:
        """Submit (or adopt) one job holding a running-task slot, then hand both to the poller."""
        key: Hashable = None
        if isinstance(job, tuple):
            pair: tuple[Any, ...] = job
            try:
                key, job = _split_keyed(pair)
            except InvalidRequestError as error:
                slot.release()
                self._deliver(pair[1] if len(pair) == 2 else pair, None, error)  # type: ignore[arg-type]
                return
        elif isinstance(job, Task | UncertainSubmission):
            key = job.key
        self.counts.submitting += 1
        try:
            task_id, slot, announced = await self._submit(job, slot, shield, key)
        except PixVerseError as error:
            if isinstance(error, AuthenticationError | InsufficientBalanceError):
                self._stop_error = self._stop_error or error
            self._deliver(job, None, error, key=key)
            return
        except _SubmissionRefused as refused:
            self._stop_error = self._stop_error or refused.cause
            return
        finally:
            self.counts.submitting -= 1
        self.counts.running += 1
        self._emit(EventKind.SUBMITTED, job, task_id, key=key)
        if self._closed:
            # The answer of a submission already on the wire arrived after the run was left: keep the paid
            # task in `unfinished`, but poll it no more (its slot stays taken while it may run).
            self._running[task_id] = (key, job)
            slot.release_when_ended()
            return
        deadline = None if self._timeout is None else self._clock.now() + self._timeout
        waiter = _JobWaiter(deadline, self._timeout, run=self, job=job, task_id=task_id, key=key)
        self._running[task_id] = waiter
        if isinstance(job, REQUEST_TYPES) and not announced:
            await self._poller.follow(task_id, waiter, slot=slot, kind=kind_of(job))
        else:  # resumed, or found by its delivery: its age here says nothing about how long tasks take
            await self._poller.follow(task_id, waiter, slot=slot, learns=False)
            if announced:
                self._poller.confirm(task_id)

    async def _submit(self, job: Job, slot: Slot, shield: WireShield, key: Hashable) -> Submitted:
        """The job's task id and the slot that stands for it (`Submitted`); the slot is given back on failure."""
        if isinstance(job, Task | str):
            task_id = job if isinstance(job, str) else job.task_id
            problem = task_id_problem(task_id) if isinstance(task_id, str) else f"a task id is a str, not {task_id!r}"
            if problem is not None:
                slot.release()
                raise InvalidRequestError("task", problem)
            slot.adopted(task_id)
            return task_id, slot, False
        if isinstance(job, UncertainSubmission):
            return await self._submissions.wait_for_delivery(
                job.request, job.webhook_token, slot, judgeable=not job.delivery_may_have_been_missed
            )
        try:
            if not isinstance(job, REQUEST_TYPES):
                raise InvalidRequestError("job", f"must be {_JOB_KINDS} or a (key, job) pair, not {type(job).__name__}")
            body, token = await self._submissions.request_body(job)
            if self._on_event is not None:
                # Not through _emit: a journal that cannot record "submitting" must stop the submission.
                try:
                    self._on_event(JobEvent(EventKind.SUBMITTING, job, key=key, webhook_token=token))
                except Exception as error:
                    raise _SubmissionRefused(error) from error
        except BaseException:
            slot.release()
            raise

        def on_retry(attempt: int, error: PixVerseError) -> None:
            self._emit(EventKind.RETRIED, job, error=error, attempt=attempt, key=key)

        return await self._submissions.send(
            job, body, slot, on_retry=on_retry, shield=shield, take_slot=self._slot_for_a_taken_job, token=token
        )

    def _on_outcome(self, waiter: _JobWaiter, outcome: Outcome) -> None:
        task_id, job = waiter.task_id, waiter.job
        self._running.pop(task_id, None)
        self.counts.running -= 1
        if isinstance(outcome, TaskResult):
            error = TaskFailedError(task_id, outcome.reason) if outcome.status is TaskStatus.FAILED else None
            self._deliver(job, task_id, error, outcome, key=waiter.key)
            return
        if isinstance(outcome, AuthenticationError | InsufficientBalanceError):
            self._stop_error = self._stop_error or outcome
        self._deliver(job, task_id, outcome, key=waiter.key)

    def _deliver(
        self,
        job: Job,
        task_id: str | None,
        error: PixVerseError | None,
        result: TaskResult | None = None,
        *,
        key: Hashable = None,
    ) -> None:
        job_result = JobResult(
            request=job,
            task_id=task_id,
            status=result.status if result is not None else None,
            videos=result.videos if result is not None else (),
            error=error,
            result=result,
            key=key,
        )
        if job_result.ok:
            self.counts.succeeded += 1
            self._emit(EventKind.SUCCEEDED, job, task_id, progress_percent=100.0, key=key)
        else:
            if isinstance(error, ContentPolicyError):
                self.counts.content_refused += 1
            else:
                self.counts.failed += 1
            self._emit(EventKind.FAILED, job, task_id, error=error, key=key)
        self._ready.append(job_result)
        self._notify()

    def _emit(
        self,
        kind: EventKind,
        job: Job,
        task_id: str | None = None,
        *,
        progress_percent: float | None = None,
        eta: float | None = None,
        error: PixVerseError | None = None,
        attempt: int | None = None,
        key: Hashable = None,
        result: TaskResult | None = None,
    ) -> None:
        if self._on_event is None:  # checked before building the event: this runs several times per job
            return
        status, raw_status = (None, "") if result is None else (result.status, result.raw_status)
        try:
            self._on_event(JobEvent(kind, job, task_id, progress_percent, eta, error, attempt, key, status, raw_status))
        except Exception:
            # A broken progress bar must not lose paid results: log it and go on.
            _log.exception("the on_event callback of as_completed() raised; the batch goes on")


@final
class _PlainIteration:
    """What a plain `async for` over an `AsCompleted` iterates. Leaving the loop stops the run at once, without
    the garbage collector or the event loop: an exception or a cancellation through `__anext__` stops it
    there, and a `break` drops the loop's last reference to this iterator, which CPython frees at that very
    point (`__del__`). Stopping is synchronous, so it can happen there.
    """

    __slots__ = ("_run",)

    def __init__(self, run: AsCompleted) -> None:
        self._run = run

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> JobResult:
        try:
            return await self._run.__anext__()
        except BaseException:
            self._run._stop()
            raise

    async def aclose(self) -> None:
        """Stop the run, as `AsCompleted.aclose()` does (an async generator's `aclose`, which this replaces)."""
        await self._run.aclose()

    def __del__(self) -> None:
        run = self._run
        if run._closed:
            return
        # Dropped after its event loop ended (kept until interpreter exit, say): nothing runs to be stopped.
        with contextlib.suppress(RuntimeError):
            run._stop()


@attrs.define(slots=True, eq=False)
class _JobWaiter(Waiter):
    """One `as_completed` job waiting on the poller: a small record, not a pair of closures per task."""

    run: AsCompleted = attrs.field(kw_only=True)
    job: Job = attrs.field(kw_only=True)
    task_id: str = attrs.field(kw_only=True)
    key: Hashable = attrs.field(kw_only=True)

    def deliver(self, outcome: Outcome) -> None:
        self.run._on_outcome(self, outcome)

    def progress(self, result: TaskResult) -> None:
        self.run._emit(
            EventKind.PROGRESS,
            self.job,
            self.task_id,
            progress_percent=result.progress_percent,
            eta=result.eta,
            key=self.key,
            result=result,
        )


def _parts(item: tuple[str, _JobWaiter | tuple[Hashable, Job]]) -> tuple[str, tuple[Hashable, Job]]:
    task_id, entry = item
    return task_id, ((entry.key, entry.job) if isinstance(entry, _JobWaiter) else entry)


def _split_keyed(pair: tuple[Any, ...]) -> tuple[Hashable, Job]:
    """`(key, job)` into its parts, or `InvalidRequestError` for a tuple that is not such a pair."""
    if len(pair) != 2 or not isinstance(pair[1], ImageToVideo | TextToVideo | Task | UncertainSubmission | str):
        raise InvalidRequestError("job", f"a tuple must be a (key, job) pair whose job is {_JOB_KINDS}")
    key, job = pair[0], pair[1]
    try:
        hash(key)
    except TypeError:
        raise InvalidRequestError(
            "key", f"the key of a (key, job) pair must be hashable, not {type(key).__name__}"
        ) from None
    return key, job


class _SubmissionRefused(Exception):
    """The on_event callback raised on SUBMITTING: the job is not sent and the run stops."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _request_of(job: Job) -> ImageToVideo | TextToVideo | None:
    if isinstance(job, REQUEST_TYPES):
        return job
    return job.request if isinstance(job, Task | UncertainSubmission) else None
