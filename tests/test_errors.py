"""Every error row of the API, proxy pages, `Retry-After`, and the key kept out of every error."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

import pixverse_async
from pixverse_async import (
    APIResponseError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContentPolicyError,
    ImageToVideo,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PixVerseClient,
    PollPolicy,
    RateLimitError,
    RateLimits,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    Timeouts,
)
from pixverse_async.testing import InstantClock, ScaledClock
from tests.helpers import tiny_server

pytestmark = pytest.mark.anyio
KEY = "sk-live-very-secret"
NO_RETRY = RetryPolicy(max_attempts=1)

ERROR_TABLE = [
    (400, "INVALID_REQUEST_BODY", BadRequestError),
    (400, "IMAGE_FILE_EXCEEDS_MAX_SIZE", BadRequestError),
    (400, "INVALID_IMAGE_FORMAT", BadRequestError),
    (400, "IMAGE_EXCEEDS_MAX_RESOLUTION", BadRequestError),
    (400, "INVALID_IMAGE_SIZE", BadRequestError),
    (400, "ILLEGAL_PROMPT", ContentPolicyError),
    (400, "ILLEGAL_IMAGE_CONTENT", ContentPolicyError),
    (400, "BILLING_BALANCE_NOT_ENOUGH", InsufficientBalanceError),
    (400, "MISSING_API_KEY", AuthenticationError),
    (403, "INVALID_API_KEY", AuthenticationError),
    (403, "BILLING_AUTH_FAILED", AuthenticationError),
    (403, "FEATURE_NOT_ALLOWED", PermissionDeniedError),
    (403, "API_NOT_ALLOWED", PermissionDeniedError),
    (404, "API_NOT_FOUND", NotFoundError),
    (404, "TASK_NOT_FOUND", NotFoundError),
    (429, "RATE_LIMIT_EXCEEDED", RateLimitError),
    (500, "BILLING_FAILED", ServerError),
    (500, "CREATE_TASK_FAILED", ServerError),
    (500, "GET_RESULT_FAILED", ServerError),
]


def json_error(status: int, reason: str, message: str = "nope", headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": status, "reason": reason, "message": message, "metadata": {"echo": message}}
    return web.json_response(body, status=status, headers=headers)


@pytest.mark.parametrize(("status", "reason", "error_class"), ERROR_TABLE, ids=[row[1] for row in ERROR_TABLE])
async def test_every_error_row_becomes_its_typed_error(
    status: int, reason: str, error_class: type[APIStatusError]
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return json_error(status, reason, f"server says {reason}")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(error_class) as caught:
            await client.get_task("t1")
    error = caught.value
    assert (error.status_code, error.reason, error.message) == (status, reason, f"server says {reason}")
    assert error.metadata == {"echo": f"server says {reason}"}
    assert reason in str(error)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (502, "text/html", b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", ServerError),
        (503, None, b"", ServerError),
        (404, "text/plain", b"not here", NotFoundError),
        (418, "text/plain", b"teapot", APIStatusError),
    ],
)
async def test_non_json_and_empty_error_bodies_still_become_status_errors(
    status: int, content_type: str | None, body: bytes, expected: type[APIStatusError]
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(expected) as caught:
            await client.get_task("t1")
    assert type(caught.value) is expected
    assert caught.value.status_code == status and caught.value.reason is None
    if body.startswith(b"<html>"):
        assert "502 Bad Gateway" in str(caught.value) and "<title>" not in str(caught.value)


async def test_a_server_echoing_the_key_never_gets_it_into_an_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return json_error(403, "INVALID_API_KEY", f"key {request.headers['Authorization']} is not valid")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.submit(ImageToVideo("p", "https://example.com/a.png"))
    error = caught.value
    for text in (str(error), repr(error), error.message, json.dumps(error.metadata), repr(error.args)):
        assert KEY not in text
    assert "***" in error.message


async def test_the_api_host_gets_the_key_and_our_user_agent() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), request.headers.get("User-Agent")))
        return web.json_response({"task_id": "t1"})

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url) as client:
        await client.submit(ImageToVideo("p", "https://example.com/a.png"))
    assert seen == [(f"Bearer {KEY}", f"pixverse-async/{pixverse_async.__version__}")]


class FlakyServer:
    """Answers the first `failures` requests with a fresh `failure()`, then a running task."""

    def __init__(self, failures: int, failure: Callable[[], web.Response]) -> None:
        self.failures = failures
        self.failure = failure
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.failures:
            return self.failure()
        return web.json_response({"task": {"task_id": "t1", "status": "TASK_STATUS_PROCESSING", "eta": 10}})


@pytest.mark.parametrize(
    ("headers", "expected_sleep"),
    [({"Retry-After": "7"}, 7.0), ({"Retry-After": "0"}, 0.0)],
)
async def test_polls_honour_retry_after_seconds(headers: dict[str, str], expected_sleep: float) -> None:
    flaky = FlakyServer(2, lambda: json_error(429, "RATE_LIMIT_EXCEEDED", headers=headers))
    clock = InstantClock()
    async with tiny_server(flaky.handle) as url, PixVerseClient(KEY, base_url=url, clock=clock) as client:
        result = await client.get_task("t1")
    assert result.eta == 10 and flaky.requests == 3
    assert clock.sleeps == [expected_sleep, expected_sleep]


async def test_polls_honour_retry_after_as_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    flaky = FlakyServer(
        1, lambda: json_error(503, "GET_RESULT_FAILED", headers={"Retry-After": format_datetime(when, usegmt=True)})
    )
    clock = InstantClock()
    async with tiny_server(flaky.handle) as url, PixVerseClient(KEY, base_url=url, clock=clock) as client:
        await client.get_task("t1")
    (slept,) = clock.sleeps
    assert 110 < slept <= 120


async def test_without_retry_after_backoff_is_exponential_jittered_and_capped() -> None:
    flaky = FlakyServer(5, lambda: web.Response(status=502, text="bad gateway"))
    clock = InstantClock()
    policy = RetryPolicy(max_attempts=6, initial_backoff=1.0, max_backoff=4.0, jitter=0.5)
    async with tiny_server(flaky.handle) as url, PixVerseClient(KEY, base_url=url, clock=clock, retry=policy) as client:
        await client.get_task("t1")
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(clock.sleeps) == 5
    for slept, cap in zip(clock.sleeps, caps, strict=True):
        assert cap * 0.5 <= slept <= cap


async def test_a_retry_after_beyond_the_policy_limit_raises_at_once() -> None:
    flaky = FlakyServer(1, lambda: json_error(429, "RATE_LIMIT_EXCEEDED", headers={"Retry-After": "3600"}))
    clock = InstantClock()
    policy = RetryPolicy(max_retry_after=60)
    async with tiny_server(flaky.handle) as url, PixVerseClient(KEY, base_url=url, clock=clock, retry=policy) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.get_task("t1")
    assert caught.value.retry_after == 3600 and clock.sleeps == []


async def test_client_errors_are_not_retried() -> None:
    flaky = FlakyServer(1, lambda: json_error(404, "TASK_NOT_FOUND"))
    async with tiny_server(flaky.handle) as url, PixVerseClient(KEY, base_url=url, clock=InstantClock()) as client:
        with pytest.raises(NotFoundError):
            await client.get_task("t1")
    assert flaky.requests == 1


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"task_id": ""}', b"<html>ok</html>"])
async def test_a_garbled_submission_answer_is_uncertain(body: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url) as client:
        with pytest.raises(SubmissionUncertainError) as caught:
            await client.submit(ImageToVideo("p", "https://example.com/a.png"))
    assert isinstance(caught.value.__cause__, APIResponseError)


async def test_redirects_are_not_followed_with_the_key() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(APIStatusError) as caught:
            await client.get_task("t1")
    assert caught.value.status_code == 302


@pytest.mark.parametrize(
    "build",
    [
        lambda: PixVerseClient(""),
        lambda: PixVerseClient(KEY, base_url="ftp://api.example.com"),
        lambda: PixVerseClient(KEY, max_concurrency=0),
        lambda: PixVerseClient(KEY, webhook_url="not a url"),
        lambda: PixVerseClient(KEY, clock=object()),  # type: ignore[arg-type]
        lambda: PixVerseClient(KEY, retry=RetryPolicy(max_attempts=0)),
        lambda: PixVerseClient(KEY, timeouts=Timeouts(read=0)),
        lambda: PixVerseClient(KEY, polling=PollPolicy(min_interval=-1)),
        lambda: RateLimits(max_running=0),
        lambda: RateLimits(submits_per_minute=-5),
        lambda: ScaledClock(0),
    ],
    ids=[
        "api_key",
        "base_url",
        "max_concurrency",
        "webhook_url",
        "clock",
        "retry",
        "timeouts",
        "polling",
        "max_running",
        "submits_per_minute",
        "clock_scale",
    ],
)
def test_a_bad_client_configuration_is_a_configuration_error_that_old_handlers_still_catch(
    build: Callable[[], object],
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()
    assert isinstance(caught.value, InvalidRequestError) and isinstance(caught.value, ValueError)


async def test_a_bad_request_or_call_argument_is_not_a_configuration_error() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        ImageToVideo("p", "https://example.com/a.png", resolution="4k")  # type: ignore[arg-type]
    assert type(caught.value) is InvalidRequestError
    async with PixVerseClient(KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(InvalidRequestError) as caught:
            await client.wait("t1", timeout=-1)
    assert type(caught.value) is InvalidRequestError
