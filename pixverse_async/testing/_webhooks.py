"""Webhooks: the simulator POSTs a task's result to the URL its submission named, when the task ends.

A task submitted with `"extra": {"webhook": {"url": "http(s)://..."}}` (kept as `SimTask.webhook_url`) is
announced to that URL when it ends (SUCCEED or FAILED, at `ends_at` on the simulated clock): the simulator
POSTs `{"event_type": "ASYNC_TASK_RESULT", "payload": <body>}` with `Content-Type: application/json`, where
`<body>` is exactly what a task-result poll by the task's owner would answer at the moment of the attempt (a
success carries a freshly signed `video_url`). Sending it does not count as a poll and does not mark the
task as seen terminal. There is no signature and no `Authorization` header, as in the API documentation: a
receiver should treat the payload as a hint and confirm it with one task-result call.

An attempt succeeds when the receiver answers 2xx within `webhook_timeout` simulated seconds (default
`WEBHOOK_TIMEOUT`, 5, as the API documents; the whole answer read; real time `webhook_timeout * time_scale`).
A slower answer, another status (redirects are not followed: a 3xx is a failure), or a connection that fails
is retried after `WEBHOOK_RETRY_DELAYS` simulated seconds (1, 2, 4, 8, 16 after attempts 1 to 5): at most 5
retries, 6 attempts in all, spanning about 31 simulated seconds plus the attempts themselves; then the
delivery is given up. Retries wait on the simulated clock, so `sim.advance` brings them forward too.

One dispatcher per running simulator, in the task group that `Simulator.start()` opens, keeps pending
deliveries and retries in a heap by due time and sleeps until the earliest (woken early by an earlier one and
by `sim.advance`), so waiting deliveries cost a heap entry each and no task or timer. Due deliveries are sent
concurrently, from the dispatcher's own task group, through one `aiohttp.ClientSession` (keep-alive
connections are reused), at most `WEBHOOK_CONCURRENCY` (32) attempts at a time to each receiver (scheme, host
and port; a delivery waiting for a slot has not started its timeout), so a slow receiver holds up neither
other receivers nor, below that many, its own other deliveries. Deliveries go out only while the simulator
is running: `close()` abandons attempts in flight (counted as sent, neither delivered nor failed) and keeps
the others queued for a later `start()`.

Mind the real timeout at small time scales: at `time_scale=0.001` a receiver has 5 *real* milliseconds, and
a receiver served by the same event loop as the simulator and a busy client (a burst of submissions, dozens
of deliveries at once) easily misses that, so attempts time out and are retried (the receiver then sees the
same event again) or even given up. Use `time_scale=0.01` or more when counts matter, or raise
`webhook_timeout`.

`webhook_drop_rate` loses each delivery with that probability (a separate RNG derived from `seed`, so it does
not shift task ids or durations); the `drop` and `duplicate` faults of endpoint `"webhook"` act on chosen
deliveries (see `Fault`). An injected fault takes precedence over the drop rate, which applies to the
deliveries no fault was taken for. `webhook_repeat_rate` makes a delivered delivery (answered 2xx) be POSTed
`webhook_repeats` more times right after, with the same body (each counted in `webhooks_repeated` and
`webhooks_sent`), as the router may deliver one event more than once.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import random
import typing
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.abc
import attrs

from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import FaultBox
from pixverse_async.testing._sim_clock import SimClock
from pixverse_async.testing._tasks import SimTask

#: The `event_type` of the webhook sent when a task ends.
WEBHOOK_EVENT_TYPE: Final = "ASYNC_TASK_RESULT"
#: Simulated seconds a webhook receiver has to answer 2xx before the attempt counts as failed (the default
#: of `Simulator(webhook_timeout=...)`).
WEBHOOK_TIMEOUT: Final = 5.0
#: Simulated seconds to wait before each retry of a failed webhook attempt: 5 retries, 6 attempts in all.
WEBHOOK_RETRY_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
#: At most this many webhook attempts in flight at once to one receiver (scheme, host and port); the others
#: wait for a slot. Kept well under a typical listen backlog (128), past which connections stall for seconds.
WEBHOOK_CONCURRENCY: Final = 32

# Real seconds that closing the session may take once the dispatcher is cancelled (loopback: instant).
_SESSION_CLOSE_DEADLINE: Final = 5.0


@attrs.frozen
class WebhookRules:
    """The `Simulator` options of webhook deliveries (see the module documentation)."""

    timeout: float
    drop_rate: float
    repeat_rate: float = 0.0
    repeats: int = 1

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.repeat_rate <= 1.0:
            raise ValueError(f"webhook_repeat_rate must be in [0, 1], got {self.repeat_rate}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"webhook_repeats must be an int >= 1, got {self.repeats!r}")
        if self.timeout <= 0:
            raise ValueError(f"webhook_timeout must be > 0, got {self.timeout}")
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError(f"webhook_drop_rate must be in [0, 1], got {self.drop_rate}")


@attrs.define(eq=False)
class _Delivery:
    """One webhook delivery of one task, between its attempts."""

    task: SimTask
    url: str
    attempts: int = 0  # attempts made so far
    duplicate: bool = False  # a `duplicate` fault was taken for it


@typing.final
@attrs.define(eq=False)
class WebhookSender:
    """Deliveries waiting for their attempt, and, while `run` runs, what sends them when they fall due."""

    rules: WebhookRules
    _clock: SimClock
    _faults: FaultBox
    # The simulator's counters are replaced by `reset_counters`, so they are looked up at each use.
    _counters: Callable[[], SimCounters]
    # What a task-result poll by the task's owner would answer about a task at a simulated time.
    _payload: Callable[[SimTask, float], dict[str, Any]]
    # Drop-rate draws, kept apart from the task RNG so that they do not shift task ids and durations.
    _rng: random.Random
    # Deliveries waiting for their (first or next) attempt: a min-heap of (due simulated time, tie-break, delivery).
    _queue: list[tuple[float, int, _Delivery]] = attrs.Factory(list)
    _order: itertools.count[int] = attrs.Factory(itertools.count)
    # Only while `run` runs: what wakes the dispatcher early, what it sends with, and per receiver origin
    # ("scheme://host:port") what bounds its attempts in flight.
    _wake: anyio.Event | None = None
    _session: aiohttp.ClientSession | None = None
    _limiters: dict[str, anyio.CapacityLimiter] = attrs.Factory(dict)

    def deliver_when_ended(self, task: SimTask) -> None:
        """Queue the delivery of `task`'s result to its webhook URL, due when it ends."""
        if task.webhook_url is not None:
            self._schedule(task.ends_at, _Delivery(task, task.webhook_url))

    def wake(self) -> None:
        """Make the dispatcher look at the queue again (the clock has jumped, or an earlier delivery came)."""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()

    def _schedule(self, due: float, delivery: _Delivery) -> None:
        """Queue `delivery` for an attempt at simulated time `due`, waking the dispatcher if it is first."""
        queue = self._queue
        heapq.heappush(queue, (due, next(self._order), delivery))
        if queue[0][2] is delivery:
            self.wake()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send every delivery as it falls due, until cancelled; the session and the attempts live inside."""
        # No connection limit in aiohttp: the limiters bound attempts, and an attempt's timeout must not
        # include waiting for a pooled connection. No cookies kept between receivers.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),  # each attempt is bounded by _post
        )
        self._session, self._limiters = session, {}  # CapacityLimiters belong to one event loop
        try:
            async with anyio.create_task_group() as attempts:
                task_status.started()
                queue = self._queue
                while True:
                    self._wake = wake = anyio.Event()
                    now = self._clock.now()
                    while queue and queue[0][0] <= now:
                        _, _, delivery = heapq.heappop(queue)
                        attempts.start_soon(self._attempt, delivery)
                    # Idle with nothing queued: woken by the next submission with a webhook, or cancelled.
                    delay = (queue[0][0] - now) * self._clock.time_scale if queue else math.inf
                    with anyio.move_on_after(delay):
                        await wake.wait()
        finally:
            self._wake = self._session = None
            # Shielded: the dispatcher ends by being cancelled, and an unclosed session would leak sockets.
            with anyio.move_on_after(_SESSION_CLOSE_DEADLINE, shield=True):
                await session.close()

    async def _attempt(self, delivery: _Delivery) -> None:
        """Make one attempt of `delivery` (deciding its fault first, if it is the first), then follow up."""
        counters = self._counters()
        if delivery.attempts == 0:
            fault = self._faults.take("webhook", counters)
            if fault is not None:
                dropped = fault.kind == "drop"
                delivery.duplicate = fault.kind == "duplicate"
            else:
                drop_rate = self.rules.drop_rate
                dropped = drop_rate > 0 and self._rng.random() < drop_rate
            if dropped:
                counters.webhooks_dropped += 1
                return
        async with self._limiter(delivery.url):
            delivery.attempts += 1
            # The payload as a poll would answer it now: a retry carries a freshly signed video URL.
            event = {"event_type": WEBHOOK_EVENT_TYPE, "payload": self._payload(delivery.task, self._clock.now())}
            body = json.dumps(event, separators=(",", ":")).encode()
            delivered = await self._post(delivery.url, body)
            if delivered:
                self._counters().webhooks_delivered += 1
                if delivery.duplicate:
                    self._counters().webhooks_duplicated += 1
                    await self._post(delivery.url, body)
                rules = self.rules
                if rules.repeat_rate > 0 and self._rng.random() < rules.repeat_rate:
                    for _ in range(rules.repeats):
                        self._counters().webhooks_repeated += 1
                        await self._post(delivery.url, body)
        if delivered:
            return
        if delivery.attempts > len(WEBHOOK_RETRY_DELAYS):
            self._counters().webhooks_failed += 1
            return
        self._schedule(self._clock.now() + WEBHOOK_RETRY_DELAYS[delivery.attempts - 1], delivery)

    def _limiter(self, url: str) -> anyio.CapacityLimiter:
        """The limiter of the receiver at `url` (its origin; the URL was checked on submit)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        origin = f"{scheme}://{parts.hostname}:{parts.port or (443 if scheme == 'https' else 80)}"
        limiter = self._limiters.get(origin)
        if limiter is None:
            limiter = self._limiters[origin] = anyio.CapacityLimiter(WEBHOOK_CONCURRENCY)
        return limiter

    async def _post(self, url: str, body: bytes) -> bool:
        """POST `body` once; whether the receiver answered 2xx in time."""
        self._counters().webhooks_sent += 1
        session = self._session
        assert session is not None
        try:
            with anyio.fail_after(self.rules.timeout * self._clock.time_scale):
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as response:
                    await response.read()
                    return 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            # Too slow, connection refused or reset, a URL aiohttp cannot use: a failed attempt.
            return False
