"""The example web service in two worker processes (uvicorn each) sharing one budget through Redis; with
webhooks, behind one URL (a front in the test, as a load balancer is, that forwards each delivery to the worker
the test chooses)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import pytest
from aiohttp import web

from pixverse_async.testing import Fault, RedisServer, Simulator

from .helpers import free_port, tiny_server
from .test_web import read_events, start

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.02
KEY = "sk-test"
MAX_CONCURRENCY = 2
STARTUP_DEADLINE = 60.0  # real seconds: a worker process imports FastAPI and uvicorn on a loaded machine
# The front forwards to another process: give the chain more than the API's 5 s (0.1 real s) to answer.
ROOMY_WEBHOOK_TIMEOUT = 1000.0


async def answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/docs") as answer:
            return answer.status == 200
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def uvicorn_worker(
    sim: Simulator, redis_url: str | None, *, webhook_url: str | None = None
) -> AsyncIterator[str]:
    port = free_port()
    environment = {
        **os.environ,
        "PIXVERSE_API_KEY": KEY,
        "PIXVERSE_BASE_URL": sim.base_url,
        "PIXVERSE_MAX_CONCURRENCY": str(MAX_CONCURRENCY),
        "PIXVERSE_TIME_SCALE": str(SCALE),
    }
    if redis_url is not None:
        environment["PIXVERSE_REDIS_URL"] = redis_url
    if webhook_url is not None:
        environment["PIXVERSE_WEBHOOK_URL"] = webhook_url
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_service:app", "--port", str(port)]
    process = await anyio.open_process([*command, "--log-level", "warning"], cwd=ROOT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        with anyio.fail_after(STARTUP_DEADLINE):
            while not await answers(url):
                assert process.returncode is None, "the worker exited while starting"
                await anyio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_two_workers_share_max_concurrency_and_stream_each_others_generations(redis_server: RedisServer) -> None:
    # Tasks of 10 s: six of them started at once, three on each worker, never more than 2 running in all.
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10.0) as sim:
        async with (
            uvicorn_worker(sim, redis_server.url) as first,
            uvicorn_worker(sim, redis_server.url) as second,
            aiohttp.ClientSession() as session,
        ):
            urls = [first, second]
            started: dict[str, str] = {}

            async def start_on(url: str, prompt: str) -> None:
                started[prompt] = await start(session, url, prompt)

            async with anyio.create_task_group() as group:
                for index in range(6):
                    group.start_soon(start_on, urls[index % 2], f"generation {index}")
            endings = []
            for index in range(6):
                task_id = started[f"generation {index}"]
                # Read from the other worker, which did not start it.
                events = await read_events(session, f"{urls[(index + 1) % 2]}/generations/{task_id}/events")
                endings.append(events[-1])
    assert [kind for kind, _ in endings] == ["result"] * 6
    assert all(data["status"] == "SUCCEED" for _, data in endings)
    assert sim.counters.tasks_created == 6 and set(sim.counters.tasks_created_by_prompt.values()) == {1}
    assert sim.counters.max_running_by_key[KEY] == MAX_CONCURRENCY


@contextlib.asynccontextmanager
async def webhook_front(
    session: aiohttp.ClientSession, targets: list[str], forwarded: list[tuple[str, int]]
) -> AsyncIterator[str]:
    """The service's one webhook URL: forwards each delivery, query and all, to the worker `targets[-1]` and
    answers as it did, keeping (worker, status) in `forwarded`; yields the URL."""

    async def forward(request: web.Request) -> web.StreamResponse:
        if not targets:
            return web.Response(status=503)
        target = targets[-1]
        url = f"{target}/webhooks/pixverse?{request.query_string}"
        async with session.post(url, data=await request.read(), headers={"Content-Type": "application/json"}) as answer:
            forwarded.append((target, answer.status))
            return web.Response(status=answer.status)

    async with tiny_server(forward, "/webhooks/pixverse") as base_url:
        yield f"{base_url}/webhooks/pixverse"


async def test_a_lost_answer_in_one_worker_is_resolved_by_its_delivery_to_the_other(redis_server: RedisServer) -> None:
    forwarded: list[tuple[str, int]] = []
    targets: list[str] = []
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10.0, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT) as sim,
        aiohttp.ClientSession() as session,
        webhook_front(session, targets, forwarded) as hook_url,
        uvicorn_worker(sim, redis_server.url, webhook_url=hook_url) as first,
        uvicorn_worker(sim, redis_server.url, webhook_url=hook_url) as second,
    ):
        targets.append(second)  # every delivery lands on the worker that did not submit
        sim.inject(Fault("submit", "reset"))  # the task is created, the first worker's answer lost
        with anyio.fail_after(STARTUP_DEADLINE):
            # Answered once the first worker learns its task from the delivery the second received.
            task_id = await start(session, first, "lost on the first worker")
    assert task_id in sim.tasks
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1
    assert forwarded == [(second, 200)]
