"""Web services: the example FastAPI app under a real uvicorn server, webhooks, and the receivers."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from examples.fastapi_service import create_app
from pixverse_async import ImageToVideo, PixVerseClient, PollPolicy, TaskStatus
from pixverse_async.testing import Fault, ScaledClock, Simulator, TaskPlan
from pixverse_async.web import aiohttp_webhook_handler
from tests.images import png

pytestmark = pytest.mark.anyio
SCALE = 0.001
KEY = "sk-test"
# 5 simulated seconds are 5 ms of real time here: too little for a real server on a loaded machine.
ROOMY_WEBHOOK_TIMEOUT = 2000.0


def plan(body: Any) -> TaskPlan:
    return TaskPlan(
        duration=5 if str(body["prompt"]).startswith("fail") else 20,
        fail_reason="moderation" if str(body["prompt"]).startswith("fail") else None,
    )


@contextlib.asynccontextmanager
async def serve_example(sim: Simulator, *, webhooks: bool) -> AsyncIterator[str]:
    """The example app under uvicorn on a random loopback port; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    options: dict[str, Any] = {"api_key": KEY, "base_url": sim.base_url, "clock": ScaledClock(SCALE)}
    options["webhook_url"] = f"{base_url}/webhooks/pixverse" if webhooks else None
    server = uvicorn.Server(uvicorn.Config(create_app(**options), log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [listener])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield base_url
        finally:
            server.should_exit = True
    listener.close()


async def read_events(session: aiohttp.ClientSession, url: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    async with session.get(url) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        kind = ""
        async for raw in stream.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


async def start(session: aiohttp.ClientSession, app_url: str, prompt: str) -> str:
    async with session.post(f"{app_url}/generations", params={"prompt": prompt}, data=png(400, 300)) as answer:
        assert answer.status == 201, await answer.text()
        return str((await answer.json())["task_id"])


async def test_a_generation_started_over_http_streams_its_progress_to_the_end() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan) as sim,
        serve_example(sim, webhooks=False) as app_url,
        aiohttp.ClientSession() as session,
    ):
        task_id = await start(session, app_url, "a fox in the snow")
        events = await read_events(session, f"{app_url}/generations/{task_id}/events")
        async with session.get(f"{app_url}/generations/{task_id}") as status:
            described = await status.json()
        async with session.post(f"{app_url}/generations", params={"prompt": "x"}, data=b"not an image") as bad:
            assert bad.status == 422 and "image" in (await bad.json())["detail"]
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) <= {"progress"}
    assert events[-1][1]["status"] == "SUCCEED" and events[-1][1]["videos"]
    assert described["status"] == "SUCCEED"
    assert sim.counters.tasks_created == 1


async def test_a_failed_generation_ends_its_stream_with_an_error_event() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan) as sim,
        serve_example(sim, webhooks=False) as app_url,
        aiohttp.ClientSession() as session,
    ):
        task_id = await start(session, app_url, "fail please")
        events = await read_events(session, f"{app_url}/generations/{task_id}/events")
    assert events[-1][0] == "error" and "moderation" in events[-1][1]["error"]


# -- handle_webhook -----------------------------------------------------------------------------------------


def delivery(task_id: str, status: str = "TASK_STATUS_SUCCEED") -> bytes:
    payload = {"task": {"task_id": task_id, "status": status}, "videos": []}
    return json.dumps({"event_type": "ASYNC_TASK_RESULT", "payload": payload}).encode()


async def test_handle_webhook_confirms_once_and_ignores_duplicates_late_unknown_and_malformed() -> None:
    slow_polls = PollPolicy(webhook_fallback=10_000)
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, duration=1.0) as sim,
        PixVerseClient(
            KEY,
            base_url=sim.base_url,
            clock=ScaledClock(SCALE),
            webhook_url="https://me.example/hook",
            polling=slow_polls,
        ) as client,
    ):
        task = await client.submit(ImageToVideo("p", "https://example.com/a.png"))
        sim.advance(5)
        assert await client.handle_webhook(delivery(task.task_id)) == 200
        result = await client.wait(task)
        assert result.status is TaskStatus.SUCCEED
        assert sim.counters.polls_by_task[task.task_id] == 1
        assert await client.handle_webhook(delivery(task.task_id)) == 202  # duplicate / late
        assert await client.handle_webhook(delivery("someone-elses-task")) == 202
        assert await client.handle_webhook(delivery(task.task_id, "TASK_STATUS_PROCESSING")) == 202
        assert await client.handle_webhook(json.dumps({"event_type": "OTHER", "payload": {}}).encode()) == 202
        for malformed in (b"", b"{", b"[]", b'{"event_type": "ASYNC_TASK_RESULT"}', delivery("")):
            assert await client.handle_webhook(malformed) == 400
        assert sim.counters.poll_requests == 1
    url = sim.tasks[task.task_id].request["extra"]["webhook"]["url"]
    # Each submission's URL names it: the webhook URL given, and a token of its own.
    assert re.fullmatch(r"https://me\.example/hook\?pixverse_submission=[0-9a-f]{32}", url)


async def test_webhook_url_must_be_http() -> None:
    from pixverse_async import InvalidRequestError

    for bad in ("ftp://nope", "http://", "hook"):
        with pytest.raises(InvalidRequestError, match="webhook_url"):
            PixVerseClient(KEY, webhook_url=bad)


# -- webhooks end to end ------------------------------------------------------------------------------------


async def run_generations(app_url: str, count: int) -> list[list[tuple[str, dict[str, Any]]]]:
    async with aiohttp.ClientSession() as session:
        task_ids = [await start(session, app_url, f"generation {i}") for i in range(count)]
        streams: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in task_ids]

        async def follow(index: int, task_id: str) -> None:
            streams[index] = await read_events(session, f"{app_url}/generations/{task_id}/events")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for index, task_id in enumerate(task_ids):
                    group.start_soon(follow, index, task_id)
    return streams


async def test_with_webhooks_each_task_costs_at_most_one_task_result_call() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT) as sim,
        serve_example(sim, webhooks=True) as app_url,
    ):
        streams = await run_generations(app_url, 8)
    assert all(stream[-1][0] == "result" and stream[-1][1]["status"] == "SUCCEED" for stream in streams)
    assert sim.counters.webhooks_delivered == 8
    assert max(sim.counters.polls_by_task.values()) == 1
    assert sim.counters.poll_requests == 8


async def test_with_every_webhook_dropped_results_still_arrive_by_fallback_polling() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, webhook_drop_rate=1.0) as sim,
        serve_example(sim, webhooks=True) as app_url,
    ):
        streams = await run_generations(app_url, 5)
    assert all(stream[-1][1]["status"] == "SUCCEED" for stream in streams)
    assert sim.counters.webhooks_delivered == 0 and sim.counters.webhooks_dropped == 5


async def test_duplicated_deliveries_cost_nothing_more() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT) as sim,
        serve_example(sim, webhooks=True) as app_url,
    ):
        sim.inject(Fault("webhook", "duplicate", times=3))
        streams = await run_generations(app_url, 3)
    assert all(stream[-1][1]["status"] == "SUCCEED" for stream in streams)
    assert sim.counters.webhooks_duplicated == 3
    assert sim.counters.poll_requests == 3


async def test_the_aiohttp_receiver_resolves_as_completed() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    hook_url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT) as sim:
        client = PixVerseClient(KEY, base_url=sim.base_url, clock=ScaledClock(SCALE), webhook_url=hook_url)
        receiver = web.Application()
        receiver.router.add_post("/hook", aiohttp_webhook_handler(client))
        runner = web.AppRunner(receiver)
        await runner.setup()
        await web.SockSite(runner, listener).start()
        try:
            async with client:
                jobs = [ImageToVideo(f"job {i}", "https://example.com/a.png") for i in range(6)]
                async with client.as_completed(jobs) as results:
                    outcomes = [result async for result in results]
        finally:
            await runner.cleanup()
    assert all(result.ok for result in outcomes)
    assert sim.counters.webhooks_delivered == 6
    assert sim.counters.poll_requests == 6


async def test_every_delivery_repeated_five_times_gives_one_confirmation_and_one_result() -> None:
    async with (
        Simulator(
            api_keys=(KEY,),
            time_scale=SCALE,
            plan=plan,
            webhook_timeout=ROOMY_WEBHOOK_TIMEOUT,
            webhook_repeat_rate=1.0,
            webhook_repeats=4,
        ) as sim,
        serve_example(sim, webhooks=True) as app_url,
    ):
        streams = await run_generations(app_url, 6)
    assert all([kind for kind, _ in stream].count("result") == 1 for stream in streams)
    assert all(stream[-1][1]["status"] == "SUCCEED" for stream in streams)
    assert sim.counters.webhooks_delivered == 6 and sim.counters.webhooks_repeated == 24
    assert max(sim.counters.polls_by_task.values()) == 1
    assert sim.counters.poll_requests == 6
