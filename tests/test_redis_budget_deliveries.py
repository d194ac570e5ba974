"""RedisBudget passes webhook deliveries between the clients of one account (`_redis_deliveries.py`).

Two clients in this process, each with its own `RedisBudget` on one real redis-server, share one webhook URL:
a front in the test (as a load balancer is) that hands every delivery to the client the test chooses, so that
a delivery for one client's submission lands on the other. Answers are lost with the simulator's submit faults.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis
from aiohttp import web

from pixverse_async import (
    ImageToVideo,
    JobResult,
    PixVerseClient,
    SubmissionUncertainError,
    Task,
    UncertainSubmission,
)
from pixverse_async._bulk import EventKind, JobEvent
from pixverse_async._lost_answers import LONGEST_WAIT
from pixverse_async.redis import RedisBudget
from pixverse_async.testing import Fault, RedisServer, Simulator

from . import helpers
from .helpers import KEY, client_for, tiny_server
from .helpers import url_jobs as jobs

pytestmark = pytest.mark.anyio

SCALE = 0.02  # real seconds per API second: a lease of 20 s lasts 0.4 s
#: Real seconds a run may take on a loaded machine (a lost answer never found waits 675 API s: 13.5 s).
DEADLINE = 60.0
# The front forwards to a client in this process: give it more than the API's 5 s (0.1 real s) to answer.
ROOMY_WEBHOOK_TIMEOUT = 1000.0
IMAGE = "https://example.com/a.png"


class Front:
    """One webhook URL for several clients: each delivery goes to `target`. With `hold_after_refusal`, once
    a client refused a delivery (not 2xx), the next ones wait until `release()`."""

    def __init__(self) -> None:
        self.target: PixVerseClient | None = None
        self.statuses: list[int] = []
        self.received: list[tuple[bytes, str]] = []  # (body, URL) of each delivery
        self.hold_after_refusal = False
        self._held: anyio.Event | None = None

    def release(self) -> None:
        if self._held is not None:
            self._held.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self._held is not None:
            await self._held.wait()
        if self.target is None:
            return web.Response(status=503)
        body = await request.read()
        self.received.append((body, str(request.url)))
        status = await self.target.handle_webhook(body, url=str(request.url))
        self.statuses.append(status)
        if status >= 300 and self.hold_after_refusal:
            self._held = anyio.Event()
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def front_url(front: Front) -> AsyncIterator[str]:
    async with tiny_server(front.handle, "/hook") as base_url:
        yield f"{base_url}/hook"


def simulator(**options: Any) -> Simulator:
    options.setdefault("duration", 20.0)
    return Simulator(api_keys=(KEY,), time_scale=SCALE, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT, seed=11, **options)


def shared_client(sim: Simulator, redis_server: RedisServer, hook_url: str) -> tuple[PixVerseClient, RedisBudget]:
    budget = RedisBudget(redis_server.url)
    return client_for(sim, webhook_url=hook_url, budget=budget), budget


async def run_all(client: PixVerseClient, jobs: list[Any], **options: Any) -> list[JobResult]:
    return await helpers.run_all(client, jobs, deadline=DEADLINE, **options)


async def until(condition: Callable[[], bool]) -> None:
    """Wait, with a deadline, for what another task or process does."""
    with anyio.fail_after(DEADLINE):
        while not condition():
            await anyio.sleep(SCALE / 4)


async def test_a_lost_answer_in_one_client_is_resolved_by_its_delivery_to_another(redis_server: RedisServer) -> None:
    front = Front()
    async with simulator() as sim, front_url(front) as hook_url:
        first, first_budget = shared_client(sim, redis_server, hook_url)
        second, second_budget = shared_client(sim, redis_server, hook_url)
        async with first, second:
            front.target = second  # every delivery lands on the client that did not submit
            sim.inject(Fault("submit", "reset"))  # the task is created, its answer lost
            [result] = await run_all(first, jobs(1))
    assert result.error is None and result.ok and result.task_id in sim.tasks
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1
    assert front.statuses == [200]
    # Left in Redis by the one and heard at once by the other, which did not have to look it up.
    assert (second_budget.deliveries_offered, first_budget.deliveries_taken) == (1, 1)


async def test_a_delivery_left_while_nobody_waited_is_found_by_the_token_later(redis_server: RedisServer) -> None:
    # An earlier client loses an answer and closes; the delivery lands on another client (nobody waits for it
    # then); a later client resumes the submission by its token (`UncertainSubmission`) and finds the task.
    tokens: list[str] = []

    def keep_token(event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTING and event.webhook_token is not None:
            tokens.append(event.webhook_token)

    request = ImageToVideo("resumed", IMAGE)
    front = Front()
    async with simulator(duration=100.0) as sim, front_url(front) as hook_url:
        receiving, receiving_budget = shared_client(sim, redis_server, hook_url)
        front.target = receiving
        async with receiving:
            sim.inject(Fault("submit", "reset"))
            earlier, _ = shared_client(sim, redis_server, hook_url)
            async with earlier, earlier.as_completed([request], on_event=keep_token) as results:
                with anyio.CancelScope() as scope:

                    async def leave_once_created() -> None:
                        await until(lambda: bool(sim.tasks))
                        scope.cancel()

                    async with anyio.create_task_group() as group:
                        group.start_soon(leave_once_created)
                        async for _ in results:
                            pass
            [task] = sim.tasks.values()
            assert sim.now() < task.ends_at, "the earlier client left after the task ended"
            await until(lambda: front.statuses == [200])
            later, later_budget = shared_client(sim, redis_server, hook_url)
            async with later:
                [result] = await run_all(later, [UncertainSubmission(request, tokens[0], key="row 1")])
            store = redis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                [kept] = [str(key) for key in store.keys(f"*:delivery:{tokens[0]}")]
                kept_for = store.pttl(kept)
                budget_keys = {str(key) for key in store.keys(kept.removesuffix(f"delivery:{tokens[0]}") + "*")}
            finally:
                store.close()
    assert result.error is None and result.ok and result.task_id in sim.tasks and result.key == "row 1"
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1
    assert receiving_budget.deliveries_offered == 1 and later_budget.deliveries_taken == 0  # looked up
    # Kept as long as a lost answer may wait for it, beside the budget's other keys.
    longest_wait = LONGEST_WAIT * SCALE * 1000  # milliseconds
    assert longest_wait - 20_000 < kept_for <= longest_wait  # less the real seconds since it was left
    assert any(key.endswith(":state") for key in budget_keys)


async def test_deliveries_of_tasks_another_client_follows_reach_it_so_its_judgements_rest_on_them(
    redis_server: RedisServer,
) -> None:
    # All deliveries land on the second client: the first's 30 tasks' deliveries still reach the first, so a
    # later lost answer of the first without a delivery is judged not created. The second's own deliveries
    # cost nothing in Redis.
    front = Front()
    async with simulator(duration=5.0) as sim, front_url(front) as hook_url:
        first, first_budget = shared_client(sim, redis_server, hook_url)
        second, second_budget = shared_client(sim, redis_server, hook_url)
        async with first, second:
            front.target = second
            others: list[JobResult] = []
            async with anyio.create_task_group() as group:

                async def run_second() -> None:
                    others.extend(await run_all(second, jobs(10, "second's")))

                group.start_soon(run_second)
                warm = await run_all(first, jobs(30, "first's"))
            # Dropped before the body is read: nothing is created, though the client cannot know.
            sim.inject(Fault("submit", "reset", create_task=False))
            [result] = await run_all(first, jobs(1, "never created"))
    assert all(job.ok for job in warm + others) and len(others) == 10
    error = result.error
    assert isinstance(error, SubmissionUncertainError), error
    assert "30 of 30 ended tasks' deliveries arrived" in str(error) and error.likely_created is False
    assert sim.counters.tasks_created == 40
    assert (second_budget.deliveries_offered, first_budget.deliveries_taken) == (30, 30)
    assert (first_budget.deliveries_offered, second_budget.deliveries_taken) == (0, 0)


async def test_a_late_or_repeated_delivery_of_a_task_the_client_followed_is_left_for_nobody(
    redis_server: RedisServer,
) -> None:
    front = Front()
    async with simulator(duration=5.0) as sim, front_url(front) as hook_url:
        first, first_budget = shared_client(sim, redis_server, hook_url)
        second, _ = shared_client(sim, redis_server, hook_url)
        async with first, second:
            front.target = first
            [result] = await run_all(first, jobs(1))
            [(body, url)] = front.received
            # The router delivers it again after the client saw the task end: nothing for a sibling.
            again = await first.handle_webhook(body, url=url)
    assert result.ok and front.statuses == [200]
    assert again == 202 and first_budget.deliveries_offered == 0


async def test_with_redis_down_a_lost_answer_still_waits_and_its_refused_delivery_is_taken_when_sent_again(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pixverse_async")
    front = Front()
    front.hold_after_refusal = True
    async with simulator(duration=100.0) as sim, front_url(front) as hook_url:
        first, _ = shared_client(sim, redis_server, hook_url)
        second, _ = shared_client(sim, redis_server, hook_url)
        submitted: list[Task] = []
        async with first, second, anyio.create_task_group() as group:
            front.target = second
            sim.inject(Fault("submit", "reset"))

            async def submit_to_first() -> None:
                with anyio.fail_after(DEADLINE):
                    submitted.append(await first.submit(ImageToVideo("lost while Redis is down", IMAGE)))

            group.start_soon(submit_to_first)
            await until(lambda: bool(sim.tasks))
            redis_server.stop()

            def failed_lookups() -> int:
                return sum("could not look up a webhook delivery" in record.message for record in caplog.records)

            # The task ends while Redis is down: its delivery cannot be left for the first client (503, the
            # router sends it again later), and the first client's lookups fail, but it goes on waiting.
            await until(lambda: front.statuses == [503] and failed_lookups() >= 2)
            redis_server.start()
            front.release()
    [task] = submitted
    assert task.task_id in sim.tasks
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1
    assert front.statuses == [503, 200]
    assert any("could not leave a webhook delivery" in record.message for record in caplog.records)
