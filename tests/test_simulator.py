"""The simulator, driven over real HTTP with aiohttp's client.

Time-sensitive tests run the simulator at ``time_scale=1.0`` with long durations and move its clock with
``sim.advance``: the few real milliseconds a test takes are then negligible, so nothing depends on sleeps.
Tests that do need real time to pass use ``time_scale=0.001`` and poll until a deadline.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import gc
import io
import itertools
import json
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import anyio
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pixverse_async.testing import (
    DEFAULT_FAIL_REASON,
    WEBHOOK_EVENT_TYPE,
    WEBHOOK_RETRY_DELAYS,
    WEBHOOK_TIMEOUT,
    CallRateLimit,
    Fault,
    Simulator,
    SubmittedImage,
    TaskPlan,
    lognormal_durations,
    serve_forever,
)
from tests.images import jpeg, png

KEY = "sk-test"
OTHER_KEY = "sk-other"
URL_IMAGE = "https://example.com/first-frame.png"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------------------
# Harness


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
    """Poll until ``wanted``; return the statuses seen on the way."""
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


# --------------------------------------------------------------------------------------------------------
# Task lifecycle


@pytest.mark.anyio
async def test_lifecycle_queued_processing_succeed_with_eta_progress_and_video() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.1) as h:
        reply = await h.submit(seed=42, resolution="720p")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        task_id = reply.json()["task_id"]
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", task_id)
        assert reply.json() == {"task_id": task_id}

        queued = await h.task(task_id)
        assert queued["task"] == {
            "task_id": task_id,
            "status": "TASK_STATUS_QUEUED",
            "reason": "",
            "task_type": "PIXVERSE_V4_5_I2V",
            "eta": 100,
            "progress_percent": 0,
        }
        assert queued["extra"]["seed"] == "42"
        assert set(queued["extra"]["debug_info"]) == {
            "request_info",
            "submit_time_ms",
            "execute_time_ms",
            "complete_time_ms",
        }
        assert queued["extra"]["debug_info"]["execute_time_ms"] == ""
        assert (queued["images"], queued["audios"], queued["videos"]) == ([], [], [])

        h.sim.advance(55.0)  # 10 s queued + 45 of 90 s processing
        processing = await h.task(task_id)
        assert processing["task"]["status"] == "TASK_STATUS_PROCESSING"
        assert processing["task"]["eta"] == 45
        assert 49 <= processing["task"]["progress_percent"] <= 51
        assert processing["extra"]["debug_info"]["execute_time_ms"] != ""
        assert processing["videos"] == []

        h.sim.advance(45.0)
        done = await h.task(task_id)
        assert done["task"]["status"] == "TASK_STATUS_SUCCEED"
        assert (done["task"]["eta"], done["task"]["progress_percent"], done["task"]["reason"]) == (0, 100, "")
        assert done["extra"]["debug_info"]["complete_time_ms"] != ""
        [video] = done["videos"]
        assert video["video_url_ttl"] == "3600"
        assert video["video_type"] == "mp4"
        assert video["video_url"].startswith(f"{h.sim.video_base_url}/videos/{task_id}.mp4?expires=")
        assert h.sim.video_base_url != h.sim.base_url

        download = await h.request("GET", video["video_url"])
        assert download.status == 200
        assert download.headers["Content-Type"] == "video/mp4"
        assert int(download.headers["Content-Length"]) == len(download.body)
        assert download.body == h.sim.video_bytes(task_id)
        assert [kind for kind, _ in mp4_boxes(download.body)] == [b"ftyp", b"moov", b"mdat"]
        assert task_id.encode() in download.body

        task = h.sim.tasks[task_id]
        assert task.request == {"prompt": "a cat surfing", "seed": 42, "resolution": "720p"}
        assert task.image == SubmittedImage(encoding="url", url=URL_IMAGE)
        assert h.sim.task_status(task_id) == "TASK_STATUS_SUCCEED"


@pytest.mark.anyio
async def test_lifecycle_in_scaled_real_time() -> None:
    async with running(time_scale=0.001, duration=30.0) as h:  # 30 ms of real time
        task_id = await h.create()
        seen = await wait_for_status(h, task_id, "TASK_STATUS_SUCCEED")
        order = ["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED"]
        assert [order.index(status) for status in seen] == sorted(order.index(status) for status in seen)


@pytest.mark.anyio
async def test_video_bytes_differ_per_task() -> None:
    async with running() as h:
        first, second = await h.create(), await h.create()
        assert h.sim.video_bytes(first) != h.sim.video_bytes(second)
        assert h.sim.video_bytes(first) == h.sim.video_bytes(first)
        assert len(h.sim.video_bytes(first)) < 8192


@pytest.mark.anyio
async def test_failure_rate_fails_tasks_with_a_reason() -> None:
    async with running(time_scale=1.0, duration=10.0, failure_rate=1.0) as h:
        task_id = await h.create()
        h.sim.advance(10.0)
        result = await h.task(task_id)
        assert result["task"]["status"] == "TASK_STATUS_FAILED"
        assert result["task"]["reason"] == DEFAULT_FAIL_REASON
        assert result["task"]["eta"] == 0
        assert result["videos"] == []


@pytest.mark.anyio
async def test_plan_overrides_duration_and_outcome_per_submission() -> None:
    def plan(body: Mapping[str, Any]) -> TaskPlan | None:
        return TaskPlan(duration=5.0, fail_reason="boom") if "fail" in body["prompt"] else None

    async with running(time_scale=1.0, duration=100.0, plan=plan) as h:
        failing = await h.create(prompt="please fail")
        normal = await h.create(prompt="a dog")
        h.sim.advance(5.0)
        result = await h.task(failing)
        assert (result["task"]["status"], result["task"]["reason"]) == ("TASK_STATUS_FAILED", "boom")
        assert (await h.task(normal))["task"]["status"] == "TASK_STATUS_QUEUED"  # 10 s of queue by default


@pytest.mark.anyio
async def test_lognormal_durations_are_seeded_and_positive() -> None:
    assert Simulator.lognormal is lognormal_durations
    async with running(time_scale=1.0, duration=Simulator.lognormal(median=40.0, sigma=0.5), seed=7) as h:
        ids = [await h.create() for _ in range(50)]
        durations = sorted(h.sim.tasks[i].ends_at - h.sim.tasks[i].submitted_at for i in ids)
        assert all(d > 0 for d in durations)
        assert 20.0 < durations[25] < 80.0
        assert len(set(durations)) == 50
    with pytest.raises(ValueError, match="median"):
        lognormal_durations(median=0.0)


# --------------------------------------------------------------------------------------------------------
# Validation


VALIDATION_CASES: list[tuple[str, Any, str]] = [
    ("body is a list", ["prompt"], "INVALID_REQUEST_BODY"),
    ("missing prompt", {"image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("empty prompt", {"prompt": "", "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("blank prompt", {"prompt": "   ", "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("prompt too long", {"prompt": "x" * 2049, "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("prompt not a string", {"prompt": 3, "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("missing image", {"prompt": "p"}, "INVALID_REQUEST_BODY"),
    ("image not a string", {"prompt": "p", "image": 5}, "INVALID_REQUEST_BODY"),
    ("empty image", {"prompt": "p", "image": ""}, "INVALID_REQUEST_BODY"),
    ("bad resolution", {"prompt": "p", "image": URL_IMAGE, "resolution": "4k"}, "INVALID_REQUEST_BODY"),
    (
        "1080p in fast mode",
        {"prompt": "p", "image": URL_IMAGE, "resolution": "1080p", "fast_mode": True},
        "INVALID_REQUEST_BODY",
    ),
    ("fast_mode not bool", {"prompt": "p", "image": URL_IMAGE, "fast_mode": "yes"}, "INVALID_REQUEST_BODY"),
    (
        "negative_prompt too long",
        {"prompt": "p", "image": URL_IMAGE, "negative_prompt": "n" * 2049},
        "INVALID_REQUEST_BODY",
    ),
    ("bad style", {"prompt": "p", "image": URL_IMAGE, "style": "noir"}, "INVALID_REQUEST_BODY"),
    ("seed is bool", {"prompt": "p", "image": URL_IMAGE, "seed": True}, "INVALID_REQUEST_BODY"),
    ("seed negative", {"prompt": "p", "image": URL_IMAGE, "seed": -1}, "INVALID_REQUEST_BODY"),
    ("seed too big", {"prompt": "p", "image": URL_IMAGE, "seed": 2_147_483_648}, "INVALID_REQUEST_BODY"),
    ("seed float", {"prompt": "p", "image": URL_IMAGE, "seed": 1.5}, "INVALID_REQUEST_BODY"),
    ("null field", {"prompt": "p", "image": URL_IMAGE, "style": None}, "INVALID_REQUEST_BODY"),
    ("unknown key", {"prompt": "p", "image": URL_IMAGE, "duration": 5}, "INVALID_REQUEST_BODY"),
    ("extra not object", {"prompt": "p", "image": URL_IMAGE, "extra": "x"}, "INVALID_REQUEST_BODY"),
    ("bad base64", {"prompt": "p", "image": "not base64 at all!"}, "INVALID_REQUEST_BODY"),
    ("bad data uri", {"prompt": "p", "image": "data:text/plain,hello"}, "INVALID_REQUEST_BODY"),
    ("gif data uri", {"prompt": "p", "image": "data:image/gif;base64," + b64(b"GIF89a")}, "INVALID_IMAGE_FORMAT"),
    ("not an image", {"prompt": "p", "image": b64(b"GIF89a" + bytes(100))}, "INVALID_IMAGE_FORMAT"),
    ("too small", {"prompt": "p", "image": b64(png(299, 400))}, "INVALID_IMAGE_SIZE"),
    ("too wide", {"prompt": "p", "image": b64(jpeg(1000, 300))}, "IMAGE_EXCEEDS_MAX_RESOLUTION"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"), [case[1:] for case in VALIDATION_CASES], ids=[case[0] for case in VALIDATION_CASES]
)
async def test_invalid_submissions_are_refused_with_the_api_reason(body: Any, reason: str) -> None:
    async with running() as h:
        reply = await h.submit(body)
        assert reply.status == 400
        assert reply.json() == {"code": 400, "reason": reason, "message": reply.json()["message"], "metadata": {}}
        assert reply.json()["message"]
        assert h.sim.counters.tasks_created == 0
        assert h.sim.counters.errors_by_reason == {reason: 1}


@pytest.mark.anyio
async def test_oversized_image_is_refused() -> None:
    big = png(300, 300) + bytes(10 * 1024 * 1024)
    async with running() as h:
        reply = await h.submit({"prompt": "p", "image": b64(big)})
        assert (reply.status, reply.reason) == (400, "IMAGE_FILE_EXCEEDS_MAX_SIZE")


@pytest.mark.anyio
async def test_invalid_json_and_wrong_content_type_are_refused() -> None:
    async with running() as h:
        url = h.sim.base_url + "/v3/async/pixverse-v4.5-i2v"
        auth = {"Authorization": f"Bearer {KEY}"}
        broken = await h.request("POST", url, data=b'{"prompt": ', headers={**auth, "Content-Type": "application/json"})
        assert (broken.status, broken.reason) == (400, "INVALID_REQUEST_BODY")
        form = await h.request("POST", url, data={"prompt": "p", "image": URL_IMAGE}, headers=auth)
        assert (form.status, form.reason) == (400, "INVALID_REQUEST_BODY")


@pytest.mark.anyio
async def test_valid_images_and_options_are_accepted() -> None:
    async with running() as h:
        raw = await h.create(image=b64(png(400, 300)))
        uri = await h.create(image="data:image/jpeg;base64," + b64(jpeg(300, 750)))  # exactly 1:2.5
        jpg = await h.create(image="data:image/jpg;base64," + b64(jpeg(640, 480)))
        http = await h.create(image="http://example.com/a.jpg")
        full = await h.create(
            resolution="1080p",
            fast_mode=False,
            negative_prompt="blur",
            style="anime",
            seed=2_147_483_647,
            extra={"webhook": {"url": "https://example.com/hook"}},
        )
        fast = await h.create(resolution="720p", fast_mode=True, seed=0)
        await h.create(prompt="x" * 2048, negative_prompt="n" * 2048)
        tasks = h.sim.tasks
        assert tasks[raw].image == SubmittedImage(
            "base64", format="png", width=400, height=300, byte_size=len(png(400, 300))
        )
        assert (tasks[uri].image.encoding, tasks[uri].image.format) == ("data_uri", "jpeg")
        assert tasks[jpg].image.width == 640
        assert tasks[http].image.url == "http://example.com/a.jpg"
        assert tasks[full].seed == 2_147_483_647
        assert tasks[fast].seed == 0
        assert (await h.task(full))["extra"]["seed"] == "2147483647"
        assert h.sim.counters.tasks_created == 7


@pytest.mark.anyio
async def test_random_seed_is_reported_when_none_was_sent() -> None:
    async with running() as h:
        task_id = await h.create()
        seed = (await h.task(task_id))["extra"]["seed"]
        assert isinstance(seed, str)
        assert 0 <= int(seed) <= 2_147_483_647


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
# Rate limit and balance


@pytest.mark.anyio
async def test_per_key_cap_answers_429_without_retry_after_by_default() -> None:
    async with running(time_scale=1.0, duration=100.0, max_running_per_key=2) as h:
        await h.create()
        await h.create()
        refused = await h.submit()
        assert (refused.status, refused.reason) == (429, "RATE_LIMIT_EXCEEDED")
        assert "Retry-After" not in refused.headers
        await h.create(key=OTHER_KEY)  # the cap is per key
        h.sim.advance(100.0)  # both finished: the key may run two again
        await h.create()
        await h.create()
        assert (await h.submit()).status == 429
        counters = h.sim.counters
        assert counters.rate_limited == 2
        assert counters.tasks_created == 5
        assert counters.max_running_by_key == {KEY: 2, OTHER_KEY: 1}
        assert counters.errors_by_reason == {"RATE_LIMIT_EXCEEDED": 2}
        assert counters.rate_limited_by == {"running_cap": 2}


@pytest.mark.anyio
async def test_per_key_cap_counts_tasks_that_ended_since() -> None:
    def plan(body: Mapping[str, Any]) -> TaskPlan:
        return TaskPlan(duration=float(body["prompt"]))

    async with running(time_scale=1.0, plan=plan, max_running_per_key=2, rate_limit_retry_after=2.5) as h:
        await h.create(prompt="10")
        await h.create(prompt="20")
        refused = await h.submit(prompt="30")
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "3"  # 2.5 rounded up
        h.sim.advance(15.0)  # the 10 s task has ended, the 20 s one runs on
        await h.create(prompt="30")
        assert (await h.submit(prompt="30")).status == 429


@pytest.mark.anyio
async def test_submit_rate_limit_in_a_sliding_window_with_retry_after() -> None:
    async with running(time_scale=1.0, submit_rate_limit=CallRateLimit(2, per=10.0)) as h:
        await h.create()
        h.sim.advance(4.0)
        await h.create()
        refused = await h.submit()
        assert (refused.status, refused.reason, refused.headers["Retry-After"]) == (429, "RATE_LIMIT_EXCEEDED", "6")
        await h.create(key=OTHER_KEY)  # the limit is per key
        h.sim.advance(6.5)  # the first call left the window, the second is still in it
        await h.create()
        assert (await h.submit()).status == 429
        h.sim.advance(4.0)
        await h.create()
        counters = h.sim.counters
        assert counters.tasks_created == 5  # refused calls created nothing
        assert counters.rate_limited_by == {"submit_rate": 2}
        assert (await h.poll(next(iter(h.sim.tasks)))).status == 200  # task-result calls are not limited


@pytest.mark.anyio
async def test_poll_rate_limit_in_a_fixed_window_without_retry_after() -> None:
    limit = CallRateLimit(3, per=10.0, window="fixed", retry_after=False)
    async with running(time_scale=1.0, poll_rate_limit=limit) as h:
        task_id = await h.create()
        # Align with a window boundary of the simulator's clock (windows count from its start).
        h.sim.advance(10.0 - (h.sim.now() - h.sim._clock_origin_sim) % 10.0 + 0.01)
        assert [(await h.poll(task_id)).status for _ in range(4)] == [200, 200, 200, 429]
        refused = await h.poll(task_id)
        assert refused.reason == "RATE_LIMIT_EXCEEDED" and "Retry-After" not in refused.headers
        h.sim.advance(10.0)  # a fixed window: the next one starts with its whole allowance
        assert [(await h.poll(task_id)).status for _ in range(4)] == [200, 200, 200, 429]
        assert (await h.submit()).status == 200  # submissions are not limited
        assert h.sim.counters.rate_limited_by == {"poll_rate": 3}


@pytest.mark.anyio
async def test_random_rate_limit_is_seeded_counted_and_leaves_task_ids_alone() -> None:
    async def run(rate: float) -> tuple[list[int], list[str]]:
        async with running(time_scale=1.0, seed=9, random_rate_limit=rate, random_rate_limit_retry_after=2) as h:
            statuses, ids = [], []
            for _ in range(60):
                reply = await h.submit()
                statuses.append(reply.status)
                if reply.status == 200:
                    ids.append(str(reply.json()["task_id"]))
                else:
                    assert reply.headers["Retry-After"] == "2"
            assert h.sim.counters.rate_limited_by["random"] == h.sim.counters.rate_limited == statuses.count(429)
            assert h.sim.counters.tasks_created == len(ids)
            return statuses, ids

    statuses, ids = await run(0.3)
    assert 5 < statuses.count(429) < 40
    assert await run(0.3) == (statuses, ids)  # seeded
    _, all_ids = await run(0.0)
    assert ids == all_ids[: len(ids)]  # the 429 draws do not shift the task ids


@pytest.mark.anyio
async def test_random_faults_strike_at_their_rate_on_their_endpoint() -> None:
    chaos = [(Fault("poll", "server_error"), 1.0), (Fault("submit", "html_error"), 0.0)]
    async with running(time_scale=1.0, random_faults=chaos) as h:
        task_id = await h.create()
        reply = await h.poll(task_id)
        assert (reply.status, reply.reason) == (500, "GET_RESULT_FAILED")
        assert h.sim.counters.faults_applied == {"poll:server_error": 1}


def test_rate_limit_options_are_checked() -> None:
    with pytest.raises(ValueError, match="random_rate_limit"):
        Simulator(random_rate_limit=1.5)
    with pytest.raises(ValueError, match="calls"):
        CallRateLimit(0, per=1.0)
    with pytest.raises(ValueError, match="window"):
        CallRateLimit(1, per=1.0, window="leaky")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CallRateLimit"):
        Simulator(submit_rate_limit=(20, 2.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pairs"):
        Simulator(random_faults=[Fault("poll", "server_error")])  # type: ignore[list-item]


@pytest.mark.anyio
async def test_balance_limits_billed_submissions_per_key() -> None:
    async with running(balance=2, time_scale=1.0, duration=1.0) as h:
        await h.create()
        await h.create()
        reply = await h.submit()
        assert (reply.status, reply.reason) == (400, "BILLING_BALANCE_NOT_ENOUGH")
        h.sim.advance(10.0)  # finished tasks stay paid for
        assert (await h.submit()).reason == "BILLING_BALANCE_NOT_ENOUGH"
        await h.create(key=OTHER_KEY)


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
async def test_submit_slow_creates_the_task_before_waiting() -> None:
    async with running(time_scale=0.001) as h:
        h.sim.inject(Fault("submit", "slow", delay=50.0))  # 50 ms
        started = time.monotonic()
        reply = await h.submit()
        assert reply.status == 200
        assert time.monotonic() - started >= 0.045
        h.sim.inject(Fault("submit", "slow", delay=5000.0))  # 5 s: the client gives up first
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
        with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
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
        with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
            reply.json()

        h.sim.inject(Fault("poll", "slow", delay=40.0))
        started = time.monotonic()
        assert (await h.poll(task_id)).status == 200
        assert time.monotonic() - started >= 0.035

        assert h.sim.counters.poll_requests == 10
        assert h.sim.counters.polls_by_task == {task_id: 10}
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


# --------------------------------------------------------------------------------------------------------
# Video site


@pytest.mark.anyio
async def test_signed_url_expires_and_polling_again_refreshes_it() -> None:
    async with running(time_scale=1.0, duration=1.0, video_ttl=10.0) as h:
        task_id = await h.create()
        h.sim.advance(1.0)
        result = await h.task(task_id)
        assert result["videos"][0]["video_url_ttl"] == "10"
        old_url = result["videos"][0]["video_url"]
        assert (await h.request("GET", old_url)).status == 200
        h.sim.advance(11.0)
        expired = await h.request("GET", old_url)
        assert expired.status == 403
        assert b"Request has expired" in expired.body
        new_url = await h.video_url(task_id)
        assert new_url != old_url
        fresh = await h.request("GET", new_url)
        assert (fresh.status, fresh.body) == (200, h.sim.video_bytes(task_id))
        assert h.sim.counters.video_expired == 1
        assert h.sim.counters.videos_served == 2


@pytest.mark.anyio
async def test_signature_is_checked() -> None:
    async with running(time_scale=1.0, duration=0.0) as h:
        task_id = await h.create()
        url = await h.video_url(task_id)
        parts = urlsplit(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        base = f"{parts.scheme}://{parts.netloc}"
        other_task = await h.create()
        tampered = [
            f"{base}{parts.path}?expires={query['expires']}&signature={'0' * 64}",
            f"{base}{parts.path}?expires={int(query['expires']) + 1000}&signature={query['signature']}",
            f"{base}/videos/{other_task}.mp4?{parts.query}",
            f"{base}{parts.path}",
            f"{base}{parts.path}?expires={query['expires']}&signature=%C3%A9",
        ]
        for bad in tampered:
            reply = await h.request("GET", bad)
            assert reply.status == 403, bad
            assert b"SignatureDoesNotMatch" in reply.body
        assert (await h.request("GET", f"{base}/elsewhere")).status == 404
        assert h.sim.counters.video_bad_signature == len(tampered)
        assert h.sim.counters.video_requests == len(tampered) + 1


@pytest.mark.anyio
async def test_api_key_sent_to_the_video_host_is_counted_but_served() -> None:
    async with running(time_scale=1.0, duration=0.0) as h:
        url = await h.video_url(await h.create())
        reply = await h.request("GET", url, headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status == 200
        assert h.sim.counters.key_leaks_to_video_host == 1
        await h.request("GET", url)
        assert h.sim.counters.key_leaks_to_video_host == 1


@pytest.mark.anyio
async def test_video_faults() -> None:
    async with running(time_scale=0.001, duration=0.0) as h:
        task_id = await h.create()
        url = await h.video_url(task_id)

        h.sim.inject(Fault("video", "reset", times=2))  # twice: aiohttp retries a GET once by itself
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await h.request("GET", url)

        h.sim.inject(Fault("video", "truncated_json"))
        with pytest.raises(aiohttp.ClientPayloadError):
            await h.request("GET", url)

        h.sim.inject(Fault("video", "server_error"))
        assert (await h.request("GET", url)).status == 500
        h.sim.inject(Fault("video", "rate_limit", retry_after=1))
        limited = await h.request("GET", url)
        assert (limited.status, limited.headers["Retry-After"]) == (429, "1")
        h.sim.inject(Fault("video", "html_error"))
        assert (await h.request("GET", url)).status == 502
        h.sim.inject(Fault("video", "empty_error"))
        assert (await h.request("GET", url)).status == 503
        h.sim.inject(Fault("video", "slow", delay=30.0))
        assert (await h.request("GET", url)).body == h.sim.video_bytes(task_id)
        assert h.sim.counters.video_requests == 8
        assert h.sim.counters.rate_limited == 1


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


@pytest.mark.anyio
async def test_expired_fault_refuses_one_valid_video_link() -> None:
    async with Simulator(time_scale=0.001, duration=0.0) as sim, aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-test"}
        async with session.post(
            sim.base_url + "/v3/async/pixverse-v4.5-i2v",
            json={"prompt": "p", "image": "https://example.com/a.png"},
            headers=headers,
        ) as answer:
            task_id = (await answer.json())["task_id"]
        async with session.get(
            sim.base_url + "/v3/async/task-result", params={"task_id": task_id}, headers=headers
        ) as r:
            url = (await r.json())["videos"][0]["video_url"]
        sim.inject(Fault("video", "expired"))
        async with session.get(url) as refused:
            assert refused.status == 403 and "Request has expired" in await refused.text()
        async with session.get(url) as served:
            assert served.status == 200
    assert sim.counters.video_expired == 1
    with pytest.raises(ValueError, match="video endpoint only"):
        Fault("poll", "expired")


# --------------------------------------------------------------------------------------------------------
# Webhooks
#
# Deliveries are awaited with deadlines on conditions (counters, requests received), never with bare sleeps.
# Tests whose counts depend on every answer arriving within the 5 simulated seconds of the webhook timeout
# run at time_scale=0.01 (a 50 ms real timeout), so that a loaded machine does not turn an answer into a retry.
# Gaps between attempts are measured where the receiver sees them, so they get SLACK simulated seconds of
# latency jitter (a first attempt that also opens the connection arrives later after its start than a retry).
SLACK = 0.5


@attrs.frozen
class Received:
    path: str
    content_type: str
    body: bytes
    at: float  # the receiver's clock when the request arrived (the simulator's clock when given one)

    def event(self) -> Any:
        return json.loads(self.body)

    @property
    def task_id(self) -> str:
        return str(self.event()["payload"]["task"]["task_id"])


@attrs.define
class Receiver:
    """A webhook receiver: records each POST, then answers ``statuses`` in order (200 once used up).

    ``delays`` (real seconds, in order) make answers slow; requests to a path ending in ``/slow`` wait for
    ``hang`` before answering.
    """

    statuses: list[int] = attrs.Factory(list)
    delays: list[float] = attrs.Factory(list)
    hang: anyio.Event = attrs.Factory(anyio.Event)
    clock: Callable[[], float] = time.monotonic
    requests: list[Received] = attrs.Factory(list)

    async def handle(self, request: web.Request) -> web.Response:
        index = len(self.requests)
        self.requests.append(Received(request.path, request.content_type, await request.read(), self.clock()))
        if index < len(self.delays):
            await anyio.sleep(self.delays[index])
        if request.path.endswith("/slow"):
            await self.hang.wait()
        return web.Response(status=self.statuses[index] if index < len(self.statuses) else 200)

    def task_ids(self) -> collections.Counter[str]:
        return collections.Counter(received.task_id for received in self.requests)


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    """Serve ``receiver`` on loopback; yield its ``/hook`` URL."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    async with TestServer(app) as server:  # handlers are cancelled when the client goes away
        yield str(server.make_url("/hook"))


def hook(url: str) -> dict[str, Any]:
    return {"webhook": {"url": url}}


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.001)


def durations_from_prompt(body: Mapping[str, Any]) -> TaskPlan:
    return TaskPlan(duration=float(body["prompt"]))


def without_video_url(result: dict[str, Any]) -> dict[str, Any]:
    videos = [{name: value for name, value in video.items() if name != "video_url"} for video in result["videos"]]
    return {**result, "videos": videos}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.anyio
async def test_webhook_posts_the_task_result_when_a_task_succeeds() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=0.01, duration=2.0) as h:
        receiver.clock = h.sim.now
        task_id = await h.create(extra=hook(url))
        task = h.sim.tasks[task_id]
        assert task.webhook_url == url
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        [received] = receiver.requests
        assert received.at >= task.ends_at
        assert (received.path, received.content_type) == ("/hook", "application/json")
        event = received.event()
        assert set(event) == {"event_type", "payload"}
        assert event["event_type"] == WEBHOOK_EVENT_TYPE == "ASYNC_TASK_RESULT"
        payload = event["payload"]
        assert payload["task"] == {
            "task_id": task_id,
            "status": "TASK_STATUS_SUCCEED",
            "reason": "",
            "task_type": "PIXVERSE_V4_5_I2V",
            "eta": 0,
            "progress_percent": 100,
        }
        # Exactly what a poll answers, but for the link, which every answer signs afresh.
        polled = await h.task(task_id)
        assert without_video_url(payload) == without_video_url(polled)
        assert polled["extra"]["debug_info"]["complete_time_ms"] != ""
        [video] = payload["videos"]
        assert video["video_url"].startswith(f"{h.sim.video_base_url}/videos/{task_id}.mp4?expires=")
        download = await h.request("GET", video["video_url"])
        assert (download.status, download.body) == (200, h.sim.video_bytes(task_id))
        counters = h.sim.counters
        assert (counters.webhooks_sent, counters.webhooks_delivered) == (1, 1)
        assert (counters.webhooks_failed, counters.webhooks_dropped, counters.webhooks_duplicated) == (0, 0, 0)
        assert counters.polls_after_terminal == 0  # the webhook is no poll: the confirming poll is not wasted
        assert counters.poll_requests == 1


@pytest.mark.anyio
async def test_webhook_posts_the_task_result_when_a_task_fails() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=0.01, duration=1.0, failure_rate=1.0) as h:
        task_id = await h.create(extra=hook(url))
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        event = receiver.requests[0].event()
        assert event["event_type"] == "ASYNC_TASK_RESULT"
        payload = event["payload"]
        assert (payload["task"]["status"], payload["task"]["reason"]) == ("TASK_STATUS_FAILED", DEFAULT_FAIL_REASON)
        assert (payload["task"]["eta"], payload["task"]["progress_percent"]) == (0, 0)
        assert (payload["videos"], payload["images"], payload["audios"]) == ([], [], [])
        assert payload == await h.task(task_id)


@pytest.mark.anyio
async def test_webhook_is_retried_after_error_answers_with_backoff_and_a_fresh_link() -> None:
    receiver = Receiver(statuses=[500, 503, 200])
    async with receiving(receiver) as url, running(time_scale=0.01, duration=1.0) as h:
        receiver.clock = h.sim.now
        task_id = await h.create(extra=hook(url))
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        assert receiver.task_ids() == {task_id: 3}
        first, second, third = (received.at for received in receiver.requests)
        assert second - first >= WEBHOOK_RETRY_DELAYS[0] - SLACK
        assert third - second >= WEBHOOK_RETRY_DELAYS[1] - SLACK
        assert third - first < 100.0  # not waiting for something else
        links = {received.event()["payload"]["videos"][0]["video_url"] for received in receiver.requests}
        assert len(links) == 3  # each attempt signs the link when it is made
        counters = h.sim.counters
        assert (counters.webhooks_sent, counters.webhooks_delivered, counters.webhooks_failed) == (3, 1, 0)


@pytest.mark.anyio
async def test_webhook_is_given_up_after_six_attempts() -> None:
    assert WEBHOOK_RETRY_DELAYS == (1.0, 2.0, 4.0, 8.0, 16.0)
    receiver = Receiver(statuses=[500] * 10)
    async with receiving(receiver) as url, running(time_scale=0.01, duration=0.0) as h:
        receiver.clock = h.sim.now
        answering = await h.create(extra=hook(url))
        refusing = await h.create(extra=hook(f"http://127.0.0.1:{closed_port()}/hook"))
        await wait_until(lambda: h.sim.counters.webhooks_failed == 2)
        assert receiver.task_ids() == {answering: 6}
        times = [received.at for received in receiver.requests]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= delay - SLACK for gap, delay in zip(gaps, WEBHOOK_RETRY_DELAYS, strict=True)), gaps
        counters = h.sim.counters
        assert (counters.webhooks_sent, counters.webhooks_delivered, counters.webhooks_failed) == (12, 0, 2)
        assert h.sim.task_status(refusing) == "TASK_STATUS_SUCCEED"


@pytest.mark.anyio
async def test_webhook_receiver_slower_than_five_simulated_seconds_is_retried() -> None:
    assert WEBHOOK_TIMEOUT == 5.0
    receiver = Receiver(delays=[0.5])  # 50 simulated seconds: the attempt times out after 5
    async with receiving(receiver) as url, running(time_scale=0.01, duration=1.0) as h:
        receiver.clock = h.sim.now
        task_id = await h.create(extra=hook(url))
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        assert receiver.task_ids() == {task_id: 2}
        first, second = (received.at for received in receiver.requests)
        assert second - first >= WEBHOOK_TIMEOUT + WEBHOOK_RETRY_DELAYS[0] - SLACK
        assert (h.sim.counters.webhooks_sent, h.sim.counters.webhooks_failed) == (2, 0)


@pytest.mark.anyio
async def test_webhook_timeout_can_be_raised() -> None:
    receiver = Receiver(delays=[0.02])  # 20 simulated seconds, within the 200 allowed
    async with receiving(receiver) as url, running(time_scale=0.001, duration=1.0, webhook_timeout=200.0) as h:
        await h.create(extra=hook(url))
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        assert h.sim.counters.webhooks_sent == 1
    with pytest.raises(ValueError, match="webhook_timeout"):
        Simulator(webhook_timeout=0.0)


@pytest.mark.anyio
async def test_webhook_drop_and_duplicate_faults() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=0.01, plan=durations_from_prompt) as h:
        h.sim.inject(Fault("webhook", "drop"))
        h.sim.inject(Fault("webhook", "duplicate"))
        dropped = await h.create(prompt="1", extra=hook(url))
        duplicated = await h.create(prompt="2", extra=hook(url))
        normal = await h.create(prompt="3", extra=hook(url))
        counters = h.sim.counters
        await wait_until(lambda: counters.webhooks_delivered == 2 and counters.webhooks_sent == 3)
        assert receiver.task_ids() == {duplicated: 2, normal: 1}
        assert dropped not in receiver.task_ids()
        twice = [received.body for received in receiver.requests if received.task_id == duplicated]
        assert twice[0] == twice[1]  # the very same body, link included
        assert (counters.webhooks_dropped, counters.webhooks_duplicated, counters.webhooks_failed) == (1, 1, 0)
        assert counters.faults_applied == {"webhook:drop": 1, "webhook:duplicate": 1}


def test_webhook_faults_are_checked_against_their_endpoint() -> None:
    assert Fault("webhook", "drop", times=3).times == 3
    with pytest.raises(ValueError, match="webhook endpoint only"):
        Fault("poll", "drop")
    with pytest.raises(ValueError, match="webhook endpoint only"):
        Fault("submit", "duplicate")
    with pytest.raises(ValueError, match="only the 'drop' and 'duplicate'"):
        Fault("webhook", "server_error")
    with pytest.raises(ValueError, match="video endpoint only"):
        Fault("webhook", "expired")


@pytest.mark.anyio
async def test_webhook_drop_rate_one_loses_every_delivery() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=0.01, duration=0.0, webhook_drop_rate=1.0) as h:
        for _ in range(5):
            await h.create(extra=hook(url))
        await wait_until(lambda: h.sim.counters.webhooks_dropped == 5)
        assert receiver.requests == []
        assert (h.sim.counters.webhooks_sent, h.sim.counters.webhooks_delivered) == (0, 0)
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="webhook_drop_rate"):
            Simulator(webhook_drop_rate=rate)


@pytest.mark.anyio
async def test_webhook_drop_rate_is_seeded_and_leaves_task_ids_alone() -> None:
    async def run(drop_rate: float) -> tuple[list[str], list[str]]:
        receiver = Receiver()
        async with receiving(receiver) as url, running(time_scale=0.01, duration=0.0, seed=5) as h:
            h.sim.webhook_drop_rate = drop_rate
            ids = [await h.create(extra=hook(url)) for _ in range(20)]
            await wait_until(lambda: h.sim.counters.webhooks_dropped + h.sim.counters.webhooks_delivered == 20)
            return ids, sorted(receiver.task_ids())

    ids, delivered = await run(0.5)
    assert 0 < len(delivered) < 20
    assert await run(0.5) == (ids, delivered)
    assert await run(0.0) == (ids, sorted(ids))


BAD_WEBHOOKS: list[tuple[str, Any]] = [
    ("not an object", "https://example.com/hook"),
    ("null", None),
    ("no url", {}),
    ("url not a string", {"url": 42}),
    ("url null", {"url": None}),
    ("empty url", {"url": ""}),
    ("ftp url", {"url": "ftp://example.com/hook"}),
    ("no scheme", {"url": "example.com/hook"}),
    ("no host", {"url": "http://"}),
    ("port only", {"url": "https://:8080/hook"}),
    ("bad port", {"url": "http://example.com:99999/hook"}),
    ("bad ipv6", {"url": "http://[::1/hook"}),
]


@pytest.mark.anyio
@pytest.mark.parametrize("webhook", [case[1] for case in BAD_WEBHOOKS], ids=[case[0] for case in BAD_WEBHOOKS])
async def test_bad_webhooks_are_refused(webhook: Any) -> None:
    async with running() as h:
        reply = await h.submit(extra={"webhook": webhook})
        assert (reply.status, reply.reason) == (400, "INVALID_REQUEST_BODY")
        assert "webhook" in reply.json()["message"]
        assert h.sim.counters.tasks_created == 0


@pytest.mark.anyio
async def test_webhook_urls_in_any_scheme_case_and_with_other_keys_are_accepted() -> None:
    async with running() as h:
        upper = await h.create(extra={"webhook": {"url": "HTTPS://Example.com:8443/hook?x=1", "secret": "s"}})
        assert h.sim.tasks[upper].webhook_url == "HTTPS://Example.com:8443/hook?x=1"
        other = await h.create(extra={"note": "no webhook here"})
        assert h.sim.tasks[other].webhook_url is None


@pytest.mark.anyio
async def test_tasks_without_a_webhook_send_nothing() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=0.01, plan=durations_from_prompt) as h:
        plain = [await h.create(prompt="0"), await h.create(prompt="0", extra={}), await h.create(prompt="1")]
        hooked = await h.create(prompt="2", extra=hook(url))  # ends after all the others
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
        assert receiver.task_ids() == {hooked: 1}
        assert h.sim.counters.webhooks_sent == 1
        assert all(h.sim.tasks[task_id].webhook_url is None for task_id in plain)


@pytest.mark.anyio
async def test_advance_sends_due_deliveries_and_retries_at_once() -> None:
    receiver = Receiver(statuses=[500, 500, 500, 500])  # 1 + 2 + 4 + 8 s of backoff before the fifth attempt
    async with receiving(receiver) as url, running(time_scale=1.0, duration=100.0) as h:
        task_id = await h.create(extra=hook(url))
        assert h.sim.counters.webhooks_sent == 0
        with anyio.fail_after(2.0):  # in real time the delivery alone would take 100 s
            h.sim.advance(100.0)
            await wait_until(lambda: h.sim.counters.webhooks_sent == 1)
            while h.sim.counters.webhooks_delivered == 0:
                h.sim.advance(1.0)
                await anyio.sleep(0.002)
        assert receiver.task_ids() == {task_id: 5}
        assert (h.sim.counters.webhooks_sent, h.sim.counters.webhooks_failed) == (5, 0)


@pytest.mark.anyio
async def test_deliveries_are_concurrent_and_closing_with_some_pending_is_clean() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url:
        slow_url = url.replace("/hook", "/slow")
        async with running(time_scale=1.0, plan=durations_from_prompt) as h:
            stuck = await h.create(prompt="10", extra=hook(slow_url))  # its receiver never answers
            fast = await h.create(prompt="20", extra=hook(url))
            await h.create(prompt="1000", extra=hook(url))  # still queued at close
            h.sim.advance(20.0)
            await wait_until(lambda: h.sim.counters.webhooks_delivered == 1)
            assert receiver.task_ids() == {stuck: 1, fast: 1}
            started = time.monotonic()
        assert time.monotonic() - started < 1.0
        counters = h.sim.counters
        assert (counters.webhooks_sent, counters.webhooks_delivered, counters.webhooks_failed) == (2, 1, 0)
        gc.collect()  # an unclosed session or connection would warn now, and warnings are errors
        receiver.hang.set()


@pytest.mark.anyio
async def test_many_deliveries_due_at_once() -> None:
    receiver = Receiver()
    async with receiving(receiver) as url, running(time_scale=1.0, duration=100.0) as h:
        ids = [await h.create(extra=hook(url)) for _ in range(150)]
        h.sim.advance(100.0)
        await wait_until(lambda: h.sim.counters.webhooks_delivered == 150)
        assert receiver.task_ids() == dict.fromkeys(ids, 1)
        assert h.sim.counters.webhooks_sent == 150


# --------------------------------------------------------------------------------------------------------
# Hint modes


async def hints(h: Harness, task_id: str) -> tuple[str, int, int]:
    task = (await h.task(task_id))["task"]
    return task["status"], task["eta"], task["progress_percent"]


@pytest.mark.anyio
async def test_eta_absent_is_zero_while_running_and_noisy_is_consistently_off_per_task() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, eta="absent") as h:
        task_id = await h.create()
        h.sim.advance(30)
        assert await hints(h, task_id) == ("TASK_STATUS_PROCESSING", 0, 30)
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, eta="noisy", eta_noise=0.5) as h:
        ids = [await h.create() for _ in range(20)]
        h.sim.advance(20)
        first = [(await hints(h, task_id))[1] for task_id in ids]
        h.sim.advance(40)
        second = [(await hints(h, task_id))[1] for task_id in ids]
    factors = [h.sim.tasks[task_id].eta_factor for task_id in ids]
    assert len(set(factors)) == 20 and min(factors) < 0.9 and max(factors) > 1.1
    for eta_then, eta_now, factor in zip(first, second, factors, strict=True):
        assert abs(eta_then - factor * 80) <= 1  # rounded up to whole seconds
        assert abs((eta_then - eta_now) - factor * 40) <= 1  # counts down `factor` times as fast


@pytest.mark.anyio
async def test_noisy_eta_draws_shift_no_task_ids_or_durations() -> None:
    async with running(time_scale=1.0, duration=Simulator.lognormal(40, 0.3)) as plain:
        plain_ids = [await plain.create() for _ in range(5)]
    async with running(time_scale=1.0, duration=Simulator.lognormal(40, 0.3), eta="noisy") as noisy:
        noisy_ids = [await noisy.create() for _ in range(5)]
    assert plain_ids == noisy_ids
    assert [plain.sim.tasks[i].ends_at - plain.sim.tasks[i].submitted_at for i in plain_ids] == pytest.approx(
        [noisy.sim.tasks[i].ends_at - noisy.sim.tasks[i].submitted_at for i in noisy_ids]
    )


@pytest.mark.anyio
async def test_progress_in_steps_or_absent() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, progress="steps", progress_step=25) as h:
        task_id = await h.create()
        seen = []
        for _ in range(4):
            h.sim.advance(20)
            seen.append((await hints(h, task_id))[2])
        assert seen == [0, 25, 50, 75]
        h.sim.advance(30)
        assert await hints(h, task_id) == ("TASK_STATUS_SUCCEED", 0, 100)
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, progress="absent") as h:
        task_id = await h.create()
        h.sim.advance(90)
        assert (await hints(h, task_id))[2] == 0


@pytest.mark.anyio
async def test_a_busy_account_queues_tasks_without_progress_until_a_place_frees() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, max_processing_per_key=2) as h:
        first, _, third = [await h.create() for _ in range(3)]
        h.sim.advance(50)
        assert (await hints(h, first))[0] == "TASK_STATUS_PROCESSING"
        assert await hints(h, third) == ("TASK_STATUS_QUEUED", 150, 0)  # waits 50 s more, then runs 100 s
        h.sim.advance(60)
        assert (await hints(h, first))[0] == "TASK_STATUS_SUCCEED"
        assert await hints(h, third) == ("TASK_STATUS_PROCESSING", 90, 10)


def test_hint_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="eta"):
        Simulator(eta="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress"):
        Simulator(progress="jumpy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress_step"):
        Simulator(progress_step=0)
    with pytest.raises(ValueError, match="max_processing_per_key"):
        Simulator(max_processing_per_key=0)
