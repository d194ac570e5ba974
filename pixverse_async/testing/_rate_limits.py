"""What an account may do: the router's 429s (a running cap, call rates, random refusals) and the balance.

A router answers 429 `RATE_LIMIT_EXCEEDED` for two reasons that its body does not tell apart; the simulator
models both, per API key, and `counters.rate_limited_by` says which one answered each 429:

- `"running_cap"`: `max_running_per_key` tasks are not yet terminal (step 5 of Submit), with `Retry-After`
  only if `rate_limit_retry_after` is set.
- `"submit_rate"` / `"poll_rate"`: `submit_rate_limit` / `poll_rate_limit`, each a `CallRateLimit`
  `(calls, per, window="sliding" | "fixed", retry_after=True)`: at most `calls` calls of that endpoint per
  `per` simulated seconds. `"sliding"` counts the calls of the last `per` seconds; `"fixed"` counts them in
  consecutive windows of `per` seconds from the simulator's start. Only calls let through count (a refused
  call does not use up the window). With `retry_after` the 429 carries `Retry-After`: the seconds until a
  call would be let through, rounded up.
- `"random"`: `random_rate_limit` answers any submit or poll 429 with that probability (a busy router), with
  `Retry-After: <random_rate_limit_retry_after>` if that is set.
- `"fault"`: an injected or random `rate_limit` fault (see `pixverse_async.testing._faults`).

Random draws (`random_rate_limit` and `random_faults`) come from an RNG of their own, derived from `seed`, so
that they do not shift task ids or durations.

`balance`: a key that has already created `balance` tasks is answered 400 `BILLING_BALANCE_NOT_ENOUGH`.
"""

from __future__ import annotations

import collections
import heapq
import math
import random
import typing
from typing import Literal

import attrs
from aiohttp import web

from pixverse_async.testing._responses import api_error, rate_limited, retry_after_header


@attrs.frozen
class CallRateLimit:
    """A router's call-rate limit on one endpoint, per key: at most `calls` calls per `per` simulated s.

    `window` is "sliding" (any `per` seconds) or "fixed" (consecutive windows of `per` seconds);
    `retry_after` says whether its 429s carry a `Retry-After` header. See the module documentation.
    """

    calls: int = attrs.field(validator=attrs.validators.ge(1))
    per: float = attrs.field(validator=attrs.validators.gt(0.0))
    window: Literal["sliding", "fixed"] = attrs.field(
        default="sliding", validator=attrs.validators.in_(("sliding", "fixed"))
    )
    retry_after: bool = True


@attrs.define
class _CallWindow:
    """The calls one key made to one endpoint that count against a `CallRateLimit`."""

    times: collections.deque[float] = attrs.Factory(collections.deque)
    fixed_window: int = -1
    fixed_count: int = 0

    def refuse(self, limit: CallRateLimit, now: float, origin: float) -> float | None:
        """Seconds until a call would be let through, or None: the call is let through and counted."""
        if limit.window == "fixed":
            index = math.floor((now - origin) / limit.per)
            if index != self.fixed_window:
                self.fixed_window, self.fixed_count = index, 0
            if self.fixed_count >= limit.calls:
                return max(0.0, origin + (index + 1) * limit.per - now)
            self.fixed_count += 1
            return None
        times = self.times
        while times and times[0] <= now - limit.per:
            times.popleft()
        if len(times) >= limit.calls:
            return max(0.0, times[0] + limit.per - now)
        times.append(now)
        return None


@attrs.frozen
class AccountLimits:
    """The `Simulator` options that refuse calls or tasks of a key (see the module documentation)."""

    max_running_per_key: int | None
    rate_limit_retry_after: float | None
    submit_rate_limit: CallRateLimit | None
    poll_rate_limit: CallRateLimit | None
    random_rate_limit: float
    random_rate_limit_retry_after: float | None
    balance: int | None

    def __attrs_post_init__(self) -> None:
        if self.max_running_per_key is not None and self.max_running_per_key < 0:
            raise ValueError(f"max_running_per_key must be >= 0, got {self.max_running_per_key}")
        if self.balance is not None and self.balance < 0:
            raise ValueError(f"balance must be >= 0, got {self.balance}")
        if not 0.0 <= self.random_rate_limit <= 1.0:
            raise ValueError(f"random_rate_limit must be in [0, 1], got {self.random_rate_limit}")
        for limit in (self.submit_rate_limit, self.poll_rate_limit):
            if limit is not None and not isinstance(limit, CallRateLimit):
                raise TypeError(f"a call-rate limit must be a CallRateLimit, not {type(limit).__name__}")


@typing.final
@attrs.define(eq=False)
class AccountGate:
    """Per key: the calls and tasks counted against `AccountLimits`, and the 429 or 400 of those refused."""

    limits: AccountLimits
    # Fixed windows count from here (the simulator's start, on its clock).
    _window_origin: float
    # Shared with random faults, apart from the task RNG so that draws shift no task ids or durations.
    _chaos_rng: random.Random
    # Per (key, endpoint): the calls counted against a CallRateLimit.
    _call_windows: dict[tuple[str, str], _CallWindow] = attrs.Factory(dict)
    # Per key: end times of tasks that may still be running, as a min-heap; finished ones are popped lazily.
    _running_ends: dict[str, list[float]] = attrs.Factory(dict)
    _created_by_key: collections.Counter[str] = attrs.Factory(collections.Counter)

    def refuse_call(self, key: str, endpoint: Literal["submit", "poll"], now: float) -> web.Response | None:
        """The 429 of the router's call limits (rate window, then random), or None: the call goes on."""
        limit = self.limits.submit_rate_limit if endpoint == "submit" else self.limits.poll_rate_limit
        if limit is not None:
            window = self._call_windows.get((key, endpoint))
            if window is None:
                window = self._call_windows[(key, endpoint)] = _CallWindow()
            wait = window.refuse(limit, now, self._window_origin)
            if wait is not None:
                headers = retry_after_header(wait) if limit.retry_after else {}
                message = f"too many {endpoint} calls: at most {limit.calls} per {limit.per:g} s per key"
                return rate_limited(f"{endpoint}_rate", message, headers)
        random_rate = self.limits.random_rate_limit
        if random_rate and self._chaos_rng.random() < random_rate:
            headers = retry_after_header(self.limits.random_rate_limit_retry_after)
            return rate_limited("random", "rate limit exceeded (the router is busy)", headers)
        return None

    def refuse_task(self, key: str, now: float) -> web.Response | None:
        """The answer to a valid submission that may not create a task (balance, running cap), or None."""
        if self.limits.balance is not None and self._created_by_key[key] >= self.limits.balance:
            return api_error(400, "BILLING_BALANCE_NOT_ENOUGH", "balance not enough")
        cap = self.limits.max_running_per_key
        if cap is not None and self._running(key, now) >= cap:
            message = f"too many running tasks: at most {cap} per key"
            return rate_limited("running_cap", message, retry_after_header(self.limits.rate_limit_retry_after))
        return None

    def task_created(self, key: str, ends_at: float, now: float) -> int:
        """Count a new task of `key` that ends at `ends_at`; return how many of the key's tasks now run."""
        self._created_by_key[key] += 1
        running = self._running_ends.setdefault(key, [])
        if ends_at > now:
            heapq.heappush(running, ends_at)
        return self._running(key, now)

    def _running(self, key: str, now: float) -> int:
        running = self._running_ends.setdefault(key, [])
        while running and running[0] <= now:  # tasks that have ended since the last submission of this key
            heapq.heappop(running)
        return len(running)
