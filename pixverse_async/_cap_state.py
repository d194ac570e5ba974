"""The running-task slots of one key and the cap learnt on them, as one pure model: `CapState`.

No I/O, no clock: times are passed in. `LocalBudget` (`_budget.py`) applies it in memory; the Lua step of
`RedisBudget` (`_redis_script.py`) is its port, one function per operation under the same name, applied to
the state Redis keeps for all clients of the account; `tests/test_cap_state.py` feeds both the same random
operations and compares every field after each. The rules are told in `_budget.py`'s docstring.

The operations, with what each reports (`Slot` methods, `_budget.py`):

=========== ============================== ==========================================================
operation   reported by                    what it does
=========== ============================== ==========================================================
take        `acquire()`                    takes a slot if fewer than `limit` are out
accepted    `Slot.accepted()`              the submission created a task: it runs (proves the count)
adopted     `Slot.adopted()`               a task submitted earlier runs in the slot (proves nothing)
refused     `Slot.refused(retry_after)`    a submission's 429: the slot is free; the cap's, or a rate's
released    `Slot.release()`               the task ended (`took` seconds), or nothing was created
abandoned   `Slot.release_when_ended()`    a task may run that nobody follows: held `hold()` from its
                                           start, then freed by `free_due`
restored    (Redis only: a client tells    a slot out before Redis lost its state (running or not)
            an emptied Redis its slots)
free_due    (each `acquire()`, each step)  frees the held slots whose task could have ended by `now`
=========== ============================== ==========================================================

A slot is out from `take` until one of `refused`, `released`, `abandoned`; `accepted` or `adopted` say what
it stands for in between. Learning: `refused` may learn the cap (`_learn`), `released` of an accepted task
probes it higher (`_probe`), `accepted` with more running than the cap raises it.
"""

from __future__ import annotations

import enum
import heapq
from typing import final

import attrs

#: How long a slot whose task may run stays taken before any task has ended (API seconds).
LOST_ANSWER_HOLD = 600.0
#: A submission's 429 looks like the cap while at least this share of the proven running count runs.
CAP_EVIDENCE = 0.75
#: How many such 429s in a row (no acceptance between) teach a cap below the last one learnt (or a first).
CAP_STRIKES = 3


class Refusal(enum.Enum):
    """What a submission's 429 was read as (`CapState.refused`)."""

    #: `Retry-After: 0`: retried at once, learnt from never.
    TRANSIENT = "transient"
    #: The running-task cap (as far as the count tells): wait for a slot if none is free.
    CAP = "cap"
    #: Clearly fewer run than were accepted before: a rate limit, for the submission pacer.
    RATE = "rate"


def looks_like_cap(running: int, proven: float, floor: int | None) -> bool:
    """A submission's 429 with `running` tasks running reads as the running-task cap: at or above the count
    last shown to be the cap (`floor`), or at least `CAP_EVIDENCE` of the most seen running (`proven`)."""
    return (floor is not None and running >= floor) or (running >= 1 and running >= CAP_EVIDENCE * proven)


@final
@attrs.define(on_setattr=attrs.setters.NO_OP)  # validated when built: a __setattr__ hook would slow every count
class CapState:
    """The counts of one key's slots and what is known of its running-task cap (see the module docstring)."""

    #: The most slots this client lets out (a shared state: each client's own, passed with its step).
    max_concurrency: int = attrs.field(validator=attrs.validators.ge(1))
    #: `RateLimits.max_running`: the cap known from the start (None: learnt).
    given_cap: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    #: Slots out, held ones included.
    in_use: int = 0
    #: Slots that stand for a task that may run (accepted, adopted, held).
    running: int = 0
    #: The most tasks seen running right after an acceptance.
    proven: int = 0
    #: Slow start: slots that may be out while the cap is unknown.
    window: int = 1
    #: The running-task cap: given, or learnt, or being probed above; None while unknown (slow start).
    cap: int | None = attrs.field(default=attrs.Factory(lambda self: self.given_cap, takes_self=True))
    #: The running count last shown to be the cap (a refusal there): a probe refused at or above it is the
    #: cap at once, a refusal below it lowers it only after CAP_STRIKES in a row.
    floor: int | None = attrs.field(default=attrs.Factory(lambda self: self.given_cap, takes_self=True))
    #: Cap-like refusals in a row (no acceptance between).
    strikes: int = 0
    #: Tasks ended since the cap was last set or probed.
    ends: int = 0
    #: How far the next probe raises the cap (doubles while probes go unrefused).
    step: int = 1
    #: Seconds from acceptance to the end seen, the longest so far (None: no task ended yet).
    longest: float | None = None
    #: When the tasks of held slots started (a heap): each is freed `hold()` later.
    held: list[float] = attrs.field(factory=list)
    #: The most slots that may ever be out: `max_concurrency`, or the given cap if lower.
    ceiling: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        given = self.given_cap
        self.ceiling = self.max_concurrency if given is None or given >= self.max_concurrency else given

    @property
    def limit(self) -> int:
        """How many slots may be out now: up to the cap if known, else the slow start's window."""
        if self.cap is not None:
            return max(1, min(self.ceiling, self.cap))
        return min(self.ceiling, self.window)

    def hold(self) -> float:
        """How long a task may run, as far as known: the longest seen, or LOST_ANSWER_HOLD before any."""
        return LOST_ANSWER_HOLD if self.longest is None else self.longest

    def next_free_at(self) -> float | None:
        """When the first held slot is freed (None: none is held)."""
        return self.held[0] + self.hold() if self.held else None

    # -- the operations (the Lua step's, one to one) ---------------------------------------------------------

    def take(self) -> bool:
        """Take a slot if one is free (True: taken)."""
        if self.in_use < self.limit:
            self.in_use += 1
            return True
        return False

    def accepted(self) -> None:
        self.running += 1
        running = self.running
        if running > self.proven:
            self.proven = running
        self.window += 1
        if self.floor is not None and running > self.floor:
            self.floor = running  # the cap is at least this
            if self.cap is not None and running > self.cap:
                self.cap = running
        self.strikes = 0

    def adopted(self) -> None:
        self.running += 1
        self.window += 1

    def refused(self, retry_after: float | None) -> Refusal:
        self.in_use -= 1
        if retry_after is not None and retry_after <= 0:
            return Refusal.TRANSIENT
        running = self.running
        if self.floor is not None and running >= self.floor:
            self._learn(running)  # a probe above the cap was refused: back to what runs
            return Refusal.CAP
        if looks_like_cap(running, self.proven, None):
            self.strikes += 1
            if self.strikes >= CAP_STRIKES:
                self._learn(running)
            return Refusal.CAP
        return Refusal.RATE

    def released(self, *, running: bool, took: float | None) -> None:
        """`running`: the slot stood for a task; `took`: seconds since its acceptance (None: not accepted)."""
        self.in_use -= 1
        if running:
            self.running -= 1
            if took is not None:
                if self.longest is None or took > self.longest:
                    self.longest = took
                self._probe()

    def abandoned(self, started_at: float, *, running: bool) -> None:
        """`started_at`: the task's acceptance, or now for an answer lost (which may well have created one)."""
        if not running:
            self.running += 1
            self.window += 1
        heapq.heappush(self.held, started_at)

    def restored(self, *, running: bool) -> None:
        self.in_use += 1
        if running:
            self.running += 1

    def free_due(self, now: float) -> int:
        """Free the held slots whose task could have ended by `now`; return how many."""
        # Every held slot waits the same `hold()` (it grows as longer tasks are seen), so the heap of start
        # times is also the order in which they are freed.
        latest_start = now - self.hold()
        held = self.held
        freed = 0
        while held and held[0] <= latest_start:
            heapq.heappop(held)
            freed += 1
        self.in_use -= freed
        self.running -= freed
        return freed

    def _learn(self, running: int) -> None:
        self.cap = self.floor = max(1, min(running, self.ceiling))
        self.strikes = 0
        self.ends = 0
        self.step = 1

    def _probe(self) -> None:
        cap = self.cap
        if cap is None or cap >= self.ceiling:
            return
        self.ends += 1
        if self.ends < cap:
            return
        self.ends = 0
        raised = cap + self.step
        self.step *= 2
        if raised >= self.max_concurrency and self.given_cap is None:
            self.cap = self.floor = None  # probed back to max_concurrency: nothing is known to be lower
            self.window = max(self.window, self.max_concurrency)
        else:
            self.cap = min(raised, self.ceiling)
