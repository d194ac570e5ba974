"""JSON from outside (webhook deliveries, the API's answers, requests to the simulator) is read within bounds of
size and nesting: a body too deep for the parser, or too big, is refused (a 400, or the typed error), never a
`RecursionError` or a 500. Through the public API, over real HTTP."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Route

from pixverse_async import (
    APIResponseError,
    BadRequestError,
    ImageToVideo,
    PixVerseClient,
    RetryPolicy,
    SubmissionUncertainError,
)
from pixverse_async.testing import Simulator
from pixverse_async.web import aiohttp_webhook_handler, starlette_webhook_endpoint
from tests.helpers import tiny_server

pytestmark = pytest.mark.anyio
KEY = "sk-test-0123"
NO_RETRY = RetryPolicy(max_attempts=1)
URL = "https://example.com/a.png"
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
TASK = {"task_id": "t1", "status": "TASK_STATUS_SUCCEED"}


def nested(depth: int, inner: object = TASK) -> object:
    for _ in range(depth):
        inner = {"x": inner}
    return inner


def deep_object(depth: int) -> bytes:
    return b'{"x":' * depth + b"1" + b"}" * depth  # json.dumps would recurse as deep


def delivery_with_extra(extra: bytes) -> bytes:
    task = json.dumps(TASK).encode()
    return b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": ' + task + b', "extra": ' + extra + b"}}"


def deliveries() -> dict[str, bytes]:
    """Bodies an outsider may post to a webhook endpoint, each unreadable."""
    return {
        "a 100,000-deep array": DEEP_ARRAY,
        "a 100,000-deep object": deep_object(100_000),
        "a payload with a 100,000-deep extra": delivery_with_extra(deep_object(100_000)),
        "an integer of 5,000 digits": b'{"payload": {"task": {"eta": ' + b"9" * 5000 + b"}}}",
        "bytes that are not UTF-8": b'{"payload": "\xff"}',
    }


async def test_a_delivery_too_deep_or_unreadable_is_answered_400_by_handle_webhook() -> None:
    async with Simulator(api_keys=(KEY,)) as sim, PixVerseClient(KEY, base_url=sim.base_url) as client:
        for what, body in deliveries().items():
            assert await client.handle_webhook(body) == 400, what
            assert await client.handle_webhook(body.decode("utf-8", "replace")) == 400, what
        # Within the bounds, a deep but legal extra is read as before (a task nobody follows: 202).
        assert await client.handle_webhook(delivery_with_extra(deep_object(50))) == 202
    assert sim.counters.poll_requests == 0


@contextlib.asynccontextmanager
async def starlette_receiver(client: PixVerseClient) -> AsyncIterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/hook", starlette_webhook_endpoint(client), methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [listener])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        finally:
            server.should_exit = True
    listener.close()


@contextlib.asynccontextmanager
async def aiohttp_receiver(client: PixVerseClient) -> AsyncIterator[str]:
    app = web.Application(client_max_size=64 << 20)  # a roomy app: the receiver keeps its own bound
    app.router.add_post("/hook", aiohttp_webhook_handler(client))
    runner = web.AppRunner(app)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    await web.SockSite(runner, listener).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        await runner.cleanup()
        listener.close()


RECEIVERS: dict[str, Callable[[PixVerseClient], contextlib.AbstractAsyncContextManager[str]]] = {
    "starlette": starlette_receiver,
    "aiohttp": aiohttp_receiver,
}


@pytest.mark.parametrize("receiver", list(RECEIVERS))
async def test_the_receivers_answer_400_to_unreadable_and_413_to_oversized_bodies_without_a_traceback(
    receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with (
        Simulator(api_keys=(KEY,)) as sim,
        PixVerseClient(KEY, base_url=sim.base_url) as client,
        RECEIVERS[receiver](client) as hook,
        aiohttp.ClientSession() as session,
    ):
        for what, body in deliveries().items():
            async with session.post(hook, data=body) as answer:
                assert answer.status == 400, what
        oversized = b'{"payload": {"task": {"reason": "' + b"x" * (2 << 20) + b'"}}}'
        async with session.post(hook, data=io.BytesIO(oversized)) as answer:
            assert answer.status == 413
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    assert sim.counters.poll_requests == 0


@pytest.mark.parametrize("status", [200, 400])
async def test_an_api_answer_too_deep_for_the_parser_is_a_typed_error(status: int) -> None:
    async def too_deep(request: web.Request) -> web.Response:
        return web.Response(body=DEEP_ARRAY, status=status, content_type="application/json")

    async with tiny_server(too_deep) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(APIResponseError if status == 200 else BadRequestError) as polled:
            await client.get_task("t1")
        with pytest.raises(SubmissionUncertainError if status == 200 else BadRequestError) as submitted:
            await client.submit(ImageToVideo("p", URL))
    if status == 200:
        assert "nested deeper than" in str(polled.value)
        assert isinstance(submitted.value.__cause__, APIResponseError)
    else:
        assert isinstance(polled.value, BadRequestError) and "non-JSON body" in polled.value.message


async def test_an_error_answer_with_deep_metadata_within_the_bounds_is_read_whole() -> None:
    async def deep_metadata(request: web.Request) -> web.Response:
        body = {"code": 400, "reason": "INVALID_REQUEST_BODY", "message": "no", "metadata": nested(50, "m")}
        return web.json_response(body, status=400)

    async with tiny_server(deep_metadata) as url, PixVerseClient(KEY, base_url=url, retry=NO_RETRY) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.get_task("t1")
    assert caught.value.reason == "INVALID_REQUEST_BODY" and caught.value.metadata == nested(50, "m")


async def test_the_simulator_answers_400_to_a_request_too_deep_for_the_parser() -> None:
    async with Simulator(api_keys=(KEY,)) as sim, aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/v3/async/pixverse-v4.5-i2v"
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        async with session.post(url, data=DEEP_ARRAY, headers=headers) as answer:
            assert answer.status == 400
            assert (await answer.json())["reason"] == "INVALID_REQUEST_BODY"
    assert sim.counters.tasks_created == 0
