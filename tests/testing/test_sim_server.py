"""The API site as a whole: authentication, not-found, counters, starting and stopping."""

from __future__ import annotations

import re

import aiohttp
import anyio
import pytest

from pixverse_async.testing import (
    Simulator,
    TaskPlan,
    serve_forever,
)
from tests.testing.sim_harness import (
    KEY,
    OTHER_KEY,
    URL_IMAGE,
    running,
)

# --------------------------------------------------------------------------------------------------------
# Authentication and not-found


@pytest.mark.anyio
async def test_authentication_errors() -> None:
    async with running() as h:
        submit_url = h.sim.base_url + "/v3/async/pixverse-v4.5-i2v"
        body = {"prompt": "p", "image": URL_IMAGE}
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
            reply = await h.request("POST", submit_url, json=body, headers=headers)
            assert (reply.status, reply.reason) == (400, "MISSING_API_KEY")
        reply = await h.submit(key="sk-wrong")
        assert reply.json() == {"code": 403, "reason": "INVALID_API_KEY", "message": "invalid API key", "metadata": {}}
        task_id = await h.create()
        assert (await h.poll(task_id, key=None)).reason == "MISSING_API_KEY"
        wrong = await h.poll(task_id, key="sk-wrong")
        assert (wrong.status, wrong.reason) == (403, "INVALID_API_KEY")
        assert h.sim.counters.errors_by_reason == {"MISSING_API_KEY": 4, "INVALID_API_KEY": 2}


@pytest.mark.anyio
async def test_not_found_answers() -> None:
    async with running() as h:
        for method, path in (
            ("GET", "/v3/async/nope"),
            ("GET", "/"),
            ("GET", "/v3/async/pixverse-v4.5-i2v"),
            ("POST", "/v3/async/task-result"),
        ):
            reply = await h.request(method, h.sim.base_url + path, headers={"Authorization": f"Bearer {KEY}"})
            assert (reply.status, reply.reason) == (404, "API_NOT_FOUND"), path
        unknown = await h.poll("00000000-0000-4000-8000-000000000000")
        assert (unknown.status, unknown.reason) == (404, "TASK_NOT_FOUND")
        mine = await h.create()
        other = await h.poll(mine, key=OTHER_KEY)
        assert (other.status, other.reason) == (404, "TASK_NOT_FOUND")
        missing = await h.poll(None)
        assert (missing.status, missing.reason) == (400, "INVALID_REQUEST_BODY")


# --------------------------------------------------------------------------------------------------------
# Counters, views, lifecycle of the simulator itself


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


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(TypeError):
        Simulator(api_keys="sk-test")
    with pytest.raises(ValueError, match="time_scale"):
        Simulator(time_scale=0)
    with pytest.raises(ValueError, match="failure_rate"):
        Simulator(failure_rate=2)
    with pytest.raises(ValueError, match="duration"):
        TaskPlan(duration=-1)


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
