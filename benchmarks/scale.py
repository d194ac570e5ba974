"""Scale: memory of `as_completed` over a long lazy input, and per task while thousands are pending.

Part 1, input length. The same batch of jobs from a lazy generator at `max_concurrency=256`, once with
10,000 jobs and once with 100,000: peak RSS should not depend on the input's length, since input is
pulled only as slots free up and results leave as they are read. Tasks last 20 simulated seconds
(time_scale 0.0005, so 10 ms); the first poll comes at 20 s (`PollPolicy(first_poll_after=20)`), as a user
who knows the typical duration would set it, so a job costs about two requests and 100,000 of them fit the
time budget.

Part 2, per pending task. `max_concurrency=10,000` and tasks that never end within the run: once the
client's poller follows 10,000 tasks, the memory above the reading taken just before submitting, divided by
10,000, is what one pending task costs. Two readings, each in its own run: resident memory (RSS, what the
machine pays, allocator slack included) and `tracemalloc`'s traced memory (live Python objects only,
steadier; tracemalloc slows the run and adds to RSS itself, hence its own run). RSS is read twice: with the
client's own session (its connection pool is sized for requests in flight, 128, not for running tasks), and
with a session of the user's limited to 100 connections; the traced reading uses the latter.

Every measurement runs in a fresh process (spawned), so that none inherits the heap of another; the
simulator runs in a process of its own, so its per-task records are not counted.

    python -m benchmarks.scale [--quick]
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import ParamSpec, TypeVar

import aiohttp

from benchmarks._common import (
    IMAGE_URL,
    MIB,
    PeakRssSampler,
    SimConfig,
    SimulatorProcess,
    Table,
    current_rss_bytes,
    goal_text,
    high_water_rss_bytes,
    open_file_descriptors,
    parse_quick_flag,
)
from pixverse_async import EventKind, ImageToVideo, JobEvent, PixVerseClient, PollPolicy
from pixverse_async.testing import ScaledClock

# Part 1
LIFETIME_TIME_SCALE = 0.0005
LIFETIME_TASK_SECONDS = 20.0
LIFETIME_CONCURRENCY = 256
FULL_INPUT_LENGTHS = (10_000, 100_000)
QUICK_INPUT_LENGTHS = (1_000, 10_000)
GOAL_PEAK_RATIO = 1.05
# Part 2
PENDING_TIME_SCALE = 1.0
PENDING_TASK_SECONDS = 1_000_000.0  # far longer than the run
FULL_PENDING = 10_000
QUICK_PENDING = 1_000
WARM_UP_PENDING = 100
USER_SESSION_CONNECTIONS = 100
PENDING_DEADLINE_SECONDS = 120.0
GOAL_BYTES_PER_PENDING = 1024

P = ParamSpec("P")
R = TypeVar("R")


def in_fresh_process(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run `function` in a newly spawned process and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def numbered_jobs(count: int, prefix: str = "job") -> Iterator[ImageToVideo]:
    return (ImageToVideo(f"{prefix} {index}", IMAGE_URL) for index in range(count))


# -- part 1: input length -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LifetimeResult:
    jobs: int
    rss_before: int
    peak_rss: int
    high_water_rss: int
    seconds: float
    failed: int


def measure_lifetime(base_url: str, api_key: str, jobs: int) -> LifetimeResult:
    return asyncio.run(_measure_lifetime(base_url, api_key, jobs))


async def _measure_lifetime(base_url: str, api_key: str, jobs: int) -> LifetimeResult:
    async with PixVerseClient(
        api_key,
        base_url=base_url,
        clock=ScaledClock(LIFETIME_TIME_SCALE),
        max_concurrency=LIFETIME_CONCURRENCY,
        polling=PollPolicy(first_poll_after=LIFETIME_TASK_SECONDS, max_polls_per_second=None),
    ) as client:
        async with client.as_completed(numbered_jobs(LIFETIME_CONCURRENCY, "warm-up")) as results:
            async for _ in results:
                pass
        gc.collect()
        rss_before = current_rss_bytes()
        failed = 0
        started = time.perf_counter()
        with PeakRssSampler() as sampler:
            async with client.as_completed(numbered_jobs(jobs)) as results:
                async for result in results:
                    if not result.ok:
                        failed += 1
        seconds = time.perf_counter() - started
    return LifetimeResult(jobs, rss_before, sampler.peak_bytes, high_water_rss_bytes(), seconds, failed)


def input_length_table(base_url: str, api_key: str, lengths: tuple[int, int]) -> Table:
    short, long = (in_fresh_process(measure_lifetime, base_url, api_key, jobs) for jobs in lengths)
    table = Table(
        f"Scale, part 1: peak memory against input length (lazy generator, max_concurrency="
        f"{LIFETIME_CONCURRENCY}, {LIFETIME_TASK_SECONDS:.0f} s tasks, fresh process each)",
        (
            "input",
            "RSS before (MiB)",
            "peak RSS (MiB)",
            "peak - before (MiB)",
            "VmHWM (MiB)",
            "peak ratio",
            "jobs/s",
            "failed",
        ),
    )
    for result in (short, long):
        table.add(
            f"{result.jobs:,} jobs",
            result.rss_before / MIB,
            result.peak_rss / MIB,
            (result.peak_rss - result.rss_before) / MIB,
            result.high_water_rss / MIB,
            result.peak_rss / short.peak_rss,
            result.jobs / result.seconds,
            result.failed,
        )
    ratio = long.peak_rss / short.peak_rss
    table.notes.append(
        f"goal: peak RSS independent of input length (at most {GOAL_PEAK_RATIO - 1:.0%} more for 10x the jobs): "
        f"{ratio:.3f}x, {goal_text(ratio <= GOAL_PEAK_RATIO)}"
    )
    table.notes.append(
        "peak RSS is sampled every 5 ms during the run; VmHWM is the process's lifetime peak (warm-up included)"
    )
    return table


# -- part 2: per pending task ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingResult:
    pending: int
    bytes_before: int
    bytes_at_pending: int
    #: The highest reading while the tasks were being submitted (sampled RSS, or tracemalloc's peak).
    peak_bytes_while_filling: int
    open_fds: int
    seconds_to_pending: float

    @property
    def bytes_per_pending(self) -> float:
        return (self.bytes_at_pending - self.bytes_before) / self.pending

    @property
    def peak_bytes_per_pending(self) -> float:
        return (self.peak_bytes_while_filling - self.bytes_before) / self.pending


def measure_pending(
    base_url: str, api_key: str, pending: int, connection_limit: int | None, traced: bool
) -> PendingResult:
    """Memory per pending task: RSS, or with `traced` tracemalloc's traced memory (run in a fresh process)."""
    return asyncio.run(_measure_pending(base_url, api_key, pending, connection_limit, traced))


async def _measure_pending(
    base_url: str, api_key: str, pending: int, connection_limit: int | None, traced: bool
) -> PendingResult:
    if traced:
        tracemalloc.start()
    sampler = PeakRssSampler()

    def memory_now() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] if traced else current_rss_bytes()

    def peak_memory() -> int:
        return tracemalloc.get_traced_memory()[1] if traced else max(sampler.peak_bytes, current_rss_bytes())

    session = (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connection_limit))
        if connection_limit is not None
        else None
    )
    try:
        async with PixVerseClient(
            api_key,
            base_url=base_url,
            session=session,
            clock=ScaledClock(PENDING_TIME_SCALE),
            # The warm-up's tasks are left running, and a task left running keeps its slot until it could have
            # ended: room for them too, so that the measured run has `pending` slots.
            max_concurrency=pending + WARM_UP_PENDING,
        ) as client:
            # The same steps once on a few tasks, so that code paths, caches and connections are warm.
            await _hold_pending(client, numbered_jobs(WARM_UP_PENDING, "warm-up"), WARM_UP_PENDING, lambda: None)
            bytes_before = memory_now()
            if traced:
                tracemalloc.reset_peak()
            started = time.perf_counter()
            with sampler:
                bytes_at_pending, peak, fds = await _hold_pending(
                    client,
                    numbered_jobs(pending),
                    pending,
                    lambda: (memory_now(), peak_memory(), open_file_descriptors()),
                )
            seconds = time.perf_counter() - started
    finally:
        if session is not None:
            await session.close()
    return PendingResult(pending, bytes_before, bytes_at_pending, peak, fds, seconds)


async def _hold_pending(
    client: PixVerseClient,
    jobs: Iterator[ImageToVideo],
    count: int,
    read: Callable[[], R],
) -> R:
    """Submit `count` jobs through `as_completed`, call `read()` once all of them are pending, then leave."""
    all_submitted = asyncio.Event()
    submitted = 0

    def on_event(event: JobEvent) -> None:
        nonlocal submitted
        if event.kind is EventKind.SUBMITTED:
            submitted += 1
            if submitted == count:
                all_submitted.set()

    async with client.as_completed(jobs, on_event=on_event):
        try:
            async with asyncio.timeout(PENDING_DEADLINE_SECONDS):
                await all_submitted.wait()
        except TimeoutError:
            raise RuntimeError(f"only {submitted} of {count} tasks submitted in time") from None
        if client.pending_tasks != count:
            raise RuntimeError(f"{client.pending_tasks} tasks pending, {count} expected")
        return read()


def pending_table(base_url: str, api_key: str, pending: int) -> Table:
    table = Table(
        f"Scale, part 2: memory per pending task at {pending:,} pending (max_concurrency={pending:,}, "
        "fresh process each)",
        (
            "client session",
            "measure",
            "before (MiB)",
            "at pending (MiB)",
            "bytes/pending task",
            "vs 1 KB goal",
            "peak while filling (B/task)",
            "open fds",
            "fill (s)",
        ),
    )
    verdicts: list[str] = []
    own_session = "client's own session"
    user_session = f"user's, {USER_SESSION_CONNECTIONS} connections"
    runs = (
        # (The own session's traced memory is left out: it adds 30 s, and RSS already shows the pool's cost.)
        (own_session, None, "RSS", False),
        (user_session, USER_SESSION_CONNECTIONS, "RSS", False),
        (user_session, USER_SESSION_CONNECTIONS, "tracemalloc", True),
    )
    for session_name, connection_limit, measure_name, traced in runs:
        result = in_fresh_process(measure_pending, base_url, api_key, pending, connection_limit, traced)
        per_task = result.bytes_per_pending
        table.add(
            session_name,
            measure_name,
            result.bytes_before / MIB,
            result.bytes_at_pending / MIB,
            per_task,
            per_task / GOAL_BYTES_PER_PENDING,
            result.peak_bytes_per_pending,
            result.open_fds,
            result.seconds_to_pending,
        )
        verdicts.append(
            f"{session_name}, {measure_name}: {per_task:,.0f} B, {goal_text(per_task < GOAL_BYTES_PER_PENDING)}"
        )
    table.notes.append(f"goal: under {GOAL_BYTES_PER_PENDING} bytes per pending task:")
    table.notes.extend(f"  {verdict}" for verdict in verdicts)
    table.notes.append(
        "each pending task includes the ImageToVideo the library keeps to return with its result; "
        "open fds counts this process's sockets (idle keep-alive connections included)"
    )
    table.notes.append(
        "peak while filling: the highest reading while the tasks were submitted (all at once), per task, "
        "over the reading before"
    )
    return table


async def run(quick: bool = False) -> list[Table]:
    lengths = QUICK_INPUT_LENGTHS if quick else FULL_INPUT_LENGTHS
    pending = QUICK_PENDING if quick else FULL_PENDING
    tables = []
    lifetime_config = SimConfig(time_scale=LIFETIME_TIME_SCALE, duration=LIFETIME_TASK_SECONDS)
    with SimulatorProcess(lifetime_config) as sim:
        table = await asyncio.to_thread(input_length_table, sim.base_url, sim.api_key, lengths)
        table.print()
        tables.append(table)
    pending_config = SimConfig(time_scale=PENDING_TIME_SCALE, duration=PENDING_TASK_SECONDS)
    with SimulatorProcess(pending_config) as sim:
        table = await asyncio.to_thread(pending_table, sim.base_url, sim.api_key, pending)
        table.print()
        tables.append(table)
    return tables


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
