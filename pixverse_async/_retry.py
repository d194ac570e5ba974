"""How long to wait before trying a request again: capped exponential backoff with jitter, and `Retry-After`.

Which failures may be retried at all is decided by the client (see `_client.py`): polls retry on anything
transient, billed submissions only when the server cannot have created a task.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import attrs

from ._validation import count, number


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
