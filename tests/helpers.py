"""Shared set-up for client tests: a simulator in scaled time, clients bound to it, tiny aiohttp servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixverse_async import ImageToVideo, JobResult, PixVerseClient, RetryPolicy
from pixverse_async.testing import ScaledClock, Simulator

SCALE = 0.001  # real seconds per API second: a 40 s job takes 40 ms
KEY = "sk-test"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.5, max_backoff=2.0)


def client_for(sim: Simulator, **options: Any) -> PixVerseClient:
    options.setdefault("clock", ScaledClock(sim.time_scale))
    options.setdefault("retry", FAST_RETRY)
    return PixVerseClient(options.pop("api_key", KEY), base_url=sim.base_url, **options)


@contextlib.asynccontextmanager
async def tiny_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str = "/{tail:.*}"
) -> AsyncIterator[str]:
    """Serve one handler on a random loopback port; yields the base URL."""
    app = web.Application()
    app.router.add_route("*", path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait, with a deadline, until `condition()` holds: for state that another task changes."""
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0.001)


def live_tasks(*, but_polls: bool = False) -> set[asyncio.Task[object]]:
    """Live asyncio tasks, but the simulator's keep-alive connection handlers (and, with `but_polls`, the
    poller's polls of tasks already running, which come and go)."""
    return {
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and not task.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
        and not (but_polls and task.get_name().startswith("pixverse_async._poller.Poller._poll"))
    }


def free_port() -> int:
    """A loopback port free right now (for a server started by another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def url_jobs(count: int, prefix: str = "job") -> list[ImageToVideo]:
    """`count` image jobs by URL, each prompt its own (`"<prefix> <n>"`)."""
    return [ImageToVideo(f"{prefix} {index}", "https://example.com/a.png") for index in range(count)]


async def run_all(
    client: PixVerseClient, jobs: list[Any], *, deadline: float | None = None, **options: Any
) -> list[JobResult]:
    """Every result of `client.as_completed(jobs, **options)`, within `deadline` real seconds if given."""
    with anyio.fail_after(deadline):
        async with client.as_completed(jobs, **options) as results:
            return [result async for result in results]
