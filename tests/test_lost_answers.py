"""Lost submission answers resolved by webhooks: each submission's URL names it (`_lost_answers.py`).

Every test runs the simulator with webhooks posted to an aiohttp receiver in the test (`aiohttp_webhook_handler`)
and loses answers with the simulator's submit faults: `reset` after the task was created (or before, with
`create_task=False`), `slow` past the client's read timeout.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

from pixverse_async import (
    ImageToVideo,
    PixVerseClient,
    SubmissionUncertainError,
    Timeouts,
    UncertainSubmission,
)
from pixverse_async._bulk import EventKind, JobEvent
from pixverse_async._forecast import Forecaster
from pixverse_async._lost_answers import (
    DELIVERY_RETRY_SPAN,
    TOKEN_PARAMETER,
    DeliveryRecord,
    SubmissionTokens,
    token_of,
)
from pixverse_async.testing import Fault, InstantClock, Simulator, TaskPlan
from pixverse_async.web import aiohttp_webhook_handler
from tests.helpers import KEY, SCALE, client_for, run_all, tiny_server
from tests.helpers import url_jobs as jobs

pytestmark = pytest.mark.anyio
# A receiver in this process has 5 ms of real time at SCALE for the API's 5 s: too little on a loaded machine.
ROOMY_WEBHOOK_TIMEOUT = 2000.0
IMAGE = "https://example.com/a.png"


@contextlib.asynccontextmanager
async def receiver_for(route: Callable[[], PixVerseClient | None]) -> AsyncIterator[str]:
    """An aiohttp receiver on a random loopback port, handing each delivery to `route()`'s client (none:
    503); yields the webhook URL."""

    async def handle(request: web.Request) -> web.StreamResponse:
        client = route()
        if client is None:
            return web.Response(status=503)
        return await aiohttp_webhook_handler(client)(request)

    async with tiny_server(handle, "/hook") as base_url:
        yield f"{base_url}/hook"


@contextlib.asynccontextmanager
async def webhooked(sim: Simulator, **options: Any) -> AsyncIterator[PixVerseClient]:
    """An open client of `sim` with webhooks delivered to it."""
    holder: list[PixVerseClient] = []
    async with receiver_for(lambda: holder[0] if holder else None) as hook_url:
        client = client_for(sim, webhook_url=hook_url, **options)
        holder.append(client)
        async with client:
            yield client


def simulator(**options: Any) -> Simulator:
    options.setdefault("duration", 20.0)
    return Simulator(api_keys=(KEY,), time_scale=SCALE, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT, seed=7, **options)


async def test_a_lost_answer_is_found_by_its_delivery_and_the_job_ends_with_its_video() -> None:
    async with simulator() as sim, webhooked(sim) as client:
        sim.inject(Fault("submit", "reset"))  # the first submission's task is created, its answer lost
        results = await run_all(client, jobs(8))
    assert [result.error for result in results] == [None] * 8
    assert all(result.ok for result in results)
    # Each job paid once, and every task created is a job's.
    assert sim.counters.tasks_created == sim.counters.submit_requests == 8
    assert {result.task_id for result in results} == set(sim.tasks)


async def test_without_webhooks_the_same_loss_ends_uncertain_unknown() -> None:
    async with simulator() as sim, client_for(sim) as client:
        sim.inject(Fault("submit", "reset"))
        results = await run_all(client, jobs(8))
    uncertain = [result.error for result in results if isinstance(result.error, SubmissionUncertainError)]
    assert len(uncertain) == 1 and uncertain[0].likely_created is None and uncertain[0].webhook_token is None
    assert sim.counters.tasks_created == 8  # one of them paid for and lost


async def test_submit_waits_for_the_delivery_of_its_lost_answer() -> None:
    async with simulator() as sim, webhooked(sim) as client:
        sim.inject(Fault("submit", "server_error"))  # 500 CREATE_TASK_FAILED after the task was created
        task = await client.submit(ImageToVideo("lost", IMAGE))
        result = await client.wait(task, timeout=600)
    assert task.task_id in sim.tasks and result.status.value == "TASK_STATUS_SUCCEED"
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1


async def test_a_delivery_that_comes_before_the_lost_answer_is_kept_for_it() -> None:
    # The task ends (1 API second: 1 ms) long before the client's read timeout (0.3 real s) gives up its answer.
    async with (
        simulator(duration=1.0) as sim,
        webhooked(sim, timeouts=Timeouts(read=0.3)) as client,
    ):
        sim.inject(Fault("submit", "slow", delay=10_000))
        with anyio.fail_after(30):
            results = await run_all(client, jobs(1))
    assert results[0].ok and results[0].task_id in sim.tasks
    assert sim.counters.webhooks_delivered == 1


async def test_no_delivery_after_reliable_ones_is_judged_not_created() -> None:
    async with simulator(duration=5.0) as sim, webhooked(sim) as client:
        first = await run_all(client, jobs(30, "warm"))
        assert all(result.ok for result in first)
        # The connection is dropped before the body is read: nothing is created, though the client cannot know.
        sim.inject(Fault("submit", "reset", create_task=False))
        with anyio.fail_after(60):
            [result] = await run_all(client, jobs(1, "never created"))
    error = result.error
    assert isinstance(error, SubmissionUncertainError)
    assert error.likely_created is False
    assert error.missing_chance is not None and error.missing_chance <= 0.05
    assert re.fullmatch(r"[0-9a-f]{32}", error.webhook_token or "")
    assert "30 of 30 ended tasks' deliveries arrived" in str(error) and "likely not created" in str(error)
    assert "learnt p99 duration" in str(error)
    assert sim.counters.tasks_created == 30


async def test_too_few_deliveries_measured_judge_nothing() -> None:
    async with simulator(duration=5.0) as sim, webhooked(sim) as client:
        sim.inject(Fault("submit", "reset", create_task=False))
        with anyio.fail_after(60):
            [result] = await run_all(client, jobs(1))
    assert isinstance(result.error, SubmissionUncertainError)
    assert result.error.likely_created is None
    assert "too few to judge" in str(result.error) and "no duration learnt yet" in str(result.error)


async def test_where_deliveries_go_missing_a_created_task_is_never_judged_not_created() -> None:
    # Half the deliveries are lost: lost answers whose task exists may get no delivery, and must not be
    # called "not created".
    async with simulator(duration=5.0, webhook_drop_rate=0.5) as sim, webhooked(sim) as client:
        warm = await run_all(client, jobs(30, "warm"))
        sim.inject(Fault("submit", "reset", times=6))
        with anyio.fail_after(60):
            results = await run_all(client, jobs(6, "lost"))
    assert all(result.ok for result in warm)
    found = [result for result in results if result.ok]
    uncertain = [result.error for result in results if isinstance(result.error, SubmissionUncertainError)]
    assert len(found) + len(uncertain) == 6
    assert uncertain and all(error.likely_created is None for error in uncertain)
    assert all("deliveries go missing here" in str(error) for error in uncertain)
    assert sim.counters.tasks_created == 36


async def test_a_run_left_while_a_lost_answer_waits_reports_the_task_its_delivery_names() -> None:
    tokens: list[str] = []

    def keep_token(event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTING and event.webhook_token is not None:
            tokens.append(event.webhook_token)

    # The task ends 300 API s in: long after the run was left, and after any short grace for its token.
    async with simulator(duration=300.0) as sim, webhooked(sim) as client:
        sim.inject(Fault("submit", "reset"))
        async with client.as_completed(jobs(1), on_event=keep_token) as results:
            with anyio.move_on_after(0.02):  # left well before the task's end (300 ms)
                async for _ in results:
                    pass
        assert results.unfinished == [] and client.abandoned_tasks == []
        with anyio.fail_after(30):
            while not client.abandoned_tasks:
                await anyio.sleep(0.005)
        [task] = client.abandoned_tasks
    assert task.task_id in sim.tasks and len(tokens) == 1


async def test_an_uncertain_submission_left_by_an_earlier_run_is_resumed_by_its_token() -> None:
    tokens: list[str] = []
    current: list[PixVerseClient] = []

    def keep_token(event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTING and event.webhook_token is not None:
            tokens.append(event.webhook_token)

    request = ImageToVideo("resumed", IMAGE)
    async with (
        simulator(duration=200.0) as sim,
        receiver_for(lambda: current[-1] if current else None) as hook_url,
    ):
        sim.inject(Fault("submit", "reset"))
        earlier = client_for(sim, webhook_url=hook_url)
        current.append(earlier)
        async with earlier, earlier.as_completed([request], on_event=keep_token) as results:
            with anyio.move_on_after(0.02):
                async for _ in results:
                    pass
        later = client_for(sim, webhook_url=hook_url)
        current.append(later)
        async with later:
            with anyio.fail_after(30):
                [result] = await run_all(later, [UncertainSubmission(request, tokens[0], key="row 1")])
    assert result.ok and result.task_id in sim.tasks and result.key == "row 1"
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1


async def test_an_uncertain_submission_whose_delivery_may_have_been_missed_is_never_judged_not_created() -> None:
    # 30 reliable deliveries would judge a submission without one "not created" (as the first shows); one
    # whose delivery may have come while nobody listened (an earlier run killed) stays unknown.
    never_sent = ImageToVideo("left by a killed run", IMAGE)
    async with simulator(duration=5.0) as sim, webhooked(sim) as client:
        warm = await run_all(client, jobs(30, "warm"))
        with anyio.fail_after(60):
            judged, unheard = await run_all(
                client,
                [
                    UncertainSubmission(never_sent, "0" * 32, key="heard"),
                    UncertainSubmission(never_sent, "1" * 32, key="unheard", delivery_may_have_been_missed=True),
                ],
            )
    assert all(result.ok for result in warm)
    results = {result.key: result.error for result in (judged, unheard)}
    assert isinstance(results["heard"], SubmissionUncertainError) and results["heard"].likely_created is False
    missed = results["unheard"]
    assert isinstance(missed, SubmissionUncertainError)
    assert missed.likely_created is None and missed.missing_chance is None
    assert "may have been sent while nobody listened" in str(missed) and "unknown" in str(missed)
    assert sim.counters.submit_requests == 30
    with pytest.raises(ValueError, match="delivery_may_have_been_missed"):
        UncertainSubmission(never_sent, "0" * 32, delivery_may_have_been_missed=1)  # type: ignore[arg-type]


async def test_a_resumed_run_waits_for_a_lost_delivery_only_until_its_kind_is_learnt() -> None:
    # A fresh client knows no duration: the wait starts at LOST_ANSWER_HOLD (600 s) plus the retry span, and
    # shrinks to twice the learnt p99 plus that span once 8 tasks of the kind have ended. (Taken
    # after the 20 others, while they run: taken first, it would hold the slow start's one slot meanwhile.)
    async with simulator(duration=5.0) as sim, webhooked(sim, max_concurrency=32) as client:
        started = sim.now()
        ended_at: list[float] = []

        def note_end(event: JobEvent) -> None:
            if event.kind is EventKind.FAILED:
                ended_at.append(sim.now())

        resumed = UncertainSubmission(ImageToVideo("warm 0", IMAGE), "0" * 32, key="resumed")
        with anyio.fail_after(60):
            results = await run_all(client, [*jobs(20, "warm"), resumed], on_event=note_end)
    [uncertain] = [result for result in results if result.key == "resumed"]
    assert isinstance(uncertain.error, SubmissionUncertainError)
    assert "learnt p99 duration of its kind is" in str(uncertain.error)
    assert ended_at[0] - started < 600  # 675 s if the deadline were kept from before anything was learnt


async def test_a_resumed_task_whose_delivery_went_to_an_earlier_run_is_polled_at_once() -> None:
    # The task ended, and its delivery was answered, before this client knew of it: with webhooks on, it
    # must not wait for a delivery (it waited for the webhook fallback, 78 s here, while nothing is learnt).
    roomy = Simulator(api_keys=(KEY,), time_scale=0.01, webhook_timeout=ROOMY_WEBHOOK_TIMEOUT, seed=7, duration=5.0)
    async with roomy as sim, webhooked(sim) as earlier:
        [done] = await run_all(earlier, jobs(1))
        async with webhooked(sim) as later:
            resumed_at = sim.now()
            with anyio.fail_after(30):
                [result] = await run_all(later, [done.task_id])
            took = sim.now() - resumed_at
    assert result.ok and result.task_id == done.task_id
    assert took < 40, took


async def test_an_uncertain_submission_needs_webhooks_and_a_token_of_the_clients_making() -> None:
    with pytest.raises(ValueError, match="webhook_token"):
        UncertainSubmission(ImageToVideo("x", IMAGE), "not-a-token")
    async with simulator() as sim, client_for(sim) as client:
        [result] = await run_all(client, [UncertainSubmission(ImageToVideo("x", IMAGE), "0" * 32)])
    assert isinstance(result.error, ValueError) and "webhook_url" in str(result.error)
    assert sim.counters.submit_requests == 0


async def test_a_delivery_names_its_submission_only_by_a_token_of_the_right_shape() -> None:
    token = "0123456789abcdef" * 2
    assert token_of(f"/hook?a=1&{TOKEN_PARAMETER}={token}") == token
    assert token_of(f"https://me.example/hook?{TOKEN_PARAMETER}={token}#x") == token
    assert token_of(f"{TOKEN_PARAMETER}={token}") == token
    assert token_of(f"/hook?{TOKEN_PARAMETER}={token.upper()}") is None
    assert token_of(f"/hook?{TOKEN_PARAMETER}={token}0") is None
    assert token_of("/hook") is None and token_of(None) is None


async def test_the_token_goes_into_the_webhook_urls_query_before_its_fragment() -> None:
    urls = []
    for webhook_url in ("https://me.example/hook", "https://me.example/hook?x=1", "https://me.example/h#frag"):
        async with simulator() as sim:
            client = client_for(sim, webhook_url=webhook_url)
            async with client:
                await client.submit(ImageToVideo("x", IMAGE))
            [task] = sim.tasks.values()
            urls.append(task.request["extra"]["webhook"]["url"])
    hexes = "[0-9a-f]{32}"
    assert re.fullmatch(rf"https://me\.example/hook\?{TOKEN_PARAMETER}={hexes}", urls[0])
    assert re.fullmatch(rf"https://me\.example/hook\?x=1&{TOKEN_PARAMETER}={hexes}", urls[1])
    assert re.fullmatch(rf"https://me\.example/h\?{TOKEN_PARAMETER}={hexes}#frag", urls[2])


def test_deliveries_are_counted_missed_only_once_they_could_no_longer_come() -> None:
    record = DeliveryRecord()
    record.ended("announced", announced=True, now=0.0)
    record.ended("late", announced=False, now=1.0)
    record.ended("never", announced=False, now=2.0)
    record.late_delivery("late")
    assert record.counts(now=10.0) == (0, 0)  # none settled yet: their deliveries may still come
    assert record.counts(now=1000.0) == (2, 1)


async def test_a_lost_answer_waiting_on_a_fresh_clients_first_slot_does_not_stall_the_others() -> None:
    # Until the cap is known, a client has one more slot out than tasks accepted: a first submission whose
    # answer is lost must not keep the others waiting for its delivery (here 500 API s away).
    def plan(body: Any) -> TaskPlan:
        return TaskPlan(duration=500.0 if body["prompt"] == "long" else 5.0)

    async with simulator(plan=plan) as sim, webhooked(sim) as client:
        sim.inject(Fault("submit", "reset"))
        with anyio.fail_after(60):
            results = await run_all(client, [ImageToVideo("long", IMAGE), *jobs(5, "short")])
    assert all(result.ok for result in results)
    assert [result.request.prompt for result in results][-1] == "long"  # type: ignore[union-attr]
    assert sim.counters.tasks_created == sim.counters.submit_requests == 6


def test_a_token_given_up_mid_wait_is_kept_as_long_as_its_wait_would_have_lasted() -> None:
    clock = InstantClock()
    found: list[str] = []
    tokens = SubmissionTokens(
        "https://me.example/hook",
        clock=clock,
        forecaster=Forecaster(prior_median=40.0, prior_sigma=1.0),
        record=DeliveryRecord(),
        on_orphan_found=lambda task_id, request: found.append(task_id),
    )
    left = [tokens.issue()[0] for _ in range(70)]
    for token in left:
        tokens.given_up(token, None)  # the caller left while its answer was awaited
    judged = tokens.issue()[0]
    clock.current += 2 * DELIVERY_RETRY_SPAN
    tokens.given_up(judged, None, judged=True)  # past 64 kept tokens: the stale ones are swept
    clock.current += 2 * DELIVERY_RETRY_SPAN
    tokens.given_up(tokens.issue()[0], None, judged=True)
    # A task of an unlearnt kind may run 600 s: its delivery still names a billed task.
    assert all(tokens.received(token, f"task {n}") for n, token in enumerate(left))
    assert not tokens.received(judged, "judged")  # its wait was over: 75 s more, then forgotten
    assert found == [f"task {n}" for n in range(70)]
