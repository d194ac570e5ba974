"""One HTTP exchange with the API, and what its failure means: was the request sent, or not?

The difference decides whether a billed submission may be retried. A failure to connect (refused, DNS,
connect timeout) means the server never saw the request: `RequestNotSent`. So does any failure while a
streamed body (`_upload.StreamedBody`) had not been sent whole: its `Content-Length` tells the server bytes
are missing, so it cannot have acted on it. Anything after the request went out whole (read timeout, reset,
an answer cut short) means it may have been acted on: `AnswerLost`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any, final

import aiohttp
import anyio
import attrs
from multidict import CIMultiDictProxy

from ._environment import Proxy
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContentPolicyError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from ._json_reader import UnreadableJSON, read_json
from ._retry import parse_retry_after
from ._upload import StreamedBody, UploadProgress
from ._validation import check_number
from ._version import __version__

_AUTH_REASONS = frozenset({"MISSING_API_KEY", "INVALID_API_KEY", "BILLING_AUTH_FAILED"})
_BALANCE_REASONS = frozenset({"BILLING_BALANCE_NOT_ENOUGH"})
_CONTENT_POLICY_REASONS = frozenset({"ILLEGAL_PROMPT", "ILLEGAL_IMAGE_CONTENT"})
_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
USER_AGENT = f"pixverse-async/{__version__}"
# A connect timeout, which aiohttp tells apart from a read timeout since 3.10 only. Before, both are a
# `ServerTimeoutError`, taken as an answer lost: never resubmitted, whatever it was.
_CONNECTION_TIMEOUT: type[Exception] = getattr(
    aiohttp, "ConnectionTimeoutError", type("_NeverRaised", (Exception,), {})
)
# One encoder for every body: json.dumps with any non-default option builds a new encoder on each call.
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_HTML_TAG = re.compile(r"<[^>]+>")
_WHITESPACE = re.compile(r"\s+")
# How much of a server's text an error message keeps (after redaction).
_ERROR_TEXT_CHARS = 200
# What masks the key in a server's text: the first of these that the key does not hold, three times.
_MASK_CHARS = "*#?~%^"


@final
class Secret:
    """The API key, kept out of every repr, str and traceback variable dump.

    A plain class with one slot, not an attrs class: tools that show an attrs object by its fields (rich's
    tracebacks) would show the key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("the API key is not pickled")


def redact(text: str, secret: Secret) -> str:
    """`text` with every occurrence of the key masked, and nothing else changed.

    The mask is made of a character the key does not hold, so masking cannot make a new occurrence: a
    leftmost-first replacement leaves none in the text between masks, and a new one would have to hold a
    character of a mask.
    """
    key = secret.reveal()
    if not key or key not in text:
        return text
    return text.replace(key, _mask_char(key) * 3)


def _mask_char(key: str) -> str:
    for char in _MASK_CHARS:
        if char not in key:
            return char
    # A key holding every usual mask character (only ever in a property test): any character it lacks.
    return next(chr(code) for code in range(0x2022, 0x110000) if chr(code) not in key)


def redact_all(value: Any, secret: Secret) -> Any:
    """A JSON-like value (dicts, lists, strings) with the key masked in every string, keys of dicts included."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {redact_all(name, secret): redact_all(item, secret) for name, item in value.items()}
    if isinstance(value, list):
        return [redact_all(item, secret) for item in value]
    return value


def shorten(text: str, limit: int = _ERROR_TEXT_CHARS) -> str:
    """Cut a server's text for an error message; only after `redact`, so that no head of a key survives."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@final
class _RequestHeaders:
    """An API request's headers, handed straight to aiohttp as an iterable of (name, value) pairs. The
    `Authorization` value is built only while aiohttp reads it, so that no frame of this library holds it as
    a plain str; the repr hides it. Not a `Mapping`: error reporters (Sentry) list a mapping's items."""

    __slots__ = ("_content_type", "_key")

    def __init__(self, key: Secret, content_type: str | None) -> None:
        self._key = key
        self._content_type = content_type

    def __iter__(self) -> Iterator[tuple[str, str]]:
        yield "Authorization", f"Bearer {self._key.reveal()}"
        if self._content_type is not None:
            yield "Content-Type", self._content_type

    def __repr__(self) -> str:
        extra = f", 'Content-Type': {self._content_type!r}" if self._content_type is not None else ""
        return f"<request headers {{'Authorization': 'Bearer ***'{extra}}}>"


def _check_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # Zero would not mean "no limit" (that is None) but a watchdog checking without pause.
    check_number(attribute.name, value, above=0, none_means="no limit", error=ConfigurationError)


@attrs.frozen
class Timeouts:
    """Seconds the client waits, per request. `None` waits without limit.

    Real seconds, whatever the client's `clock` (they bound real sockets; a `ScaledClock` does not shrink
    them). `connect`: to open a connection (safe to retry: nothing was sent). `upload`: while a request's body
    is being sent (a first frame of megabytes over a slow uplink), the longest time without a byte of it
    moving; bytes still moving is not a hang, however slow. Running out means the body never fully left, so
    no task can have been created: a submission is retried. `read`: for an API request, from the moment its
    body has been sent (for a small body, the request's start) to its answer's last byte, enforced at most an
    eighth late (on a submission, running out means the answer is lost). Opening a connection, and with a
    session you pass in waiting for a free one, count against `read` (or `upload`) too: keep them well above
    `connect`. `download_read`: between bytes of a video download.
    """

    connect: float | None = attrs.field(default=10.0, validator=_check_seconds)
    read: float | None = attrs.field(default=60.0, validator=_check_seconds)
    download_read: float | None = attrs.field(default=60.0, validator=_check_seconds)
    upload: float | None = attrs.field(default=30.0, validator=_check_seconds)

    def for_api(self) -> aiohttp.ClientTimeout:
        # No sock_read: `read` is kept by the transport's `ReadTimeoutWatchdog`, without a timer per request.
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=None)

    def for_download(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.download_read)


class RequestNotSent(Exception):
    """The request never reached the server, or not all of its body: retrying cannot duplicate anything.
    `error` is an `APIConnectionError`, or the `InvalidRequestError` of a file that changed while it was sent."""

    def __init__(self, error: APIConnectionError | InvalidRequestError) -> None:
        super().__init__(str(error))
        self.error = error


class AnswerLost(Exception):
    """The request was sent but no complete answer came back: the server may have acted on it."""

    def __init__(self, error: APIConnectionError) -> None:
        super().__init__(str(error))
        self.error = error


@attrs.frozen
class Response:
    status: int
    headers: CIMultiDictProxy[str] = attrs.field(repr=False)
    # A server may echo anything, the key included: a traceback's dump of locals shows only the length.
    body: bytes = attrs.field(repr=lambda body: f"<{len(body)} bytes>")

    def json(self) -> Any:
        """The body as JSON; `APIResponseError` when a success answer is not JSON (e.g. cut short)."""
        try:
            # Read by fixed fields, never walked whole: the parser's own depth limit is bound enough, and the
            # depth scan would cost 1% of a job's instructions.
            return read_json(self.body, max_depth=None)
        except UnreadableJSON as problem:
            raise APIResponseError(
                f"the API answered {self.status} with a body that is not valid JSON ({len(self.body)} bytes): {problem}"
            ) from None


@final
class ApiTransport:
    """Sends requests to the API with the key, and turns every failure into this library's errors."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: Secret,
        timeouts: Timeouts,
        *,
        proxy: Proxy | None = None,
    ) -> None:
        self._session = session
        self._proxy = None if proxy is None else proxy.url
        self._proxy_auth = None if proxy is None else proxy.auth
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeouts.for_api()
        # Its run() must run while the client is open.
        self.watchdog = ReadTimeoutWatchdog(timeouts.read, upload=timeouts.upload)
        self._upload_limit = timeouts.upload
        # Built once, and only what must go with each request: aiohttp merges every header it is given, one
        # by one, on every request. The User-Agent is a default of the session the client creates.
        self._headers = _RequestHeaders(api_key, None)
        self._json_headers = _RequestHeaders(api_key, "application/json")

    def redact(self, text: str) -> str:
        return redact(text, self._api_key)

    async def send(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> Response:
        if type(body) is StreamedBody:
            return await self._send_streamed(method, path, body)
        url = self._base_url + path
        data = None if body is None else COMPACT_JSON.encode(body).encode()
        headers = self._headers if data is None else self._json_headers
        deadline = self.watchdog.arm()
        failure: RequestNotSent | AnswerLost | asyncio.CancelledError
        try:
            return await self._answer(method, url, params=params, data=data, headers=headers)
        except asyncio.CancelledError as cancelled:
            failure = self._cancelled(method, path, deadline, cancelled)
        except aiohttp.ClientError as error:
            failure = self._failure_of(method, path, error)
        except TimeoutError:
            failure = AnswerLost(APITimeoutError(f"{method} {path}: no answer within the read timeout"))
        finally:
            self.watchdog.disarm(deadline)
        # Raised here, outside the handlers, so that aiohttp's error is not kept as its __context__: aiohttp's
        # frames hold the request's headers, key included, in plain locals that a traceback would show. A
        # cancellation too: the caller's deadline (`asyncio.wait_for`, `anyio.fail_after`...) chains it to the
        # `TimeoutError` it raises, and its traceback would run through `ClientSession._request` and its
        # `headers`. The new one keeps the cancellation's message, by which anyio knows its own.
        raise failure

    async def _send_streamed(self, method: str, path: str, body: StreamedBody) -> Response:
        """`send()` with a streamed body: its deadline follows the body (`UploadProgress`), and a failure
        before its last bytes were handed over is `RequestNotSent`, whatever aiohttp made of it."""
        deadline = self.watchdog.arm_upload()
        progress = body.progress = UploadProgress(deadline, stall=self._upload_limit, read=self.watchdog.limit)
        failure: RequestNotSent | AnswerLost | asyncio.CancelledError
        try:
            return await self._answer(method, self._base_url + path, data=body, headers=self._json_headers)
        except asyncio.CancelledError as cancelled:
            failure = self._cancelled(method, path, deadline, cancelled)
        except aiohttp.ClientError as error:
            failure = self._failure_of(method, path, error)
        except Exception:  # the body's own failure, as aiohttp before 3.12 passes it on
            failure = AnswerLost(APIConnectionError(f"{method} {path}: the request failed"))
        finally:
            self.watchdog.disarm(deadline)
            body.progress = None
            body.release_lane()
        if isinstance(failure, asyncio.CancelledError):
            raise failure  # outside the handlers, as in send()
        if not progress.body_sent:
            if progress.failure is not None:
                failure = RequestNotSent(progress.failure)
            elif isinstance(failure.error, APITimeoutError) and isinstance(failure, AnswerLost):
                failure = RequestNotSent(
                    APITimeoutError(
                        f"{method} {path}: the upload stalled: no byte of the body moved for {self._upload_limit} s"
                    )
                )
            else:
                failure = RequestNotSent(failure.error)
        raise failure

    async def _answer(
        self, method: str, url: str, *, headers: _RequestHeaders, params: Mapping[str, str] | None = None, data: Any
    ) -> Response:
        """One request and its whole answer; the caller turns what it raises into this library's errors."""
        # No redirects: following one could carry the key to another host.
        async with self._session.request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            timeout=self._timeout,
            allow_redirects=False,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        ) as response:
            payload = await response.read()
            return Response(status=response.status, headers=response.headers, body=payload)

    def _cancelled(
        self, method: str, path: str, deadline: RequestDeadline | None, cancelled: asyncio.CancelledError
    ) -> AnswerLost | asyncio.CancelledError:
        """A request's cancellation: its own read deadline's (an answer lost), or someone else's, which goes on
        as a new one, to be raised outside the handler (see `send()`)."""
        if self.watchdog.uncancel_if_expired(deadline):
            return AnswerLost(APITimeoutError(f"{method} {path}: no answer within the read timeout"))
        return asyncio.CancelledError(*cancelled.args)

    def _failure_of(self, method: str, path: str, error: aiohttp.ClientError) -> RequestNotSent | AnswerLost:
        """What aiohttp's `error` means: the request not sent (it could not connect), or its answer lost."""
        if isinstance(error, _CONNECTION_TIMEOUT):
            return RequestNotSent(APITimeoutError(f"could not connect to {self._base_url} in time"))
        if isinstance(error, aiohttp.ClientConnectorError):
            reason = self.redact(_connect_failure(error))
            return RequestNotSent(APIConnectionError(f"could not connect to {self._base_url}: {reason}"))
        if isinstance(error, TimeoutError):  # SocketTimeoutError, and before 3.10 its ServerTimeoutError
            return AnswerLost(APITimeoutError(f"{method} {path}: no answer within the read timeout"))
        if isinstance(error, aiohttp.ServerDisconnectedError):
            return AnswerLost(APIConnectionError(f"{method} {path}: the server closed the connection"))
        detail = self.redact(str(error)) or type(error).__name__
        return AnswerLost(APIConnectionError(f"{method} {path}: {detail}"))

    def status_error(self, response: Response) -> APIStatusError:
        """The typed error for a non-2xx answer, whatever its body (JSON, an HTML page, or nothing).

        Every field the server wrote is redacted first, then cut: a key cut in two would leave its head.
        """
        reason: str | None = None
        message = ""
        metadata: dict[str, Any] = {}
        try:
            parsed = read_json(response.body) if response.body else None
        except UnreadableJSON:
            parsed = None
        if isinstance(parsed, dict):
            if isinstance(parsed.get("reason"), str):
                reason = shorten(self.redact(parsed["reason"]))
            message = shorten(self.redact(str(parsed.get("message") or "")))
            if isinstance(parsed.get("metadata"), dict):
                metadata = redact_all(parsed["metadata"], self._api_key)
        else:
            message = self._describe_non_json(response)
        error_class = self._error_class(response.status, reason)
        return error_class(
            response.status,
            reason,
            message,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            metadata=metadata,
        )

    def _describe_non_json(self, response: Response) -> str:
        if not response.body:
            return "empty body"
        text = self.redact(response.body.decode("utf-8", "replace"))
        # Tags and runs of whitespace go, then the key is looked for again, in case that clean-up joined one.
        snippet = shorten(self.redact(_WHITESPACE.sub(" ", _HTML_TAG.sub(" ", text)).strip()))
        content_type = shorten(self.redact(response.headers.get("Content-Type", "unknown type")), 80)
        return f"non-JSON body ({content_type}): {snippet}"

    @staticmethod
    def _error_class(status: int, reason: str | None) -> type[APIStatusError]:
        if reason in _AUTH_REASONS:
            return AuthenticationError
        if reason in _BALANCE_REASONS:
            return InsufficientBalanceError
        if status == 400 and reason in _CONTENT_POLICY_REASONS:
            return ContentPolicyError
        if status >= 500:
            return ServerError
        return _STATUS_ERRORS.get(status, APIStatusError)


# -- the read-timeout watchdog -----------------------------------------------------------------------------------------
#
# Deadlines for API requests, kept by one watchdog task per client instead of event-loop timers per request.
#
# aiohttp's `sock_read` timeout arms a timer when a request is sent and arms a new one on every chunk received,
# and asyncio keeps its timers in a heap of Python objects: measured with `benchmarks.instructions`, the four
# timers of a job (its submission and its poll) cost 67k instructions, a twentieth of the client's work per
# job. Here a request costs an entry in a set. One task looks at the set every eighth of the limit and cancels
# each request past its deadline; the request takes that cancellation back (`Task.uncancel()`, as
# `asyncio.timeout()` does) and raises its timeout error instead, while a cancellation from anyone else still
# propagates. Its deadlines are real time (`time.monotonic()`, `anyio.sleep`), not the client's clock: they bound
# real sockets, as aiohttp's own timeouts do.

_CHECKS_PER_LIMIT = 8


@final
class RequestDeadline:
    """When one request, running in `asyncio_task` (an `asyncio.Task`, not a PixVerse `Task`), must have ended
    (`time.monotonic()`: real time, not the client's clock)."""

    __slots__ = ("asyncio_task", "at", "cancelling", "expired")

    def __init__(self, task: asyncio.Task[object], at: float) -> None:
        self.asyncio_task = task
        self.at = at
        self.cancelling = task.cancelling()
        self.expired = False


@final
class ReadTimeoutWatchdog:
    """The deadlines of the API requests in flight, each `limit` seconds after its request started (or, for a
    streamed body, as its `UploadProgress` sets it), and the task (`run()`) that cancels the requests past
    theirs."""

    def __init__(self, limit: float | None, *, upload: float | None = None) -> None:
        self.limit = limit
        # How often it looks: an eighth of the shorter limit (a streamed body's deadline follows either).
        limits = [value for value in (limit, upload) if value is not None]
        self._period = min(limits) / _CHECKS_PER_LIMIT if limits else None
        self._armed: set[RequestDeadline] = set()

    def arm(self) -> RequestDeadline | None:
        """A deadline for the request the current task starts now (None when there is no limit)."""
        if self.limit is None:
            return None
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("API requests must run in an asyncio task")
        deadline = RequestDeadline(task, time.monotonic() + self.limit)
        self._armed.add(deadline)
        return deadline

    def arm_upload(self) -> RequestDeadline | None:
        """A deadline for a request with a streamed body, which its `UploadProgress` moves (None when neither
        limit is set)."""
        if self._period is None:
            return None
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("API requests must run in an asyncio task")
        deadline = RequestDeadline(task, math.inf)
        self._armed.add(deadline)
        return deadline

    def disarm(self, deadline: RequestDeadline | None) -> None:
        """The request ended, one way or another."""
        if deadline is not None:
            self._armed.discard(deadline)

    @staticmethod
    def uncancel_if_expired(deadline: RequestDeadline | None) -> bool:
        """On a `CancelledError` in the request: True when its deadline, and nobody else, cancelled it. The
        cancellation is then taken back (`Task.uncancel()`, as `asyncio.timeout()` does) and the caller raises
        its timeout error instead; on False the caller lets the `CancelledError` propagate."""
        return deadline is not None and deadline.expired and deadline.asyncio_task.uncancel() <= deadline.cancelling

    async def run(self) -> None:
        """Cancel every request past its deadline, until cancelled; at most an eighth of the limit late.

        Cancelled (the client closing), it goes on while requests remain: a submission shielded to learn its
        task id still needs its deadline.
        """
        period = self._period
        if period is None:
            return
        try:
            while True:
                await self._check_after(period)
        finally:
            with anyio.CancelScope(shield=True):
                while any(not deadline.expired for deadline in self._armed):
                    await self._check_after(period)

    async def _check_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        now = time.monotonic()
        for deadline in self._armed:
            if deadline.at <= now and not deadline.expired:
                deadline.expired = True
                deadline.asyncio_task.cancel()


def _connect_failure(error: aiohttp.ClientConnectorError) -> str:
    """What went wrong connecting: the OS's words, or the certificate's (before aiohttp 3.10 a certificate
    error has no `os_error`)."""
    try:
        os_error = error.os_error
    except AttributeError:
        return str(error) or type(error).__name__
    return str(os_error) or type(os_error).__name__
