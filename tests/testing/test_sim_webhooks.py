"""Webhooks sent when tasks end."""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

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
    Fault,
    Simulator,
    TaskPlan,
)
from tests.testing.sim_harness import (
    running,
    wait_until,
)

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
    """A webhook receiver: records each POST, then answers `statuses` in order (200 once used up).

    `delays` (real seconds, in order) make answers slow; requests to a path ending in `/slow` wait for
    `hang` before answering.
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
    """Serve `receiver` on loopback; yield its `/hook` URL."""
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    async with TestServer(app) as server:  # handlers are cancelled when the client goes away
        yield str(server.make_url("/hook"))


def hook(url: str) -> dict[str, Any]:
    return {"webhook": {"url": url}}


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
        options: dict[str, Any] = {"time_scale": 0.01, "duration": 0.0, "seed": 5, "webhook_drop_rate": drop_rate}
        async with receiving(receiver) as url, running(**options) as h:
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
