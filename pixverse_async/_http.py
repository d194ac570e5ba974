"""One HTTP exchange with the API, and what its failure means: was the request sent, or not?

The difference decides whether a billed submission may be retried. A failure to connect (refused, DNS,
connect timeout) means the server never saw the request: `RequestNotSent`. Anything after the request went
out (read timeout, reset, a body cut short) means it may have been acted on: `AnswerLost`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from typing import Any, final

import aiohttp
import attrs
from multidict import CIMultiDictProxy

from ._deadlines import Deadlines
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from ._retry import parse_retry_after
from ._version import __version__

_AUTH_REASONS = frozenset({"MISSING_API_KEY", "INVALID_API_KEY", "BILLING_AUTH_FAILED"})
_BALANCE_REASONS = frozenset({"BILLING_BALANCE_NOT_ENOUGH"})
_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
USER_AGENT = f"pixverse-async/{__version__}"
# One encoder for every body: json.dumps with any non-default option builds a new encoder on each call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_HTML_TAG = re.compile(r"<[^>]+>")
_WHITESPACE = re.compile(r"\s+")


@attrs.frozen(repr=False)
class Secret:
    """The API key, kept out of every repr, str and traceback variable dump."""

    _value: str

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _check_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # Zero would not mean "no limit" (that is None) but a watchdog checking without pause.
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidRequestError(
            attribute.name, f"must be a number of seconds > 0, or None for no limit, not {value!r}"
        )


@attrs.frozen
class Timeouts:
    """Seconds the client waits, per request. `None` waits without limit.

    `connect`: to open a connection (safe to retry: nothing was sent). `read`: for an API request, from its
    start to its answer's last byte, enforced at most an eighth late (on a submission, running out means
    the answer is lost). Opening a connection, and with a session you pass in waiting for a free one, count
    against `read` too: keep it well above `connect`. `download_read`: between bytes of a video download.
    """

    connect: float | None = attrs.field(default=10.0, validator=_check_seconds)
    read: float | None = attrs.field(default=60.0, validator=_check_seconds)
    download_read: float | None = attrs.field(default=60.0, validator=_check_seconds)

    def for_api(self) -> aiohttp.ClientTimeout:
        # No sock_read: `read` is kept by the client's `Deadlines` watchdog, without a timer per request.
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=None)

    def for_download(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.download_read)


class RequestNotSent(Exception):
    """The request never reached the server: retrying cannot duplicate anything."""

    def __init__(self, error: APIConnectionError) -> None:
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
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; `APIResponseError` when a success answer is not JSON (e.g. cut short)."""
        try:
            # Decoded first: json.loads(bytes) sniffs the encoding, which costs more than the decoding.
            return json.loads(self.body.decode())
        except ValueError:
            raise APIResponseError(
                f"the API answered {self.status} with a body that is not valid JSON ({len(self.body)} bytes)"
            ) from None


@final
class ApiTransport:
    """Sends requests to the API with the key, and turns every failure into this library's errors."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, api_key: Secret, timeouts: Timeouts) -> None:
        self._session = session
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeouts.for_api()
        # Its watch() must run while the client is open.
        self.deadlines = Deadlines(timeouts.read)
        # Built once, and only what must go with each request: aiohttp merges every header it is given, one
        # by one, on every request. The User-Agent is a default of the session the client creates.
        self._headers = {"Authorization": f"Bearer {api_key.reveal()}"}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    def redact(self, text: str) -> str:
        return text.replace(self._api_key.reveal(), "***")

    async def send(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> Response:
        url = self._base_url + path
        data = None if body is None else _COMPACT_JSON.encode(body).encode()
        headers = self._headers if data is None else self._json_headers
        deadline = self.deadlines.arm()
        try:
            # No redirects: following one could carry the key to another host.
            async with self._session.request(
                method, url, params=params, data=data, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                payload = await response.read()
                return Response(status=response.status, headers=response.headers, body=payload)
        except asyncio.CancelledError:
            if self.deadlines.timed_out(deadline):
                raise AnswerLost(APITimeoutError(f"{method} {path}: no answer within the read timeout")) from None
            raise
        except aiohttp.ConnectionTimeoutError:
            raise RequestNotSent(APITimeoutError(f"could not connect to {self._base_url} in time")) from None
        except aiohttp.ClientConnectorError as error:
            reason = self.redact(str(error.os_error) or type(error.os_error).__name__)
            raise RequestNotSent(APIConnectionError(f"could not connect to {self._base_url}: {reason}")) from None
        except (aiohttp.SocketTimeoutError, TimeoutError):
            raise AnswerLost(APITimeoutError(f"{method} {path}: no answer within the read timeout")) from None
        except aiohttp.ServerDisconnectedError:
            raise AnswerLost(APIConnectionError(f"{method} {path}: the server closed the connection")) from None
        except aiohttp.ClientError as error:
            detail = self.redact(str(error)) or type(error).__name__
            raise AnswerLost(APIConnectionError(f"{method} {path}: {detail}")) from None
        finally:
            self.deadlines.disarm(deadline)

    def status_error(self, response: Response) -> APIStatusError:
        """The typed error for a non-2xx answer, whatever its body (JSON, an HTML page, or nothing)."""
        reason: str | None = None
        message = ""
        metadata: dict[str, Any] = {}
        try:
            parsed = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            reason = parsed.get("reason") if isinstance(parsed.get("reason"), str) else None
            message = str(parsed.get("message") or "")
            if isinstance(parsed.get("metadata"), dict):
                metadata = json.loads(self.redact(json.dumps(parsed["metadata"])))
        else:
            message = self._describe_non_json(response)
        error_class = self._error_class(response.status, reason)
        return error_class(
            response.status,
            reason,
            self.redact(message),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            metadata=metadata,
        )

    @staticmethod
    def _describe_non_json(response: Response) -> str:
        if not response.body:
            return "empty body"
        text = response.body[:2048].decode("utf-8", "replace")
        snippet = _WHITESPACE.sub(" ", _HTML_TAG.sub(" ", text)).strip()[:200]
        content_type = response.headers.get("Content-Type", "unknown type")
        return f"non-JSON body ({content_type}): {snippet}"

    @staticmethod
    def _error_class(status: int, reason: str | None) -> type[APIStatusError]:
        if reason in _AUTH_REASONS:
            return AuthenticationError
        if reason in _BALANCE_REASONS:
            return InsufficientBalanceError
        if status >= 500:
            return ServerError
        return _STATUS_ERRORS.get(status, APIStatusError)
