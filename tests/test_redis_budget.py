"""RedisBudget: one account's slots shared by worker processes through a real redis-server.

Each worker is a process (`tests/redis_worker.py`) with its own client against one simulator in this
process; time is the simulator's, scaled, so that a lease of 10 s lasts 0.2 s of real time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis

from pixverse_async import BudgetUnavailableError, ImageToVideo, PixVerseClient
from pixverse_async.redis import RedisBudget
from pixverse_async.testing import Fault, RedisServer, ScaledClock, Simulator, TaskPlan

from .helpers import KEY

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SCALE = 0.02  # real seconds per API second
#: Real seconds a worker process may take to start, or a run to end, on a loaded machine.
PROCESS_DEADLINE = 60.0
IMAGE_URL = "https://example.com/first-frame.png"


class Worker:
    """One `tests.redis_worker` process, its JSON lines collected as they come."""

    def __init__(self, process: anyio.abc.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.events.append(json.loads(line))
                self._changed.set()
        self._changed.set()

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk.decode(errors="replace")
            self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        with anyio.fail_after(PROCESS_DEADLINE):
            while not condition():
                if self.process.returncode is not None and not condition():
                    raise AssertionError(
                        f"worker {self.name} exited ({self.process.returncode}) before {what}: "
                        f"{self.events[-3:]} {self.stderr[-3000:]}"
                    )
                self._changed = anyio.Event()
                with anyio.move_on_after(0.2):  # also looks at the exit code now and then
                    await self._changed.wait()

    @property
    def done(self) -> dict[str, Any]:
        (done,) = self.of("done")
        return done


@pytest.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """Start worker processes (`await start(sim, name, ...options)`); all are stopped at the end."""
    started: list[Worker] = []
    async with anyio.create_task_group() as group:

        async def start(sim: Simulator, name: str, **options: Any) -> Worker:
            command = [
                sys.executable,
                "-m",
                "tests.redis_worker",
                sim.base_url,
                redis_server.url,
                "--scale",
                str(SCALE),
            ]
            command += ["--prompt", name]
            for option, value in options.items():
                flag = "--" + option.replace("_", "-")
                command += [flag] if value is True else [flag, str(value)]
            process = await anyio.open_process(command, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
            worker = Worker(process, name)
            started.append(worker)
            group.start_soon(worker.read)
            group.start_soon(worker.read_stderr)
            return worker

        try:
            yield start
        finally:
            for worker in started:
                if worker.process.returncode is None:
                    worker.process.kill()
                await worker.process.wait()


async def finished(*running: Worker) -> None:
    for worker in running:
        await worker.until(lambda worker=worker: bool(worker.of("done")), "finishing its jobs")  # type: ignore[misc]
        assert worker.done["failed"] == [], worker.done["failed"]


async def go_together(*held: Worker) -> None:
    """Let workers started with hold=True submit at once, as workers started together do."""
    for worker in held:
        await worker.until(lambda worker=worker: bool(worker.of("open")), "opening")  # type: ignore[misc]
    for worker in held:
        assert worker.process.stdin is not None
        await worker.process.stdin.send(b"go\n")


def paid_once(sim: Simulator, prompts: int) -> None:
    by_prompt = sim.counters.tasks_created_by_prompt
    assert len(by_prompt) == prompts and set(by_prompt.values()) == {1}, by_prompt


async def test_worker_processes_never_run_more_than_max_concurrency_in_all(workers: Any) -> None:
    async with Simulator(time_scale=SCALE, duration=3.0, seed=1) as sim:
        running = [await workers(sim, f"w{n}", jobs=10, max_concurrency=4) for n in range(3)]
        await finished(*running)
    assert sim.counters.max_running_by_key[KEY] == 4
    assert sim.counters.rate_limited == 0
    paid_once(sim, 30)


async def test_workers_not_told_the_cap_learn_it_together_with_few_429s(workers: Any) -> None:
    async with Simulator(time_scale=SCALE, duration=3.0, max_running_per_key=4, seed=2) as sim:
        running = [await workers(sim, f"w{n}", jobs=12, max_concurrency=8, hold=True) for n in range(3)]
        await go_together(*running)
        await finished(*running)
    paid_once(sim, 36)
    # Each worker alone slow-starts, learns the cap and probes it on its own, three at once: a shared slow
    # start and cap keep them to what one client pays (3 strikes, then a probe per 4 ends).
    assert sim.counters.rate_limited / 36 <= 0.4, sim.counters.rate_limited_by


def recorded_tasks(server: RedisServer) -> int:
    """How many running tasks Redis has recorded by id, over every account."""
    store = redis.Redis.from_url(server.url)
    try:
        return sum(int(store.hlen(key)) for key in store.keys("pixverse-async:*:tasks"))
    finally:
        store.close()


def long_or_short(body: object) -> TaskPlan | None:
    assert isinstance(body, dict)
    return TaskPlan(duration=100.0) if str(body["prompt"]).startswith("long") else None


@pytest.mark.parametrize("long_tasks", [True, False], ids=["tasks-outlive-the-lease", "lease-outlives-the-tasks"])
async def test_a_killed_workers_tasks_are_adopted_and_its_slots_come_back_not_earlier(
    workers: Any, redis_server: RedisServer, long_tasks: bool
) -> None:
    lease = 10.0
    async with Simulator(time_scale=SCALE, duration=2.0, plan=long_or_short, seed=3) as sim:
        # The heir is open (and holds back) before the doomed worker starts: nothing it does takes a slot.
        heir = await workers(sim, "short", jobs=4, max_concurrency=4, lease=lease, hold=True, linger=True)
        await heir.until(lambda: bool(heir.of("open")), "opening")
        doomed = await workers(sim, "long" if long_tasks else "brief", jobs=4, max_concurrency=4, lease=lease)
        await doomed.until(lambda: len(doomed.of("submitted")) == 4, "submitting its 4 jobs")
        # Killed once Redis has its task ids (one accepted in the very round trip of the kill would be held as a
        # lost answer instead, for want of an id to adopt).
        with anyio.fail_after(PROCESS_DEADLINE):
            while recorded_tasks(redis_server) < 4:
                await anyio.sleep(SCALE / 10)
        doomed.process.send_signal(signal.SIGKILL)
        await doomed.process.wait()
        killed_at = sim.now()
        assert heir.process.stdin is not None
        await heir.process.stdin.send(b"go\n")
        await finished(heir)
        await heir.process.stdin.send(b"stop\n")
        await heir.until(lambda: bool(heir.of("lingered")), "lingering")
    tasks = sim.tasks.values()
    dead = [task for task in tasks if not task.prompt.startswith("short")]
    heirs = [task for task in tasks if task.prompt.startswith("short")]
    assert len(dead) == 4 and len(heirs) == 4
    paid_once(sim, 8)
    assert sim.counters.max_running_by_key[KEY] == 4  # never more, dead worker's tasks included
    first_end = min(task.ends_at for task in dead)
    first_heir = min(task.submitted_at for task in heirs)
    # A slot never frees while its task may run: the heir's first task waits for one of the dead one's.
    assert first_heir >= first_end
    if long_tasks:
        # Adopted (the dead worker never saw them end), polled to their end, freed then.
        assert killed_at < first_end
        assert heir.of("lingered")[0]["adopted"] == 4
        assert all(task.terminal_seen for task in dead)
        assert first_heir - first_end < 5.0
    else:
        # Its tasks ended long before its lease lapsed: the slots come back within the lease.
        assert first_heir - killed_at < lease + 5.0  # the lapse, then adopting, a poll and two round trips


async def test_redis_stopped_mid_run_stops_submissions_and_they_resume_when_it_is_back(
    workers: Any, redis_server: RedisServer
) -> None:
    async with Simulator(time_scale=SCALE, duration=10.0, seed=4) as sim:
        running = [await workers(sim, f"w{n}", jobs=12, max_concurrency=3, lease=10.0, hold=True) for n in range(2)]
        await go_together(*running)
        # One submission, not one of each: the slots are not shared fairly, so one worker may take them all
        # until its jobs are done. The other, waiting for a slot, notices Redis is gone all the same.
        await running[0].until(lambda: any(worker.of("submitted") for worker in running), "a first submission")
        redis_server.stop()
        for worker in running:
            await worker.until(lambda worker=worker: "unreachable" in worker.stderr, "noticing Redis is gone")
        # Tasks under way end (a slot taken before Redis went may still have sent its submission), and then
        # nothing is submitted: no slot without Redis. Waited for in simulated time, long past a task's end.
        with anyio.fail_after(PROCESS_DEADLINE):
            while any(not task.status_at(sim.now()).endswith(("SUCCEED", "FAILED")) for task in sim.tasks.values()):
                await anyio.sleep(SCALE)
        created = sim.counters.tasks_created
        await anyio.sleep(15 * SCALE)
        assert sim.counters.tasks_created == created < 24, "submitted without a slot while Redis was down"
        redis_server.start()
        await finished(*running)
        for worker in running:
            assert "is back" in worker.stderr
    paid_once(sim, 24)
    assert sim.counters.max_running_by_key[KEY] <= 3


async def test_an_unreachable_redis_is_a_clear_error_at_open_and_after_give_up_after(redis_server: RedisServer) -> None:
    async with Simulator(time_scale=SCALE, duration=3.0) as sim:
        options: dict[str, Any] = {"base_url": sim.base_url, "clock": ScaledClock(SCALE)}
        redis_server.stop()
        client = PixVerseClient(KEY, budget=RedisBudget(redis_server.url), **options)
        with pytest.raises(BudgetUnavailableError, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
            async with client:
                pass
        redis_server.start()
        async with PixVerseClient(KEY, budget=RedisBudget(redis_server.url, give_up_after=5.0), **options) as client:
            await client.submit(ImageToVideo("before", IMAGE_URL))
            redis_server.stop()
            with pytest.raises(BudgetUnavailableError, match="no submission without a running-task slot"):
                await client.submit(ImageToVideo("during", IMAGE_URL))
    assert sim.counters.tasks_created_by_prompt == {"before": 1}


async def cap_in_redis(server: RedisServer, budget: RedisBudget) -> int | None:
    """The account's cap as Redis has it, once `budget` has sent every report it had queued."""
    with anyio.fail_after(PROCESS_DEADLINE):
        while budget._ops:
            await anyio.sleep(SCALE)
        sent = budget.round_trips
        while budget.round_trips == sent:  # one more round trip: the last reports are in
            await anyio.sleep(SCALE)
    store = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        cap = store.hget(f"pixverse-async:{{{budget.name}}}:state", "cap")
    finally:
        store.close()
    return int(float(cap)) if cap else None


async def test_clients_share_the_cap_one_learnt_and_never_write_the_key_to_redis(redis_server: RedisServer) -> None:
    async with Simulator(time_scale=SCALE, duration=3.0, max_running_per_key=3) as sim:
        options: dict[str, Any] = {"base_url": sim.base_url, "clock": ScaledClock(SCALE), "max_concurrency": 8}
        learner, listener = RedisBudget(redis_server.url), RedisBudget(redis_server.url)
        caps: set[int | None] = set()
        async with PixVerseClient(KEY, budget=learner, **options) as client:
            jobs = [ImageToVideo(f"p{n}", IMAGE_URL) for n in range(12)]
            async with client.as_completed(jobs, on_event=lambda _: caps.add(learner.cap)) as results:
                assert all([result.ok async for result in results])
            assert 3 in caps  # learnt from the 429s (then probed higher at times)
            shared_cap = await cap_in_redis(redis_server, learner)
            async with PixVerseClient(KEY, budget=listener, **options):
                # Heard on its first round trip, before any submission of its own.
                assert listener.cap == shared_cap
    assert learner.name == listener.name and learner.name is not None and learner.name.startswith("key-")
    store = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        written: list[str] = []
        for key in store.keys("*"):
            written.append(str(key))
            kind = store.type(key)
            if kind == "hash":
                written += [str(item) for pair in store.hgetall(key).items() for item in pair]
            elif kind == "zset":
                written += [str(member) for member in store.zrange(key, 0, -1)]
        assert written and not any(KEY in item for item in written)
    finally:
        store.close()


async def test_a_rate_limit_one_client_meets_pauses_the_others(redis_server: RedisServer) -> None:
    async with Simulator(time_scale=SCALE, duration=1.0) as sim:
        options: dict[str, Any] = {"base_url": sim.base_url, "clock": ScaledClock(SCALE)}
        hit, told = RedisBudget(redis_server.url), RedisBudget(redis_server.url)
        async with (
            PixVerseClient(KEY, budget=hit, **options) as first,
            PixVerseClient(KEY, budget=told, **options) as other,
            anyio.create_task_group() as group,
        ):
            # Three 429s in a row with nothing running: a rate limit, not the cap; its pause is everyone's.
            sim.inject(Fault("submit", "rate_limit", times=3, retry_after=5))
            group.start_soon(first.submit, ImageToVideo("refused thrice", IMAGE_URL))
            with anyio.fail_after(PROCESS_DEADLINE):
                while hit.round_trips == 0 or sim.counters.rate_limited_by["fault"] < 3:
                    await anyio.sleep(SCALE / 10)
                paused_at = sim.now()
                while hit._pauses_seen["submit"] == 0:  # the pause has reached Redis
                    await anyio.sleep(SCALE / 10)
            await other.submit(ImageToVideo("other's", IMAGE_URL))
    (later,) = [task for task in sim.tasks.values() if task.prompt == "other's"]
    assert later.submitted_at - paused_at > 4.0, "the other client did not wait out the pause"


async def test_a_waiter_served_by_a_round_trip_that_others_changed_meanwhile_leaves_the_event_loop_free(
    redis_server: RedisServer,
) -> None:
    # A round trip asks Redis a slot for each waiter it counts; what happens meanwhile pokes the budget (a
    # waiter comes, a message on the channel is heard). Here the waiter counted gives up during the round trip
    # and another comes, which gets the slot: then nobody waits, nothing is queued, and the poke is stale. The
    # budget must sleep until its next renewal, not spin on that poke without a checkpoint (the event loop was
    # blocked for a whole renewal: the stall of shared runs). Redis pauses the round trip (CLIENT PAUSE WRITE
    # blocks every script), so that all of this happens during it.
    lease = 60 / SCALE  # API seconds: renewed every 20 real seconds
    pause = 2.0  # real seconds, below CALL_TIMEOUT
    async with Simulator(time_scale=SCALE, duration=1.0) as sim:
        budget = RedisBudget(redis_server.url, lease=lease)
        options: dict[str, Any] = {"base_url": sim.base_url, "clock": ScaledClock(SCALE)}
        async with PixVerseClient(KEY, budget=budget, **options), anyio.create_task_group() as group:
            store = redis.Redis.from_url(redis_server.url)
            try:
                store.client_pause(int(pause * 1000), all=False)
            finally:
                store.close()
            paused_at, sent = time.monotonic(), budget.round_trips
            gives_up = anyio.CancelScope()

            async def give_up() -> None:
                with gives_up:
                    await budget.acquire()

            slots: list[Any] = []

            async def take() -> None:
                slots.append(await budget.acquire())

            group.start_soon(give_up)
            await anyio.wait_all_tasks_blocked()  # the budget's round trip, paused, asks a slot for it
            gives_up.cancel()
            await anyio.wait_all_tasks_blocked()
            group.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert budget.round_trips == sent and time.monotonic() - paused_at < pause, "not during the round trip"
            with anyio.fail_after(PROCESS_DEADLINE):
                while not slots:
                    await anyio.sleep(SCALE)
            waited = time.monotonic() - paused_at
            slots[0].release()
    # The pause, then a few steps of the event loop; stalled, the renewal 20 s later.
    assert waited < pause + 8.0, f"the event loop was blocked: the slot came {waited:.1f} s after the pause began"
