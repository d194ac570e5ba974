"""The one retry decision: which failures are tried again, by call kind, and how long to wait before.

`decide()` is the rule, written once and used by every caller (`get_task()` and downloads through
`call_with_retries`, the poller's `_poll`, `Submitter.send`):

- an idempotent call (a poll, a download) retries every transient failure: connection errors and timeouts,
  garbled answers, 429 and 5xx (`TRANSIENT`);
- a billed call (a submission: the API takes no idempotency key) retries only when the server cannot have
  created a task: it was never reached, or it answered 429. When the request went out and the answer was lost
  (read timeout, reset, 5xx, a garbled 200), the verdict is `UNCERTAIN`: the caller raises
  `SubmissionUncertainError` rather than pay twice;
- anything else (authentication, balance, a refused request, a video link that expired) is never retried.

How long to wait is `RetryPolicy`'s: capped exponential backoff with jitter, or the server's `Retry-After`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import attrs

from ._clock import Clock
from ._exceptions import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    DownloadConnectionError,
    PixVerseError,
    RateLimitError,
    ServerError,
    VideoHostError,
)
from ._validation import check_order, count, number

T = TypeVar("T")

#: The failures worth another try of an idempotent call. `DownloadTimeoutError` is a `DownloadConnectionError`,
#: `APITimeoutError` an `APIConnectionError`.
TRANSIENT: tuple[type[PixVerseError], ...] = (
    APIConnectionError,
    APIResponseError,
    RateLimitError,
    ServerError,
    DownloadConnectionError,
    VideoHostError,
)


class CallKind(enum.Enum):
    """What kind of call failed, for `decide()`."""

    #: A poll or a download: repeating it changes nothing on the server.
    IDEMPOTENT = "idempotent"
    #: A submission: each one the server acts on is a task, paid for.
    BILLED = "billed"


class Verdict(enum.Enum):
    """What to do about a failed call."""

    RETRY = "retry"
    #: Raise the error as it is.
    GIVE_UP = "give up"
    #: A billed call that the server may have acted on: never retried, raised as `SubmissionUncertainError`.
    UNCERTAIN = "uncertain"


def decide(error: PixVerseError, kind: CallKind, *, reached_server: bool = True) -> Verdict:
    """Whether to try the call that failed with `error` again. `reached_server` is False only when the request
    is known not to have left (it could not connect): that matters to billed calls alone."""
    if not isinstance(error, TRANSIENT):
        return Verdict.GIVE_UP
    # A 429 is the one answer known to create no task.
    if kind is CallKind.BILLED and reached_server and not isinstance(error, RateLimitError):
        return Verdict.UNCERTAIN
    return Verdict.RETRY


#: The router's traffic shaping ("surge protection"): answers that say "slow down", like a rate limit.
OVERLOAD_STATUSES = frozenset({503, 504})


def is_surge(error: PixVerseError) -> bool:
    """A 503/504 of the router's traffic shaping: evidence of overload for the endpoint's pacer, like a 429
    (still retried, or on a submission uncertain, as any 5xx)."""
    return isinstance(error, ServerError) and error.status_code in OVERLOAD_STATUSES


def retry_after_of(error: PixVerseError) -> float | None:
    """The seconds the server asked to wait (`Retry-After`) on the answer that failed, if it did."""
    return error.retry_after if isinstance(error, APIStatusError | VideoHostError) else None


@attrs.frozen
class RetryPolicy:
    """When and how often the client retries a request that failed in a way that is safe to retry.

    The n-th retry waits `min(max_backoff, initial_backoff * 2 ** (n - 1))`, with up to `jitter` of it taken
    off at random so many clients do not retry in step. A `Retry-After` header (seconds or an HTTP date)
    overrides the backoff when present; if it asks for more than `max_retry_after`, the error is raised instead.
    `max_attempts` counts the first try: 1 disables retries.
    """

    max_attempts: int = attrs.field(default=6, validator=count(at_least=1))
    initial_backoff: float = attrs.field(default=0.5, validator=number(above=0))
    max_backoff: float = attrs.field(default=30.0, validator=number(above=0))
    jitter: float = attrs.field(default=0.5, validator=number(at_least=0, at_most=1))
    max_retry_after: float = attrs.field(default=300.0, validator=number(at_least=0))

    def __attrs_post_init__(self) -> None:
        check_order("initial_backoff", self.initial_backoff, "max_backoff", self.max_backoff)

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry_number` (1 for the first retry)."""
        capped = min(self.max_backoff, self.initial_backoff * 2.0 ** min(retry_number - 1, 62))
        fraction = rng.random() if rng is not None else random.random()
        return capped * (1.0 - self.jitter * fraction)

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before the retry, or None when the server asks for longer than we will wait."""
        if retry_after is None:
            return self.backoff(retry_number, rng)
        if retry_after > self.max_retry_after:
            return None
        return retry_after


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


async def call_with_retries(
    attempt_once: Callable[[], Awaitable[T]], *, policy: RetryPolicy, clock: Clock, rng: random.Random
) -> T:
    """Run an idempotent call (a poll, a download), trying again while `decide()` says so and `policy` allows,
    waiting on `clock`."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await attempt_once()
        except PixVerseError as failure:
            if decide(failure, CallKind.IDEMPOTENT) is not Verdict.RETRY:
                raise
            error = failure
        # Raised from here, out of the handler, so that one failed try is not the __context__ of the next.
        delay = policy.delay(attempt, retry_after_of(error), rng)
        if attempt >= policy.max_attempts or delay is None:
            raise error
        await clock.sleep(delay)
