"""Throughput: 10,000 jobs that finish at once, the library's `as_completed` against a minimal aiohttp loop.

Each job is one submission and, since the simulator ends every task immediately (`duration=0`), ideally one
poll. The baseline is the least a client can do: N workers pulling from one shared iterator, each doing one
POST and one GET per job with a bare `aiohttp.ClientSession`. The library runs the same jobs through
`client.as_completed()` at `max_concurrency=N`, first with polls as soon as possible
(`PollPolicy(max_polls_per_second=None, first_poll_after=0)`: the submitter then makes the first poll
itself), then with the default `PollPolicy()`. Both keep the client's default caps on requests on the wire
(64 submissions, 64 polls).

The simulator runs in another process, so `time.process_time()` of this process is the client's CPU alone.
"loop turns/job" counts the turns of the client's event loop (each one a poll of its selector) per job: work
that waits in turns (one task handing the next its turn) costs a turn per job, a poll of the sockets, and
requests that reach the server one by one, all of which callgrind's count of instructions barely shows (seen
on 2026-12-07: 1.1 turns per job where 0.15 had done).
This machine is shared and its speed swings by tens of percent within seconds, so each contender's 10,000
jobs run as 10 rounds of 1,000, interleaved (the order reverses every round), and every ratio is the median
of the per-round ratios to the raw loop's run in the same round.

    python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import aiohttp

from benchmarks._common import (
    IMAGE_URL,
    SUBMIT_PATH,
    TASK_RESULT_PATH,
    TERMINAL_STATUSES,
    SimConfig,
    SimulatorProcess,
    Table,
    goal_text,
    median,
    parse_quick_flag,
)
from pixverse_async import ImageToVideo, PixVerseClient, PollPolicy
from pixverse_async.testing import ScaledClock

TIME_SCALE = 0.001
JOBS_PER_ROUND = 1_000
FULL_ROUNDS = 10
QUICK_ROUNDS = 3
CONCURRENCIES = (64, 256)
WARM_UP_JOBS = 300
GOAL_RATIO = 0.9

ASAP_POLLING = PollPolicy(max_polls_per_second=None, first_poll_after=0)

RunJobs = Callable[[SimulatorProcess, int, int], Awaitable[int]]


async def raw_aiohttp_loop(sim: SimulatorProcess, jobs: int, concurrency: int) -> int:
    """The baseline: `concurrency` workers, one POST and one GET per job. Returns the number of failed jobs."""
    submit_url = sim.base_url + SUBMIT_PATH
    poll_url = sim.base_url + TASK_RESULT_PATH
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    prompts: Iterator[str] = (f"job {index}" for index in range(jobs))
    failed = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for prompt in prompts:
            body = {"prompt": prompt, "image": IMAGE_URL, "resolution": "540p"}
            async with session.post(submit_url, json=body, headers=headers) as response:
                task_id = (await response.json())["task_id"]
            async with session.get(poll_url, params={"task_id": task_id}, headers=headers) as response:
                status = (await response.json())["task"]["status"]
            if status not in TERMINAL_STATUSES:
                failed += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return failed


def library_as_completed(polling: PollPolicy) -> RunJobs:
    async def run(sim: SimulatorProcess, jobs: int, concurrency: int) -> int:
        requests = (ImageToVideo(f"job {index}", IMAGE_URL) for index in range(jobs))
        failed = 0
        async with (
            PixVerseClient(
                sim.api_key,
                base_url=sim.base_url,
                clock=ScaledClock(sim.time_scale),
                max_concurrency=concurrency,
                polling=polling,
            ) as client,
            client.as_completed(requests) as results,
        ):
            async for result in results:
                if not result.ok:
                    failed += 1
        return failed

    return run


@dataclass(frozen=True)
class Contender:
    name: str
    run: RunJobs


CONTENDERS = (
    Contender("raw aiohttp loop (baseline)", raw_aiohttp_loop),
    Contender("as_completed, polls ASAP", library_as_completed(ASAP_POLLING)),
    Contender("as_completed, default PollPolicy", library_as_completed(PollPolicy())),
)


@dataclass(frozen=True)
class Measurement:
    seconds: float
    client_cpu_seconds: float
    loop_turns: int
    server_cpu_seconds: float
    requests: int
    submit_requests: int
    tasks_created: int
    failed: int


class LoopTurns:
    """Counts the turns of the running event loop while in use (`with LoopTurns() as turns: ...; turns.count`),
    by wrapping its selector's `select` (a private attribute of asyncio's selector loops)."""

    def __init__(self) -> None:
        self.count = 0
        self._selector: Any = getattr(asyncio.get_running_loop(), "_selector")  # noqa: B009 - private, untyped
        self._select = self._selector.select

    def _counting_select(self, timeout: float | None = None) -> Any:
        self.count += 1
        return self._select(timeout)

    def __enter__(self) -> Self:
        self._selector.select = self._counting_select
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._selector.select = self._select


async def measure(sim: SimulatorProcess, contender: Contender, jobs: int, concurrency: int) -> Measurement:
    sim.reset_counters()
    cpu_before = time.process_time()
    started = time.perf_counter()
    with LoopTurns() as turns:
        failed = await contender.run(sim, jobs, concurrency)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    stats = sim.stats()
    return Measurement(
        seconds=seconds,
        client_cpu_seconds=client_cpu,
        loop_turns=turns.count,
        server_cpu_seconds=stats.server_cpu_seconds,
        requests=stats.requests,
        submit_requests=stats.submit_requests,
        tasks_created=stats.tasks_created,
        failed=failed,
    )


async def benchmark_concurrency(sim: SimulatorProcess, rounds: int, concurrency: int) -> Table:
    jobs = JOBS_PER_ROUND
    for contender in CONTENDERS:  # connections, imports and caches warm before anything is timed
        await contender.run(sim, WARM_UP_JOBS, concurrency)
    runs: dict[str, list[Measurement]] = {contender.name: [] for contender in CONTENDERS}
    for round_index in range(rounds):
        order = CONTENDERS if round_index % 2 == 0 else CONTENDERS[::-1]
        for contender in order:
            runs[contender.name].append(await measure(sim, contender, jobs, concurrency))

    table = Table(
        f"Throughput: {rounds * jobs:,} instant jobs at concurrency {concurrency} "
        f"({rounds} interleaved rounds of {jobs:,}; medians, ratios paired by round)",
        (
            "contender",
            "jobs/s",
            "ratio",
            "requests/job",
            "client CPU µs/job",
            "CPU ratio",
            "server CPU µs/job",
            "loop turns/job",
            "failed",
        ),
    )
    baseline = runs[CONTENDERS[0].name]
    ratios: dict[str, float] = {}
    for contender in CONTENDERS:
        measured = runs[contender.name]
        ratios[contender.name] = median([base.seconds / m.seconds for base, m in zip(baseline, measured, strict=True)])
        table.add(
            contender.name,
            median([jobs / m.seconds for m in measured]),
            ratios[contender.name],
            median([m.requests / jobs for m in measured]),
            median([m.client_cpu_seconds / jobs for m in measured]) * 1e6,
            median(
                [m.client_cpu_seconds / base.client_cpu_seconds for base, m in zip(baseline, measured, strict=True)]
            ),
            median([m.server_cpu_seconds / jobs for m in measured]) * 1e6,
            median([m.loop_turns / jobs for m in measured]),
            sum(m.failed for m in measured),
        )
        if any(m.tasks_created != jobs for m in measured):
            table.notes.append(f"WARNING: {contender.name} created {[m.tasks_created for m in measured]} tasks")
    asap_ratio = ratios[CONTENDERS[1].name]
    table.notes.append(
        f"goal: as_completed (polls ASAP) >= {GOAL_RATIO}x the raw loop's jobs/s: {asap_ratio:.2f}x, "
        f"{goal_text(asap_ratio >= GOAL_RATIO)}"
    )
    table.notes.append(
        "ratio = median over rounds of jobs/s over the baseline's in the same round; CPU ratio = the same for "
        "client CPU per job"
    )
    return table


async def run(quick: bool = False) -> list[Table]:
    rounds = QUICK_ROUNDS if quick else FULL_ROUNDS
    tables = []
    with SimulatorProcess(SimConfig(time_scale=TIME_SCALE, duration=0.0)) as sim:
        for concurrency in CONCURRENCIES:
            table = await benchmark_concurrency(sim, rounds, concurrency)
            table.print()
            tables.append(table)
    return tables


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
