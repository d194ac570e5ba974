"""Clients sharing a RedisBudget learn their tasks' durations as one (`_shared_learning.py`), on a real Redis."""

from __future__ import annotations

import secrets

import pytest

from pixverse_async import ImageToVideo, PollPolicy
from pixverse_async.redis import RedisBudget
from pixverse_async.testing import RedisServer, Simulator

from .helpers import client_for

URL = "https://example.com/frame.png"
#: Tasks of 30 s without hints: a new client cannot know when they end, a client that learnt can.
DURATION = 30.0
JOBS = 24


async def polls_per_task(
    sim: Simulator, server: RedisServer, name: str, label: str, *, jobs: int = JOBS, at_once: int = JOBS
) -> float:
    """Run `jobs` jobs, `at_once` at a time, through a client of the account `name`: its polls per task."""
    before = sim.counters.poll_requests
    budget = RedisBudget(server.url, name=name)
    polling = PollPolicy(max_polls_per_second=None)
    async with client_for(sim, budget=budget, max_concurrency=at_once, polling=polling) as client:
        requests = [ImageToVideo(f"{label} {index}", URL) for index in range(jobs)]
        async with client.as_completed(requests) as results:
            outcomes = [result async for result in results]
    assert all(result.ok for result in outcomes)
    return (sim.counters.poll_requests - before) / jobs


@pytest.mark.anyio
async def test_a_client_learns_from_the_ends_another_client_of_the_account_saw(redis_server: RedisServer) -> None:
    account, other = f"account-{secrets.token_hex(4)}", f"other-{secrets.token_hex(4)}"
    async with Simulator(time_scale=0.004, duration=DURATION, eta="absent", progress="absent") as sim:
        # A first client streams its jobs, 8 at a time: the later ones are polled near their end.
        await polls_per_task(sim, redis_server, account, "first", jobs=48, at_once=8)
        # The same account, all at once: it starts from what the first client learnt (pooled when it closed).
        second = await polls_per_task(sim, redis_server, account, "second")
        # Another account on the same Redis, all at once: it starts from nothing.
        alone = await polls_per_task(sim, redis_server, other, "alone")
    assert sim.counters.polls_after_terminal == 0
    # Knowing that these tasks end at 30 s, a task is polled once or twice, near its end (the learnt hazard is
    # kept per age bin, a fifth of the age wide); a client knowing nothing polls each task a few times (fewer
    # for the tasks submitted last: by then the first ones have shown that tasks run past their ages).
    assert second <= 1.8 and second <= alone - 0.4
