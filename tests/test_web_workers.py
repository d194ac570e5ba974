"""The example web service in two worker processes (uvicorn each) sharing one budget through Redis."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import pytest

from pixverse_async.testing import RedisServer, Simulator

from .test_web import read_events, start

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.02
KEY = "sk-test"
MAX_CONCURRENCY = 2
STARTUP_DEADLINE = 60.0  # real seconds: a worker process imports FastAPI and uvicorn on a loaded machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/docs") as answer:
            return answer.status == 200
    except aiohttp.ClientError:
        return False


@contextlib.asynccontextmanager
async def uvicorn_worker(sim: Simulator, redis_url: str | None) -> AsyncIterator[str]:
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
