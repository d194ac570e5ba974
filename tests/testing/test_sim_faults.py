"""Injected faults on submit and poll."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anyio
import pytest

from pixverse_async.testing import (
    Fault,
)
from tests.testing.sim_harness import (
    Reply,
    running,
    wait_until,
)

# --------------------------------------------------------------------------------------------------------
# Faults on submit


@pytest.mark.anyio
async def test_submit_server_error_after_creating_the_task() -> None:
    async with running() as h:
        h.sim.inject(Fault("submit", "server_error"))
        reply = await h.submit(prompt="charged once")
        assert (reply.status, reply.reason) == (500, "CREATE_TASK_FAILED")
        assert h.sim.counters.tasks_created_by_prompt == {"charged once": 1}
        h.sim.inject(Fault("submit", "server_error", create_task=False))
        assert (await h.submit(prompt="not created")).status == 500
        assert h.sim.counters.tasks_created == 1
        assert (await h.submit()).status == 200  # faults are one-shot
        assert h.sim.counters.errors_by_reason == {"CREATE_TASK_FAILED": 2}
        assert h.sim.counters.faults_applied == {"submit:server_error": 2}


@pytest.mark.anyio
async def test_submit_rate_limit_fault_with_and_without_retry_after() -> None:
    async with running() as h:
        h.sim.inject(Fault("submit", "rate_limit", times=2, retry_after=1.2))
        h.sim.inject(Fault("submit", "rate_limit"))
        for _ in range(2):
            reply = await h.submit()
            assert (reply.status, reply.reason, reply.headers["Retry-After"]) == (429, "RATE_LIMIT_EXCEEDED", "2")
        third = await h.submit()
        assert third.status == 429
        assert "Retry-After" not in third.headers
        assert (await h.submit()).status == 200
        assert h.sim.counters.rate_limited == 3
        assert h.sim.counters.rate_limited_by == {"fault": 3}
        assert h.sim.counters.tasks_created == 1


@pytest.mark.anyio
async def test_submit_reset_creates_the_task_then_drops_the_connection() -> None:
    async with running() as h:
        h.sim.inject(Fault("submit", "reset"))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await h.submit(prompt="lost answer")
        assert h.sim.counters.tasks_created_by_prompt == {"lost answer": 1}
        h.sim.inject(Fault("submit", "reset", create_task=False))
        with pytest.raises(aiohttp.ClientConnectionError):
            await h.submit(prompt="never made")
        assert h.sim.counters.tasks_created == 1
        assert (await h.submit()).status == 200  # the next connection works


@pytest.mark.anyio
async def test_submit_slow_creates_the_task_then_waits_on_the_simulated_clock() -> None:
    async with running(time_scale=1.0) as h, anyio.create_task_group() as group:
        h.sim.inject(Fault("submit", "slow", delay=1000.0))  # 1000 real seconds, unless the clock jumps
        replies: list[Reply] = []

        async def submit() -> None:
            replies.append(await h.submit(prompt="slow"))

        group.start_soon(submit)
        await wait_until(lambda: h.sim.counters.tasks_created == 1)
        assert replies == []  # created, then waiting: the client may time out after the task exists
        h.sim.advance(900.0)
        await anyio.wait_all_tasks_blocked()
        assert replies == []  # 100 simulated seconds, so 100 real ones, still to wait
        h.sim.advance(100.0)
        await wait_until(lambda: len(replies) == 1)
        assert replies[0].status == 200
        assert h.sim.counters.tasks_created_by_prompt == {"slow": 1}

        h.sim.inject(Fault("submit", "slow", delay=5000.0))
        with pytest.raises(TimeoutError):
            await h.submit(prompt="timed out", timeout=aiohttp.ClientTimeout(total=0.05))
        assert h.sim.counters.tasks_created_by_prompt["timed out"] == 1


@pytest.mark.anyio
async def test_submit_html_and_empty_errors_create_nothing() -> None:
    async with running() as h:
        h.sim.inject(Fault("submit", "html_error"))
        h.sim.inject(Fault("submit", "empty_error"))
        html = await h.submit()
        assert html.status == 502
        assert html.headers["Content-Type"].startswith("text/html")
        assert b"502 Bad Gateway" in html.body
        assert b"nginx" in html.body
        empty = await h.submit()
        assert (empty.status, empty.body) == (503, b"")
        assert h.sim.counters.tasks_created == 0


@pytest.mark.anyio
async def test_submit_truncated_json_creates_the_task() -> None:
    async with running() as h:
        h.sim.inject(Fault("submit", "truncated_json"))
        reply = await h.submit()
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        assert reply.body.startswith(b'{"task_id":')
        with pytest.raises(json.JSONDecodeError):  # the type, not CPython's wording of the message
            reply.json()
        assert h.sim.counters.tasks_created == 1


@pytest.mark.anyio
async def test_faults_apply_to_their_endpoint_only_and_can_be_cleared() -> None:
    async with running() as h:
        h.sim.inject(Fault("poll", "server_error", times=3))
        assert (await h.submit()).status == 200
        h.sim.clear_faults()
        task_id = await h.create()
        assert (await h.poll(task_id)).status == 200
    with pytest.raises(ValueError, match="endpoint"):
        Fault("upload", "reset")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        Fault("poll", "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        Fault("poll", "reset", times=0)


# --------------------------------------------------------------------------------------------------------
# Faults on poll


@pytest.mark.anyio
async def test_poll_faults() -> None:
    async with running(time_scale=0.001) as h:
        task_id = await h.create()
        h.sim.inject(Fault("poll", "server_error"))
        reply = await h.poll(task_id)
        assert (reply.status, reply.reason) == (500, "GET_RESULT_FAILED")

        h.sim.inject(Fault("poll", "rate_limit", retry_after=3))
        reply = await h.poll(task_id)
        assert (reply.status, reply.headers["Retry-After"]) == (429, "3")

        # aiohttp's client silently retries an idempotent request once after a disconnection:
        # one reset is absorbed, two in a row reach the caller.
        h.sim.inject(Fault("poll", "reset"))
        assert (await h.poll(task_id)).status == 200
        h.sim.inject(Fault("poll", "reset", times=2))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await h.poll(task_id)

        h.sim.inject(Fault("poll", "html_error"))
        assert (await h.poll(task_id)).status == 502
        h.sim.inject(Fault("poll", "empty_error"))
        assert (await h.poll(task_id)).body == b""

        h.sim.inject(Fault("poll", "truncated_json"))
        reply = await h.poll(task_id)
        assert reply.status == 200
        with pytest.raises(json.JSONDecodeError):  # the type, not CPython's wording of the message
            reply.json()

        assert h.sim.counters.poll_requests == 9
        assert h.sim.counters.polls_by_task == {task_id: 9}
        assert h.sim.counters.faults_applied["poll:reset"] == 3
        assert h.sim.counters.rate_limited == 1


@pytest.mark.anyio
async def test_truncated_terminal_poll_does_not_count_as_seen() -> None:
    async with running(time_scale=1.0, duration=1.0) as h:
        task_id = await h.create()
        h.sim.advance(2.0)
        h.sim.inject(Fault("poll", "truncated_json"))
        await h.poll(task_id)
        await h.task(task_id)  # first whole terminal answer
        assert h.sim.counters.polls_after_terminal == 0
        await h.task(task_id)
        await h.task(task_id)
        assert h.sim.counters.polls_after_terminal == 2


@pytest.mark.anyio
async def test_poll_slow_answers_once_its_delay_has_passed_on_the_simulated_clock() -> None:
    async with running(time_scale=1.0, duration=1000.0) as h, anyio.create_task_group() as group:
        task_id = await h.create()
        h.sim.inject(Fault("poll", "slow", delay=400.0))
        answers: list[dict[str, Any]] = []

        async def poll() -> None:
            answers.append(await h.task(task_id))

        group.start_soon(poll)
        await wait_until(lambda: h.sim.counters.poll_requests == 1)
        h.sim.advance(300.0)
        await anyio.wait_all_tasks_blocked()
        assert answers == []  # 100 simulated seconds, so 100 real ones, still to wait
        h.sim.advance(100.0)
        await wait_until(lambda: len(answers) == 1)
        # Answered as of when it leaves, 400 simulated seconds after it came.
        assert (answers[0]["task"]["status"], answers[0]["task"]["eta"]) == ("TASK_STATUS_PROCESSING", 600)
