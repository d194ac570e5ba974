"""Account limit: the API caps running tasks per key below the client's `max_concurrency`.

The simulator refuses a submission with 429 while the key already has 20 tasks running
(`max_running_per_key=20`); the client is set to `max_concurrency=50`, more than the account allows, and
must learn the cap from the 429s instead of hammering the API. 400 jobs of exactly 10 simulated seconds
each can at best run in waves of 20: the ideal total is `ceil(jobs / 20) * 10` simulated seconds. The same
jobs at `max_concurrency=20` (the cap, known in advance) are the baseline.

Reported: 429s per job (requests the account refused: wasted), requests per job, the delay from a task's
end to its receipt, the total time and its ratio to the ideal. The ideal assumes that a slot is reused the
instant its task ends; in practice each of the 20 waves waits for that delay plus one submission round trip.
Real latency (about 1 ms on loopback, plus event-loop lag) counts `1 / time_scale` times over in simulated
seconds, so the time scale matters: 0.02 makes it about 0.05-0.2 simulated s per request, comparable to
a real API's network round trip. At the brief's 0.001 a millisecond would be a whole simulated second, and
even at 0.01 the lag alone costs about 5% of the ideal.

    python -m benchmarks.account_limit [--quick]
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from benchmarks._common import (
    IMAGE_URL,
    ServerStats,
    SimConfig,
    SimulatorProcess,
    Table,
    goal_text,
    median,
    parse_quick_flag,
    percentile,
)
from pixverse_async import ImageToVideo, PixVerseClient
from pixverse_async.testing import ScaledClock

TIME_SCALE = 0.02
ACCOUNT_CAP = 20
TASK_SECONDS = 10.0
FULL_JOBS = 400
QUICK_JOBS = 40
ROUNDS = 3
GOAL_WASTED_PER_JOB = 0.2
GOAL_TIME_RATIO = 1.10


@dataclass(frozen=True)
class Outcome:
    simulated_seconds: float
    stats: ServerStats
    failed: int
    #: Per task: from its end on the server to its receipt by the user's loop (simulated seconds).
    delays: list[float]


async def run_batch(sim: SimulatorProcess, jobs: int, max_concurrency: int) -> Outcome:
    """All jobs through `as_completed`; the time runs from the first pull to the last result."""
    sim.reset_counters()
    requests = (ImageToVideo(f"job {index}", IMAGE_URL) for index in range(jobs))
    failed = 0
    received: dict[str, float] = {}
    async with PixVerseClient(
        sim.api_key, base_url=sim.base_url, clock=ScaledClock(sim.time_scale), max_concurrency=max_concurrency
    ) as client:
        started = sim.sim_now()
        async with client.as_completed(requests) as results:
            async for result in results:
                if result.task_id is not None:
                    received[result.task_id] = sim.sim_now()
                if not result.ok:
                    failed += 1
        finished = sim.sim_now()
    ends = sim.task_times(received)
    delays = [at - ends[task_id].ends_at for task_id, at in received.items()]
    return Outcome(finished - started, sim.stats(), failed, delays)


async def run(quick: bool = False) -> list[Table]:
    jobs = QUICK_JOBS if quick else FULL_JOBS
    ideal = math.ceil(jobs / ACCOUNT_CAP) * TASK_SECONDS
    settings = {
        f"as_completed, max_concurrency={ACCOUNT_CAP} (baseline: the cap)": ACCOUNT_CAP,
        "as_completed, max_concurrency=50 (above the cap)": 50,
    }
    outcomes: dict[str, list[Outcome]] = {name: [] for name in settings}
    config = SimConfig(time_scale=TIME_SCALE, duration=TASK_SECONDS, max_running_per_key=ACCOUNT_CAP)
    with SimulatorProcess(config) as sim:
        await run_batch(sim, ACCOUNT_CAP, ACCOUNT_CAP)  # warm up connections and imports
        for _ in range(ROUNDS):
            for name, max_concurrency in settings.items():
                outcomes[name].append(await run_batch(sim, jobs, max_concurrency))

    table = Table(
        f"Account limit: {jobs} jobs of {TASK_SECONDS:.0f} s, the key may run {ACCOUNT_CAP} at once, "
        f"time_scale {TIME_SCALE} (median of {ROUNDS} rounds)",
        (
            "contender",
            "429s/job",
            "requests/job",
            "polls/job",
            "max running",
            "delay p50",
            "delay p95",
            "total (sim s)",
            "vs ideal",
            "vs baseline",
            "failed",
        ),
    )
    baseline_seconds = median([o.simulated_seconds for o in outcomes[next(iter(settings))]])
    for name, runs in outcomes.items():
        total = median([o.simulated_seconds for o in runs])
        table.add(
            name,
            median([o.stats.rate_limited / jobs for o in runs]),
            median([o.stats.requests / jobs for o in runs]),
            median([o.stats.poll_requests / jobs for o in runs]),
            max(o.stats.max_running for o in runs),
            median([percentile(o.delays, 0.5) for o in runs]),
            median([percentile(o.delays, 0.95) for o in runs]),
            total,
            total / ideal,
            total / baseline_seconds,
            sum(o.failed for o in runs),
        )
    above_cap = outcomes[list(settings)[1]]
    wasted = median([o.stats.rate_limited / jobs for o in above_cap])
    time_ratio = median([o.simulated_seconds for o in above_cap]) / ideal
    table.notes.append(f"ideal = ceil({jobs} / {ACCOUNT_CAP}) * {TASK_SECONDS:.0f} s = {ideal:.0f} simulated s")
    table.notes.append(
        "delay = from a task's end on the server to its receipt (simulated s); each of the "
        f"{math.ceil(jobs / ACCOUNT_CAP)} waves waits for it before the next submissions"
    )
    table.notes.append(
        f"goal: 429s per job < {GOAL_WASTED_PER_JOB} at max_concurrency=50: {wasted:.3f}, "
        f"{goal_text(wasted < GOAL_WASTED_PER_JOB)}"
    )
    table.notes.append(
        f"goal: total within {GOAL_TIME_RATIO - 1:.0%} of the ideal at max_concurrency=50: {time_ratio:.3f}x, "
        f"{goal_text(time_ratio <= GOAL_TIME_RATIO)}"
    )
    table.print()
    return [table]


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
