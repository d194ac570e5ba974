"""The retry policy's pure parts: backoff with jitter and caps, `Retry-After` parsing, and the one decision of
which failures are retried, by call kind."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pixverse_async import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    InsufficientBalanceError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    PixVerseError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TaskFailedError,
    VideoExpiredError,
    VideoHostError,
)
from pixverse_async._retry import CallKind, Verdict, decide, parse_retry_after, retry_after_of

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


class FixedRandom(random.Random):
    """An rng whose every draw is `fraction`: the jitter's extremes, exactly."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


# -- backoff ------------------------------------------------------------------------------------------------


def test_backoff_doubles_from_the_initial_wait_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=0.5)
    no_jitter = FixedRandom(0.0)
    assert [policy.backoff(n, no_jitter) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jitter_only_ever_takes_off_up_to_its_share() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=30.0, jitter=0.25)
    assert policy.backoff(3, FixedRandom(0.0)) == 4.0
    assert policy.backoff(3, FixedRandom(1.0)) == 3.0
    assert policy.backoff(3, FixedRandom(0.5)) == 3.5


def test_a_huge_retry_number_stays_at_the_cap_without_overflowing() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=30.0, jitter=0.0)
    assert policy.backoff(10_000) == 30.0


@given(
    initial=st.floats(min_value=1e-3, max_value=100.0),
    cap=st.floats(min_value=1e-3, max_value=1000.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    retry_number=st.integers(min_value=1, max_value=200),
    fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_backoff_stays_between_the_jittered_floor_and_the_cap(
    initial: float, cap: float, jitter: float, retry_number: int, fraction: float
) -> None:
    assume(initial <= cap)  # the other way round is refused (test_options)
    policy = RetryPolicy(initial_backoff=initial, max_backoff=cap, jitter=jitter)
    capped = min(cap, initial * 2.0 ** (retry_number - 1))
    wait = policy.backoff(retry_number, FixedRandom(fraction))
    assert capped * (1.0 - jitter) - 1e-9 <= wait <= capped + 1e-9
    assert wait <= cap + 1e-9


@given(initial=st.floats(min_value=1e-3, max_value=10.0), cap=st.floats(min_value=1e-3, max_value=100.0))
def test_without_jitter_backoff_never_shrinks_from_one_retry_to_the_next(initial: float, cap: float) -> None:
    assume(initial <= cap)
    policy = RetryPolicy(initial_backoff=initial, max_backoff=cap, jitter=0.0)
    waits = [policy.backoff(n) for n in range(1, 40)]
    assert waits == sorted(waits)


def test_retry_after_overrides_the_backoff_unless_it_asks_too_much() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_retry_after=60.0)
    assert policy.delay(1, 7.0) == 7.0
    assert policy.delay(5, 0.0) == 0.0
    assert policy.delay(1, 60.0) == 60.0
    assert policy.delay(1, 60.5) is None  # raised instead of waited for
    assert policy.delay(2, None, FixedRandom(0.0)) == 1.0


# -- Retry-After ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),  # never a negative wait
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("Wed, 99 Foo 2026 00:00:00 GMT", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_refuses_garbage(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_parse_retry_after_reads_an_http_date_against_now() -> None:
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), now=NOW) == 90.0
    assert parse_retry_after(format_datetime(NOW - timedelta(seconds=90), usegmt=True), now=NOW) == 0.0
    # A date without a zone is read as UTC, as HTTP dates are.
    assert parse_retry_after("Tue, 01 Dec 2026 12:00:30 -0000", now=NOW) == 30.0


@given(seconds=st.integers(min_value=0, max_value=10**7))
def test_parse_retry_after_reads_back_any_delay_written_either_way(seconds: int) -> None:
    assert parse_retry_after(str(seconds), now=NOW) == float(seconds)
    as_date = format_datetime(NOW + timedelta(seconds=seconds), usegmt=True)
    assert parse_retry_after(as_date, now=NOW) == float(seconds)


# -- which failures are retried -----------------------------------------------------------------------------------


def status(cls: type[RateLimitError] | type[ServerError] | type[BadRequestError], code: int) -> PixVerseError:
    return cls(code, None, "", retry_after=3.0)


RETRY, GIVE_UP, UNCERTAIN = Verdict.RETRY, Verdict.GIVE_UP, Verdict.UNCERTAIN
# (error, idempotent call, billed call that never left, billed call that reached the server)
DECISIONS: list[tuple[PixVerseError, Verdict, Verdict, Verdict]] = [
    (APIConnectionError("reset"), RETRY, RETRY, UNCERTAIN),
    (APITimeoutError("read timeout"), RETRY, RETRY, UNCERTAIN),
    (APIResponseError("garbled 200"), RETRY, RETRY, UNCERTAIN),
    (status(RateLimitError, 429), RETRY, RETRY, RETRY),  # a 429 created nothing
    (status(ServerError, 500), RETRY, RETRY, UNCERTAIN),
    (status(ServerError, 503), RETRY, RETRY, UNCERTAIN),
    (VideoHostError(503), RETRY, RETRY, UNCERTAIN),
    (DownloadConnectionError("cut short"), RETRY, RETRY, UNCERTAIN),
    (DownloadTimeoutError("silent host"), RETRY, RETRY, UNCERTAIN),
    (status(BadRequestError, 400), GIVE_UP, GIVE_UP, GIVE_UP),
    (AuthenticationError(403, "INVALID_API_KEY", ""), GIVE_UP, GIVE_UP, GIVE_UP),
    (InsufficientBalanceError(400, "BILLING_BALANCE_NOT_ENOUGH", ""), GIVE_UP, GIVE_UP, GIVE_UP),
    (PermissionDeniedError(403, "API_NOT_ALLOWED", ""), GIVE_UP, GIVE_UP, GIVE_UP),
    (NotFoundError(404, "TASK_NOT_FOUND", ""), GIVE_UP, GIVE_UP, GIVE_UP),
    (VideoExpiredError("expired"), GIVE_UP, GIVE_UP, GIVE_UP),
    (DownloadError("not an MP4 file"), GIVE_UP, GIVE_UP, GIVE_UP),
    (InvalidRequestError("prompt", "empty"), GIVE_UP, GIVE_UP, GIVE_UP),
    (TaskFailedError("t1", "nope"), GIVE_UP, GIVE_UP, GIVE_UP),
]


@pytest.mark.parametrize(("error", "idempotent", "billed_not_sent", "billed_sent"), DECISIONS, ids=repr)
def test_the_retry_decision_table(
    error: PixVerseError, idempotent: Verdict, billed_not_sent: Verdict, billed_sent: Verdict
) -> None:
    assert decide(error, CallKind.IDEMPOTENT) is idempotent
    assert decide(error, CallKind.IDEMPOTENT, reached_server=False) is idempotent
    assert decide(error, CallKind.BILLED, reached_server=False) is billed_not_sent
    assert decide(error, CallKind.BILLED) is billed_sent


def test_retry_after_comes_from_the_answer_that_failed() -> None:
    assert retry_after_of(status(RateLimitError, 429)) == 3.0
    assert retry_after_of(VideoHostError(503, 9.0)) == 9.0
    assert retry_after_of(APIConnectionError("reset")) is None
