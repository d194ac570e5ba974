"""The documented errors that mean something apart: a failed task's 500 TASK_FAILED, moderation refusals,
the router's 503/504 surge protection, statuses the library does not know; against the simulator's fault
modes and small servers."""

from __future__ import annotations

import itertools
import json

import pytest
from aiohttp import web

from pixverse_async import (
    BadRequestError,
    ContentPolicyError,
    EventKind,
    ImageToVideo,
    JobEvent,
    PixVerseClient,
    PollPolicy,
    RetryPolicy,
    ServerError,
    SubmissionUncertainError,
    TaskFailedError,
    TaskStatus,
    TextToVideo,
)
from pixverse_async.testing import Fault, InstantClock, Simulator, TaskPlan
from tests.helpers import KEY, SCALE, client_for, tiny_server
from tests.images import png

pytestmark = pytest.mark.anyio
NO_RETRY = RetryPolicy(max_attempts=1)


def api_error(status: int, reason: str, message: str = "") -> web.Response:
    return web.json_response({"code": status, "reason": reason, "message": message, "metadata": {}}, status=status)


async def test_a_poll_answered_500_task_failed_ends_the_task_failed_at_once_with_its_reason() -> None:
    polls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        return api_error(500, "TASK_FAILED", "generation failed: unsafe output")

    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, clock=InstantClock()) as client:
        result = await client.get_task("t1")
        assert result.status is TaskStatus.FAILED and "unsafe output" in result.reason
        with pytest.raises(TaskFailedError, match="unsafe output") as caught:
            await client.wait("t2")
    assert caught.value.task_id == "t2"
    assert polls == 2  # one each: not retried as a server error (it was 6 polls, then a ServerError)


async def test_task_failed_answers_end_failing_tasks_within_one_poll_in_a_run() -> None:
    def plan(body: object) -> TaskPlan:
        prompt = str(body["prompt"]) if isinstance(body, dict) else ""
        return TaskPlan(duration=20, fail_reason="unsafe" if prompt.startswith("fail") else None)

    jobs = [TextToVideo(f"{'fail' if i % 2 else 'ok'} {i}") for i in range(20)]
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, task_failed_rate=1.0) as sim,
        client_for(sim) as client,
        client.as_completed(jobs) as results,
    ):
        outcomes = [result async for result in results]
    failed = [result for result in outcomes if not result.ok]
    assert len(failed) == 10 and results.counts.failed == 10 and results.counts.succeeded == 10
    assert all(isinstance(result.error, TaskFailedError) and "unsafe" in str(result.error) for result in failed)
    assert sim.counters.errors_by_reason["TASK_FAILED"] == 10  # one answer per failed task: none retried
    assert sim.counters.polls_after_terminal == 0


@pytest.mark.parametrize("kind", ["illegal_prompt", "illegal_image"])
async def test_moderation_refusals_are_content_policy_errors_counted_apart(kind: str) -> None:
    image = png(400, 300)
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10) as sim, client_for(sim) as client:
        sim.inject(Fault("submit", kind))  # type: ignore[arg-type]
        with pytest.raises(ContentPolicyError) as caught:
            await client.submit(ImageToVideo("a cat", image))
        assert isinstance(caught.value, BadRequestError)
        reasons = {"illegal_prompt": "ILLEGAL_PROMPT", "illegal_image": "ILLEGAL_IMAGE_CONTENT"}
        assert caught.value.reason == reasons[kind]
        sim.inject(Fault("submit", kind, times=2))  # type: ignore[arg-type]
        jobs = [ImageToVideo(f"cat {i}", image) for i in range(5)]
        async with client.as_completed(jobs) as results:
            outcomes = [result async for result in results]
    assert sum(isinstance(result.error, ContentPolicyError) for result in outcomes) == 2
    counts = results.counts
    assert (counts.content_refused, counts.failed, counts.succeeded, counts.done) == (2, 0, 3, 5)
    assert sim.counters.tasks_created == 3  # nothing was created, or billed, for the refusals


@pytest.mark.parametrize("status", [503, 504])
async def test_surge_answers_on_polls_slow_every_call_down_like_rate_limits(status: int) -> None:
    """Three 503/504 in a row are evidence of overload: the next call waits a pause, as after three 429s."""
    answers = [api_error(status, "SERVICE_UNAVAILABLE") for _ in range(3)]

    async def handler(request: web.Request) -> web.Response:
        if answers:
            return answers.pop()
        return web.json_response({"task": {"task_id": "t", "status": "TASK_STATUS_PROCESSING"}})

    clock = InstantClock()
    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, clock=clock, retry=NO_RETRY) as client:
        for _ in range(3):
            with pytest.raises(ServerError):
                await client.get_task("t")
        before = clock.now()
        await client.get_task("t")
    assert clock.now() - before >= 0.25  # before: 0, the next call went at once


async def test_surge_answers_on_submissions_slow_the_next_ones_and_stay_uncertain() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10) as sim,
        client_for(sim, clock=InstantClock()) as client,
    ):
        clock = client.clock
        sim.inject(Fault("submit", "surge", times=3))
        for i in range(3):
            with pytest.raises(SubmissionUncertainError):  # a 5xx on a POST may have created a task
                await client.submit(TextToVideo(f"x {i}"))
        assert isinstance(clock, InstantClock)
        clock.sleeps.clear()
        await client.submit(TextToVideo("after the surge"))
        # The pacer's pause, backoff(1) of the default RetryPolicy (before: only the wait for a free slot).
        assert any(0.25 <= seconds <= 0.5 for seconds in clock.sleeps), clock.sleeps
    assert sim.counters.tasks_created == 1


@pytest.mark.parametrize("unknown", ["TASK_STATUS_UNKNOWN", "TASK_STATUS_EXPIRED", "", "42"])
async def test_an_unknown_status_keeps_the_task_polled_with_backoff_and_visible(unknown: str) -> None:
    polls: list[float] = []
    clock = InstantClock()

    async def handler(request: web.Request) -> web.Response:
        polls.append(clock.now())
        status = unknown if len(polls) <= 5 else "TASK_STATUS_SUCCEED"
        body = {"task": {"task_id": "t", "status": status}, "videos": []}
        return web.Response(text=json.dumps(body), content_type="application/json")

    policy = PollPolicy(min_interval=1.0)
    async with tiny_server(handler) as url, PixVerseClient(KEY, base_url=url, clock=clock, polling=policy) as client:
        seen = [result async for result in client.watch("t")]
    assert [result.status for result in seen] == [TaskStatus.UNKNOWN] * 5 + [TaskStatus.SUCCEED]
    assert [result.raw_status for result in seen[:5]] == [unknown] * 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # never faster than the floor: no hot loop


async def test_an_unknown_status_shows_in_the_progress_events_of_a_run_and_never_ends_it() -> None:
    polls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal polls
        polls += 1
        status = "TASK_STATUS_EXPIRED" if polls <= 3 else "TASK_STATUS_SUCCEED"
        return web.json_response({"task": {"task_id": "t", "status": status}})

    events: list[JobEvent] = []
    async with (
        tiny_server(handler) as url,
        PixVerseClient(KEY, base_url=url, clock=InstantClock(), polling=PollPolicy(min_interval=1.0)) as client,
        client.as_completed(["t"], on_event=events.append) as results,
    ):
        outcomes = [result async for result in results]
    progress = [event for event in events if event.kind is EventKind.PROGRESS]
    assert [(event.status, event.raw_status) for event in progress] == [(TaskStatus.UNKNOWN, "TASK_STATUS_EXPIRED")] * 3
    assert [result.status for result in outcomes] == [TaskStatus.SUCCEED] and polls == 4
