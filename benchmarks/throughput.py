"""Throughput: 10,000 jobs that finish at once, the library's `as_completed` against a minimal aiohttp loop.

Each job is one submission and, since the simulator ends every task immediately (`duration=0`), ideally one
poll. The baseline is the least a client can do: N workers pulling from one shared iterator, each doing one
POST and one GET per job with a bare `aiohttp.ClientSession`. The library runs the same jobs through
`client.as_completed()` at `max_concurrency=N`, first with polls as soon as possible
(`PollPolicy(max_polls_per_second=None, first_poll_after=0)`), then with the default `PollPolicy()`.
Both keep the client's default caps on requests on the wire (32 submissions, 64 polls): raising them to N,
like the loop's N workers, measured slower here (smaller batches are not the bottleneck; more concurrent
requests cost the simulator and the client more per job).

The simulator runs in another process, so `time.process_time()` of this process is the client's CPU alone.
Contenders are interleaved over several rounds and each figure is the median of its rounds.

    python -m benchmarks.throughput [--quick]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

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
FULL_JOBS = 10_000
QUICK_JOBS = 1_000
CONCURRENCIES = (64, 256)
ROUNDS = 2
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
    server_cpu_seconds: float
    requests: int
    submit_requests: int
    tasks_created: int
    failed: int


async def measure(sim: SimulatorProcess, contender: Contender, jobs: int, concurrency: int) -> Measurement:
    sim.reset_counters()
    cpu_before = time.process_time()
    started = time.perf_counter()
    failed = await contender.run(sim, jobs, concurrency)
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    stats = sim.stats()
    return Measurement(
        seconds=seconds,
        client_cpu_seconds=client_cpu,
        server_cpu_seconds=stats.server_cpu_seconds,
        requests=stats.requests,
        submit_requests=stats.submit_requests,
        tasks_created=stats.tasks_created,
        failed=failed,
    )


async def benchmark_concurrency(sim: SimulatorProcess, jobs: int, concurrency: int) -> Table:
    for contender in CONTENDERS:  # connections, imports and caches warm before anything is timed
        await contender.run(sim, WARM_UP_JOBS, concurrency)
    rounds: dict[str, list[Measurement]] = {contender.name: [] for contender in CONTENDERS}
    for _ in range(ROUNDS):
        for contender in CONTENDERS:
            rounds[contender.name].append(await measure(sim, contender, jobs, concurrency))

    table = Table(
        f"Throughput: {jobs:,} instant jobs at concurrency {concurrency} (median of {ROUNDS} interleaved rounds)",
        (
            "contender",
            "jobs/s",
            "ratio",
            "requests/job",
            "client CPU µs/job",
            "CPU ratio",
            "server CPU µs/job",
            "failed",
        ),
    )
    baseline_name = CONTENDERS[0].name
    baseline_rate = median([jobs / m.seconds for m in rounds[baseline_name]])
    baseline_cpu = median([m.client_cpu_seconds / jobs for m in rounds[baseline_name]])
    ratios: dict[str, float] = {}
    for contender in CONTENDERS:
        runs = rounds[contender.name]
        rate = median([jobs / m.seconds for m in runs])
        cpu_per_job = median([m.client_cpu_seconds / jobs for m in runs])
        ratios[contender.name] = rate / baseline_rate
        table.add(
            contender.name,
            rate,
            ratios[contender.name],
            median([m.requests / jobs for m in runs]),
            cpu_per_job * 1e6,
            cpu_per_job / baseline_cpu,
            median([m.server_cpu_seconds / jobs for m in runs]) * 1e6,
            sum(m.failed for m in runs),
        )
        if any(m.tasks_created != jobs for m in runs):
            table.notes.append(f"WARNING: {contender.name} created {[m.tasks_created for m in runs]} tasks")
    asap_ratio = ratios[CONTENDERS[1].name]
    table.notes.append(
        f"goal: as_completed (polls ASAP) >= {GOAL_RATIO}x the raw loop's jobs/s: {asap_ratio:.2f}x, "
        f"{goal_text(asap_ratio >= GOAL_RATIO)}"
    )
    table.notes.append(
        "ratio = jobs/s over the baseline's; CPU ratio = client CPU per job over the baseline's "
        "(both processes share 2 cores, so CPU per job is the steadier figure)"
    )
    return table


async def run(quick: bool = False) -> list[Table]:
    jobs = QUICK_JOBS if quick else FULL_JOBS
    tables = []
    with SimulatorProcess(SimConfig(time_scale=TIME_SCALE, duration=0.0)) as sim:
        for concurrency in CONCURRENCIES:
            table = await benchmark_concurrency(sim, jobs, concurrency)
            table.print()
            tables.append(table)
    return tables


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
