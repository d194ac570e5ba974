"""The key's budget: running-task slots and the pacing of calls, owned in one place.

A router answers 429 for two reasons its body does not tell apart: too many calls per minute (per key and
model) or too many tasks running at once. The budget keeps them apart from evidence, and is the only thing
that counts slots. The rules of the slots and of the cap below are one pure model, `CapState`
(`_cap_state.py`): `LocalBudget` applies it in memory, `RedisBudget`'s Lua step is its port.

Slots
    `await budget.acquire()` returns a `Slot`, taken once; whoever holds it gives it back exactly once, by one
    of `release()` (the task ended, or the submission created nothing), `refused(retry_after)` (the submission
    was answered 429: nothing was created) or `release_when_ended()` (a task may run that nobody follows any
    more: an answer was lost, or its waiter left); a second give-back raises `RuntimeError`. Before that the
    holder may say what the slot stands for: `accepted()` (the submission created a task: it runs now) or
    `adopted()` (a task submitted earlier, resumed). The submitting code holds the slot until the answer;
    then the poller holds it while it follows the task, and releases it when the task ends.

    At most `max_concurrency` slots are out at once, lost answers included: a slot given back with
    `release_when_ended()` stays taken for as long as its task could be running: the longest task seen so
    far (from acceptance to the poll that saw it end; while none has ended, `_cap_state.LOST_ANSWER_HOLD`,
    600 API seconds), counted from its acceptance (a resumed task's: its adoption; from the loss, for a lost
    answer). The hold follows what is learnt: the first task to end shortens a fallback hold, a longer task
    lengthens every hold. The slot is then freed on the client's clock.

The running-task cap, learnt from evidence only
    - Slow start: until the cap is known, slots out stay at most one more than the submissions accepted so
      far (a window that grows by one with each acceptance, so it doubles per round trip, as TCP's slow
      start): 64 submissions at once do not meet a cap of 20 with 44 refusals. Resumed tasks and lost
      answers widen it too, so that they do not eat it. Once it reaches `max_concurrency` it is over.
    - A submission's 429 while at least `CAP_EVIDENCE` (3/4) of `proven` tasks run (the most seen running
      right after an acceptance) looks like the cap;
      `CAP_STRIKES` (3) in a row, no acceptance between, teach it: the cap becomes the number running (a
      busy router's random 429s rarely come three in a row). Once a cap is learnt, a 429 at or above it (a
      probe, see below) sets it back at once; lowering it takes three in a row again. A 429 while clearly
      fewer run is a rate limit (the submission pacer learns from it). `Retry-After: 0` is a transient
      refusal: retried, never learnt. A 429 on a task-result call never touches the cap.
    - An acceptance with more tasks running than the learnt cap raises it to that number; and once `cap`
      tasks have ended since the cap was last set, it is probed one higher, the step doubling while probes
      go unrefused, up to `max_concurrency` (then the cap is forgotten): a burst of random 429s never
      shrinks concurrency for good.
    - `RateLimits(max_running=N)` makes the cap known from the start (no slow start; probes stay at or
      below N).

Pacing calls
    `budget.submissions` and `budget.task_results` are `Pacer`s, one per endpoint. A call waits for
    `pacer.delay(now)` to be 0 (which takes the turn; `await pacer.wait(clock)` does the waiting) and reports
    its answer: `accepted()` or `refused(now, retry_after)`, which returns how long that call should wait.
    Each pacer applies the limits known up front (`RateLimits`: evenly spaced calls, `60 / N` seconds apart;
    for task-result also `PollPolicy.max_polls_per_second`, a token bucket of one second) and a rate learnt
    AIMD-style: a lone 429 only delays its own call (a busy router answers some at random); `RATE_EVIDENCE`
    (3) in a row are evidence of a rate limit: every call of the endpoint
    pauses (`Retry-After` if given, else backoff, longer for each pause before a call passes again) and the
    pace is cut, once per run of refusals (no call accepted between), to 0.9
    times the lower of itself and the rate accepted lately (see `Pacer._cut`); it then grows with each call
    accepted after waiting for it, by 0.3%, plus 0.3% for every 50 calls accepted since the last refusal; and
    after 100 calls accepted without a run of refusals it is probed 1.5 times higher, so that a pace cut by a
    burst of bad luck comes back within a few hundred calls, while a real limit soon shows itself again.

What a shared budget implements
    `Budget` below is the interface: `acquire()` (async: a shared implementation takes a slot in one round
    trip), `submissions` and `task_results` (pacers: `delay()`, `wait()`, `accepted()`, `refused()`), and
    the slot methods, which call back into the budget synchronously, from code that cannot wait (the
    poller's loop); a shared implementation queues those reports and sends them from a task of its own, and
    may take call turns in batches so that `delay()` stays local.

    A budget passed to `PixVerseClient(budget=...)` is a `SharedBudget`: the client `bind()`s it to its
    settings (`BudgetSettings`: its `max_concurrency`, limits, clock, and a hash of its API key, never the
    key) when built, and runs it with `async with budget.serve(adopt):` while open. `adopt(task_id, slot)` hands
    the client a task another client left running (its lease lapsed): the client polls it to its end and
    then releases the slot, which stands for it already (`Slot.adopted` was said for it). A slot knows the
    task it stands for (`accepted(task_id)`, `adopted(task_id)`), so that a shared budget can record it.
    `pixverse_async.redis.RedisBudget` is the one this library ships.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import math
import random
from collections.abc import Callable
from typing import Any, Literal, Protocol, final

import anyio
import attrs

from ._cap_state import CapState, Refusal
from ._clock import Clock
from ._exceptions import ConfigurationError
from ._retry import RetryPolicy
from ._validation import check_count, number
from ._wait_line import WaitLine

Endpoint = Literal["submit", "task-result"]

#: How many 429s in a row (no call accepted between) show a rate limit: a busy router's random 429s rarely
#: come three in a row (0.25% of them at a 5% rate), a rate limit's do.
RATE_EVIDENCE = 3
#: What a learnt pace is cut to on evidence of a rate limit, times the lower of itself and the rate accepted.
RATE_CUT = 0.9
#: How much a learnt pace grows with each call accepted after waiting for it, and one more such step for
#: every RATE_GROWTH_CALLS calls accepted since the last refusal.
RATE_GROWTH = 0.003
RATE_GROWTH_CALLS = 50
#: A learnt pace is probed RATE_PROBE times higher after this many calls accepted without a run of refusals.
RATE_PROBE_CALLS = 100
RATE_PROBE = 1.5
#: The slowest a learnt pace goes (calls per second).
MIN_RATE = 0.05
#: Over how many seconds (at most) the accepted rate is measured, and over which spans.
RATE_HORIZON = 60
RATE_SPANS = (2.0, 5.0, 10.0, 30.0, 60.0)


def _whole_or_none(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        check_count(attribute.name, value, at_least=1, error=ConfigurationError)


@attrs.frozen
class RateLimits:
    """The account's limits, when you know them: the client then stays under them from the first call.

    `submits_per_minute` and `polls_per_minute` (task-result calls) space the calls of that endpoint evenly,
    `60 / N` seconds apart; `max_running` is the account's cap on tasks running at once (the client runs at
    most `min(max_concurrency, max_running)`). None (the default) means unknown: learnt from the 429s.
    """

    submits_per_minute: float | None = attrs.field(default=None, validator=number(above=0, none_means="unknown"))
    polls_per_minute: float | None = attrs.field(default=None, validator=number(above=0, none_means="unknown"))
    max_running: int | None = attrs.field(default=None, validator=_whole_or_none)


class _SlotState(enum.Enum):
    TAKEN = "taken"
    RUNNING = "running"
    GONE = "given back"


class SlotOwner(Protocol):
    """What a `Slot` reports to: the budget that gave it out (called synchronously, see the module docstring)."""

    def _on_accepted(self, slot: Slot) -> float: ...

    def _on_adopted(self, slot: Slot) -> float: ...

    def _on_refused(self, slot: Slot, retry_after: float | None) -> bool: ...

    def _on_released(self, slot: Slot, *, running: bool) -> None: ...

    def _on_abandoned(self, slot: Slot, *, running: bool) -> None: ...


@final
class Slot:
    """One running-task slot of the budget: taken once, given back exactly once (see the module docstring)."""

    __slots__ = ("_budget", "_gone_by", "_state", "accepted_at", "running_since", "task_id", "token")

    def __init__(self, budget: SlotOwner, token: str | None = None) -> None:
        self._budget = budget
        self._state = _SlotState.TAKEN
        self._gone_by = ""
        #: When the submission was accepted (client clock), for slots that stand for a task it created.
        self.accepted_at: float | None = None
        #: When it began to stand for a task (client clock): accepted, or adopted. A slot given back while its
        #: task may run is held from then.
        self.running_since: float | None = None
        #: The task the slot stands for, once known (a shared budget records it, for adoption).
        self.task_id: str | None = None
        #: The shared budget's name for this slot (None for a local budget's).
        self.token = token

    def __repr__(self) -> str:
        return f"<Slot {self._state.value}>"

    @property
    def running(self) -> bool:
        """The slot stands for a task that runs (accepted or adopted), and was not given back yet."""
        return self._state is _SlotState.RUNNING

    def accepted(self, task_id: str | None = None) -> None:
        """The submission created a task (`task_id`): the slot stands for it until it ends."""
        self._expect(_SlotState.TAKEN, "accepted")
        self._state = _SlotState.RUNNING
        self.task_id = task_id
        self.accepted_at = self.running_since = self._budget._on_accepted(self)

    def adopted(self, task_id: str | None = None) -> None:
        """The slot stands for a task submitted earlier (resumed): it runs, but proves nothing about the cap."""
        self._expect(_SlotState.TAKEN, "adopted")
        self._state = _SlotState.RUNNING
        self.task_id = task_id
        self.running_since = self._budget._on_adopted(self)

    def refused(self, retry_after: float | None) -> bool:
        """The submission was answered 429 (nothing was created): give the slot back, and tell the budget.

        True when the 429 looks like the running-task cap and no slot is free: waiting for one is the backoff.
        """
        if self._state is _SlotState.RUNNING:  # its submission was accepted: a 429 cannot follow
            raise RuntimeError("a running-task slot cannot be refused once running")
        self._give_back("refused")
        return self._budget._on_refused(self, retry_after)

    def release(self) -> None:
        """The task ended, or no task was created: the slot is free again."""
        running = self._state is _SlotState.RUNNING
        self._give_back("release")
        self._budget._on_released(self, running=running)

    def release_when_ended(self) -> None:
        """A task may run that nobody follows (a lost answer, a waiter gone): free the slot once it could
        have ended (see the module docstring)."""
        running = self._state is _SlotState.RUNNING
        self._give_back("release_when_ended")
        self._budget._on_abandoned(self, running=running)

    def _expect(self, state: _SlotState, action: str) -> None:
        if self._state is not state:
            raise RuntimeError(f"a running-task slot cannot be {action} once {self._state.value}")

    def _give_back(self, how: str) -> None:
        if self._state is _SlotState.GONE:
            raise RuntimeError(f"this running-task slot was already given back (by {self._gone_by}), now by {how}")
        self._state = _SlotState.GONE
        self._gone_by = how


def adopted_slot(budget: SlotOwner, token: str, task_id: str) -> Slot:
    """A slot that already stands for a running task another client left (for `SharedBudget`s): it reports
    nothing until it is given back."""
    slot = Slot(budget, token)
    slot._state = _SlotState.RUNNING
    slot.task_id = task_id
    return slot


@final
class _TokenBucket:
    __slots__ = ("at", "capacity", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now: float, tokens: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity if tokens is None else tokens
        self.at = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is)."""
        if now > self.at:
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate


@final
class Pacer:
    """The pace of one endpoint's calls: the limits known up front and a rate learnt from its 429s."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        per_minute: float | None,
        per_second_burst: float | None,
        retry: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.endpoint = endpoint
        self._retry = retry
        self._rng = rng
        self._fixed: list[_TokenBucket] = []
        if per_minute is not None:
            self._fixed.append(_TokenBucket(per_minute / 60.0, 1.0, -math.inf))
        if per_second_burst is not None:
            self._fixed.append(_TokenBucket(per_second_burst, per_second_burst, -math.inf))
        self._learnt: _TokenBucket | None = None
        self._waited_for_learnt = 0  # calls that waited for the learnt pace, not yet accepted
        self._paused_until = -math.inf
        self.refusals_in_a_row = 0
        self._pauses_in_a_row = 0  # pauses since the last accepted call: each backs off longer
        self._accepted_since_refusal = 0
        self._accepted_since_evidence = 0
        # Calls let through and not refused, per whole second of the clock, over the last RATE_HORIZON seconds.
        self._accepted_bins: collections.deque[list[int]] = collections.deque()
        self._first_accepted_at: float | None = None
        #: Told of each new pause on evidence of a rate limit (its length in seconds): a shared budget
        #: passes it on to the other clients of the key (`follow_pause`).
        self.on_pause: Callable[[float], None] | None = None

    @property
    def learnt_rate(self) -> float | None:
        """Calls per second this pacer has learnt to keep to (None: no rate limit seen)."""
        return None if self._learnt is None else self._learnt.rate

    def delay(self, now: float) -> float:
        """Seconds until a call may go; 0 means it may go now, and its turn is taken."""
        wait = self._paused_until - now
        for bucket in self._fixed:
            wait = max(wait, bucket.wait(now))
        learnt = self._learnt
        if learnt is not None:
            learnt_wait = learnt.wait(now)
            if learnt_wait > 0:
                self._waited_for_learnt = min(self._waited_for_learnt + 1, 1000)
                wait = max(wait, learnt_wait)
        if wait > 0:
            return wait
        for bucket in self._fixed:
            bucket.tokens -= 1.0
        if learnt is not None:
            learnt.tokens -= 1.0
        # Calls let through, per whole second of the clock (refusals are taken back): what got through lately.
        second = int(now)
        bins = self._accepted_bins
        if bins and bins[-1][0] == second:
            bins[-1][1] += 1
        else:
            bins.append([second, 1])
            while bins[0][0] <= second - RATE_HORIZON:
                bins.popleft()
            if self._first_accepted_at is None:
                self._first_accepted_at = now
        return 0.0

    async def wait(self, clock: Clock) -> None:
        """Wait for this endpoint's turn, on the client's clock."""
        while (delay := self.delay(clock.now())) > 0:
            await clock.sleep(delay)

    def accepted(self) -> None:
        """A call of this endpoint was answered without a 429."""
        self.refusals_in_a_row = 0
        self._pauses_in_a_row = 0
        self._accepted_since_refusal += 1
        self._accepted_since_evidence += 1
        if self._learnt is not None and self._accepted_since_evidence >= RATE_PROBE_CALLS:
            # No run of refusals for that long: the limit may not be where the pace is (a burst of bad luck
            # taught it), or it moved. Probe well above; a real limit shows itself again within a few calls.
            self._accepted_since_evidence = 0
            self._learnt.rate *= RATE_PROBE
        if self._waited_for_learnt and self._learnt is not None:
            self._waited_for_learnt -= 1
            # Faster the longer no call was refused, so that a pace cut by a burst of bad luck comes back.
            self._learnt.rate *= 1.0 + RATE_GROWTH * (1.0 + self._accepted_since_refusal / RATE_GROWTH_CALLS)

    def refused(self, now: float, retry_after: float | None) -> float:
        """A call of this endpoint was answered 429 for a rate limit; return how long that call should wait
        before trying again (submissions report through `Slot.refused`, which keeps the cap's 429s out).

        A lone 429 delays only its own call; `RATE_EVIDENCE` (3) in a row pause every call and cut the learnt pace.
        """
        if self._accepted_bins:
            self._accepted_bins[-1][1] -= 1  # let through, but not accepted
        if retry_after is not None and retry_after <= 0:
            return 0.0  # a transient refusal: retried at once, learnt from never
        self.refusals_in_a_row += 1
        self._accepted_since_refusal = 0
        if self.refusals_in_a_row >= RATE_EVIDENCE:
            self._accepted_since_evidence = 0
            new_pause = now >= self._paused_until
            if new_pause:  # a new burst of refusals: pause longer than last time
                if self._pauses_in_a_row == 0:  # cut once per run of refusals: nothing is learnt until one passes
                    self._cut(now)
                self._pauses_in_a_row += 1
            backoff = self._retry.backoff(self._pauses_in_a_row, self._rng)
            until = now + (retry_after if retry_after is not None else backoff)
            self._paused_until = max(self._paused_until, until)
            if new_pause and self.on_pause is not None:
                self.on_pause(self._paused_until - now)
        if retry_after is not None:
            return retry_after
        return self._retry.backoff(max(1, self._pauses_in_a_row), self._rng)

    def follow_pause(self, now: float, pause: float) -> None:
        """Another client of the key paused this endpoint on evidence of a rate limit: pause for what is left
        of it, and cut this client's pace as if its own calls had been refused (once per run of refusals)."""
        if now < self._paused_until and self._pauses_in_a_row:
            self._paused_until = max(self._paused_until, now + pause)
            return
        self._accepted_since_evidence = 0
        self._accepted_since_refusal = 0
        if self._pauses_in_a_row == 0:
            self._cut(now)
        self._pauses_in_a_row += 1
        self._paused_until = max(self._paused_until, now + pause)

    def _cut(self, now: float) -> None:
        """Evidence of a rate limit: keep to RATE_CUT times the lower of the pace and the rate accepted lately.

        The rate accepted is the highest over the last 2, 5, 10, 30 and 60 seconds: a limit of N calls per
        W seconds lets N / W through over any span of W or more while it binds, and less where demand was
        lower (the ramp of the first calls, pauses), so the highest is the limit's own when it binds; it may
        be above it over spans shorter than W, which the cuts of later bursts then correct.
        """
        if not self._accepted_bins:
            return  # nothing to measure a pace by: the pause alone
        first = self._first_accepted_at
        # `is None`, not falsiness: a clock that starts at 0 (the simulator's, a test's) has a first call at 0.0.
        since = max(2.0, now - (first if first is not None else now))
        rate = 0.0
        for span in RATE_SPANS:
            span = min(span, since)
            accepted = sum(count for second, count in self._accepted_bins if second > now - span)
            rate = max(rate, accepted / span)
        if rate == 0:
            return  # nothing got through lately: the pause alone
        if self._learnt is not None:
            rate = min(rate, self._learnt.rate)
        self._learnt = _TokenBucket(max(MIN_RATE, RATE_CUT * rate), 1.0, now, tokens=0.0)


class Budget(Protocol):
    """What the client needs of a key's budget (see the module docstring); `LocalBudget` is this process's."""

    @property
    def submissions(self) -> Pacer: ...

    @property
    def task_results(self) -> Pacer: ...

    @property
    def cap(self) -> int | None:
        """The running-task cap as known (given, or learnt); None while unknown."""
        ...

    @property
    def running(self) -> int:
        """Slots that stand for a task that may run (a shared budget: all clients', as last heard)."""
        ...

    async def acquire(self) -> Slot:
        """Wait for a running-task slot and take it."""
        ...


@attrs.frozen
class BudgetSettings:
    """What a client tells the shared budget it is given when it is built (`SharedBudget.bind`)."""

    max_concurrency: int
    limits: RateLimits
    max_polls_per_second: float | None
    clock: Clock
    retry: RetryPolicy
    rng: random.Random
    #: A hash of the client's API key (hex), never the key: the default name of the account.
    key_hash: str


#: How a shared budget hands its client a task another client left running: poll it, then release the slot.
AdoptTask = Callable[[str, Slot], None]


class SharedBudget(Budget, Protocol):
    """A budget shared by many clients (`PixVerseClient(budget=...)`): see the module docstring."""

    def bind(self, settings: BudgetSettings) -> None:
        """Called once by the client being built."""
        ...

    def serve(self, adopt: AdoptTask) -> contextlib.AbstractAsyncContextManager[None]:
        """Run the budget (its own tasks, in a task group of its own) while the client is open; entering
        raises `BudgetUnavailableError` when the budget's store cannot be reached."""
        ...


@final
class LocalBudget:
    """The budget of one client in one process: `CapState` applied in memory, on the client's clock."""

    def __init__(
        self,
        max_concurrency: int,
        *,
        limits: RateLimits,
        max_polls_per_second: float | None,
        clock: Clock,
        retry: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.max_concurrency = max_concurrency
        self._clock = clock
        self.state = CapState(max_concurrency, limits.max_running)
        self._line = WaitLine()  # a waiter per free slot is woken: see _wait_line.py
        self._sleepers: set[anyio.CancelScope] = set()
        self.submissions = Pacer(
            "submit", per_minute=limits.submits_per_minute, per_second_burst=None, retry=retry, rng=rng
        )
        self.task_results = Pacer(
            "task-result",
            per_minute=limits.polls_per_minute,
            per_second_burst=max_polls_per_second,
            retry=retry,
            rng=rng,
        )

    @property
    def cap(self) -> int | None:
        """The running-task cap: given, or learnt, or being probed above; None while unknown (slow start)."""
        return self.state.cap

    @property
    def running(self) -> int:
        """Slots that stand for a task that may run (accepted, adopted, held)."""
        return self.state.running

    @property
    def in_use(self) -> int:
        """Slots out, held ones included."""
        return self.state.in_use

    @property
    def limit(self) -> int:
        """How many slots may be out now: up to the cap if known, else the slow start's window."""
        return self.state.limit

    @property
    def saturated(self) -> bool:
        state = self.state
        return state.in_use >= state.limit

    async def acquire(self) -> Slot:
        """Wait for a slot (held ones are freed on the client's clock meanwhile) and take it."""
        state = self.state
        while True:
            if state.held:
                self._free_held(self._clock.now())
            if state.take():
                return Slot(self)
            await self._wait_changed()

    async def _wait_changed(self) -> None:
        free_at = self.state.next_free_at()
        if free_at is None:
            await self._line.wait()
            return
        with anyio.CancelScope() as scope:
            self._sleepers.add(scope)
            try:
                await self._clock.sleep(free_at - self._clock.now())
            finally:
                self._sleepers.discard(scope)

    def _notify(self) -> None:
        # Wake a waiter per free slot (each re-checks the limit), every one while slots are held (to sleep until
        # the first is freed), and every sleeper.
        state = self.state
        self._line.wake(None if state.held else state.limit - state.in_use)
        if self._sleepers:
            for scope in self._sleepers:
                scope.cancel()
            self._sleepers.clear()

    def _free_held(self, now: float) -> None:
        if self.state.free_due(now):
            self._notify()

    # -- what slots report -------------------------------------------------------------------------------

    def _on_accepted(self, slot: Slot) -> float:
        self.state.accepted()
        now = self._clock.now()
        self.submissions.accepted()
        self._widened()
        return now

    def _on_adopted(self, slot: Slot) -> float:
        self.state.adopted()
        self._widened()
        return self._clock.now()

    def _widened(self) -> None:
        # The slow start's window grew: a submitter waiting for a slot may take one now, not at the next release.
        state = self.state
        if state.cap is None and state.window <= state.ceiling:
            self._notify()

    def _on_refused(self, slot: Slot, retry_after: float | None) -> bool:
        refusal = self.state.refused(retry_after)
        self._notify()
        if refusal is Refusal.CAP:
            return self.saturated
        if refusal is Refusal.RATE:
            self.submissions.refused(self._clock.now(), retry_after)
        return False

    def _on_released(self, slot: Slot, *, running: bool) -> None:
        accepted_at = slot.accepted_at
        took = None if accepted_at is None else self._clock.now() - accepted_at
        self.state.released(running=running, took=took)
        self._notify()

    def _on_abandoned(self, slot: Slot, *, running: bool) -> None:
        now = self._clock.now()
        # Held from when it began to stand for its task (a resumed one's: its adoption), or from the loss.
        self.state.abandoned(slot.running_since if slot.running_since is not None else now, running=running)
        self._free_held(now)
        self._notify()  # waiters sleep until the earliest held slot is freed
