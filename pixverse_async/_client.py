"""`PixVerseClient`: submit image-to-video jobs, poll them through one shared poller, download the videos.

The client checks its configuration, opens and closes what lives while it is open (the session, the
transport and its read-timeout watchdog, the poller, the submitter) and hands each call to its owner:
submissions to `_submission.py`, polls to `_poller.py`, many jobs to `_bulk.py`, downloads to `_download.py`,
webhook deliveries to `_webhooks.py`. Which failures are retried is decided once, in `_retry.py`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar, final

import aiohttp
import anyio
import attrs
from anyio.abc import TaskGroup

from ._budget import Budget, BudgetSettings, LocalBudget, RateLimits, SharedBudget, Slot
from ._bulk import AsCompleted, EventCallback, KeyedJob
from ._clock import Clock, default_clock
from ._credentials import session_problem, wrap_api_key
from ._download import Downloader
from ._environment import Proxy, ProxyRoutes, proxy_routes_from_environment, ssl_context_from_environment
from ._exceptions import (
    ClientClosedError,
    ConfigurationError,
    InvalidRequestError,
    PixVerseError,
    RateLimitError,
    ServerError,
    TaskFailedError,
)
from ._forecast import kind_of
from ._models import (
    REQUEST_TYPES,
    ImageToVideo,
    Job,
    JobResult,
    Task,
    TaskResult,
    TaskStatus,
    TextToVideo,
    Video,
    check_timeout,
)
from ._poller import CallbackWaiter, Outcome, Poller, PollPolicy
from ._protocol import fetch_task_once
from ._retry import RetryPolicy, call_with_retries, is_surge
from ._submission import Submitter, WireShield
from ._transport import (
    USER_AGENT,
    ApiTransport,
    Timeouts,
)
from ._upload import UploadLane
from ._validation import (
    check_bool,
    check_count,
    check_http_url,
    check_instance,
    task_id_problem,
)
from ._webhooks import answer_delivery, submission_tokens

DEFAULT_BASE_URL = "https://api.myrouter.ai"
DEFAULT_MAX_CONCURRENCY = 64
# As many as the poller's default polls in flight. With 32, as_completed at max_concurrency=64 had half the
# raw loop's requests in flight, and each turn of the event loop served half as many of them.
DEFAULT_MAX_SUBMISSIONS_IN_FLIGHT = 64
#: Two bodies of the largest frame the API takes (10 MB, 13.4 MB in base64): the link stays busy between them.
DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT = 32 * 2**20
_DOWNLOAD_CONNECTIONS = 32

T = TypeVar("T")
_log = logging.getLogger("pixverse_async")


@final
@attrs.define
class _Submission:
    """One `submit()` call: what its request task reports back, and the scope that stops it from sending
    once the caller is gone."""

    request: ImageToVideo | TextToVideo
    token: str | None
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
    submitter: Submitter
    background: TaskGroup
    stack: contextlib.AsyncExitStack


@final
class PixVerseClient:
    """An async client for PixVerse V4.5 image-to-video. Use it as `async with PixVerseClient() as client:`.

    `api_key` falls back to `$PIXVERSE_API_KEY`, `base_url` to `$PIXVERSE_BASE_URL`, then
    `https://api.myrouter.ai`. `max_concurrency` (default 64) bounds the tasks this client has running on the
    server at once, across every call; `max_submissions_in_flight` (default 64) the submissions that
    `as_completed` has on the wire at once; `max_upload_bytes_in_flight` (default 32 MiB, None for no bound)
    the bytes of the request bodies carrying images (files, bytes, data URIs) being uploaded at once, so that
    on a slow uplink they finish one after another and each task starts as its body arrives (one body is
    always let through, however big; a body waiting for its turn is not timed). An `aiohttp.ClientSession` you
    pass is used and left open; it must not carry credentials in its defaults (they would go to the video host
    too). `allow_private_video_hosts=False`
    refuses downloads from loopback, private, link-local and other non-global addresses. `clock` is where the
    client's own waiting happens: retry backoff, poll intervals, pacing, `timeout=` of `wait()` and
    `as_completed()` (tests pass a faster one; the default is real time, or the `pixverse_simulator` fixture's
    scale while a test using it runs). The network timeouts of `timeouts` are real seconds whatever the clock:
    they bound real sockets. `budget` shares the key's running-task slots and what is learnt of its limits
    with other clients (`pixverse_async.redis.RedisBudget`); by default they are this client's.

    `trust_env=True` (the default) makes the session the client builds honour the environment, like requests
    and httpx: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (the API calls and the video downloads
    both), and `SSL_CERT_FILE`/`SSL_CERT_DIR` for the CA certificates; `trust_env=False` ignores them. A session
    you pass keeps its own settings.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_submissions_in_flight: int = DEFAULT_MAX_SUBMISSIONS_IN_FLIGHT,
        max_upload_bytes_in_flight: int | None = DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT,
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen value
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen value
        polling: PollPolicy = PollPolicy(),  # noqa: B008 - frozen value
        rate_limits: RateLimits = RateLimits(),  # noqa: B008 - frozen value
        image_as_data_uri: bool = False,
        webhook_url: str | None = None,
        allow_private_video_hosts: bool = True,
        clock: Clock | None = None,
        budget: SharedBudget | None = None,
        trust_env: bool = True,
    ) -> None:
        checked = wrap_api_key(api_key if api_key is not None else os.environ.get("PIXVERSE_API_KEY"))
        # The plain key leaves this frame before anything can raise: a traceback with locals must not show it.
        del api_key
        if isinstance(checked, str):
            raise ConfigurationError("api_key", checked)
        url = (base_url or os.environ.get("PIXVERSE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        check_http_url("base_url", url, credentials_allowed=False, origin_only=True, error=ConfigurationError)
        if webhook_url is not None:
            check_http_url("webhook_url", webhook_url, error=ConfigurationError)
        check_count("max_concurrency", max_concurrency, error=ConfigurationError)
        check_count("max_submissions_in_flight", max_submissions_in_flight, error=ConfigurationError)
        if max_upload_bytes_in_flight is not None:
            check_count("max_upload_bytes_in_flight", max_upload_bytes_in_flight, error=ConfigurationError)
        check_instance("timeouts", timeouts, Timeouts, error=ConfigurationError)
        check_instance("retry", retry, RetryPolicy, error=ConfigurationError)
        check_instance("polling", polling, PollPolicy, error=ConfigurationError)
        check_bool("image_as_data_uri", image_as_data_uri, error=ConfigurationError)
        check_bool("allow_private_video_hosts", allow_private_video_hosts, error=ConfigurationError)
        check_bool("trust_env", trust_env, error=ConfigurationError)
        if clock is not None and not all(callable(getattr(clock, method, None)) for method in ("now", "sleep")):
            raise ConfigurationError("clock", f"must have now() and sleep(seconds), like ScaledClock; not {clock!r}")
        if session is not None:
            check_instance("session", session, aiohttp.ClientSession, error=ConfigurationError)
            if (problem := session_problem(session, checked)) is not None:
                raise ConfigurationError("session", problem)
        if not isinstance(rate_limits, RateLimits):
            raise ConfigurationError("rate_limits", f"must be a RateLimits, not {type(rate_limits).__name__}")
        if budget is not None and not all(callable(getattr(type(budget), name, None)) for name in ("bind", "serve")):
            raise ConfigurationError("budget", f"must be a shared budget (RedisBudget), not {type(budget).__name__}")
        self._api_key = checked
        self.base_url = url
        self.max_concurrency = max_concurrency
        self.max_submissions_in_flight = max_submissions_in_flight
        self.max_upload_bytes_in_flight = max_upload_bytes_in_flight
        self.timeouts = timeouts
        self.retry = retry
        self.polling = polling
        self.rate_limits = rate_limits
        self.image_as_data_uri = image_as_data_uri
        self.webhook_url = webhook_url
        self.allow_private_video_hosts = allow_private_video_hosts
        self.trust_env = trust_env
        # Read from the environment when the client opens its own session (see `_environment`).
        self._proxy_routes = ProxyRoutes()
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
        self._downloader = Downloader(
            api_key=checked,
            timeouts=timeouts,
            allow_private_video_hosts=allow_private_video_hosts,
            session=self._download_session,
            retrying=self._retrying,
            proxy_for=self._proxy_for,
        )
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
            if session is not None and (problem := session_problem(session, self._api_key)) is not None:
                raise ConfigurationError("session", problem)
            self._proxy_routes = ProxyRoutes()
            if session is None:
                ssl_context = None
                if self.trust_env:
                    # A user-given session keeps its own settings: only the client's own reads the environment.
                    self._proxy_routes = proxy_routes_from_environment()
                    ssl_context = await anyio.to_thread.run_sync(ssl_context_from_environment)
                # Connections are needed only for requests in flight, not one per running task: enough for
                # every submission and poll the caps allow, plus some for downloads.
                pool_size = self.max_submissions_in_flight + self.polling.max_polls_in_flight + _DOWNLOAD_CONNECTIONS
                # True: aiohttp's own verifying context.
                verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=pool_size, ssl=verify),
                    headers={"User-Agent": USER_AGENT},
                )
                stack.push_async_callback(session.close)
            transport = ApiTransport(
                session, self.base_url, self._api_key, self.timeouts, proxy=self._proxy_for(self.base_url)
            )
            poller = Poller(
                functools.partial(fetch_task_once, transport),
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
            tokens = None
            if self.webhook_url is not None:
                tokens = submission_tokens(
                    self.webhook_url, clock=self.clock, poller=poller, budget=self._budget, abandoned=self._abandoned
                )
            background = await stack.enter_async_context(anyio.create_task_group())
            await background.start(poller.run, name="pixverse-poller")
            background.start_soon(transport.watchdog.run, name="pixverse-read-timeout-watchdog")
            stack.callback(background.cancel_scope.cancel)
            self._open = _OpenState(
                session=session,
                transport=transport,
                poller=poller,
                submitter=Submitter(
                    transport,
                    self._budget,
                    clock=self.clock,
                    retry=self.retry,
                    rng=self._rng,
                    image_as_data_uri=self.image_as_data_uri,
                    webhook_url=self.webhook_url,
                    uploads=UploadLane(self.max_upload_bytes_in_flight),
                    tokens=tokens,
                ),
                background=background,
                stack=stack.pop_all(),
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

    async def submit(self, request: ImageToVideo | TextToVideo) -> Task:
        """Submit one job (billed once accepted) and return its task; waits while `max_concurrency` run.
        A `TextToVideo` goes to the text-to-video endpoint; its result comes from the same task-result call.

        Raises `SubmissionUncertainError` when the request was sent but the answer was lost: it is not
        retried, because the task may exist and be billed.
        """
        if not isinstance(request, REQUEST_TYPES):
            raise InvalidRequestError(
                "request", f"must be an ImageToVideo or a TextToVideo, not {type(request).__name__}"
            )
        state = self._state()
        body, token = await state.submitter.request_body(request)
        slot = await state.submitter.take_slot()
        # Sent from the client's own task, so that the caller can be cancelled at once (by anyio or asyncio)
        # while a request already on the wire still gets its answer: see `abandoned_tasks`.
        submission = _Submission(request, token)
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
                task_id, slot, announced = await state.submitter.send(
                    submission.request,
                    body,
                    slot,
                    shield=WireShield(scope=scope, stop=submission.stop),
                    token=submission.token,
                )
                state.poller.track(task_id, slot=slot, kind=kind_of(submission.request), learns=not announced)
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
        state = self._state()
        return AsCompleted(
            jobs,
            timeout=timeout,
            on_event=on_event,
            submitter=state.submitter,
            poller=state.poller,
            background=state.background,
            clock=self.clock,
            max_concurrency=self.max_concurrency,
            max_submissions_in_flight=self.max_submissions_in_flight,
        )

    # -- poll -----------------------------------------------------------------------------------------------

    async def get_task(self, task: Task | TaskResult | str) -> TaskResult:
        """Poll a task once (retrying transient failures) and return what the server says now."""
        task_id = _task_id_of(task)
        transport = self._state().transport
        pacer, clock = self._budget.task_results, self.clock

        async def paced_once() -> TaskResult:
            await pacer.wait(clock)
            try:
                result = await fetch_task_once(transport, task_id)
            except (RateLimitError, ServerError) as error:
                if isinstance(error, RateLimitError) or is_surge(error):
                    pacer.refused(clock.now(), error.retry_after)
                raise
            pacer.accepted()
            return result

        return await self._retrying(paced_once)

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retries(attempt_once, policy=self.retry, clock=self.clock, rng=self._rng)

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
        state.poller.add_waiter(task_id, waiter)
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
                state.poller.remove_waiter(task_id, waiter)

    # -- webhooks -------------------------------------------------------------------------------------------

    async def handle_webhook(self, body: bytes | str, *, url: str | None = None) -> int:
        """Take a webhook delivery's raw body and the URL it was posted to; return the HTTP status to answer.

        The payload is unsigned, so it is only a hint: for a task this client follows, it triggers one
        task-result call, whose answer resolves `wait()`, `watch()` and `as_completed()`. `url` (the request's
        full URL, or just its query string) names the submission the delivery answers: each submission's webhook
        URL carries a token of its own (`?pixverse_submission=...`), so a submission whose answer was lost
        learns its task from its delivery (see `SubmissionUncertainError`); pass it. Answers: 200 when that
        confirmation was scheduled or the submission found; 202 when there is nothing to do (a duplicate, a
        late delivery, a task this client does not follow, an event that is not a task result); 400 when the
        body is malformed; 503 when a shared budget could not take a delivery meant for a sibling client (the
        router delivers again).
        """
        state = self._state()
        return await answer_delivery(body, state.poller, state.submitter.tokens, url)

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
        return await self._downloader.download(video, path)

    def _proxy_for(self, url: str) -> Proxy | None:
        return self._proxy_routes.proxy_for(url)

    def _download_session(self) -> aiohttp.ClientSession:
        state = self._state()
        if self._given_session is not None and (problem := session_problem(state.session, self._api_key)):
            raise ConfigurationError("session", problem)
        return state.session


async def _await_outcome(poller: Poller, task_id: str, clock: Clock, timeout: float | None) -> Outcome:
    outcomes: list[Outcome] = []
    delivered = anyio.Event()

    def deliver(outcome: Outcome) -> None:
        outcomes.append(outcome)
        delivered.set()

    deadline = None if timeout is None else clock.now() + timeout
    waiter = CallbackWaiter(deadline=deadline, timeout=timeout, on_outcome=deliver)
    poller.add_waiter(task_id, waiter)
    try:
        await delivered.wait()
    finally:
        if not delivered.is_set():
            poller.remove_waiter(task_id, waiter)
    return outcomes[0]


def _task_id_of(task: Task | TaskResult | str) -> str:
    task_id = task if isinstance(task, str) else getattr(task, "task_id", None)
    if not isinstance(task_id, str):
        raise InvalidRequestError("task", f"must be a Task, a TaskResult or a task id, not {type(task).__name__}")
    problem = task_id_problem(task_id)
    if problem is not None:
        raise InvalidRequestError("task", problem)
    return task_id
