"""Account limits: the two kinds of 429 (call rates and the running-task cap), unknown to the client.

One scenario per line of issue 11's table, each run with the library as a new user sets it up (limits
unknown: `max_concurrency` only) and with a baseline in the same run: the library told the truth in advance
(`RateLimits(...)`), or for random 429s the same workload without them. Each scenario has its own simulator
process (see `_common.py`):

- random 429s: 5% of all calls answered 429 at random (no `Retry-After`), 640 jobs of 1 s, `max_concurrency=64`;
- chaos: 2,000 jobs of 1 s with 5% 500s on polls, 1% of submission answers lost after the task was created,
  1% HTML 502 pages on submissions and polls, and 5% random 429s, against the same chaos without the 429s;
- submissions limited to 20 per 2 s (a sliding window), with and without `Retry-After`, 200 jobs of 1 s;
- task-result calls limited to 40 per 2 s (sliding, with `Retry-After`), 300 jobs of 2-6 s (uniform);
- a real cap of 20 running tasks with the client at 64, 200 jobs of 1 s;
- lost answers: 20% of submission answers lost after the task was created, `max_concurrency=8`, 100 jobs
  of 5 s: the simulator's peak of running tasks must stay at 8.

`ideal` is what a client knowing every duration and limit could do, with results received the instant
tasks end: list scheduling of the jobs (in input order) on `min(max_concurrency, cap)` slots, submissions
spaced by the submission window. Reported: 429s per job, the simulator's peak of running tasks, failed jobs
(lost answers are failures: `SubmissionUncertainError`), total simulated time, its ratio to the ideal and to
the baseline. The time scale of each scenario keeps the request rate within what two shared cores serve
(about 1,500 requests per real second for client and server together), so that real latency stays a small
part of a simulated second.

    python -m benchmarks.account_limit [--quick]
    PIXVERSE_BENCH_SCENARIOS="cap,lost" python -m benchmarks.account_limit   # only scenarios naming these
"""

from __future__ import annotations

import asyncio
import heapq
import os
import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks._common import (
    IMAGE_URL,
    ServerStats,
    SimConfig,
    SimulatorProcess,
    Table,
    Uniform,
    duration_of,
    goal_text,
    parse_quick_flag,
)
from pixverse_async import ImageToVideo, PixVerseClient, PollPolicy, RateLimits
from pixverse_async.testing import CallRateLimit, Fault, ScaledClock

GOAL_RANDOM = 1.3
GOAL_RATE_PER_JOB = 0.2
GOAL_RATE_TIME = 1.15
GOAL_CAP_PER_JOB = 0.2
GOAL_CAP_TIME = 1.10
SEED = 7


@dataclass(frozen=True)
class Contender:
    name: str
    client_options: Mapping[str, Any]
    #: Simulator options overriding the scenario's (the baseline of random 429s runs without them).
    sim_options: tuple[tuple[str, Any], ...] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    quick_jobs: int
    duration: float | Uniform
    time_scale: float
    sim_options: tuple[tuple[str, Any], ...]
    contenders: tuple[Contender, ...]
    max_concurrency: int = 64
    cap: int | None = None
    submit_window: tuple[int, float] | None = None
    #: Which goal applies: "random" (time vs the baseline), "rate", "cap", "max_running".
    goal: str = "rate"


@dataclass(frozen=True)
class Outcome:
    simulated_seconds: float
    stats: ServerStats
    failed: int


@dataclass
class Row:
    scenario: Scenario
    contender: Contender
    jobs: int
    ideal: float
    outcome: Outcome
    notes: list[str] = field(default_factory=list)


def ideal_seconds(durations: list[float], slots: int, submit_window: tuple[int, float] | None) -> float:
    """List scheduling of the jobs on `slots`, in order, each submission waiting for the window to allow it."""
    free = [0.0] * slots
    submitted: deque[float] = deque()
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        if submit_window is not None:
            calls, per = submit_window
            if len(submitted) >= calls:
                start = max(start, submitted[-calls] + per)
            submitted.append(start)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end


def scenarios() -> list[Scenario]:
    lost = (Fault("submit", "reset"), 0.01)
    html_submit = (Fault("submit", "html_error"), 0.01)
    chaos_polls = [(Fault("poll", "server_error"), 0.05), (Fault("poll", "html_error"), 0.01)]
    chaos = (("random_faults", (lost, html_submit, *chaos_polls)),)
    random_429 = (("random_rate_limit", 0.05),)
    submit_limit = CallRateLimit(20, per=2.0)
    new_user: Mapping[str, Any] = {}
    return [
        Scenario(
            "random 429s (5% of calls)",
            640,
            128,
            1.0,
            0.2,
            random_429,
            (
                Contender("library", new_user),
                Contender("library, no 429s (baseline)", new_user, sim_options=()),
            ),
            goal="random",
        ),
        Scenario(
            "chaos, 5% random 429s",
            2000,
            300,
            1.0,
            0.2,
            (*chaos, *random_429),
            (
                Contender("library", new_user),
                Contender("library, same chaos without 429s (baseline)", new_user, sim_options=chaos),
            ),
            goal="random",
        ),
        Scenario(
            "submissions 20 per 2 s, Retry-After",
            200,
            60,
            1.0,
            0.2,
            (("submit_rate_limit", submit_limit),),
            (
                Contender("library", new_user),
                Contender("RateLimits(submits_per_minute=600) (baseline)", {"rate_limits": RateLimits(600)}),
            ),
            submit_window=(20, 2.0),
        ),
        Scenario(
            "submissions 20 per 2 s, no Retry-After",
            200,
            60,
            1.0,
            0.2,
            (("submit_rate_limit", CallRateLimit(20, per=2.0, retry_after=False)),),
            (
                Contender("library", new_user),
                Contender("RateLimits(submits_per_minute=600) (baseline)", {"rate_limits": RateLimits(600)}),
            ),
            submit_window=(20, 2.0),
        ),
        Scenario(
            "task-result 40 per 2 s, jobs of 2-6 s",
            300,
            100,
            Uniform(2.0, 6.0),
            0.05,
            (("poll_rate_limit", CallRateLimit(40, per=2.0)),),
            (
                Contender("library", new_user),
                Contender(
                    "RateLimits(polls_per_minute=1200) (baseline)", {"rate_limits": RateLimits(polls_per_minute=1200)}
                ),
            ),
        ),
        Scenario(
            "running cap 20, client at 64",
            200,
            60,
            1.0,
            0.05,
            (),
            (
                Contender("library", new_user),
                Contender("RateLimits(max_running=20) (baseline)", {"rate_limits": RateLimits(max_running=20)}),
            ),
            cap=20,
            goal="cap",
        ),
        Scenario(
            "20% of answers lost, max_concurrency=8",
            100,
            40,
            5.0,
            0.05,
            (("random_faults", ((Fault("submit", "reset"), 0.2),)),),
            (Contender("library", {"max_concurrency": 8}),),
            max_concurrency=8,
            goal="max_running",
        ),
    ]


async def run_batch(sim: SimulatorProcess, prompts: list[str], client_options: Mapping[str, Any]) -> Outcome:
    """All jobs through `as_completed`; the time runs from the first pull to the last result."""
    sim.reset_counters()
    requests = (ImageToVideo(prompt, IMAGE_URL) for prompt in prompts)
    failed = 0
    options: dict[str, Any] = {"max_concurrency": 64, **client_options}
    async with PixVerseClient(
        sim.api_key, base_url=sim.base_url, clock=ScaledClock(sim.time_scale), **options
    ) as client:
        started = sim.sim_now()
        async with client.as_completed(requests) as results:
            async for result in results:
                if not result.ok:
                    failed += 1
        finished = sim.sim_now()
    return Outcome(finished - started, sim.stats(), failed)


async def run_scenario(scenario: Scenario, quick: bool) -> list[Row]:
    jobs = scenario.quick_jobs if quick else scenario.jobs
    rows: list[Row] = []
    for contender in scenario.contenders:
        options = scenario.sim_options if contender.sim_options is None else contender.sim_options
        config = SimConfig(
            time_scale=scenario.time_scale,
            duration=scenario.duration,
            max_running_per_key=scenario.cap,
            duration_by_prompt=True,
            seed=SEED,
            options=options,
        )
        prompts = [f"job {index}" for index in range(jobs)]
        durations = [duration_of(scenario.duration, SEED, prompt) for prompt in prompts]
        slots = min(scenario.max_concurrency, scenario.cap or scenario.max_concurrency)
        ideal = ideal_seconds(durations, slots, scenario.submit_window)
        with SimulatorProcess(config) as sim:
            # Every contender is told how long these (short) jobs typically take, as a user of them would: the
            # default prior is a real PixVerse job's 40 s, which would hold every first poll back for seconds.
            typical = statistics.median(durations)
            client_options = {
                "max_concurrency": scenario.max_concurrency,
                "polling": PollPolicy(expected_duration=typical),
                **contender.client_options,
            }
            outcome = await run_batch(sim, prompts, client_options)
        rows.append(Row(scenario, contender, jobs, ideal, outcome))
    return rows


def goal_notes(rows: list[Row]) -> list[str]:
    library, *others = rows
    scenario, stats = library.scenario, library.outcome.stats
    per_job = stats.rate_limited / library.jobs
    vs_ideal = library.outcome.simulated_seconds / library.ideal
    name = scenario.name
    if scenario.goal == "random":
        ratio = library.outcome.simulated_seconds / others[0].outcome.simulated_seconds
        return [
            f"{name}: time vs the baseline {ratio:.2f}x (goal <= {GOAL_RANDOM}x): {goal_text(ratio <= GOAL_RANDOM)}"
        ]
    if scenario.goal == "max_running":
        peak = stats.max_running
        return [
            f"{name}: peak running {peak} at max_concurrency={scenario.max_concurrency} "
            f"(goal: never more): {goal_text(peak <= scenario.max_concurrency)}"
        ]
    per_job_goal, time_goal = (
        (GOAL_CAP_PER_JOB, GOAL_CAP_TIME) if scenario.goal == "cap" else (GOAL_RATE_PER_JOB, GOAL_RATE_TIME)
    )
    vs_baseline = library.outcome.simulated_seconds / others[0].outcome.simulated_seconds
    return [
        f"{name}: {per_job:.2f} 429s per job (goal <= {per_job_goal}): {goal_text(per_job <= per_job_goal)}; "
        f"{vs_ideal:.2f}x the ideal (goal <= {time_goal}x): {goal_text(vs_ideal <= time_goal)} "
        f"(the baseline told the limits: {others[0].outcome.simulated_seconds / library.ideal:.2f}x; "
        f"library vs baseline {vs_baseline:.2f}x)"
    ]


async def run(quick: bool = False, only: Callable[[Scenario], bool] | None = None) -> list[Table]:
    table = Table(
        f"Account limits: 429s and time when the limits are unknown to the client{' (quick)' if quick else ''}",
        (
            "scenario",
            "contender",
            "jobs",
            "429s/job",
            "429s by limit",
            "max running",
            "failed",
            "total (sim s)",
            "ideal",
            "vs ideal",
            "vs baseline",
        ),
    )
    for scenario in scenarios():
        if only is not None and not only(scenario):
            continue
        rows = await run_scenario(scenario, quick)
        baseline = rows[-1].outcome.simulated_seconds
        for row in rows:
            stats = row.outcome.stats
            by_limit = " ".join(f"{key}:{count}" for key, count in sorted(stats.rate_limited_by.items())) or "-"
            table.add(
                scenario.name,
                row.contender.name,
                row.jobs,
                stats.rate_limited / row.jobs,
                by_limit,
                stats.max_running,
                row.outcome.failed,
                row.outcome.simulated_seconds,
                row.ideal,
                row.outcome.simulated_seconds / row.ideal,
                row.outcome.simulated_seconds / baseline,
            )
        table.notes.extend(goal_notes(rows))
        print(f"  measured: {scenario.name}", flush=True)
    table.notes.append("ideal: list scheduling on min(max_concurrency, cap) slots within the submission window")
    table.print()
    return [table]


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    words = [word for word in os.environ.get("PIXVERSE_BENCH_SCENARIOS", "").split(",") if word]
    asyncio.run(run(quick, (lambda scenario: any(word in scenario.name for word in words)) if words else None))


if __name__ == "__main__":
    main()
