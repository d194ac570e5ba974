"""Rate limits (the running cap, call rates, random 429s) and the balance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from pixverse_async.testing import (
    CallRateLimit,
    Fault,
    Simulator,
    TaskPlan,
)
from tests.testing.sim_harness import (
    KEY,
    OTHER_KEY,
    running,
)


@pytest.mark.anyio
async def test_per_key_cap_answers_429_without_retry_after_by_default() -> None:
    async with running(time_scale=1.0, duration=100.0, max_running_per_key=2) as h:
        await h.create()
        await h.create()
        refused = await h.submit()
        assert (refused.status, refused.reason) == (429, "RATE_LIMIT_EXCEEDED")
        assert "Retry-After" not in refused.headers
        await h.create(key=OTHER_KEY)  # the cap is per key
        h.sim.advance(100.0)  # both finished: the key may run two again
        await h.create()
        await h.create()
        assert (await h.submit()).status == 429
        counters = h.sim.counters
        assert counters.rate_limited == 2
        assert counters.tasks_created == 5
        assert counters.max_running_by_key == {KEY: 2, OTHER_KEY: 1}
        assert counters.errors_by_reason == {"RATE_LIMIT_EXCEEDED": 2}
        assert counters.rate_limited_by == {"running_cap": 2}


@pytest.mark.anyio
async def test_per_key_cap_counts_tasks_that_ended_since() -> None:
    def plan(body: Mapping[str, Any]) -> TaskPlan:
        return TaskPlan(duration=float(body["prompt"]))

    async with running(time_scale=1.0, plan=plan, max_running_per_key=2, rate_limit_retry_after=2.5) as h:
        await h.create(prompt="10")
        await h.create(prompt="20")
        refused = await h.submit(prompt="30")
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "3"  # 2.5 rounded up
        h.sim.advance(15.0)  # the 10 s task has ended, the 20 s one runs on
        await h.create(prompt="30")
        assert (await h.submit(prompt="30")).status == 429


@pytest.mark.anyio
async def test_submit_rate_limit_in_a_sliding_window_with_retry_after() -> None:
    async with running(time_scale=1.0, submit_rate_limit=CallRateLimit(2, per=10.0)) as h:
        await h.create()
        h.sim.advance(4.0)
        await h.create()
        refused = await h.submit()
        assert (refused.status, refused.reason, refused.headers["Retry-After"]) == (429, "RATE_LIMIT_EXCEEDED", "6")
        await h.create(key=OTHER_KEY)  # the limit is per key
        h.sim.advance(6.5)  # the first call left the window, the second is still in it
        await h.create()
        assert (await h.submit()).status == 429
        h.sim.advance(4.0)
        await h.create()
        counters = h.sim.counters
        assert counters.tasks_created == 5  # refused calls created nothing
        assert counters.rate_limited_by == {"submit_rate": 2}
        assert (await h.poll(next(iter(h.sim.tasks)))).status == 200  # task-result calls are not limited


@pytest.mark.anyio
async def test_poll_rate_limit_in_a_fixed_window_without_retry_after() -> None:
    limit = CallRateLimit(3, per=10.0, window="fixed", retry_after=False)
    async with running(time_scale=1.0, poll_rate_limit=limit) as h:
        task_id = await h.create()
        # Align with a window boundary of the simulator's clock (windows count from its start).
        h.sim.advance(10.0 - (h.sim.now() - h.sim._clock.origin) % 10.0 + 0.01)
        assert [(await h.poll(task_id)).status for _ in range(4)] == [200, 200, 200, 429]
        refused = await h.poll(task_id)
        assert refused.reason == "RATE_LIMIT_EXCEEDED" and "Retry-After" not in refused.headers
        h.sim.advance(10.0)  # a fixed window: the next one starts with its whole allowance
        assert [(await h.poll(task_id)).status for _ in range(4)] == [200, 200, 200, 429]
        assert (await h.submit()).status == 200  # submissions are not limited
        assert h.sim.counters.rate_limited_by == {"poll_rate": 3}


@pytest.mark.anyio
async def test_random_rate_limit_is_seeded_counted_and_leaves_task_ids_alone() -> None:
    async def run(rate: float) -> tuple[list[int], list[str]]:
        async with running(time_scale=1.0, seed=9, random_rate_limit=rate, random_rate_limit_retry_after=2) as h:
            statuses, ids = [], []
            for _ in range(60):
                reply = await h.submit()
                statuses.append(reply.status)
                if reply.status == 200:
                    ids.append(str(reply.json()["task_id"]))
                else:
                    assert reply.headers["Retry-After"] == "2"
            assert h.sim.counters.rate_limited_by["random"] == h.sim.counters.rate_limited == statuses.count(429)
            assert h.sim.counters.tasks_created == len(ids)
            return statuses, ids

    statuses, ids = await run(0.3)
    assert 5 < statuses.count(429) < 40
    assert await run(0.3) == (statuses, ids)  # seeded
    _, all_ids = await run(0.0)
    assert ids == all_ids[: len(ids)]  # the 429 draws do not shift the task ids


@pytest.mark.anyio
async def test_random_faults_strike_at_their_rate_on_their_endpoint() -> None:
    chaos = [(Fault("poll", "server_error"), 1.0), (Fault("submit", "html_error"), 0.0)]
    async with running(time_scale=1.0, random_faults=chaos) as h:
        task_id = await h.create()
        reply = await h.poll(task_id)
        assert (reply.status, reply.reason) == (500, "GET_RESULT_FAILED")
        assert h.sim.counters.faults_applied == {"poll:server_error": 1}


def test_rate_limit_options_are_checked() -> None:
    with pytest.raises(ValueError, match="random_rate_limit"):
        Simulator(random_rate_limit=1.5)
    with pytest.raises(ValueError, match="calls"):
        CallRateLimit(0, per=1.0)
    with pytest.raises(ValueError, match="window"):
        CallRateLimit(1, per=1.0, window="leaky")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CallRateLimit"):
        Simulator(submit_rate_limit=(20, 2.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pairs"):
        Simulator(random_faults=[Fault("poll", "server_error")])  # type: ignore[list-item]


@pytest.mark.anyio
async def test_balance_limits_billed_submissions_per_key() -> None:
    async with running(balance=2, time_scale=1.0, duration=1.0) as h:
        await h.create()
        await h.create()
        reply = await h.submit()
        assert (reply.status, reply.reason) == (400, "BILLING_BALANCE_NOT_ENOUGH")
        h.sim.advance(10.0)  # finished tasks stay paid for
        assert (await h.submit()).reason == "BILLING_BALANCE_NOT_ENOUGH"
        await h.create(key=OTHER_KEY)
