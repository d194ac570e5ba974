"""One scheduler that polls every pending task of a client, each at the moment its result is likely ready.

A pending task is a small slotted record in a heap ordered by next-poll time, not a coroutine: one loop pops
the tasks that are due, polls them (bounded in flight and in rate, across the whole client), and files each
back with its next time, which the client's `Forecaster` plans (`_forecast.py`: the task's hints checked
against what the tasks that ended taught it), with jitter, a floor and a cap. Polls are paced by the
budget's task-result pacer (see `_budget.py`): a lone 429 (or 503/504, the router's surge protection) delays
its task's poll, `RATE_EVIDENCE` (3) in a row pause every poll and slow them down. Nobody is polled after it
is known to be terminal.

Whoever waits for a task (`wait()`, `watch()`, an `as_completed()` run) adds a `Waiter` to it, with an
optional deadline, and is called back once with its outcome. A task nobody waits for is still polled until
it ends when it holds one of the client's running-task slots (a `Slot`), so that the slot is given back when
the task ends. A first poll due at once, right after a submission, is made by the submitting task itself
(`follow`), under the same limits.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import final

import anyio
import anyio.abc
import attrs
from anyio.abc import TaskGroup

from ._budget import Pacer, Slot
from ._clock import Clock
from ._exceptions import (
    APIError,
    APIStatusError,
    ClientClosedError,
    NotFoundError,
    PixVerseError,
    RateLimitError,
    TaskTimeoutError,
)
from ._forecast import Evidence, Forecaster, Kind
from ._lost_answers import DeliveryRecord
from ._models import TaskResult
from ._retry import CallKind, RetryPolicy, Verdict, decide, is_surge
from ._validation import check_order, count, number

Outcome = TaskResult | PixVerseError
#: With webhooks, a fallback poll comes this long after the end a task's hints predict (a delivery is late by
#: well under a second when it comes at all).
_WEBHOOK_GRACE = 2.0
#: Every pending task's plan is revisited when the number of ended tasks reaches 8, 16, 32, ...
_REPLAN_FROM = 8
FetchTask = Callable[[str], Awaitable[TaskResult]]
ProgressCallback = Callable[[TaskResult], None]


@attrs.frozen
class PollPolicy:
    """When the shared poller looks at a task again, in the API's seconds (see `_forecast.py` for how).

    `delay_cost` is the one knob that trades polls for lateness: how many polls one second of delay (from a
    task's end to the poll that sees it) is worth. With a usable hint the poller steps into the window where the
    finish likely is (`sqrt(2 * width / delay_cost)` at a time, at least `1 / delay_cost`); with none, it
    spaces polls by the learnt hazard of the task's age, more densely where many tasks of that kind end. The
    default, 2.0, comes from `benchmarks.polling`: see the README's Performance section.

    The first poll comes `first_poll_after` seconds after a submission, or, when None (the default), when it
    pays off by the learnt durations. `expected_duration` and `duration_spread` (a log-normal median and
    sigma) are the prior a new client starts from, before any task has ended. No task is polled again
    sooner than `min_interval` after its last poll, or later than `max_interval`. Jitter (`jitter` of the
    wait) only ever makes a poll earlier, never later than planned and never before the likely finish.
    `max_polls_per_second` caps the whole client's poll rate (a token bucket of one second's polls, applied
    with `RateLimits.polls_per_minute` and the rate learnt from 429s); `max_polls_in_flight` its concurrent
    polls.

    With webhooks on (`PixVerseClient(webhook_url=...)`), polls are a fallback for lost deliveries: a task
    is polled when, by the learnt durations, it would have ended with chance `1 - webhook_tail` (shortly
    after the end its hints predict, if a poll has read any), then likewise from there, never waiting more
    than `webhook_fallback` seconds. Each delivery triggers one confirming poll instead.
    """

    first_poll_after: float | None = attrs.field(default=None, validator=number(at_least=0, none_means="planned"))
    delay_cost: float = attrs.field(default=2.0, validator=number(above=0))
    min_interval: float = attrs.field(default=0.25, validator=number(above=0))
    max_interval: float = attrs.field(default=60.0, validator=number(above=0))
    jitter: float = attrs.field(default=0.1, validator=number(at_least=0, at_most=1))
    expected_duration: float = attrs.field(default=40.0, validator=number(above=0))
    duration_spread: float = attrs.field(default=0.5, validator=number(above=0))
    max_polls_per_second: float | None = attrs.field(default=200.0, validator=number(above=0, none_means="no limit"))
    max_polls_in_flight: int = attrs.field(default=64, validator=count(at_least=1))
    webhook_tail: float = attrs.field(default=0.1, validator=number(above=0, at_most=0.99))
    webhook_fallback: float = attrs.field(default=300.0, validator=number(above=0))

    def __attrs_post_init__(self) -> None:
        check_order("min_interval", self.min_interval, "max_interval", self.max_interval)


@attrs.define(slots=True, eq=False)
class Waiter:
    """Someone waiting for a task: `deliver(outcome)` is called once, with the final result or an error, by
    `deadline` (on the client's clock) if there is one; `progress(result)` on every poll before that."""

    deadline: float | None
    timeout: float | None

    def deliver(self, outcome: Outcome) -> None:
        raise NotImplementedError

    def progress(self, result: TaskResult) -> None:
        """Called with each non-final poll result; nothing by default."""


@attrs.define(slots=True, eq=False)
class CallbackWaiter(Waiter):
    """A waiter made of two functions."""

    on_outcome: Callable[[Outcome], None] = attrs.field(kw_only=True)
    on_progress: ProgressCallback | None = attrs.field(default=None, kw_only=True)

    def deliver(self, outcome: Outcome) -> None:
        self.on_outcome(outcome)

    def progress(self, result: TaskResult) -> None:
        if self.on_progress is not None:
            self.on_progress(result)


@attrs.define(slots=True, eq=False)
class PendingTask(Evidence):
    """One followed task: its hints (`Evidence`) and its place in the poller's heap."""

    task_id: str = attrs.field(kw_only=True)
    #: The running-task slot this task holds until it ends (None: it holds none).
    slot: Slot | None = attrs.field(kw_only=True)
    #: Submitted by this client just now: its age is its real age, so its end teaches the forecaster.
    learns: bool = attrs.field(default=True, kw_only=True)
    waiters: tuple[Waiter, ...] = attrs.field(default=(), kw_only=True)
    due: float = attrs.field(default=0.0, kw_only=True)
    #: `due` came from the forecaster (not a deadline, a webhook or a new waiter), so it may be re-planned.
    planned: bool = attrs.field(default=False, kw_only=True)
    failures: int = attrs.field(default=0, kw_only=True)
    in_flight: bool = attrs.field(default=False, kw_only=True)
    done: bool = attrs.field(default=False, kw_only=True)
    #: A webhook delivery announced its end before a poll saw it.
    announced: bool = attrs.field(default=False, kw_only=True)


@final
class Poller:
    """Owns every pending task of one client; `run()` is its single loop."""

    def __init__(
        self,
        fetch: FetchTask,
        *,
        clock: Clock,
        policy: PollPolicy,
        retry: RetryPolicy,
        pacer: Pacer,
        rng: random.Random,
        webhooks: bool = False,
        keep_unclaimed: int = 1024,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._policy = policy
        self._retry = retry
        self._pacer = pacer
        self._rng = rng
        self.forecaster = Forecaster(prior_median=policy.expected_duration, prior_sigma=policy.duration_spread)
        self._keep_unclaimed = keep_unclaimed
        self._webhooks = webhooks
        #: With webhooks: whether the deliveries of the tasks followed here arrived.
        self.deliveries = DeliveryRecord()
        self._pending: dict[str, PendingTask] = {}
        self._heap: list[tuple[float, int, PendingTask]] = []
        self._sequence = 0
        self._in_flight = 0
        self._wake_scope: anyio.CancelScope | None = None
        # When the sleeping loop next looks at the heap by itself (clock time); inf while it waits on a poll
        # slot. Waking it costs a cancellation, so it is woken only for what comes before that.
        self._sleeping_until = -math.inf
        self._waiting_for_slot = False
        self._closed = False
        # Terminal results nobody has asked for yet, so a later wait() costs no request.
        self._unclaimed: OrderedDict[str, TaskResult] = OrderedDict()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def polls_in_flight(self) -> int:
        return self._in_flight

    def track(self, task_id: str, *, slot: Slot | None, kind: Kind = None, learns: bool = True) -> None:
        """Start following a task this client just submitted (holding its slot until it ends); `kind` groups
        tasks of alike durations. `learns=False`: submitted elsewhere (adopted), its age unknown: polled now."""
        if task_id in self._pending and slot is not None:
            self._take_over_slot(task_id, slot)
            return
        now = self._clock.now()
        pending = self._add(task_id, now, slot, kind)
        pending.learns = learns
        if learns:
            self._schedule(pending, self._first_due(pending), planned=True)
        else:
            self._schedule(pending, now)

    async def follow(
        self, task_id: str, waiter: Waiter, *, slot: Slot | None, kind: Kind = None, learns: bool = True
    ) -> None:
        """Start following a task this client just submitted, with its first waiter.

        When the first poll is due at once (`first_poll_after=0`) and may start now, it is made here, in the
        caller's task, rather than handed to the loop: that saves a task and a wake-up per job.
        """
        if self._closed or task_id in self._pending or task_id in self._unclaimed:
            # A resumed task that is already followed (a wait() on it) or has ended: share what is there.
            if slot is not None:
                self._take_over_slot(task_id, slot)
            self.add_waiter(task_id, waiter)
            return
        now = self._clock.now()
        pending = self._add(task_id, now, slot, kind)
        pending.learns = learns
        pending.waiters = (waiter,)
        # Submitted elsewhere (a resumed task): polled now, as `track` does; with webhooks on, its delivery may
        # have gone to an earlier run long ago.
        first = self._first_due(pending) if learns else now
        if waiter.deadline is not None:
            first = min(first, waiter.deadline)
        if first > now or not self._may_start_poll(now):
            self._schedule(pending, first, planned=first < (waiter.deadline or math.inf))
            return
        self._claim(pending)
        try:
            await self._poll(pending)
        finally:
            if not pending.done and not pending.in_flight and math.isinf(pending.due):
                # Cancelled mid-poll: whoever still needs the task gets it polled by the loop.
                self._schedule(pending, self._clock.now())

    def _take_over_slot(self, task_id: str, slot: Slot) -> None:
        """The caller took a running-task slot for a task this poller already knows: the task keeps one."""
        pending = self._pending.get(task_id)
        if pending is not None and pending.slot is None and not pending.done:
            pending.slot = slot
        else:
            slot.release()

    def _add(self, task_id: str, now: float, slot: Slot | None, kind: Kind) -> PendingTask:
        pending = PendingTask(now, kind, task_id=task_id, slot=slot)
        self._pending[task_id] = pending
        return pending

    def _first_due(self, pending: PendingTask) -> float:
        fixed = self._policy.first_poll_after
        if fixed is not None and not self._webhooks:
            return pending.submitted_at + fixed
        return self._plan(pending, pending.submitted_at, self._rng.random())

    def _plan(self, pending: PendingTask, last_poll: float, random_fraction: float) -> float:
        """When to poll next, on the clock, from what the task and the forecaster know; `last_poll` is the
        time of the last poll (its submission before the first)."""
        policy = self._policy
        forecaster = self.forecaster
        if self._webhooks:
            window = forecaster.window(pending)
            if window is not None and window[1] > last_poll:
                return window[1] + _WEBHOOK_GRACE
            age = last_poll - pending.submitted_at
            wait = forecaster.webhook_fallback(pending.kind, age, policy.webhook_tail, policy.webhook_fallback)
            return last_poll + max(policy.min_interval, wait * (1.0 - policy.jitter * random_fraction))
        return forecaster.next_poll(
            pending,
            last_poll,
            delay_cost=policy.delay_cost,
            min_interval=policy.min_interval,
            max_interval=policy.max_interval,
            jitter=policy.jitter,
            random_fraction=random_fraction,
        )

    def confirm(self, task_id: str) -> bool:
        """A webhook says the task ended: poll it now to confirm. False if the task is not followed here."""
        pending = self._pending.get(task_id)
        if pending is None or pending.done:
            self.deliveries.late_delivery(task_id)
            return False
        pending.announced = True
        now = self._clock.now()
        # The task ended just before the delivery was sent: its end is known to about now.
        pending.seen_running_at = max(pending.running_until, now)
        if not pending.in_flight:
            self._schedule(pending, now)
        return True

    def add_waiter(self, task_id: str, waiter: Waiter) -> None:
        """Call `waiter` when `task_id` ends (or its deadline passes); polls it now if it is not followed yet."""
        if self._closed:
            waiter.deliver(ClientClosedError("the client is closed"))
            return
        finished = self._unclaimed.pop(task_id, None)
        if finished is not None:
            waiter.deliver(finished)
            return
        pending = self._pending.get(task_id)
        now = self._clock.now()
        if pending is None:
            # Not submitted here: its age is unknown, so its end teaches the forecaster nothing.
            pending = PendingTask(now, None, task_id=task_id, slot=None, learns=False)
            self._pending[task_id] = pending
            self._schedule(pending, now)
        pending.waiters += (waiter,)
        # A poll in flight reschedules by the new deadline itself when it returns.
        if waiter.deadline is not None and waiter.deadline < pending.due and not pending.in_flight:
            self._schedule(pending, waiter.deadline)

    def remove_waiter(self, task_id: str, waiter: Waiter) -> None:
        """The waiter left (cancelled); stop polling the task if nobody else needs it."""
        pending = self._pending.get(task_id)
        if pending is None:
            return
        pending.waiters = tuple(other for other in pending.waiters if other is not waiter)
        self._drop_if_unneeded(pending)

    def abandon(self, task_id: str, waiter: Waiter) -> None:
        """The waiter's owner is gone for good: stop polling the task even if it holds a slot.

        The task may still run on the server, and nobody will see it end: its slot is freed once it could
        have ended (`Slot.release_when_ended`).
        """
        pending = self._pending.get(task_id)
        if pending is None or waiter not in pending.waiters:
            return
        pending.waiters = tuple(other for other in pending.waiters if other is not waiter)
        if pending.slot is not None and not pending.waiters:
            slot, pending.slot = pending.slot, None
            slot.release_when_ended()
        self._drop_if_unneeded(pending)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The poller's loop, until cancelled; `task_group.start(poller.run)` returns once it is running."""
        # A task per poll: measured with benchmarks.instructions, cheaper than a pool of workers fed through a
        # memory stream (48k instructions per job less).
        try:
            async with anyio.create_task_group() as polls:
                task_status.started()
                while True:
                    now = self._clock.now()
                    delay = self._start_due_polls(polls, now)
                    self._sleeping_until = now + delay
                    with anyio.CancelScope() as self._wake_scope:
                        if math.isinf(delay):
                            await anyio.sleep_forever()
                        await self._clock.sleep(delay)
                    self._wake_scope = None
                    self._sleeping_until = -math.inf
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        pending, self._pending = self._pending, {}
        self._heap.clear()
        for task in pending.values():
            task.done = True
            for waiter in task.waiters:
                waiter.deliver(ClientClosedError(f"the client was closed while waiting for task {task.task_id}"))

    def _schedule(self, pending: PendingTask, due: float, *, planned: bool = False) -> None:
        pending.due = due
        pending.planned = planned
        self._sequence += 1
        heapq.heappush(self._heap, (due, self._sequence, pending))
        if due < self._sleeping_until:
            self._wake()

    def _wake(self) -> None:
        if self._wake_scope is not None:
            self._wake_scope.cancel()
            self._wake_scope = None
            self._sleeping_until = -math.inf

    def _start_due_polls(self, polls: TaskGroup, now: float) -> float:
        """Start every poll that is due and allowed; return how long until the next one may start."""
        while self._heap:
            due, _, pending = self._heap[0]
            if pending.done or due != pending.due:  # a stale entry, superseded by a later _schedule
                heapq.heappop(self._heap)
                continue
            if due > now:
                return due - now
            if pending.planned and self._replanned_later(pending, now):
                continue
            if self._in_flight >= self._policy.max_polls_in_flight:
                self._waiting_for_slot = True  # a finishing poll wakes the loop
                return math.inf
            wait_for_turn = self._pacer.delay(now)
            if wait_for_turn > 0:
                return wait_for_turn
            heapq.heappop(self._heap)
            self._claim(pending)
            polls.start_soon(self._poll, pending)
        return math.inf

    def _replanned_later(self, pending: PendingTask, now: float) -> bool:
        """What was learnt since this task's poll was planned puts it off: file it again, later.

        Only a task whose hints bracket its finish is put off. Without hints, the learnt durations lag: a task
        that ended is counted only once a poll sees it, so while the first polls are under way, the ages just
        past them look safer than they are, and putting polls off would chase that edge.
        """
        if self.forecaster.window(pending) is None:
            return False
        # Planned with the most jitter (the earliest it could be): later than now means not due yet.
        if self._capped_by_deadlines(pending, self._plan(pending, pending.running_until, 1.0)) <= now:
            return False
        due = self._capped_by_deadlines(pending, self._plan(pending, pending.running_until, self._rng.random()))
        self._schedule(pending, max(due, now), planned=True)
        return True

    def _replan_all(self) -> None:
        """The forecaster learnt a lot since the tasks' polls were planned: bring forward those now due earlier
        (those due later are put off when they come up)."""
        for pending in self._pending.values():
            if not pending.planned or pending.in_flight or pending.done:
                continue
            due = self._capped_by_deadlines(pending, self._plan(pending, pending.running_until, self._rng.random()))
            if due < pending.due:
                self._schedule(pending, due, planned=True)

    def _may_start_poll(self, now: float) -> bool:
        """Whether a poll may start now (in flight, the pacer's turn), taking the turn if so."""
        if self._in_flight >= self._policy.max_polls_in_flight:
            return False
        return self._pacer.delay(now) == 0

    def _claim(self, pending: PendingTask) -> None:
        pending.due = math.inf  # any heap entry of it is stale from now on
        pending.in_flight = True
        self._in_flight += 1

    async def _poll(self, pending: PendingTask) -> None:
        try:
            result = await self._fetch(pending.task_id)
        except APIError as error:
            if decide(error, CallKind.IDEMPOTENT) is not Verdict.RETRY:
                self._finish(pending, error)
            elif isinstance(error, APIStatusError) and (isinstance(error, RateLimitError) or is_surge(error)):
                self._on_poll_rate_limited(pending, error)
            else:
                self._on_poll_transient_error(pending, error)
        else:
            self._pacer.accepted()
            pending.failures = 0
            self._on_poll_result(pending, result)
        finally:
            pending.in_flight = False
            self._in_flight -= 1
            if self._waiting_for_slot:
                self._waiting_for_slot = False
                self._wake()

    def _on_poll_result(self, pending: PendingTask, result: TaskResult) -> None:
        if result.is_terminal:
            self._finish(pending, result)
            return
        now = self._clock.now()
        if pending.learns:
            self.forecaster.running(pending, now, result.eta, result.progress_percent)
        else:
            pending.record(now, result.eta, result.progress_percent)
        for waiter in pending.waiters:
            waiter.progress(result)
        self._expire_waiters(pending, now)
        if not self._drop_if_unneeded(pending):
            due = self._plan(pending, now, self._rng.random())
            capped = self._capped_by_deadlines(pending, due)
            self._schedule(pending, capped, planned=capped == due)

    def _on_poll_rate_limited(self, pending: PendingTask, error: APIStatusError) -> None:
        # The pacer tells a busy router's lone 429 or 503/504 (this task waits) from a rate limit or a surge
        # (every poll pauses).
        now = self._clock.now()
        self._schedule(pending, now + self._pacer.refused(now, error.retry_after))

    def _on_poll_transient_error(self, pending: PendingTask, error: PixVerseError) -> None:
        pending.failures += 1
        if pending.failures >= self._retry.max_attempts:
            self._finish(pending, error)
            return
        now = self._clock.now()
        self._expire_waiters(pending, now)
        if not self._drop_if_unneeded(pending):
            backoff = self._retry.backoff(pending.failures, self._rng)
            self._schedule(pending, self._capped_by_deadlines(pending, now + backoff))

    def _expire_waiters(self, pending: PendingTask, now: float) -> None:
        expired = tuple(w for w in pending.waiters if w.deadline is not None and w.deadline <= now)
        if not expired:
            return
        pending.waiters = tuple(w for w in pending.waiters if w not in expired)
        for waiter in expired:
            waiter.deliver(TaskTimeoutError(pending.task_id, waiter.timeout or 0.0))

    @staticmethod
    def _capped_by_deadlines(pending: PendingTask, due: float) -> float:
        # Look once more exactly at a waiter's deadline, so a timeout is never reported late.
        deadlines = [w.deadline for w in pending.waiters if w.deadline is not None]
        return min([due, *deadlines])

    def _drop_if_unneeded(self, pending: PendingTask) -> bool:
        if pending.waiters or pending.slot is not None or pending.done:
            return pending.done
        pending.done = True
        self._pending.pop(pending.task_id, None)
        return True

    def _finish(self, pending: PendingTask, outcome: Outcome) -> None:
        pending.done = True
        self._pending.pop(pending.task_id, None)
        if pending.learns and isinstance(outcome, TaskResult):
            forecaster = self.forecaster
            now = self._clock.now()
            forecaster.ended_between(pending, pending.seen_running_at, now)
            if self._webhooks:
                self.deliveries.ended(pending.task_id, announced=pending.announced, now=now)
            ended = forecaster.ended
            if ended >= _REPLAN_FROM and ended & (ended - 1) == 0:  # 8, 16, 32...: the model changed a lot
                self._replan_all()
        if pending.slot is not None:
            slot, pending.slot = pending.slot, None
            # Seen to end, or unknown to the API: the slot is free. Given up on (errors): it may still run.
            if isinstance(outcome, TaskResult | NotFoundError):
                slot.release()
            else:
                slot.release_when_ended()
        if not pending.waiters and isinstance(outcome, TaskResult):
            self._unclaimed[pending.task_id] = outcome
            while len(self._unclaimed) > self._keep_unclaimed:
                self._unclaimed.popitem(last=False)
        waiters, pending.waiters = pending.waiters, ()
        for waiter in waiters:
            waiter.deliver(outcome)
