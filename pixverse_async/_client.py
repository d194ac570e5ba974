"""`PixVerseClient`: submit image-to-video jobs, poll them through one shared poller, download the videos.

Retry rules, because submissions are billed and the API takes no idempotency key:
- polls and downloads retry on connection errors, timeouts, 429 and 5xx;
- a submission retries only when the server cannot have created a task (it could not be reached, or it
  answered 429); when the request went out and the answer was lost (read timeout, reset, 5xx, a garbled
  200), it raises `SubmissionUncertainError` instead of paying twice;
- authentication and balance errors are never retried.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import math
import os
import random
import secrets
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, Self, TypeVar, final
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
import anyio.lowlevel
import attrs
import yarl
from anyio.abc import TaskGroup

from ._budget import Budget, BudgetSettings, LocalBudget, RateLimits, SharedBudget, Slot
from ._bulk import AsCompleted, EventCallback, Job, JobResult, KeyedJob
from ._clock import Clock, default_clock
from ._convert import encode_image, parse_task_result, request_body
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    ClientClosedError,
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    InvalidRequestError,
    PixVerseError,
    RateLimitError,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    VideoExpiredError,
    VideoHostError,
)
from ._forecast import kind_of
from ._http import USER_AGENT, AnswerLost, ApiTransport, RequestNotSent, Response, Secret, Timeouts, redact, shorten
from ._models import (
    ImageToVideo,
    Task,
    TaskResult,
    TaskStatus,
    Video,
    check_timeout,
    lowercase_scheme,
    read_image_file,
)
from ._poller import CallbackWaiter, Outcome, Poller, PollPolicy
from ._retry import RetryPolicy, parse_retry_after
from ._validation import api_key_problem, check_bool, check_count, check_http_url, check_instance
from ._wire import WireGuard

DEFAULT_BASE_URL = "https://api.myrouter.ai"
DEFAULT_MAX_CONCURRENCY = 64
# As many as the poller's default polls in flight. With 32, as_completed at max_concurrency=64 had half the
# raw loop's requests in flight, and each turn of the event loop served half as many of them.
DEFAULT_MAX_SUBMISSIONS_IN_FLIGHT = 64
SUBMIT_PATH = "/v3/async/pixverse-v4.5-i2v"
TASK_RESULT_PATH = "/v3/async/task-result"
_DOWNLOAD_BUFFER_BYTES = 1 << 20
_DOWNLOAD_CONNECTIONS = 32
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MP4_HEAD_BYTES = 8

T = TypeVar("T")
_log = logging.getLogger("pixverse_async")
RetryCallback = Callable[[int, PixVerseError], None]


@final
@attrs.define
class _Submission:
    """One `submit()` call: what its request task reports back, and the scope that stops it from sending
    once the caller is gone."""

    request: ImageToVideo
    answered: anyio.Event = attrs.field(factory=anyio.Event)
    stop: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    task: Task | None = None
    error: Exception | None = None


@final
@attrs.define
class _OpenState:
    """What exists only while the client is open."""

    session: aiohttp.ClientSession
    transport: ApiTransport
    poller: Poller
    background: TaskGroup
    stack: contextlib.AsyncExitStack


@final
class PixVerseClient:
    """An async client for PixVerse V4.5 image-to-video. Use it as `async with PixVerseClient() as client:`.

    `api_key` falls back to `$PIXVERSE_API_KEY`, `base_url` to `$PIXVERSE_BASE_URL`, then
    `https://api.myrouter.ai`. `max_concurrency` (default 64) bounds the tasks this client has running on the
    server at once, across every call; `max_submissions_in_flight` (default 64) the submissions that
    `as_completed` has on the wire at once. An `aiohttp.ClientSession` you pass is used and left open; it must not
    carry credentials in its defaults (they would go to the video host too). `allow_private_video_hosts=False`
    refuses downloads from loopback, private, link-local and other non-global addresses. `clock` is where all
    waiting happens (tests pass a faster one; the default is real time, or the `pixverse_simulator` fixture's
    scale while a test using it runs). `budget` shares the key's running-task slots and what is learnt of
    its limits with other clients (`pixverse_async.redis.RedisBudget`); by default they are this client's.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_submissions_in_flight: int = DEFAULT_MAX_SUBMISSIONS_IN_FLIGHT,
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen value
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen value
        polling: PollPolicy = PollPolicy(),  # noqa: B008 - frozen value
        rate_limits: RateLimits = RateLimits(),  # noqa: B008 - frozen value
        image_as_data_uri: bool = False,
        webhook_url: str | None = None,
        allow_private_video_hosts: bool = True,
        clock: Clock | None = None,
        budget: SharedBudget | None = None,
    ) -> None:
        checked = _wrap_api_key(api_key if api_key is not None else os.environ.get("PIXVERSE_API_KEY"))
        # The plain key leaves this frame before anything can raise: a traceback with locals must not show it.
        del api_key
        if isinstance(checked, str):
            raise InvalidRequestError("api_key", checked)
        url = (base_url or os.environ.get("PIXVERSE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        check_http_url("base_url", url, credentials_allowed=False)
        if webhook_url is not None:
            check_http_url("webhook_url", webhook_url)
        check_count("max_concurrency", max_concurrency)
        check_count("max_submissions_in_flight", max_submissions_in_flight)
        check_instance("timeouts", timeouts, Timeouts)
        check_instance("retry", retry, RetryPolicy)
        check_instance("polling", polling, PollPolicy)
        check_bool("image_as_data_uri", image_as_data_uri)
        check_bool("allow_private_video_hosts", allow_private_video_hosts)
        if clock is not None and not all(callable(getattr(clock, method, None)) for method in ("now", "sleep")):
            raise InvalidRequestError("clock", f"must have now() and sleep(seconds), like ScaledClock; not {clock!r}")
        if session is not None:
            check_instance("session", session, aiohttp.ClientSession)
            if (problem := _session_problem(session, checked)) is not None:
                raise InvalidRequestError("session", problem)
        if not isinstance(rate_limits, RateLimits):
            raise InvalidRequestError("rate_limits", f"must be a RateLimits, not {type(rate_limits).__name__}")
        if budget is not None and not all(callable(getattr(type(budget), name, None)) for name in ("bind", "serve")):
            raise InvalidRequestError("budget", f"must be a shared budget (RedisBudget), not {type(budget).__name__}")
        self._api_key = checked
        self.base_url = url
        self.max_concurrency = max_concurrency
        self.max_submissions_in_flight = max_submissions_in_flight
        self.timeouts = timeouts
        self.retry = retry
        self.polling = polling
        self.rate_limits = rate_limits
        self.image_as_data_uri = image_as_data_uri
        self.webhook_url = webhook_url
        self.allow_private_video_hosts = allow_private_video_hosts
        self.clock: Clock = clock if clock is not None else default_clock()
        self._given_session = session
        self._rng = random.Random()
        self._shared_budget = budget
        self._budget: Budget
        if budget is None:
            self._budget = LocalBudget(
                max_concurrency,
                limits=rate_limits,
                max_polls_per_second=polling.max_polls_per_second,
                clock=self.clock,
                retry=retry,
                rng=self._rng,
            )
        else:
            key_hash = hashlib.sha256(checked.reveal().encode()).hexdigest()[:16]
            budget.bind(
                BudgetSettings(
                    max_concurrency=max_concurrency,
                    limits=rate_limits,
                    max_polls_per_second=polling.max_polls_per_second,
                    clock=self.clock,
                    retry=retry,
                    rng=self._rng,
                    key_hash=key_hash,
                )
            )
            self._budget = budget
        self._open: _OpenState | None = None
        self._abandoned: list[Task] = []

    def __repr__(self) -> str:
        state = "open" if self._open is not None else "closed"
        return f"<PixVerseClient base_url={self.base_url!r} max_concurrency={self.max_concurrency} {state}>"

    async def __aenter__(self) -> Self:
        if self._open is not None:
            raise ClientClosedError("this client is already open")
        async with contextlib.AsyncExitStack() as stack:
            session = self._given_session
            # Checked again: a session's default headers can be changed after the client was built.
            if session is not None and (problem := _session_problem(session, self._api_key)) is not None:
                raise InvalidRequestError("session", problem)
            if session is None:
                # Connections are needed only for requests in flight, not one per running task: enough for
                # every submission and poll the caps allow, plus some for downloads.
                pool_size = self.max_submissions_in_flight + self.polling.max_polls_in_flight + _DOWNLOAD_CONNECTIONS
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=pool_size), headers={"User-Agent": USER_AGENT}
                )
                stack.push_async_callback(session.close)
            transport = ApiTransport(session, self.base_url, self._api_key, self.timeouts)
            poller = Poller(
                functools.partial(_fetch_task_once, transport),
                clock=self.clock,
                policy=self.polling,
                retry=self.retry,
                pacer=self._budget.task_results,
                rng=self._rng,
                webhooks=self.webhook_url is not None,
            )
            if self._shared_budget is not None:
                # Tasks another client left running are polled here to their end, which frees their slots.
                await stack.enter_async_context(
                    self._shared_budget.serve(lambda task_id, slot: poller.track(task_id, slot=slot, learns=False))
                )
            background = await stack.enter_async_context(anyio.create_task_group())
            await background.start(poller.run, name="pixverse-poller")
            background.start_soon(transport.deadlines.watch, name="pixverse-request-deadlines")
            stack.callback(background.cancel_scope.cancel)
            self._open = _OpenState(
                session=session, transport=transport, poller=poller, background=background, stack=stack.pop_all()
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop polling and close the connections (a session you passed in stays open). Idempotent."""
        state, self._open = self._open, None
        if state is not None:
            await state.stack.aclose()

    @property
    def pending_tasks(self) -> int:
        """How many tasks the shared poller is following right now."""
        return self._open.poller.pending_count if self._open is not None else 0

    @property
    def abandoned_tasks(self) -> list[Task]:
        """Tasks whose `submit()` was cancelled while the request was on the wire: the answer came anyway, so
        they exist and are billed. The client follows each until it ends (a slot stays taken meanwhile); pass
        them to `wait()` or `as_completed()` to get their results."""
        return list(self._abandoned)

    @property
    def polls_in_flight(self) -> int:
        """How many polls are on the wire right now (for metrics)."""
        return self._open.poller.polls_in_flight if self._open is not None else 0

    def _state(self) -> _OpenState:
        if self._open is None:
            raise ClientClosedError("the client is not open: use `async with PixVerseClient(...) as client:`")
        return self._open

    # -- submit ---------------------------------------------------------------------------------------------

    async def submit(self, request: ImageToVideo) -> Task:
        """Submit one job (billed once accepted) and return its task; waits while `max_concurrency` run.

        Raises `SubmissionUncertainError` when the request was sent but the answer was lost: it is not
        retried, because the task may exist and be billed.
        """
        if not isinstance(request, ImageToVideo):
            raise InvalidRequestError("request", f"must be an ImageToVideo, not {type(request).__name__}")
        state = self._state()
        body = await self._request_body(request)
        slot = await self._budget.acquire()
        # Sent from the client's own task, so that the caller can be cancelled at once (by anyio or asyncio)
        # while a request already on the wire still gets its answer: see `abandoned_tasks`.
        submission = _Submission(request)
        try:
            state.background.start_soon(self._submit_for, state, body, submission, slot, name="pixverse-submit")
        except BaseException:
            slot.release()
            raise
        try:
            await submission.answered.wait()
        finally:
            if not submission.answered.is_set():
                submission.stop.cancel()
        if submission.error is not None:
            raise submission.error
        if submission.task is None:  # the client closed before the request was sent
            raise ClientClosedError("the client was closed before the submission was sent")
        return submission.task

    async def _submit_for(self, state: _OpenState, body: object, submission: _Submission, slot: Slot) -> None:
        """`submit()`'s request, holding the slot its caller took; never raises into the client's tasks."""
        try:
            with submission.stop, anyio.CancelScope() as scope:
                task_id, slot = await self._submit_holding_slot(
                    state, submission.request, body, slot, wire_guard=WireGuard(scope=scope, stop=submission.stop)
                )
                state.poller.track(task_id, slot=slot, kind=kind_of(submission.request))
                submission.task = Task(task_id=task_id, request=submission.request)
                if submission.stop.cancel_called:
                    self._abandoned.append(submission.task)
                    _log.warning(
                        "submit() was cancelled while its request was on the wire: task %s exists and is billed; "
                        "the client follows it until it ends (see client.abandoned_tasks)",
                        task_id,
                    )
        except Exception as error:
            submission.error = error
        finally:
            submission.answered.set()

    async def _request_body(self, request: ImageToVideo) -> dict[str, Any]:
        image = request.image
        if isinstance(image, Path):
            # The file may have changed since the request was built: it is read and checked again here.
            field = await anyio.to_thread.run_sync(
                lambda: encode_image(read_image_file(image), as_data_uri=self.image_as_data_uri)
            )
        elif isinstance(image, str) and image[:5].lower() != "data:":
            # Checked when the request was built (a str cannot change since); only the scheme's case is fixed.
            field = lowercase_scheme(image)
        else:
            field = encode_image(
                bytes(image) if isinstance(image, bytearray) else image, as_data_uri=self.image_as_data_uri
            )
        return request_body(request, field, webhook_url=self.webhook_url)

    async def _submit_holding_slot(
        self,
        state: _OpenState,
        request: ImageToVideo,
        body: object,
        slot: Slot,
        *,
        on_retry: RetryCallback | None = None,
        wire_guard: WireGuard | None = None,
    ) -> tuple[str, Slot]:
        """Submit holding a running-task slot; return the new task's id and the slot that now stands for it.

        The slot is this call's from here on: on success it is returned, accepted, for the poller to give
        back when the task ends (a 429 gives it back and a retry takes another, hence the return); on failure
        it is given back here, and kept until the task could have ended when the answer was lost. With a
        `wire_guard` (see there), leaving waits for the answer of a request on the wire, so that a task the
        server created is not lost, and sends no new one. Submissions are paced by the budget.
        """
        budget = self._budget
        attempt = waits_at_the_cap = 0
        while True:
            attempt += 1
            on_wire = False
            try:
                await budget.submissions.wait(self.clock)
                if wire_guard is None:
                    on_wire = True
                    response = await state.transport.send("POST", SUBMIT_PATH, body=body)
                else:
                    if wire_guard.stop.cancel_called:
                        # Cancelled without an await since at which to hear it (woken in the very turn the
                        # caller left): hear it now, before anything is sent.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                    wire_guard.scope.shield = True
                    on_wire = True
                    try:
                        response = await state.transport.send("POST", SUBMIT_PATH, body=body)
                    finally:
                        wire_guard.scope.shield = False
                if response.status == 200:
                    task_id = _task_id_from(response)
                    slot.accepted(task_id)
                    return task_id, slot
                error: PixVerseError = state.transport.status_error(response)
                del response  # its body may echo the key: not a local of a frame in the traceback
            except RequestNotSent as failure:
                error = failure.error
            except (AnswerLost, APIResponseError) as failure:
                slot.release_when_ended()
                cause = failure.error if isinstance(failure, AnswerLost) else failure
                raise SubmissionUncertainError(request, cause) from cause
            except BaseException:
                # Interrupted with the request out: its task may exist, so its slot stays taken meanwhile.
                if on_wire:
                    slot.release_when_ended()
                else:
                    slot.release()
                raise
            wait_for_a_slot = False
            if isinstance(error, RateLimitError):
                wait_for_a_slot = slot.refused(error.retry_after)
            elif isinstance(error, ServerError):
                slot.release_when_ended()
                raise SubmissionUncertainError(request, error) from error
            else:
                slot.release()
            if not isinstance(error, RateLimitError | APIConnectionError):
                raise error
            retry_after = error.retry_after if isinstance(error, RateLimitError) else None
            delay = self.retry.delay(attempt, retry_after, self._rng)
            if wait_for_a_slot:
                # At the account's cap, the wait for a running task to end is the backoff, and it ends only as
                # tasks do: not a failed try (counting it failed jobs that merely queued behind the cap).
                waits_at_the_cap += 1
            if delay is None or attempt - waits_at_the_cap >= self.retry.max_attempts:
                raise error
            if on_retry is not None:
                on_retry(attempt, error)
            # At the account's cap after a 429, waiting for a running task to end is the backoff.
            if retry_after is not None or not wait_for_a_slot:
                await self.clock.sleep(delay)
            slot = await budget.acquire()

    def as_completed(
        self,
        jobs: Iterable[Job | KeyedJob] | AsyncIterable[Job | KeyedJob],
        *,
        timeout: float | None = None,
        on_event: EventCallback | None = None,
    ) -> AsCompleted:
        """Run many jobs and yield one `JobResult` each as they finish, in completion order.

        `jobs` is an iterable or async iterable of `ImageToVideo` (to submit) or of `Task`s / task ids (to
        resume), or of `(key, job)` pairs whose key (any hashable value: a row id, say) comes back as
        `JobResult.key` and `JobEvent.key`. It is pulled lazily. At most `max_concurrency` tasks of this client
        run at once. `timeout` bounds each job from submission to result. A failed job is yielded with its
        `error` and never stops the batch; an `AuthenticationError` or `InsufficientBalanceError` stops new
        submissions, the running jobs are still yielded, then it is raised. `on_event` receives a `JobEvent` for
        every submission, retry, progress report and end, for progress bars and metrics.

            async with client.as_completed(requests) as results:
                async for result in results:
                    ...

        Leaving early stops submitting and polling at once; `results.unfinished` then lists the tasks that
        were paid for and had not ended, `results.unread` the jobs that had ended but were not yielded.
        """
        return AsCompleted(self, self._state(), jobs, timeout=timeout, on_event=on_event)

    # -- poll -----------------------------------------------------------------------------------------------

    async def get_task(self, task: Task | TaskResult | str) -> TaskResult:
        """Poll a task once (retrying transient failures) and return what the server says now."""
        task_id = _task_id_of(task)
        transport = self._state().transport
        pacer, clock = self._budget.task_results, self.clock

        async def paced_once() -> TaskResult:
            await pacer.wait(clock)
            try:
                result = await _fetch_task_once(transport, task_id)
            except RateLimitError as error:
                pacer.refused(clock.now(), error.retry_after)
                raise
            pacer.accepted()
            return result

        return await self._retrying(paced_once)

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent call (a poll, a download), retrying connection errors, timeouts, garbled answers,
        429 and 5xx."""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None
            error: PixVerseError
            try:
                return await attempt_once()
            except (RateLimitError, ServerError, VideoHostError) as status_error:
                error, retry_after = status_error, status_error.retry_after
            except (APIConnectionError, APIResponseError, DownloadConnectionError) as transient:
                error, retry_after = transient, None
            delay = self.retry.delay(attempt, retry_after, self._rng)
            if attempt >= self.retry.max_attempts or delay is None:
                raise error
            await self.clock.sleep(delay)

    async def wait(self, task: Task | TaskResult | str, *, timeout: float | None = None) -> TaskResult:
        """Wait until the task ends and return its result.

        Raises `TaskFailedError` if it failed, `TaskTimeoutError` if `timeout` seconds pass first (the task
        keeps running on the server). Polling is shared with every other wait of this client. Waiting on a task
        this client did not submit does not take one of its `max_concurrency` slots (a wait never queues
        behind the limit).
        """
        task_id = _task_id_of(task)
        check_timeout(timeout)
        state = self._state()
        outcome = await _await_outcome(state.poller, task_id, self.clock, timeout)
        if isinstance(outcome, PixVerseError):
            raise outcome
        if outcome.status is TaskStatus.FAILED:
            raise TaskFailedError(task_id, outcome.reason)
        return outcome

    async def watch(self, task: Task | TaskResult | str, *, timeout: float | None = None) -> AsyncIterator[TaskResult]:
        """Yield the task's state each time the shared poller learns it, ending with its final result.

        For progress displays (e.g. a Server-Sent Events stream). Raises like `wait()` at the end:
        `TaskFailedError`, `TaskTimeoutError`.
        """
        task_id = _task_id_of(task)
        check_timeout(timeout)
        state = self._state()
        send, receive = anyio.create_memory_object_stream[tuple[bool, Outcome]](math.inf)
        waiter = CallbackWaiter(
            deadline=None if timeout is None else self.clock.now() + timeout,
            timeout=timeout,
            on_outcome=lambda outcome: send.send_nowait((True, outcome)),
            on_progress=lambda result: send.send_nowait((False, result)),
        )
        state.poller.watch(task_id, waiter)
        finished = False
        try:
            with send, receive:
                async for finished, outcome in receive:
                    if isinstance(outcome, PixVerseError):
                        raise outcome
                    if finished and outcome.status is TaskStatus.FAILED:
                        raise TaskFailedError(task_id, outcome.reason)
                    yield outcome
                    if finished:
                        return
        finally:
            if not finished:
                state.poller.unwatch(task_id, waiter)

    # -- webhooks -------------------------------------------------------------------------------------------

    async def handle_webhook(self, body: bytes | str) -> int:
        """Take a webhook delivery's raw body; return the HTTP status to answer.

        The payload is unsigned, so it is only a hint: for a task this client follows, it triggers one
        task-result call, whose answer resolves `wait()`, `watch()` and `as_completed()`. Answers: 200 when
        that confirmation was scheduled; 202 when there is nothing to do (a duplicate, a late delivery, a task
        this client does not follow, an event that is not a task result); 400 when the body is malformed.
        """
        state = self._state()
        try:
            event = json.loads(body)
        except ValueError:
            return 400
        payload = event.get("payload") if isinstance(event, dict) else None
        if not isinstance(payload, dict):
            return 400
        if event.get("event_type") != "ASYNC_TASK_RESULT":
            return 202
        hint = parse_task_result(payload)
        if not hint.task_id:
            return 400
        if not hint.is_terminal:
            return 202
        return 200 if state.poller.confirm(hint.task_id) else 202

    # -- download -------------------------------------------------------------------------------------------

    async def download(self, video: JobResult | TaskResult | Video, path: str | os.PathLike[str]) -> Path:
        """Stream a finished video to `path` (a file, or an existing directory) and return the file's path.

        A `JobResult` or `TaskResult` means its first video; one without a video raises `DownloadError`.

        The file appears whole or not at all (written to a temporary file, then renamed), and only if it
        starts like an MP4 file. The API key is never sent to the video host. Only http(s) URLs without
        credentials are fetched, redirects included (followed by hand, at most 5, each checked the same way).
        Every failure is a `DownloadError`: `VideoExpiredError` when the signed link has expired,
        `VideoHostError` (429, 5xx) and `DownloadConnectionError` once retries are spent.
        """
        chosen = _video_of(video)
        problem = _video_url_problem(chosen.url)
        if problem is not None:
            raise DownloadError(f"refused to download {_shown_url(chosen.url)}: {problem}")
        destination = Path(path)
        if await anyio.Path(destination).is_dir():
            destination = destination / _file_name_for(chosen, video)
        state = self._state()
        if self._given_session is not None and (problem := _session_problem(state.session, self._api_key)):
            raise InvalidRequestError("session", problem)
        await self._retrying(lambda: self._download_once(state, chosen, destination))
        return destination

    async def _download_once(self, state: _OpenState, video: Video, destination: Path) -> None:
        partial = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
        url = video.url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if not self.allow_private_video_hosts:
                    await _refuse_private_host(url)
                # No Authorization header: the video host is not the API and must never see the key. Redirects
                # by hand, so that each target is checked before anything is sent to it.
                async with state.session.get(
                    url, timeout=self.timeouts.for_download(), allow_redirects=False
                ) as response:
                    if not self.allow_private_video_hosts:
                        _refuse_private_peer(response, url)
                    if response.status in _REDIRECT_STATUSES:
                        url = _redirect_target(response, url)
                        continue
                    if response.status != 200:
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        text = redact((await response.read())[:2048].decode("utf-8", "replace"), self._api_key)
                        raise _download_error(response.status, video, text, retry_after)
                    expected = response.content_length
                    written = await _stream_to_file(response, partial)
                if expected is not None and written != expected:
                    raise DownloadConnectionError(f"video download was cut short: got {written} of {expected} bytes")
                partial.replace(destination)
                return
            raise DownloadError(f"the video host redirected more than {_MAX_REDIRECTS} times")
        except aiohttp.ClientError as error:
            # Not chained (`from None`): aiohttp's errors are OSErrors at times, and a cause that is an OSError
            # means the file could not be written.
            detail = redact(str(error), self._api_key) or type(error).__name__
            if isinstance(error, TimeoutError):
                raise DownloadTimeoutError(f"video download timed out: {detail}") from None
            raise DownloadConnectionError(f"video download failed: {detail}") from None
        except DownloadError:
            raise  # DownloadConnectionError is an OSError too, but not one of the file's
        except OSError as error:
            raise DownloadError(f"cannot write {destination}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)


def _wrap_api_key(value: object) -> Secret | str:
    """The key, wrapped; or, when it cannot be used, what is wrong with it (never the key itself)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "no API key: pass api_key=... or set PIXVERSE_API_KEY"
    if not isinstance(value, str):
        return f"must be a str, not {type(value).__name__}"
    # Surrounding whitespace is a copy-and-paste or file-reading accident (a trailing newline), not the key.
    problem = api_key_problem(value.strip())
    return Secret(value.strip()) if problem is None else problem


def _session_problem(session: aiohttp.ClientSession, key: Secret) -> str | None:
    """Why a session of the caller's cannot be used, or None. It sends its defaults with every request,
    downloads included: none of them may carry credentials, or the video host (any host the API's answers
    name) would get them. Returned, not raised, so that no frame of a traceback holds a header's value."""
    if session.auth is not None:
        return "it has a default auth=...: it would be sent to the video host too; pass a session without it"
    for name, value in session.headers.items():
        if name.lower() in ("authorization", "proxy-authorization") or key.reveal() in value:
            return (
                f"its default header {name!r} carries credentials: the session sends it with every request, "
                "downloads from the video host included; pass a session without it (the client sends the key "
                "itself, to the API only)"
            )
    return None


async def _fetch_task_once(transport: ApiTransport, task_id: str) -> TaskResult:
    """One poll, no retries (the caller decides): the task's state, or the typed error."""
    try:
        response = await transport.send("GET", TASK_RESULT_PATH, params={"task_id": task_id})
    except (RequestNotSent, AnswerLost) as failure:
        raise failure.error from None
    if response.status != 200:
        error = transport.status_error(response)
        del response  # its body may echo the key: not a local of a frame in the traceback
        raise error
    result = parse_task_result(response.json())
    if not result.task_id:
        result = attrs.evolve(result, task_id=task_id)
    if result.reason:  # the server's words, which end up in TaskFailedError
        result = attrs.evolve(result, reason=transport.redact(result.reason))
    return result


async def _await_outcome(poller: Poller, task_id: str, clock: Clock, timeout: float | None) -> Outcome:
    outcomes: list[Outcome] = []
    delivered = anyio.Event()

    def deliver(outcome: Outcome) -> None:
        outcomes.append(outcome)
        delivered.set()

    deadline = None if timeout is None else clock.now() + timeout
    waiter = CallbackWaiter(deadline=deadline, timeout=timeout, on_outcome=deliver)
    poller.watch(task_id, waiter)
    try:
        await delivered.wait()
    finally:
        if not delivered.is_set():
            poller.unwatch(task_id, waiter)
    return outcomes[0]


async def _stream_to_file(response: aiohttp.ClientResponse, partial: Path) -> int:
    written = 0
    buffer = bytearray()
    checked = False
    async with await anyio.open_file(partial, "wb") as file:
        async for chunk in response.content.iter_chunked(1 << 16):
            buffer += chunk
            if not checked and len(buffer) >= _MP4_HEAD_BYTES:
                _check_mp4_head(bytes(buffer[:_MP4_HEAD_BYTES]), response)
                checked = True
            if len(buffer) >= _DOWNLOAD_BUFFER_BYTES:
                written += await file.write(bytes(buffer))
                buffer.clear()
        if not checked:
            _check_mp4_head(bytes(buffer), response)
        written += await file.write(bytes(buffer))
    return written


def _check_mp4_head(head: bytes, response: aiohttp.ClientResponse) -> None:
    """An MP4 (ISO base media) file opens with its `ftyp` box: a 4-byte size, then `ftyp`. Anything else (an
    HTML error page served with 200, an empty body) is not saved."""
    if len(head) < _MP4_HEAD_BYTES or head[4:8] != b"ftyp":
        kind = response.headers.get("Content-Type", "no Content-Type")
        raise DownloadError(
            f"the video host sent something that is not an MP4 file ({kind[:80]}, starting {head[:16]!r})"
        )


def _download_error(status: int, video: Video, body: str, retry_after: float | None) -> PixVerseError:
    if status in (401, 403, 410):
        expiry = f" (it expired at {video.expires_at:%Y-%m-%d %H:%M:%S} UTC)" if video.expires_at else ""
        return VideoExpiredError(
            f"the video link was refused with {status}{expiry}: it has expired; "
            "call get_task() on the task for a fresh link"
        )
    if status >= 500 or status == 429:
        return VideoHostError(status, retry_after)
    return DownloadError(f"the video host answered {status}: {shorten(body)}")


def _video_url_problem(url: str) -> str | None:
    """Why a video URL (or a redirect's target) is not fetched, or None. Parsed by yarl, as aiohttp will."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return "it is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return f"unsupported URL scheme {parsed.scheme!r}" if parsed.scheme else "it is not an absolute URL"
    if not parsed.host:
        return "the URL has no host"
    if parsed.user is not None or parsed.password is not None:
        return "the URL carries credentials (user:password@), which are never sent"
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        return "the URL holds whitespace or a control character"
    return None


def _redirect_target(response: aiohttp.ClientResponse, url: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise DownloadError(f"the video host answered {response.status} without a Location to go to")
    try:
        target = str(yarl.URL(url).join(yarl.URL(location)))
    except (TypeError, ValueError):
        raise DownloadError(f"the video host redirected to {_shown_url(location)}: not a valid URL") from None
    problem = _video_url_problem(target)
    if problem is None and yarl.URL(url).scheme == "https" and yarl.URL(target).scheme == "http":
        # The signed query would then cross the network in clear.
        problem = "a redirect from https:// to http:// is not followed"
    if problem is not None:
        raise DownloadError(f"the video host redirected to {_shown_url(target)}: refused, {problem}")
    return target


def _shown_url(url: str) -> str:
    """A URL for a message: no credentials, no query (a signature), cut short."""
    try:
        parsed = yarl.URL(url)
        shown = str(parsed.with_user(None).with_query(None).with_fragment(None)) if parsed.absolute else url
    except (TypeError, ValueError):
        shown = url
    return repr(shown.split("?", 1)[0][:100])


def _is_refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Not global: loopback, RFC 1918, link-local, ULA, shared (CGNAT), reserved, documentation ranges.
    return not address.is_global or address.is_multicast


async def _refuse_private_host(url: str) -> None:
    """With `allow_private_video_hosts=False`: refuse a host that is, or resolves to, a non-global address
    (every address it resolves to is checked)."""
    parsed = yarl.URL(url)
    host = parsed.host or ""
    try:
        addresses = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        try:
            infos = await anyio.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise DownloadConnectionError(f"cannot resolve the video host {host!r}: {error}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if _is_refused_address(address):
            raise DownloadError(
                f"the video host {host!r} is at {address}, a private address "
                "(refused with allow_private_video_hosts=False)"
            )


def _refuse_private_peer(response: aiohttp.ClientResponse, url: str) -> None:
    """The address actually connected to, checked too: a name may resolve differently a moment later."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return
    address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    if _is_refused_address(address):
        raise DownloadError(
            f"the video host {yarl.URL(url).host!r} is at {address}, a private address "
            "(refused with allow_private_video_hosts=False)"
        )


def _task_id_from(response: Response) -> str:
    body = response.json()
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        raise APIResponseError("the submission was answered 200 without a task_id")
    return task_id


def _task_id_of(task: Task | TaskResult | str) -> str:
    task_id = task if isinstance(task, str) else getattr(task, "task_id", None)
    if not isinstance(task_id, str) or not task_id.strip():
        raise InvalidRequestError("task", f"must be a Task, a TaskResult or a non-empty task id, not {task!r}")
    return task_id


def _video_of(video: JobResult | TaskResult | Video) -> Video:
    if isinstance(video, Video):
        return video
    if isinstance(video, TaskResult):
        if not video.videos:
            raise DownloadError(f"task {video.task_id} has no video (status {video.status.name})")
        return video.videos[0]
    if isinstance(video, JobResult):
        if not video.videos:
            job = f"job {video.key!r}" if video.key is not None else "the job"
            if video.task_id is None:
                why = f"it was never submitted ({video.error})"
            elif video.error is not None:
                why = f"task {video.task_id} did not succeed ({video.error})"
            else:
                why = f"task {video.task_id} ended {video.status.name if video.status else 'without a status'}"
            raise DownloadError(f"{job} has no video: {why}")
        return video.videos[0]
    raise InvalidRequestError("video", f"must be a JobResult, a TaskResult or a Video, not {type(video).__name__}")


def _file_name_for(video: Video, source: JobResult | TaskResult | Video) -> str:
    if isinstance(source, TaskResult | JobResult) and source.task_id:
        stem = source.task_id
    else:
        stem = PurePosixPath(unquote(urlsplit(video.url).path)).stem or "video"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).lstrip(".") or "video"
    return f"{safe}.{video.type or 'mp4'}"
