"""The simulator itself: counters and views, its configured values, starting and stopping."""

from __future__ import annotations

import re

import aiohttp
import anyio
import pytest

from pixverse_async.testing import (
    DEFAULT_DURATION,
    CallRateLimit,
    Fault,
    Simulator,
    TaskPlan,
    serve_forever,
)
from tests.testing.sim_harness import (
    KEY,
    running,
    wait_until,
)

SUBMIT = "/v3/async/pixverse-v4.5-i2v"
RESULT = "/v3/async/task-result"
BODY = {"prompt": "p", "image": "https://example.com/a.png"}


@pytest.mark.anyio
async def test_counters_and_reset() -> None:
    async with running(time_scale=1.0, duration=10.0) as h:
        first = await h.create(prompt="one")
        await h.create(prompt="two")
        await h.create(prompt="two")
        await h.submit(key="sk-wrong")
        await h.task(first)
        h.sim.advance(10.0)
        await h.task(first)  # terminal: seen
        await h.task(first)
        counters = h.sim.counters
        assert counters.submit_requests == 4
        assert counters.tasks_created == 3
        assert counters.tasks_created_by_prompt == {"one": 1, "two": 2}
        assert counters.poll_requests == 3
        assert counters.polls_by_task == {first: 3}
        assert counters.polls_after_terminal == 1
        assert counters.max_running_by_key == {KEY: 3}
        assert counters.errors_by_reason == {"INVALID_API_KEY": 1}
        h.sim.reset_counters()
        assert h.sim.counters.submit_requests == 0
        assert h.sim.counters.polls_by_task == {}
        assert len(h.sim.tasks) == 3
        with pytest.raises(TypeError):
            h.sim.tasks["x"] = h.sim.tasks[first]  # type: ignore[index]


@pytest.mark.anyio
async def test_start_and_close_without_context_manager() -> None:
    sim = Simulator()
    with pytest.raises(RuntimeError, match="not started"):
        _ = sim.base_url
    await sim.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            await sim.start()
        async with aiohttp.ClientSession() as session, session.get(sim.base_url + "/") as response:
            assert response.status == 404
    finally:
        await sim.close()
    assert sim.base_url.startswith("http://127.0.0.1:")


@pytest.mark.anyio
async def test_closing_from_another_task_than_the_one_that_started_is_refused_clearly() -> None:
    sim = Simulator()
    await sim.start()
    try:
        refused: list[RuntimeError] = []

        async def close_elsewhere() -> None:
            try:
                await sim.close()
            except RuntimeError as error:
                refused.append(error)

        async with anyio.create_task_group() as group:
            group.start_soon(close_elsewhere)
        assert len(refused) == 1 and "from the task that started it" in str(refused[0])
        async with aiohttp.ClientSession() as session, session.get(sim.base_url + "/") as response:
            assert response.status == 404  # still running: nothing was half closed
    finally:
        await sim.close()
    assert "not running" in repr(sim)


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(TypeError):
        Simulator(api_keys="sk-test")
    with pytest.raises(ValueError, match="time_scale"):
        Simulator(time_scale=0)
    with pytest.raises(ValueError, match="failure_rate"):
        Simulator(failure_rate=2)
    with pytest.raises(ValueError, match="duration"):
        TaskPlan(duration=-1)


def test_configured_values_are_read_under_their_keyword_names_and_cannot_be_changed() -> None:
    limit = CallRateLimit(20, per=2.0)
    chaos = ((Fault("poll", "server_error"), 0.1),)
    sim = Simulator(
        api_keys=("sk-a", "sk-b"),
        time_scale=0.5,
        failure_rate=0.25,
        eta="noisy",
        progress_step=10,
        max_running_per_key=3,
        submit_rate_limit=limit,
        random_faults=chaos,
        balance=7,
        video_ttl=60.0,
        webhook_drop_rate=0.5,
        accept_fields=("quality",),
    )
    read = (sim.api_keys, sim.time_scale, sim.failure_rate, sim.eta, sim.progress_step, sim.max_running_per_key)
    assert read == (frozenset({"sk-a", "sk-b"}), 0.5, 0.25, "noisy", 10, 3)
    assert (sim.submit_rate_limit, sim.poll_rate_limit, sim.random_faults, sim.balance) == (limit, None, chaos, 7)
    assert (sim.video_ttl, sim.webhook_timeout, sim.webhook_drop_rate) == (60.0, 5.0, 0.5)
    assert sim.accept_fields == frozenset({"quality"})
    assert sim.duration is DEFAULT_DURATION and sim.plan is None
    with pytest.raises(AttributeError):
        sim.failure_rate = 0.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sim.api_keys = frozenset()  # type: ignore[misc]
    assert "not running" in repr(sim)


@pytest.mark.anyio
async def test_serve_forever_announces_urls_and_serves_until_cancelled() -> None:
    lines: list[str] = []
    announced = anyio.Event()

    def announce(line: str) -> None:
        lines.append(line)
        if line.strip().startswith("time scale"):  # the last line
            announced.set()

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: serve_forever(0, announce=announce, api_keys=("sk-cli",)))
        with anyio.fail_after(2):
            await announced.wait()
        [base_url] = re.findall(r"API base URL:\s+(\S+)", "\n".join(lines))
        assert "video base URL:" in "\n".join(lines)
        assert any("sk-cli" in line for line in lines)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                base_url + "/v3/async/task-result", params={"task_id": "x"}, headers={"Authorization": "Bearer sk-cli"}
            ) as response,
        ):
            assert response.status == 404
        group.cancel_scope.cancel()


def test_a_simulator_runs_again_under_another_event_loop() -> None:
    sim = Simulator(time_scale=1.0, duration=1000.0)
    headers = {"Authorization": "Bearer sk-test"}

    async def poll(session: aiohttp.ClientSession, task_id: str) -> int:
        async with session.get(sim.base_url + RESULT, params={"task_id": task_id}, headers=headers) as answer:
            return answer.status

    async def first_run() -> str:
        async with sim, aiohttp.ClientSession() as session:
            async with session.post(sim.base_url + SUBMIT, json=BODY, headers=headers) as answer:
                task_id = str((await answer.json())["task_id"])
            sim.inject(Fault("poll", "slow", delay=1000.0))
            async with anyio.create_task_group() as group:
                group.start_soon(poll, session, task_id)
                await wait_until(lambda: sim.counters.poll_requests == 1)
                group.cancel_scope.cancel()  # the client goes; closing ends the waiting handler
        return task_id

    async def second_run(task_id: str) -> list[int]:
        statuses: list[int] = []
        async with sim, aiohttp.ClientSession() as session, anyio.create_task_group() as group:
            sim.inject(Fault("poll", "slow", delay=1000.0))

            async def record() -> None:
                statuses.append(await poll(session, task_id))

            group.start_soon(record)
            await wait_until(lambda: sim.counters.poll_requests == 2)
            sim.advance(1000.0)  # waits on the clock work in this loop too
            await wait_until(lambda: len(statuses) == 1)
        return statuses

    task_id = anyio.run(first_run)
    assert anyio.run(second_run, task_id) == [200]
