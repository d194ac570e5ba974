"""`as_completed`: every job once, limits respected, account errors, early exits, lazy input, events."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from pixverse_async import (
    AsCompleted,
    EventKind,
    ImageToVideo,
    InsufficientBalanceError,
    InvalidRequestError,
    JobEvent,
    JobResult,
    PixVerseClient,
    PollPolicy,
    RetryPolicy,
    SubmissionUncertainError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    Timeouts,
)
from pixverse_async._budget import BudgetSettings, LocalBudget, Slot
from pixverse_async.testing import Fault, ScaledClock, Simulator, TaskPlan
from tests.helpers import KEY, SCALE, client_for, eventually, live_tasks, tiny_server
from tests.images import png

pytestmark = pytest.mark.anyio
URL = "https://example.com/frame.png"


def plan(body: object) -> TaskPlan | None:
    words = str(body["prompt"]).split()  # type: ignore[index]
    if words[0] == "fail":
        return TaskPlan(duration=float(words[1]), fail_reason="moderation")
    if words[0] == "run":
        return TaskPlan(duration=float(words[1]))
    return None


def jobs(count: int, prompt: str = "run 5") -> list[ImageToVideo]:
    return [ImageToVideo(f"{prompt} #{i}", URL) for i in range(count)]


async def collect(client: PixVerseClient, inputs: object, **options: object) -> list[JobResult]:
    async with client.as_completed(inputs, **options) as results:  # type: ignore[arg-type]
        return [result async for result in results]


async def test_every_job_is_yielded_once_with_its_outcome(tmp_path: Path) -> None:
    changed = tmp_path / "frame.png"
    changed.write_bytes(png(400, 300))
    shrinking = ImageToVideo("run 1 changed", changed)
    changed.write_bytes(png(10, 10))
    good = jobs(20, "run 3")
    failing = jobs(5, "fail 2")
    slow = ImageToVideo("run 10000 slow", URL)
    not_a_job = 42
    inputs: list[object] = [*good, *failing, slow, shrinking, not_a_job]
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=8) as client:
        results = await collect(client, inputs, timeout=100)
    assert Counter(id(r.request) for r in results) == Counter(id(job) for job in inputs)
    by_request = {id(r.request): r for r in results}
    for job in good:
        result = by_request[id(job)]
        assert result.ok and result.status is TaskStatus.SUCCEED and result.videos and result.error is None
    for job in failing:
        result = by_request[id(job)]
        assert not result.ok and isinstance(result.error, TaskFailedError) and result.error.reason == "moderation"
    timed_out = by_request[id(slow)]
    assert isinstance(timed_out.error, TaskTimeoutError) and timed_out.task_id is not None
    for rejected in (shrinking, not_a_job):
        assert isinstance(by_request[id(rejected)].error, InvalidRequestError)
        assert by_request[id(rejected)].task_id is None
    assert sim.counters.tasks_created == 26
    assert sim.counters.polls_after_terminal == 0


async def test_lost_submission_answers_are_yielded_as_uncertain_and_the_rest_goes_on() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=1) as client:
        sim.inject(Fault("submit", "reset"))
        results = await collect(client, jobs(3))
    uncertain = [r for r in results if isinstance(r.error, SubmissionUncertainError)]
    assert len(uncertain) == 1 and uncertain[0].task_id is None
    assert sum(r.ok for r in results) == 2
    assert sim.counters.tasks_created == 3 and sim.counters.submit_requests == 3


async def test_the_server_never_sees_more_running_tasks_than_the_limit() -> None:
    async with Simulator(time_scale=SCALE, duration=Simulator.lognormal(20, 0.5), seed=3) as sim:
        async with client_for(sim, max_concurrency=7) as client:
            results = await collect(client, jobs(60, "p"))
    assert len(results) == 60 and all(r.ok for r in results)
    assert sim.counters.max_running_by_key[KEY] == 7


async def test_an_account_cap_below_the_limit_costs_few_429s() -> None:
    async with Simulator(time_scale=SCALE, duration=10.0, max_running_per_key=5) as sim:
        async with client_for(sim, max_concurrency=20) as client:
            results = await collect(client, jobs(60, "p"))
    assert all(r.ok for r in results)
    assert sim.counters.tasks_created == 60
    assert sim.counters.rate_limited / 60 < 0.5
    assert sim.counters.max_running_by_key[KEY] == 5


async def test_concurrency_is_shared_with_plain_submit_and_wait() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=4) as client:
        # Long enough that the jobs overlap however slowly a loaded machine submits them (5 API s is 5 ms).
        long_runner = await client.submit(ImageToVideo("run 500 outside", URL))
        results = await collect(client, jobs(12, "run 60"))
        assert (await client.wait(long_runner)).status is TaskStatus.SUCCEED
    assert all(r.ok for r in results)
    assert sim.counters.max_running_by_key[KEY] == 4


async def test_account_wide_errors_stop_submitting_and_are_raised_after_running_jobs() -> None:
    async with Simulator(time_scale=SCALE, plan=plan, balance=3) as sim, client_for(sim, max_concurrency=2) as client:
        seen: list[JobResult] = []
        with pytest.raises(InsufficientBalanceError):
            async with client.as_completed(jobs(50)) as results:
                async for result in results:
                    seen.append(result)
    assert sum(r.ok for r in seen) == 3
    assert all(isinstance(r.error, InsufficientBalanceError) for r in seen if not r.ok)
    assert sim.counters.submit_requests <= 3 + 2
    assert sim.counters.tasks_created == 3


async def test_resuming_by_task_and_task_id() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim:
        async with client_for(sim) as first:
            tasks = [await first.submit(job) for job in jobs(3)]
        async with client_for(sim) as second:
            results = await collect(second, [tasks[0], tasks[1].task_id, tasks[2]])
    assert sorted(r.task_id or "" for r in results) == sorted(t.task_id for t in tasks)
    assert all(r.ok for r in results)
    assert sim.counters.tasks_created == 3


@pytest.mark.parametrize("how", ["break", "exception", "cancel", "plain-async-for-break"])
async def test_leaving_early_stops_everything_and_keeps_the_paid_task_ids(how: str) -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=5) as client:
        before = live_tasks()
        inputs = [ImageToVideo("run 1 quick", URL), *jobs(20, "run 100000")]
        stream = client.as_completed(inputs)
        if how == "break":
            async with stream as results:
                async for _ in results:
                    break
        elif how == "exception":
            with pytest.raises(ZeroDivisionError):
                async with stream as results:
                    async for _ in results:
                        1 / 0  # noqa: B018
        elif how == "cancel":
            with anyio.move_on_after(0.2):
                async with stream as results:
                    async for _ in results:
                        pass
        else:
            gc.disable()  # the plain form must not need the garbage collector, nor a turn of the event loop
            try:
                async for _ in stream:
                    assert client.pending_tasks > 0
                    break
                assert client.pending_tasks == 0  # stopped polling at once: nothing awaited since the break
            finally:
                gc.enable()
        await _settle(client, stream)
        # Once everything has run as far as it can, no task of the run is left that could send anything later
        # (the proof: no real sleep needed), and nothing more is sent however far the simulator's time moves.
        await anyio.wait_all_tasks_blocked()
        assert live_tasks() == before
        assert client.pending_tasks == 0
        requests_after_exit = sim.counters.poll_requests + sim.counters.submit_requests
        sim.advance(1000)
        await anyio.wait_all_tasks_blocked()
        assert sim.counters.poll_requests + sim.counters.submit_requests == requests_after_exit
        if how != "plain-async-for-break":
            unfinished = {task.task_id for task in stream.unfinished}
            created = set(sim.tasks)
            yielded = created - unfinished
            assert unfinished <= created and len(yielded) <= 1
            assert all(task.request is not None for task in stream.unfinished)


async def test_leaving_during_a_first_poll_made_by_a_submitter_stops_it_at_once() -> None:
    poll_on_the_wire = anyio.Event()
    answer_polls = anyio.Event()
    created = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal created
        if request.method == "POST":
            created += 1
            return web.json_response({"task_id": f"t{created}"})
        poll_on_the_wire.set()
        await answer_polls.wait()
        return web.json_response({"task": {"task_id": request.query["task_id"], "status": "TASK_STATUS_SUCCEED"}})

    policy = PollPolicy(first_poll_after=0)
    async with (
        tiny_server(handler) as url,
        PixVerseClient(
            KEY,
            base_url=url,
            clock=ScaledClock(SCALE),
            polling=policy,
            max_concurrency=1,
            timeouts=Timeouts(read=3),  # were the poll not cancelled, leaving would wait this long for it
        ) as client,
    ):
        before = live_tasks()
        stream = client.as_completed(jobs(3))

        async def consume() -> None:
            async with stream as results:
                async for _ in results:
                    pass

        with anyio.fail_after(5):  # leaving must not wait for the held poll's answer
            async with anyio.create_task_group() as group:
                group.start_soon(consume)
                await poll_on_the_wire.wait()
                group.cancel_scope.cancel()
        await _settle(client, stream)
        assert client.polls_in_flight == 0 and client.pending_tasks == 0
        assert [task.task_id for task in stream.unfinished] == ["t1"]
        assert created == 1
        with anyio.fail_after(5):  # the run's own task winds down on the next turns of the loop
            while live_tasks() != before:
                await anyio.sleep(0.001)
        answer_polls.set()


async def test_leaving_sends_no_new_submission_even_from_a_submitter_woken_at_that_moment() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=2) as client:
        async with client.as_completed(jobs(10, "run 0")) as results:
            # Every submitter waits for the reader: results are unread, nothing runs.
            counts = results.counts
            await eventually(lambda: counts.done >= 2 and counts.submitting == counts.running == 0)
            submitted = sim.counters.submit_requests
            read = 0
            # Reading below the backlog limit wakes the submitters, in the very turn of the loop in which the
            # reader leaves: they must not send another job.
            async for _ in results:
                read += 1
                if results.counts.done - read < client.max_concurrency:
                    break
        await _settle(client, results)
    assert sim.counters.submit_requests == submitted
    assert len(results.unfinished) + len([r for r in results.unread if r.task_id]) == submitted - read


async def test_closing_the_client_mid_submission_still_ends_it_by_the_read_limit() -> None:
    on_the_wire = anyio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.method == "POST":
            on_the_wire.set()
            await anyio.sleep(3)  # far past the read limit: only the client's deadline ends it sooner
        return web.json_response({"task_id": "t1"})

    class Leave(Exception):
        pass

    leaving_at = 0.0

    async def leave_once_on_the_wire() -> None:
        nonlocal leaving_at
        await on_the_wire.wait()
        leaving_at = anyio.current_time()
        raise Leave

    async with tiny_server(handler) as url:
        client = PixVerseClient(KEY, base_url=url, clock=ScaledClock(SCALE), timeouts=Timeouts(read=0.2))
        # A plain `async for` left by an exception: the run is still submitting when the client closes, and its
        # submission, shielded to learn the task id, must still end by its deadline.
        with pytest.raises(ExceptionGroup):
            async with client, anyio.create_task_group() as group:
                group.start_soon(leave_once_on_the_wire)
                async for _ in client.as_completed(jobs(1)):
                    pass
        closed_at = anyio.current_time()
    assert closed_at - leaving_at < 1.0


async def _settle(client: PixVerseClient, stream: AsCompleted) -> None:
    """Wait until a left run has wound down: a submission already on the wire may still get its answer."""
    with anyio.fail_after(5):
        while client.pending_tasks or client.polls_in_flight or stream.counts.submitting:
            await anyio.sleep(0.001)


async def test_lazy_input_of_100000_requests_stays_flat() -> None:
    pulled = 0
    alive: weakref.WeakSet[ImageToVideo] = weakref.WeakSet()
    peak_alive = 0

    async def generate() -> AsyncIterator[ImageToVideo]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            request = ImageToVideo(f"p {i}", URL)
            alive.add(request)
            yield request

    async with Simulator(time_scale=SCALE, duration=0.0) as sim, client_for(sim, max_concurrency=16) as client:
        received = 0
        async with client.as_completed(generate()) as results:
            async for result in results:
                assert result.ok
                del result
                received += 1
                peak_alive = max(peak_alive, len(alive))
                if received == 2_000:
                    break
    # In flight at most: a running slot per max_concurrency, as many results waiting, and the one in hand.
    assert pulled <= received + 2 * 16 + 1
    assert peak_alive <= 2 * 16 + 2


async def test_events_report_submissions_retries_progress_and_ends() -> None:
    events: list[JobEvent] = []
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=3) as client:
        sim.inject(Fault("submit", "rate_limit", retry_after=1))
        results = await collect(client, [*jobs(3, "run 30"), ImageToVideo("fail 5", URL)], on_event=events.append)
    kinds = Counter(event.kind for event in events)
    assert kinds[EventKind.SUBMITTING] == kinds[EventKind.SUBMITTED] == 4
    assert kinds[EventKind.RETRIED] == 1
    assert kinds[EventKind.SUCCEEDED] == 3 and kinds[EventKind.FAILED] == 1
    assert kinds[EventKind.PROGRESS] >= 3
    progress = [e for e in events if e.kind is EventKind.PROGRESS]
    assert all(e.task_id and e.progress_percent is not None for e in progress)
    assert len(results) == 4


async def test_batch_counts_and_a_broken_event_callback_does_not_stop_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: JobEvent) -> None:
        if event.kind is not EventKind.SUBMITTING:
            raise RuntimeError("progress bar bug")

    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim) as client:
        async with client.as_completed([*jobs(4), ImageToVideo("fail 1", URL)], on_event=broken) as results:
            got = [r async for r in results]
            counts = results.counts
    assert len(got) == 5
    assert (counts.succeeded, counts.failed, counts.running, counts.submitting, counts.done) == (4, 1, 0, 0, 5)
    assert "progress bar bug" in caplog.text


async def test_as_completed_and_wait_share_one_poller() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim) as client:
        task = await client.submit(ImageToVideo("run 40", URL))
        async with anyio.create_task_group() as group:
            group.start_soon(client.wait, task)
            group.start_soon(collect, client, [task])
    assert sim.counters.polls_by_task[task.task_id] <= 4


async def test_resuming_a_task_that_is_awaited_shares_its_polls_and_its_slot() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=2) as client:
        task = await client.submit(ImageToVideo("run 40", URL))
        async with anyio.create_task_group() as group:
            group.start_soon(client.wait, task)
            await anyio.wait_all_tasks_blocked()
            (resumed,) = await collect(client, [task])
        polls_of_the_task = sim.counters.polls_by_task[task.task_id]
        later = await collect(client, jobs(4, "run 5"))
    assert resumed.ok and all(r.ok for r in later)
    assert polls_of_the_task <= 4  # one record's polls (3 here); two records made 6
    # Both slots came back: two of the later jobs ran side by side, never three.
    assert sim.counters.max_running_by_key[KEY] == 2


async def test_first_polls_made_right_after_submitting_respect_the_poll_limits() -> None:
    server = OverlappingAnswers(held_method="GET")
    policy = PollPolicy(first_poll_after=0, max_polls_per_second=None, max_polls_in_flight=3)
    async with (
        tiny_server(server.handle) as url,
        PixVerseClient(
            KEY,
            base_url=url,
            clock=ScaledClock(SCALE),
            max_concurrency=30,
            max_submissions_in_flight=10,
            polling=policy,
        ) as client,
    ):
        results = await collect(client, jobs(30))
    assert len(results) == 30 and all(r.ok for r in results)
    assert 2 <= server.peak <= 3


async def test_a_lone_429_on_a_poll_delays_its_task_and_three_in_a_row_pause_every_poll() -> None:
    clock = ScaledClock(SCALE)
    polls: list[tuple[float, str]] = []
    refused: list[tuple[float, str]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.method == "POST":
            handler.count += 1  # type: ignore[attr-defined]
            return web.json_response({"task_id": f"t{handler.count}"})  # type: ignore[attr-defined]
        now, task_id = clock.now(), request.query["task_id"]
        polls.append((now, task_id))
        if len(polls) in (3, 6, 7, 8):  # a lone 429, then three in a row
            refused.append((now, task_id))
            return web.json_response(
                {"code": 429, "reason": "RATE_LIMIT_EXCEEDED"}, status=429, headers={"Retry-After": "20"}
            )
        finished = len(polls) > 14
        status = "TASK_STATUS_SUCCEED" if finished else "TASK_STATUS_PROCESSING"
        return web.json_response({"task": {"task_id": task_id, "status": status, "eta": 1}})

    handler.count = 0  # type: ignore[attr-defined]
    # One poll in flight at a time, so that no poll was already on its way when a 429 came back.
    policy = PollPolicy(first_poll_after=0, min_interval=1, max_polls_per_second=None, max_polls_in_flight=1)
    async with tiny_server(handler) as url:
        async with PixVerseClient(KEY, base_url=url, clock=clock, polling=policy) as client:
            await collect(client, jobs(5))
    (lone_at, lone_task), _, _, (third_at, _) = refused
    after_lone = [task for at, task in polls if lone_at < at < lone_at + 20]
    assert after_lone, "a lone 429 (a busy router answers some at random) paused every poll"
    assert lone_task not in after_lone, "the task whose poll was refused was polled before its Retry-After"
    during_pause = [round(at - third_at, 3) for at, _ in polls if third_at < at < third_at + 20]
    assert during_pause == [], "polls went on after three 429s in a row (a rate limit)"


async def test_bad_arguments_are_rejected_before_anything_runs() -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match="timeout"):
            client.as_completed(jobs(1), timeout=-1)
        with pytest.raises(InvalidRequestError, match="iterable"):
            client.as_completed(42)  # type: ignore[arg-type]
    assert sim.counters.submit_requests == 0


async def test_a_callback_refusing_submitting_stops_the_run_before_that_job_is_sent() -> None:
    class JournalFull(Exception):
        pass

    def journal(event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTING and str(getattr(event.request, "prompt", "")).endswith("#3"):
            raise JournalFull("disk full")

    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=1) as client:
        seen: list[JobResult] = []
        with pytest.raises(JournalFull):
            async with client.as_completed(jobs(10, "run 1"), on_event=journal) as results:
                async for result in results:
                    seen.append(result)
    assert [str(getattr(r.request, "prompt", "")) for r in seen] == [f"run 1 #{i}" for i in range(3)]
    assert sim.counters.submit_requests == 3


async def test_submissions_on_the_wire_are_bounded_apart_from_running_tasks() -> None:
    server = OverlappingAnswers(held_method="POST")
    async with (
        tiny_server(server.handle) as url,
        PixVerseClient(
            KEY, base_url=url, clock=ScaledClock(SCALE), max_concurrency=40, max_submissions_in_flight=4
        ) as client,
    ):
        results = await collect(client, jobs(40))
    assert len(results) == 40 and server.created == 40
    assert 2 <= server.peak <= 4


class OverlappingAnswers:
    """A server whose answers to one method (`POST` submissions or `GET` polls) are held a moment, so that
    they overlap; it counts the most of them on the wire at once. Every task has succeeded."""

    def __init__(self, held_method: str) -> None:
        self.held_method = held_method
        self.on_the_wire = 0
        self.peak = 0
        self.created = 0

    async def handle(self, request: web.Request) -> web.Response:
        held = request.method == self.held_method
        if held:
            self.on_the_wire += 1
            self.peak = max(self.peak, self.on_the_wire)
            await anyio.sleep(0.005)
            self.on_the_wire -= 1
        if request.method == "POST":
            self.created += 1
            return web.json_response({"task_id": f"t{self.created}"})
        task = {"task_id": request.query["task_id"], "status": "TASK_STATUS_SUCCEED"}
        return web.json_response({"task": task, "videos": []})


async def test_inputs_that_wait_for_each_others_jobs_do_not_starve_retries_at_the_cap() -> None:
    # Four clients of one key share one queue of jobs, as the workers of a shared run do: each client's input
    # takes the next job from the queue, and once it is empty waits for every job of all four to end (one that
    # died would give its jobs back to the queue). The account's cap (5, unknown to them) refuses many first
    # submissions with 429s, whose retries need a slot while the inputs wait: no submitter may sit on a slot
    # while it waits for its input, or the clients wait for each other forever.
    queue = jobs(40, "run 300")
    unfinished, all_ended = len(queue), anyio.Event()

    async def shared_queue() -> AsyncIterator[ImageToVideo]:
        while queue:
            yield queue.pop()
        await all_ended.wait()

    async def worker(client: PixVerseClient) -> None:
        nonlocal unfinished
        async with client.as_completed(shared_queue()) as results:
            async for result in results:
                assert result.ok, result.error
                unfinished -= 1
                if unfinished == 0:
                    all_ended.set()

    async with Simulator(time_scale=SCALE, plan=plan, max_running_per_key=5) as sim:
        with anyio.fail_after(30):  # 40 jobs of 0.3 s, 5 at a time, take 2.4 s: a hang, not a slow machine
            async with contextlib.AsyncExitStack() as stack:
                # Each client learns the cap alone and takes the others' tasks' 429s for a rate limit: retried
                # long enough here that every job gets through.
                patient = RetryPolicy(max_attempts=100, initial_backoff=0.5, max_backoff=2.0)
                clients = [
                    await stack.enter_async_context(client_for(sim, max_concurrency=16, retry=patient))
                    for _ in range(4)
                ]
                async with anyio.create_task_group() as group:
                    for client in clients:
                        group.start_soon(worker, client)
    assert unfinished == 0 and sim.counters.tasks_created == 40
    assert sim.counters.max_running_by_key[KEY] == 5


class CountingBudget:
    """A shared budget that is a LocalBudget underneath, counting the slots it gives out after `ended` is set."""

    def __init__(self) -> None:
        self.ended = False
        self.slots_after_the_end = 0
        self._local: LocalBudget | None = None

    def bind(self, settings: BudgetSettings) -> None:
        self._local = LocalBudget(
            settings.max_concurrency,
            limits=settings.limits,
            max_polls_per_second=settings.max_polls_per_second,
            clock=settings.clock,
            retry=settings.retry,
            rng=settings.rng,
        )

    @property
    def local(self) -> LocalBudget:
        assert self._local is not None, "bound by the client"
        return self._local

    def serve(self, adopt: object) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    submissions = property(lambda self: self.local.submissions)
    task_results = property(lambda self: self.local.task_results)
    cap = property(lambda self: self.local.cap)
    running = property(lambda self: self.local.running)

    async def acquire(self) -> Slot:
        slot = await self.local.acquire()
        self.slots_after_the_end += self.ended
        return slot


async def test_submitters_waiting_for_a_slot_when_the_input_ends_take_none() -> None:
    # Four submitters, four slots: when the last job is taken, the others wait for a slot. The input's end is
    # found by the next submitter to get one; those still waiting are stopped, not served a slot to give back
    # (with a shared budget, each slot is a round trip to its store).
    budget = CountingBudget()

    def inputs() -> Iterator[ImageToVideo]:
        yield from jobs(12, "run 20")
        budget.ended = True

    async with (
        Simulator(time_scale=SCALE, plan=plan) as sim,
        client_for(sim, max_concurrency=4, budget=budget) as client,
    ):
        results = await collect(client, inputs())
    assert all(result.ok for result in results) and len(results) == 12
    assert budget.slots_after_the_end == 0
