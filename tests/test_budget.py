"""The key's budget: slot objects (unit tests), `RateLimits`, and each kind of limit against the simulator."""

from __future__ import annotations

import math
import random

import anyio
import pytest

from pixverse_async import (
    EventKind,
    ImageToVideo,
    InvalidRequestError,
    JobEvent,
    JobResult,
    PixVerseClient,
    RateLimits,
    RetryPolicy,
    SubmissionUncertainError,
)
from pixverse_async._budget import LocalBudget, Slot
from pixverse_async._cap_state import LOST_ANSWER_HOLD
from pixverse_async.testing import CallRateLimit, Fault, InstantClock, Simulator, TaskPlan
from tests.helpers import KEY, client_for

pytestmark = pytest.mark.anyio
URL = "https://example.com/frame.png"
# Rates and round trips matter here: at 0.01 real s per API s, a loopback round trip is a small part of a second.
RATE_SCALE = 0.01


def budget(max_concurrency: int, clock: InstantClock, limits: RateLimits = RateLimits()) -> LocalBudget:  # noqa: B008 - frozen value
    return LocalBudget(
        max_concurrency,
        limits=limits,
        max_polls_per_second=None,
        clock=clock,
        retry=RetryPolicy(),
        rng=random.Random(1),
    )


def jobs(count: int, prompt: str = "job") -> list[ImageToVideo]:
    return [ImageToVideo(f"{prompt} {i}", URL) for i in range(count)]


async def collect(client: PixVerseClient, inputs: list[ImageToVideo], **options: object) -> list[JobResult]:
    async with client.as_completed(inputs, **options) as results:  # type: ignore[arg-type]
        return [result async for result in results]


# -- slots: taken once, given back exactly once -------------------------------------------------------------------


async def test_a_slot_is_given_back_exactly_once_and_a_second_give_back_is_refused() -> None:
    owner = budget(2, InstantClock(), RateLimits(max_running=2))
    slot = await owner.acquire()
    slot.accepted()
    assert (owner.in_use, owner.running) == (1, 1)
    slot.release()
    assert (owner.in_use, owner.running) == (0, 0)
    for give_back in (slot.release, slot.release_when_ended, lambda: slot.refused(None)):
        with pytest.raises(RuntimeError, match=r"already given back \(by release\)"):
            give_back()
    assert (owner.in_use, owner.running) == (0, 0), "a refused give-back must not count"
    with pytest.raises(RuntimeError, match="cannot be accepted"):
        slot.accepted()


async def test_no_more_slots_than_the_limit_and_a_release_lets_the_next_one_in() -> None:
    owner = budget(2, InstantClock(), RateLimits(max_running=5))  # max_concurrency is the tighter one
    first, second = await owner.acquire(), await owner.acquire()
    taken: list[object] = []

    async def third() -> None:
        taken.append(await owner.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert taken == [] and owner.in_use == 2
        first.refused(None)  # a 429: nothing was created, the slot comes back
        await anyio.wait_all_tasks_blocked()
        assert len(taken) == 1 and owner.in_use == 2
    second.release()


async def test_a_release_wakes_the_oldest_waiter_and_one_cancelled_as_it_is_woken_passes_it_on() -> None:
    owner = budget(1, InstantClock(), RateLimits(max_running=1))
    held = await owner.acquire()
    taken: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def waiter(name: str) -> None:
        with anyio.CancelScope() as scopes[name]:
            await owner.acquire()
            taken.append(name)

    async with anyio.create_task_group() as group:
        for name in ("first", "second", "third"):
            group.start_soon(waiter, name)
            await anyio.wait_all_tasks_blocked()
        held.release()  # one slot: the first waiter is woken, not the three
        scopes["first"].cancel()  # before it runs: the slot it was woken for must not stay free unseen
        await anyio.wait_all_tasks_blocked()
        assert taken == ["second"] and owner.in_use == 1
        scopes["third"].cancel()


async def test_a_waiter_wakes_when_a_slot_becomes_held_and_gets_it_once_freed() -> None:
    clock = InstantClock()
    owner = budget(1, clock, RateLimits(max_running=1))
    lost = await owner.acquire()
    taken: list[float] = []

    async def waiter() -> None:
        await owner.acquire()
        taken.append(clock.now())

    with anyio.fail_after(5):  # a waiter left asleep through the hold would wait forever
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            lost.release_when_ended()  # no slot free, but one held: the waiter sleeps until it is freed
    assert taken == [LOST_ANSWER_HOLD]


async def test_a_slot_whose_task_may_run_is_held_for_the_longest_task_seen() -> None:
    clock = InstantClock()
    owner = budget(1, clock, RateLimits(max_running=1))
    slot = await owner.acquire()
    slot.release_when_ended()  # an answer lost before any task ended: the documented fallback
    slot = await owner.acquire()
    assert clock.now() == LOST_ANSWER_HOLD
    slot.accepted()
    clock.current += 40.0
    slot.release()  # the longest task seen: 40 s
    lost = await owner.acquire()
    lost.release_when_ended()
    clock.current += 10.0
    await owner.acquire()
    assert clock.now() == LOST_ANSWER_HOLD + 40.0 + 40.0, "held for 40 s from the loss"


async def test_a_resumed_task_nobody_follows_is_held_from_its_adoption_as_redis_holds_it() -> None:
    clock = InstantClock()
    owner = budget(1, clock, RateLimits(max_running=1))
    slot = await owner.acquire()
    slot.adopted("task-1")  # submitted before, resumed here
    clock.current += 100.0
    slot.release_when_ended()  # its waiter left; no task ended yet: the fallback hold
    await owner.acquire()
    assert clock.now() == LOST_ANSWER_HOLD, "held from the adoption, not from the leaving"


async def test_a_longer_task_seen_later_lengthens_every_hold() -> None:
    clock = InstantClock()
    owner = budget(3, clock, RateLimits(max_running=3))
    short, long = await owner.acquire(), await owner.acquire()
    short.accepted()
    long.accepted()
    clock.current += 10.0
    short.release()  # the longest task seen: 10 s
    lost = await owner.acquire()
    lost.release_when_ended()  # lost at t=10: held until t=20, as things stand
    clock.current += 5.0
    long.release()  # the longest: 15 s, so the lost answer's slot stays taken until t=25
    await owner.acquire()
    await owner.acquire()
    assert owner.in_use == 3
    await owner.acquire()
    assert clock.now() == 25.0


# -- the cap: learnt from evidence only (pure policy, no server) ------------------------------------------------


async def run_tasks(owner: LocalBudget, count: int) -> list[Slot]:
    """Submit `count` tasks one after the other, each accepted."""
    slots = []
    for _ in range(count):
        slot = await owner.acquire()
        assert owner.submissions.delay(owner._clock.now()) == 0  # the submission's turn, as the client takes it
        slot.accepted()
        slots.append(slot)
    return slots


async def test_slow_start_keeps_slots_out_at_most_one_more_than_submissions_accepted() -> None:
    owner = budget(64, InstantClock())
    first = await owner.acquire()
    with anyio.move_on_after(0.1):  # real time: nothing else runs that could free a slot
        await owner.acquire()
        pytest.fail("a second submission went out before the first was answered")
    first.accepted()
    assert owner.limit == 2  # one more than accepted
    await run_tasks(owner, 2)
    assert owner.limit == 4
    await run_tasks(owner, 4)
    assert (owner.running, owner.limit) == (7, 8)
    lost = await owner.acquire()
    lost.release_when_ended()  # a lost answer widens the window: it does not eat it
    assert (owner.in_use, owner.limit) == (8, 9)


async def test_three_429s_in_a_row_with_most_tasks_running_teach_the_cap_and_retry_after_zero_never() -> None:
    owner = budget(64, InstantClock())
    running = await run_tasks(owner, 20)
    running.pop().release()  # 19 run
    for _ in range(5):
        (await owner.acquire()).refused(0.0)  # a transient refusal
    assert owner.cap is None
    for _ in range(2):
        (await owner.acquire()).refused(None)
    assert owner.cap is None, "two 429s in a row are not enough: a busy router sends some at random"
    (await owner.acquire()).accepted()  # and an acceptance clears them
    (await owner.acquire()).refused(None)
    (await owner.acquire()).refused(None)
    assert owner.cap is None
    (await owner.acquire()).refused(None)
    assert owner.cap == 20 and owner.limit == 20


async def test_a_429_with_few_tasks_running_is_a_rate_limit_not_a_cap() -> None:
    owner = budget(64, InstantClock())
    slots = await run_tasks(owner, 20)
    for slot in slots[:15]:
        slot.release()  # 5 run, 20 were accepted before
    for _ in range(4):
        slot = await owner.acquire()
        owner.submissions.delay(owner._clock.now())
        assert slot.refused(None) is False
    assert owner.cap is None
    assert owner.submissions.learnt_rate is not None


async def test_a_learnt_cap_is_probed_upward_as_tasks_end() -> None:
    clock = InstantClock()
    owner = budget(16, clock)
    slots = await run_tasks(owner, 8)
    for _ in range(3):
        (await owner.acquire()).refused(None)
    assert owner.cap == 8
    raised = []
    for _ in range(50):  # tasks end and are replaced, without a refusal
        slots.pop(0).release()
        slots.extend(await run_tasks(owner, owner.limit - owner.in_use))
        raised.append(owner.cap)
    assert raised[7] == 9, "one higher after cap (8) tasks ended"
    assert raised[7 + 9 + 11] == 15 and raised[7 + 9 + 11 + 15] is None, "the step doubles up to max_concurrency"
    assert owner.limit == 16
    refused_probe = budget(16, clock)
    slots = await run_tasks(refused_probe, 8)
    for _ in range(3):
        (await refused_probe.acquire()).refused(None)
    while refused_probe.cap == 8:
        slots.pop(0).release()
        slots.extend(await run_tasks(refused_probe, 1))
    assert refused_probe.cap == 9
    (await refused_probe.acquire()).refused(None)  # the probe is refused: back to the cap at once
    assert refused_probe.cap == 8


# -- RateLimits ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("submits_per_minute", 0),
        ("submits_per_minute", -5),
        ("submits_per_minute", math.inf),
        ("submits_per_minute", math.nan),
        ("polls_per_minute", "50"),
        ("polls_per_minute", True),
        ("max_running", 0),
        ("max_running", 2.5),
    ],
)
def test_rate_limits_take_positive_numbers_or_none(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        RateLimits(**{field: value})  # type: ignore[arg-type]


def test_rate_limits_defaults_and_the_client_checks_its_argument() -> None:
    assert RateLimits() == RateLimits(None, None, None)
    assert RateLimits(submits_per_minute=50, polls_per_minute=600.5, max_running=20).max_running == 20
    with pytest.raises(InvalidRequestError, match="rate_limits"):
        PixVerseClient(KEY, rate_limits={"submits_per_minute": 50})  # type: ignore[arg-type]


# -- each limit against the simulator ------------------------------------------------------------------------------


async def test_a_real_cap_unknown_to_the_client_is_learnt_with_a_bounded_first_burst() -> None:
    async with Simulator(time_scale=RATE_SCALE, duration=5.0, max_running_per_key=10, seed=2) as sim:
        async with client_for(sim, max_concurrency=64) as client:
            results = await collect(client, jobs(100))
    assert all(r.ok for r in results)
    counters = sim.counters
    assert counters.max_running_by_key[KEY] == 10
    # Slow start: 64 submissions at once would have met the cap with 54 refusals.
    assert counters.rate_limited_by["running_cap"] / 100 <= 0.3, counters.rate_limited_by


@pytest.mark.parametrize("retry_after", [True, False])
async def test_a_submission_rate_limit_is_paced_not_read_as_a_cap(retry_after: bool) -> None:
    limit = CallRateLimit(10, per=2.0, retry_after=retry_after)
    async with Simulator(time_scale=RATE_SCALE, duration=1.0, submit_rate_limit=limit, seed=3) as sim:
        # The default RetryPolicy's attempts (tests use 4): one submission may be refused a few times in a row.
        async with client_for(sim, max_concurrency=64, retry=RetryPolicy()) as client:
            results = await collect(client, jobs(100))
            learnt = client._budget.submissions.learnt_rate
    assert all(r.ok for r in results)
    assert set(sim.counters.rate_limited_by) <= {"submit_rate"}
    # 0.4 is the usual figure; a loaded machine bunches calls in the 20-ms windows of this time scale.
    assert sim.counters.rate_limited / 100 <= 0.5, sim.counters.rate_limited
    # Probes go 1.5x above the pace after 100 calls without a run of refusals: at most about 2.25x the limit.
    assert learnt is None or 1 < learnt < 12, f"learnt {learnt} calls/s for a limit of 5 per second"
    assert client._budget.cap is None or client._budget.cap >= 5, "read as a running-task cap"


async def test_a_task_result_rate_limit_is_paced() -> None:
    durations = {f"job {i}": 2.0 + 4.0 * random.Random(i).random() for i in range(100)}

    def plan(body: object) -> TaskPlan:
        return TaskPlan(duration=durations[body["prompt"]])  # type: ignore[index]

    limit = CallRateLimit(20, per=2.0)
    async with Simulator(time_scale=RATE_SCALE, plan=plan, poll_rate_limit=limit, seed=4) as sim:
        async with client_for(sim, max_concurrency=64) as client:
            results = await collect(client, jobs(100))
            learnt_cap = client._budget.cap
    assert all(r.ok for r in results)
    assert set(sim.counters.rate_limited_by) <= {"poll_rate"}
    # 0.4 is the usual figure; a loaded machine bunches calls in the 20-ms windows of this time scale.
    assert sim.counters.rate_limited / 100 <= 0.5, sim.counters.rate_limited
    assert learnt_cap is None, "a 429 on task-result lowered the running-task cap"


async def test_every_limit_together() -> None:
    async with Simulator(
        time_scale=RATE_SCALE,
        duration=3.0,
        seed=5,
        max_running_per_key=12,
        submit_rate_limit=CallRateLimit(15, per=2.0),
        poll_rate_limit=CallRateLimit(30, per=2.0, retry_after=False),
        random_rate_limit=0.05,
    ) as sim:
        async with client_for(sim, max_concurrency=16, retry=RetryPolicy(max_attempts=8)) as client:
            results = await collect(client, jobs(80))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert sim.counters.tasks_created == 80
    assert sim.counters.max_running_by_key[KEY] <= 12
    assert sim.counters.rate_limited / 80 <= 0.6, sim.counters.rate_limited_by


async def test_concurrency_recovers_after_a_burst_of_random_429s() -> None:
    # Durations spread out, so that tasks end one by one and a burst meets most of them running.
    async with Simulator(time_scale=RATE_SCALE, duration=Simulator.lognormal(2.0, 0.5), seed=6) as sim:
        async with client_for(sim, max_concurrency=8, retry=RetryPolicy(max_attempts=10)) as client:
            budget = client._budget
            ended, burst_at = 0, 0
            caps: list[int] = []
            paces: list[float] = []  # refusals with few tasks running read as a rate limit: a pace is learnt

            def on_event(event: JobEvent) -> None:
                nonlocal ended, burst_at
                if event.kind is EventKind.SUBMITTED and not burst_at and ended >= 16 and budget.running == 8:
                    burst_at = ended  # a busy moment of the router: the next submissions are all refused
                    sim.inject(Fault("submit", "rate_limit", times=12))
                if burst_at and budget.cap is not None:
                    caps.append(budget.cap)
                if burst_at and budget.submissions.learnt_rate is not None:
                    paces.append(budget.submissions.learnt_rate)
                if event.kind is EventKind.SUCCEEDED:
                    ended += 1
                    if burst_at and ended == burst_at + 3 * 8:  # within three generations of tasks
                        sim.reset_counters()

            results = await collect(client, jobs(200), on_event=on_event)
    assert all(r.ok for r in results)
    assert (caps and min(caps) < 8) or paces, "the burst taught neither a cap nor a pace: nothing to recover from"
    assert sim.counters.max_running_by_key[KEY] == 8, "concurrency is not back at max_concurrency"


async def test_retry_after_zero_and_429s_on_polls_teach_no_cap() -> None:
    async with Simulator(time_scale=RATE_SCALE, duration=3.0, seed=7) as sim:
        async with client_for(sim, max_concurrency=8) as client:
            await collect(client, jobs(8))  # the proven running count is 8
            sim.inject(Fault("submit", "rate_limit", times=3, retry_after=0))
            sim.inject(Fault("poll", "rate_limit", times=12))
            sim.reset_counters()
            results = await collect(client, jobs(8, "again"))
    assert all(r.ok for r in results)
    assert sim.counters.rate_limited == 15
    assert sim.counters.max_running_by_key[KEY] == 8


async def test_lost_answers_keep_their_slot_so_max_concurrency_is_never_exceeded() -> None:
    lost = [(Fault("submit", "reset"), 0.2)]
    async with Simulator(time_scale=RATE_SCALE, duration=5.0, random_faults=lost, seed=8) as sim:
        async with client_for(sim, max_concurrency=4) as client:
            results = await collect(client, jobs(60))
    uncertain = [r for r in results if isinstance(r.error, SubmissionUncertainError)]
    assert uncertain and sim.counters.tasks_created == 60
    assert sim.counters.max_running_by_key[KEY] == 4


async def test_known_limits_are_kept_from_the_first_call() -> None:
    limits = RateLimits(submits_per_minute=300, max_running=6)  # 5 per second
    async with Simulator(
        time_scale=RATE_SCALE, duration=2.0, seed=9, max_running_per_key=6, submit_rate_limit=CallRateLimit(10, per=2.0)
    ) as sim:
        async with client_for(sim, max_concurrency=64, rate_limits=limits) as client:
            results = await collect(client, jobs(40))
    assert all(r.ok for r in results)
    assert sim.counters.rate_limited <= 2, sim.counters.rate_limited_by
    # Reaching all 6 at once needs submissions faster than a loaded machine makes them: at most is what counts.
    assert 1 < sim.counters.max_running_by_key[KEY] <= 6
