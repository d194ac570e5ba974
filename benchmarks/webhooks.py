"""Webhooks: task-result calls per task and result delay with webhooks on, against polling.

The workload of `polling.py`: 2,000 jobs with log-normal durations around 40 simulated seconds, streamed at
`max_concurrency=200`. Contenders:

- **polling only**: the library's `as_completed` with `PollPolicy(max_polls_per_second=None)`, the shared
  poller following the server's `eta`;
- **webhooks**: `PixVerseClient(webhook_url=...)` with an aiohttp receiver (`aiohttp_webhook_handler`) in
  this process; each delivery triggers one confirming task-result call, and fallback polls come when a task
  would have ended by the learnt durations (`PollPolicy.webhook_tail`), then likewise from there;
- **webhooks, 20% lost**: the same, the simulator dropping a fifth of the deliveries at random, so those
  results arrive through the fallback polls;
- **fixed 5 s / 1 s loops**: the naive polling loops of `polling.py`, at the same concurrency.

The simulator runs in a child process and POSTs the webhooks to this one. It waits up to `webhook_timeout`
for an answer; at this time scale, the API's 5 simulated seconds would be 0.4 s of real time, so it is
raised to keep a loaded machine from turning slow answers into retries.

    python -m benchmarks.webhooks [--quick]
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass

from aiohttp import web

from benchmarks._common import (
    IMAGE_URL,
    ServerStats,
    SimConfig,
    SimulatorProcess,
    Table,
    goal_text,
    parse_quick_flag,
    percentile,
)

# The polling benchmark's workload, so that the two compare.
from benchmarks.polling import (
    CONCURRENCY,
    DURATIONS,
    FULL_JOBS,
    QUICK_CONCURRENCY,
    QUICK_JOBS,
    fixed_interval_loop,
)
from pixverse_async import ImageToVideo, PixVerseClient, PollPolicy
from pixverse_async.testing import ScaledClock
from pixverse_async.web import aiohttp_webhook_handler

TIME_SCALE = 0.08
QUICK_TIME_SCALE = 0.02
WEBHOOK_TIMEOUT = 60.0  # simulated seconds: 4.8 s of real time at 0.08
LOST_SHARE = 0.2
#: Goals with 20% of deliveries lost: at most this many task-result calls per task, and this delay p95.
LOST_CALLS_GOAL = 1.3
LOST_P95_GOAL = 30.0


@dataclass(frozen=True)
class Outcome:
    name: str
    delays: list[float]
    stats: ServerStats
    seconds: float

    @property
    def polls_per_task(self) -> float:
        return self.stats.poll_requests / max(1, self.stats.tasks_created)


async def run_jobs(sim: SimulatorProcess, jobs: int, concurrency: int, *, webhooks: bool) -> dict[str, float]:
    """Run `jobs` through as_completed; the simulator-clock time each result reached the caller."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    hook_url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook" if webhooks else None
    client = PixVerseClient(
        sim.api_key,
        base_url=sim.base_url,
        clock=ScaledClock(sim.time_scale),
        max_concurrency=concurrency,
        polling=PollPolicy(max_polls_per_second=None),
        webhook_url=hook_url,
    )
    receiver = web.Application()
    receiver.router.add_post("/hook", aiohttp_webhook_handler(client))
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener, backlog=1024).start()
    received: dict[str, float] = {}
    try:
        requests = (ImageToVideo(f"job {index}", IMAGE_URL) for index in range(jobs))
        async with client, client.as_completed(requests) as results:
            async for result in results:
                if result.task_id is None or not result.ok:
                    raise RuntimeError(f"job failed: {result.error!r}")
                received[result.task_id] = sim.sim_now()
    finally:
        await runner.cleanup()
    return received


async def measure(
    name: str, config: SimConfig, jobs: int, concurrency: int, *, webhooks: bool = False, loop: float | None = None
) -> Outcome:
    with SimulatorProcess(config) as sim:
        await run_jobs(sim, 3, 3, webhooks=webhooks)  # warm up connections and imports
        sim.reset_counters()
        started = time.perf_counter()
        if loop is None:
            received = await run_jobs(sim, jobs, concurrency, webhooks=webhooks)
        else:
            received = await fixed_interval_loop(loop)(sim, jobs, concurrency)
        seconds = time.perf_counter() - started
        stats = sim.stats()
        ends = sim.task_times(received)
    delays = [received[task_id] - ends[task_id].ends_at for task_id in received]
    if len(delays) != jobs:
        raise RuntimeError(f"{name}: {len(delays)} results of {jobs} jobs")
    return Outcome(name, delays, stats, seconds)


async def run(quick: bool = False) -> list[Table]:
    jobs = QUICK_JOBS if quick else FULL_JOBS
    concurrency = QUICK_CONCURRENCY if quick else CONCURRENCY
    time_scale = QUICK_TIME_SCALE if quick else TIME_SCALE

    def config(drop_rate: float = 0.0) -> SimConfig:
        return SimConfig(
            time_scale=time_scale,
            duration=DURATIONS,
            duration_by_prompt=True,
            webhook_timeout=WEBHOOK_TIMEOUT,
            webhook_drop_rate=drop_rate,
        )

    outcomes = [
        await measure("polling only (baseline)", config(), jobs, concurrency),
        await measure("webhooks", config(), jobs, concurrency, webhooks=True),
        await measure(f"webhooks, {LOST_SHARE:.0%} lost", config(LOST_SHARE), jobs, concurrency, webhooks=True),
        await measure("fixed 5 s loop", config(), jobs, concurrency, loop=5.0),
        await measure("fixed 1 s loop", config(), jobs, concurrency, loop=1.0),
    ]
    baseline = outcomes[0]
    table = Table(
        f"Webhooks: {jobs:,} log-normal jobs (median {DURATIONS.median:.0f} s, sigma {DURATIONS.sigma}) at "
        f"max_concurrency={concurrency}, time_scale {time_scale} (delays in simulated seconds)",
        ("contender", "calls/task", "vs polling", "webhooks delivered", "delay p50", "delay p95", "run (s)"),
    )
    for outcome in outcomes:
        table.add(
            outcome.name,
            outcome.polls_per_task,
            outcome.polls_per_task / baseline.polls_per_task,
            outcome.stats.webhooks_delivered,
            percentile(outcome.delays, 0.5),
            percentile(outcome.delays, 0.95),
            outcome.seconds,
        )
    with_webhooks, lost = outcomes[1], outcomes[2]
    at_most_one = with_webhooks.polls_per_task <= 1.0
    table.notes.append(
        f"goal: with every delivery arriving, at most one task-result call per task: "
        f"{with_webhooks.polls_per_task:.2f}, {goal_text(at_most_one)}"
    )
    lost_p95 = percentile(lost.delays, 0.95)
    lost_met = lost.polls_per_task <= LOST_CALLS_GOAL and lost_p95 <= LOST_P95_GOAL
    table.notes.append(
        f"goal: with {LOST_SHARE:.0%} of deliveries lost, at most {LOST_CALLS_GOAL} calls per task and a delay p95 "
        f"of at most {LOST_P95_GOAL:.0f} s: {lost.polls_per_task:.2f} calls, p95 {lost_p95:.1f} s, "
        f"{goal_text(lost_met)} (every result arrived: {len(lost.delays):,} of {jobs:,})"
    )
    table.print()
    return [table]


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
