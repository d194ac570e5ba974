"""The simulator's clock: scaled real time, jumps, and waits that a jump ends."""

from __future__ import annotations

import time

import anyio
import pytest

from pixverse_async.testing import Simulator
from pixverse_async.testing._sim_clock import SimClock
from tests.testing.sim_harness import wait_until


def test_the_clock_reads_like_a_unix_time_and_only_jumps_forward() -> None:
    before = time.time()
    sim = Simulator(time_scale=1.0)
    start = sim.now()
    assert before <= start <= time.time() + 1.0
    sim.advance(3600.0)
    assert 3600.0 <= sim.now() - start < 3601.0
    with pytest.raises(ValueError, match="only moves forward"):
        sim.advance(-1.0)


def test_simulated_seconds_run_one_over_time_scale_times_as_fast() -> None:
    sim = Simulator(time_scale=0.001)
    # Each reading of the simulator's clock bracketed by two of the real one: bounds, whatever the load.
    real_0, start, real_1 = time.monotonic(), sim.now(), time.monotonic()
    time.sleep(0.01)  # the clock is measured against the real one, so real time has to pass
    real_2, end, real_3 = time.monotonic(), sim.now(), time.monotonic()
    assert (real_2 - real_1) / 0.001 <= end - start <= (real_3 - real_0) / 0.001


@pytest.mark.anyio
async def test_a_wait_on_the_clock_ends_when_the_clock_jumps_past_it_and_not_before() -> None:
    clock = SimClock(time_scale=1.0)
    done: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(1000.0)  # 1000 real seconds, unless the clock jumps
        done.append(clock.now())

    async with anyio.create_task_group() as group:
        start = clock.now()
        group.start_soon(sleeper)
        await anyio.wait_all_tasks_blocked()
        clock.advance(600.0)
        await anyio.wait_all_tasks_blocked()
        assert done == []  # woken by the jump, 400 simulated seconds still to go: waiting again
        clock.advance(400.0)
        await wait_until(lambda: len(done) == 1)
    assert done[0] - start >= 1000.0
