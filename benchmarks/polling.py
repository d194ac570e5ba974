"""Polling across task lengths: a client never told how long tasks take, from 2 s to 10 minutes.

Issue 19's sweep. Task durations are log-normal (sigma 0.3; each prompt maps to the same duration in every
contender) with medians of 2, 10, 40, 105, 250 and 600 simulated seconds, crossed with the hint modes of the
simulator and two arrivals:

| hints | eta | progress |
|---|---|---|
| exact | exact | linear |
| noisy | off by a log-normal factor per task (sigma 0.35) | linear |
| progress only | 0 | linear |
| none | 0 | 0 until done |

- **all at once, cold**: 100 jobs at `max_concurrency=100` on an account without a cap, into a new client:
  every task's first polls are planned before any task has ended. One more row per usable hint mode runs
  tasks of 3 s (issue 19's "cold wave").
- **streamed under a cap**: 100 jobs at the default `max_concurrency` (64) on an account that runs at most
  20 tasks at once (the client is not told: it learns the cap from 429s), so the client learns from the
  first tasks to end.

Contenders: the library with the default `PollPolicy()` (never told anything), and, as a reference row
only, the same client told the true median (`PollPolicy(expected_duration=median)`) where the hints are
none (issue 19's learning goal compares the two).

Columns: polls per task (the simulator's task-result requests over tasks created); the delay from a task's
end on the server (`SimTask.ends_at`) to the user's code receiving it, p50 and p95 in simulated seconds and
p95 as a share of the median; wall time (simulated, first pull to last result) over the ideal (list
scheduling of the same durations on the cap's 20 slots, results received the instant tasks end), streamed
only; 429s per job. The physical limit is one poll per task and zero delay.

The time scale grows with the median so that a 1 ms of real latency stays a small part of the delay goal
(max(1 s, 3% of the median)): from 0.2 at 2 s to 0.004 at 600 s, where one task takes about 2.4 real seconds.

    python -m benchmarks.polling [--quick]   # --quick: 40 jobs, medians 2, 40 and 600 s
    PIXVERSE_BENCH_PARALLEL=1 python -m benchmarks.polling   # cells at once (1 by default: see PARALLEL)
    PIXVERSE_BENCH_MEDIANS=2,600 PIXVERSE_BENCH_HINTS=exact,none python -m benchmarks.polling   # some cells
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from benchmarks._common import (
    IMAGE_URL,
    LogNormal,
    ServerStats,
    SimConfig,
    SimulatorProcess,
    Table,
    duration_of,
    goal_text,
    parse_quick_flag,
    percentile,
)
from pixverse_async import ImageToVideo, PixVerseClient, PollPolicy
from pixverse_async.testing import ScaledClock

SIGMA = 0.3
#: Cells measured at once (each with its own simulator process). One by default: with four at once, a process
#: starting for one cell stalled the others for up to a few hundred real milliseconds, which at a time scale of
#: 0.004 is over a simulated minute of delay.
PARALLEL = int(os.environ.get("PIXVERSE_BENCH_PARALLEL", "1"))
SEED = 11
#: Simulated seconds per real second, by median (see the docstring).
TIME_SCALES = {2.0: 0.2, 3.0: 0.2, 10.0: 0.1, 40.0: 0.05, 105.0: 0.02, 250.0: 0.008, 600.0: 0.004}
MEDIANS = (2.0, 10.0, 40.0, 105.0, 250.0, 600.0)
QUICK_MEDIANS = (2.0, 40.0, 600.0)
COLD_WAVE_MEDIAN = 3.0
JOBS = 100
QUICK_JOBS = 40
CAP = 20
QUICK_CAP = 8
#: Goals (issue 19), default PollPolicy, never told.
HINT_POLLS_GOAL = 2.5  # medians up to 250 s
HINT_POLLS_GOAL_LONGEST = 4.0  # at 600 s
HINT_P95_SHARE = 0.03  # streamed: p95 at most max(1 s, 3% of the median)
COLD_WAVE_POLLS_GOAL = 2.6
COLD_WAVE_P95_GOAL = 2.0
LEARNING_GOAL = 1.3  # no hints: at most 1.3x the polls and the p95 of the client told the median


@dataclass(frozen=True)
class Hints:
    name: str
    eta: str
    progress: str

    @property
    def usable(self) -> bool:
        return self.eta != "absent" or self.progress != "absent"


HINTS = (
    Hints("exact", "exact", "linear"),
    Hints("noisy", "noisy", "linear"),
    Hints("progress only", "absent", "linear"),
    Hints("none", "absent", "absent"),
)
COLD, STREAMED = "all at once, cold", "streamed under a cap"
COLUMNS = (
    "median",
    "hints",
    "arrival",
    "contender",
    "polls/task",
    "p50",
    "p95",
    "p95/median",
    "wall/ideal",
    "429s/job",
    "run (s)",
)


@dataclass(frozen=True)
class Cell:
    median: float
    hints: Hints
    arrival: str
    told: bool


@dataclass(frozen=True)
class Outcome:
    cell: Cell
    jobs: int
    delays: list[float]
    stats: ServerStats
    wall: float
    ideal: float
    seconds: float

    @property
    def polls_per_task(self) -> float:
        return self.stats.poll_requests / self.stats.tasks_created

    def delay(self, fraction: float) -> float:
        return percentile(self.delays, fraction)


def ideal_seconds(durations: Sequence[float], slots: int) -> float:
    free = [0.0] * slots
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end


async def measure(sim: SimulatorProcess, cell: Cell, jobs: int, slots: int) -> Outcome:
    tag = "told" if cell.told else "default"
    prompts = [f"{cell.arrival} {tag} {index}" for index in range(jobs)]
    durations = [duration_of(sim.config.duration, SEED, prompt) for prompt in prompts]
    polling = PollPolicy(expected_duration=cell.median) if cell.told else PollPolicy()
    options: dict[str, Any] = {"max_concurrency": jobs} if cell.arrival == COLD else {}
    sim.reset_counters()
    received: dict[str, float] = {}
    started_real = time.perf_counter()
    async with PixVerseClient(
        sim.api_key, base_url=sim.base_url, clock=ScaledClock(sim.time_scale), polling=polling, **options
    ) as client:
        started = sim.sim_now()
        async with client.as_completed(ImageToVideo(prompt, IMAGE_URL) for prompt in prompts) as results:
            async for result in results:
                if result.task_id is None or not result.ok:
                    raise RuntimeError(f"job failed: {result.error!r}")
                received[result.task_id] = sim.sim_now()
        finished = sim.sim_now()
    seconds = time.perf_counter() - started_real
    stats = sim.stats()
    ends = sim.task_times(received)
    delays = [received[task_id] - ends[task_id].ends_at for task_id in received]
    if len(delays) != jobs or stats.tasks_created != jobs:
        raise RuntimeError(f"{cell}: {len(delays)} results for {stats.tasks_created} tasks created")
    return Outcome(cell, jobs, delays, stats, finished - started, ideal_seconds(durations, slots), seconds)


def cells(medians: Sequence[float]) -> list[list[Cell]]:
    """The cells, grouped by the simulator they share (one per median, hints and arrival)."""
    groups = []
    for median in medians:
        for hints in HINTS:
            for arrival in (COLD, STREAMED):
                group = [Cell(median, hints, arrival, told=False)]
                if not hints.usable:
                    group.append(Cell(median, hints, arrival, told=True))
                groups.append(group)
    for hints in HINTS[:3]:
        groups.append([Cell(COLD_WAVE_MEDIAN, hints, COLD, told=False)])
    return groups


def goal_notes(outcomes: list[Outcome]) -> list[str]:
    notes = []
    by_cell = {outcome.cell: outcome for outcome in outcomes}
    for outcome in outcomes:
        cell = outcome.cell
        if cell.told:
            continue
        polls, p95 = outcome.polls_per_task, outcome.delay(0.95)
        where = f"{cell.hints.name}, median {cell.median:g} s, {cell.arrival}"
        if cell.hints.usable and cell.median == COLD_WAVE_MEDIAN:
            met = polls <= COLD_WAVE_POLLS_GOAL and p95 <= COLD_WAVE_P95_GOAL
            notes.append(
                f"{where}: {polls:.2f} polls/task (goal <= {COLD_WAVE_POLLS_GOAL}), p95 {p95:.2f} s (goal <= "
                f"{COLD_WAVE_P95_GOAL}): {goal_text(met)}"
            )
        elif cell.hints.usable:
            poll_goal = HINT_POLLS_GOAL if cell.median <= 250 else HINT_POLLS_GOAL_LONGEST
            text = f"{where}: {polls:.2f} polls/task (goal <= {poll_goal})"
            met = polls <= poll_goal
            if cell.arrival == STREAMED:
                p95_goal = max(1.0, HINT_P95_SHARE * cell.median)
                met = met and p95 <= p95_goal
                text += f", p95 {p95:.2f} s (goal <= {p95_goal:.2f})"
            notes.append(f"{text}: {goal_text(met)}")
        else:
            told = by_cell.get(Cell(cell.median, cell.hints, cell.arrival, told=True))
            if told is None:
                continue
            poll_ratio = polls / told.polls_per_task
            p95_ratio = p95 / told.delay(0.95) if told.delay(0.95) > 0 else float("inf")
            met = poll_ratio <= LEARNING_GOAL and p95_ratio <= LEARNING_GOAL
            notes.append(
                f"{where}: vs told the median, {poll_ratio:.2f}x the polls and {p95_ratio:.2f}x the p95 "
                f"(goal <= {LEARNING_GOAL}x each): {goal_text(met)}"
            )
    return notes


async def run(quick: bool = False) -> list[Table]:
    jobs = QUICK_JOBS if quick else JOBS
    cap = QUICK_CAP if quick else CAP
    parallel = anyio.Semaphore(PARALLEL)

    async def measure_group(group: list[Cell]) -> list[Outcome]:
        first = group[0]
        config = SimConfig(
            time_scale=TIME_SCALES[first.median],
            duration=LogNormal(first.median, SIGMA),
            seed=SEED,
            duration_by_prompt=True,
            eta=first.hints.eta,
            progress=first.hints.progress,
            max_running_per_key=cap if first.arrival == STREAMED else None,
        )
        measured = []
        async with parallel:
            with SimulatorProcess(config) as sim:
                for cell in group:
                    slots = cap if cell.arrival == STREAMED else jobs
                    measured.append(await measure(sim, cell, jobs, slots))
                    print(
                        f"  measured: median {cell.median:g} s, {cell.hints.name}, {cell.arrival}"
                        f"{', told' if cell.told else ''}: {measured[-1].polls_per_task:.2f} polls/task",
                        flush=True,
                    )
        return measured

    medians = tuple(float(m) for m in os.environ.get("PIXVERSE_BENCH_MEDIANS", "").split(",") if m)
    hint_names = [name for name in os.environ.get("PIXVERSE_BENCH_HINTS", "").split(",") if name]
    groups = [
        group
        for group in cells(medians or (QUICK_MEDIANS if quick else MEDIANS))
        if not hint_names or group[0].hints.name in hint_names
    ]
    results: list[list[Outcome]] = [[] for _ in groups]

    async def fill(index: int) -> None:
        results[index] = await measure_group(groups[index])

    async with anyio.create_task_group() as group_runs:
        for index in range(len(groups)):
            group_runs.start_soon(fill, index)
    outcomes = [outcome for measured in results for outcome in measured]
    table = Table(
        f"Polling across task lengths: {jobs} log-normal jobs (sigma {SIGMA}) per cell, default PollPolicy() "
        f"unless 'told'; streamed: account cap {cap}, client max_concurrency 64 (delays in simulated seconds)",
        COLUMNS,
    )
    for outcome in outcomes:
        cell = outcome.cell
        table.add(
            f"{cell.median:g} s",
            cell.hints.name,
            cell.arrival,
            "told the median (reference)" if cell.told else "default",
            outcome.polls_per_task,
            outcome.delay(0.5),
            outcome.delay(0.95),
            f"{outcome.delay(0.95) / cell.median:.1%}",
            outcome.wall / outcome.ideal if cell.arrival == STREAMED else None,
            outcome.stats.rate_limited / outcome.jobs,
            outcome.seconds,
        )
    table.notes.extend(goal_notes(outcomes))
    table.notes.append(
        "the physical limit is 1 poll per task and 0 s of delay; wall/ideal: list scheduling of the same "
        f"durations on {cap} slots, results seen the instant tasks end"
    )
    table.print()
    return [table]


def main() -> None:
    quick = parse_quick_flag(__doc__ or "")
    asyncio.run(run(quick))


if __name__ == "__main__":
    main()
