"""A simulator driven over real HTTP with aiohttp's client, for the simulator's own tests.

Time-sensitive tests run the simulator at `time_scale=1.0` with long durations and move its clock with
`sim.advance`: the few real milliseconds a test takes are then negligible, so nothing depends on sleeps.
Tests that do need real time to pass use `time_scale=0.001` and poll until a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import anyio
import attrs

from pixverse_async.testing import (
    Simulator,
)

KEY = "sk-test"
OTHER_KEY = "sk-other"
URL_IMAGE = "https://example.com/first-frame.png"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@attrs.frozen
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        return str(self.json()["reason"])


@attrs.frozen
class Harness:
    sim: Simulator
    session: aiohttp.ClientSession

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **kwargs: Any) -> Reply:
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def submit(
        self,
        body: Any = None,
        *,
        key: str | None = KEY,
        timeout: aiohttp.ClientTimeout | None = None,
        **fields: Any,
    ) -> Reply:
        if body is None:
            body = {"prompt": "a cat surfing", "image": URL_IMAGE, **fields}
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        # A file object, not bytes: aiohttp warns about large bytes bodies (and warnings are errors here).
        data = io.BytesIO(json.dumps(body).encode())
        return await self.request(
            "POST", self.sim.base_url + "/v3/async/pixverse-v4.5-i2v", data=data, headers=headers, timeout=timeout
        )

    async def create(self, **fields: Any) -> str:
        reply = await self.submit(**fields)
        assert reply.status == 200, reply.body
        return str(reply.json()["task_id"])

    async def poll(self, task_id: str | None, *, key: str | None = KEY) -> Reply:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        params = {"task_id": task_id} if task_id is not None else {}
        return await self.request("GET", self.sim.base_url + "/v3/async/task-result", params=params, headers=headers)

    async def task(self, task_id: str) -> dict[str, Any]:
        reply = await self.poll(task_id)
        assert reply.status == 200, reply.body
        result: dict[str, Any] = reply.json()
        return result

    async def video_url(self, task_id: str) -> str:
        result = await self.task(task_id)
        assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
        return str(result["videos"][0]["video_url"])


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Harness]:
    options.setdefault("api_keys", (KEY, OTHER_KEY))
    options.setdefault("seed", 1234)
    async with Simulator(**options) as sim, aiohttp.ClientSession() as session:
        yield Harness(sim, session)


async def wait_for_status(harness: Harness, task_id: str, wanted: str, timeout: float = 3.0) -> list[str]:
    """Poll until `wanted`; return the statuses seen on the way."""
    seen: list[str] = []
    with anyio.fail_after(timeout):
        while not seen or seen[-1] != wanted:
            seen.append((await harness.task(task_id))["task"]["status"])
            await anyio.sleep(0.002)
    return seen


def mp4_boxes(data: bytes) -> list[tuple[bytes, int]]:
    boxes, position = [], 0
    while position < len(data):
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        assert size >= 8
        boxes.append((kind, size))
        position += size
    assert position == len(data)
    return boxes


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait for `condition` (a counter, a request received), polling, with a deadline."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)
