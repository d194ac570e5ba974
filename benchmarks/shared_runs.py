"""Shared runs: `pixverse-async run MANIFEST --journal redis://...` worker processes on one key capped at 20.

One manifest of 100 rows (tasks of 2-4 simulated seconds, drawn by prompt), an account that runs at most 20
tasks at once (unknown to the workers), every worker started with `--concurrency 64` and the library's
defaults otherwise, all started together on a fresh Redis database. Per hint mode of the simulator, these
contenders, each a whole run:

- `1 worker, told` (the reference): one worker at `--concurrency 20`, the cap itself, so it never meets it;
- `4 workers, local budgets` (the baseline): each worker with its own budget (`--local-budget`), as before
  the shared budget;
- `4 workers` and `8 workers`: the default, one `RedisBudget` of the key on the journal's Redis.

Reported: whether the run completed (every worker ended, every row succeeded or, where answers were lost,
reported `uncertain`), the simulator's 429s per row, its peak of running tasks, and the run's time from the
first submission to the last task's end (simulated seconds) against the reference's. Goals (issue 21):
the run always completes, at most 0.2 429s per row, never more than `--concurrency` running, within 1.3x
the reference's time.

    python -m benchmarks.shared_runs [--quick]   # --quick: the first mode only (same sizes)
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks._common import (
    API_KEY,
    IMAGE_URL,
    SimConfig,
    SimulatorProcess,
    Table,
    Uniform,
    goal_text,
    parse_quick_flag,
)
from benchmarks.scale_out import Mode
from pixverse_async.cli.redis_journal import run_keys
from pixverse_async.testing import CallRateLimit, Fault, RedisServer, redis_server

ROWS = int(os.environ.get("PIXVERSE_BENCH_ROWS", "100"))
CAP = 20
CONCURRENCY = 64
DURATION = Uniform(2.0, 4.0)
#: Real seconds per simulated second: slow enough that process start-up and Redis round trips on two shared
#: cores stay small against tasks of 2-4 s.
TIME_SCALE = float(os.environ.get("PIXVERSE_BENCH_TIME_SCALE", "0.25"))
GOAL_429_PER_ROW = 0.2
GOAL_TIME = 1.3
_DEADLINE = 300.0  # real seconds a run may take before it counts as a hang


MODES = (
    Mode("exact eta"),
    Mode("noisy eta", eta="noisy"),
    Mode("no eta, no progress", eta="absent", progress="absent"),
    Mode("coarse progress, no eta", eta="absent", progress="steps"),
    Mode("5% random 429s", options=(("random_rate_limit", 0.05),)),
    Mode("submits 120/min", options=(("submit_rate_limit", CallRateLimit(120, per=60.0)),)),
    Mode("3% poll 5xx", options=(("random_faults", ((Fault("poll", "server_error"), 0.03),)),)),
    Mode("2% lost submit answers", options=(("random_faults", ((Fault("submit", "reset"), 0.02),)),)),
)


@dataclass(frozen=True)
class Contender:
    name: str
    workers: int
    concurrency: int = CONCURRENCY
    local_budget: bool = False
    reference: bool = False


CONTENDERS = (
    Contender("1 worker, told (reference)", 1, concurrency=CAP, reference=True),
    Contender("4 workers, local budgets", 4, local_budget=True),
    Contender("4 workers", 4),
    Contender("8 workers", 8),
)


@dataclass(frozen=True)
class Outcome:
    completed: bool
    succeeded: int
    uncertain: int
    rate_limited: int
    max_running: int
    simulated_seconds: float


def _manifest(folder: Path, tag: str) -> Path:
    path = folder / "jobs.jsonl"
    rows = [{"id": f"r{index:03d}", "prompt": f"{tag} {index}", "image": IMAGE_URL} for index in range(ROWS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


async def _run_workers(sim: SimulatorProcess, server: RedisServer, contender: Contender, tag: str) -> Outcome:
    database = redis.Redis.from_url(server.url)
    database.flushdb()
    folder = Path(tempfile.mkdtemp(prefix="pixverse-shared-run-"))
    try:
        manifest = _manifest(folder, tag)
        args = [sys.executable, "-m", "pixverse_async", "run", str(manifest), "--out", str(folder / "out")]
        args += ["--journal", server.url, "--concurrency", str(contender.concurrency), "--no-progress"]
        args += ["--base-url", sim.base_url, "--time-scale", str(TIME_SCALE)]
        if contender.local_budget:
            args.append("--local-budget")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
        env["PIXVERSE_API_KEY"] = API_KEY
        sim.reset_counters()
        workers = [
            await asyncio.create_subprocess_exec(
                *args, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            for _ in range(contender.workers)
        ]
        completed = True
        try:
            await asyncio.wait_for(asyncio.gather(*(worker.wait() for worker in workers)), _DEADLINE)
        except TimeoutError:
            completed = False
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        stats = sim.stats()
        found: dict[bytes, bytes] = database.hgetall(run_keys(manifest.name)[1])  # type: ignore[assignment]
        rows = [json.loads(raw) for raw in found.values()]
        states = [row["state"] for row in rows]
        succeeded, uncertain = states.count("succeeded"), states.count("uncertain")
        times = sim.task_times(row["task_id"] for row in rows if row.get("task_id"))
        span = max(t.ends_at for t in times.values()) - min(t.submitted_at for t in times.values()) if times else 0.0
        completed = completed and succeeded + uncertain == ROWS
        return Outcome(completed, succeeded, uncertain, stats.rate_limited, stats.max_running, span)
    finally:
        database.close()
        shutil.rmtree(folder, ignore_errors=True)


async def sweep(quick: bool, server: RedisServer) -> Table:
    table = Table(
        f"Shared runs: {ROWS} rows of 2-4 s, account cap {CAP} (unknown to the workers), --concurrency"
        f" {CONCURRENCY}{' (quick)' if quick else ''}",
        ("mode", "contender", "completed", "ok", "uncertain", "429s/row", "max running", "sim s", "vs told"),
    )
    verdicts: list[str] = []
    for mode in MODES[:1] if quick else MODES:
        config = SimConfig(
            time_scale=TIME_SCALE,
            duration=DURATION,
            duration_by_prompt=True,
            max_running_per_key=CAP,
            eta=mode.eta,
            progress=mode.progress,
            options=mode.options,
        )
        with SimulatorProcess(config) as sim:
            reference = 0.0
            for contender in CONTENDERS:
                # The same prompts (so the same durations) for every contender of a mode.
                started = time.perf_counter()
                outcome = await _run_workers(sim, server, contender, mode.name)
                if contender.reference:
                    reference = outcome.simulated_seconds
                ratio = outcome.simulated_seconds / reference if reference else float("nan")
                per_row = outcome.rate_limited / ROWS
                table.add(
                    mode.name,
                    contender.name,
                    outcome.completed,
                    outcome.succeeded,
                    outcome.uncertain,
                    per_row,
                    outcome.max_running,
                    outcome.simulated_seconds,
                    ratio,
                )
                print(
                    f"  measured: {mode.name}, {contender.name} ({time.perf_counter() - started:.0f} s real)",
                    flush=True,
                )
                if not contender.reference and not contender.local_budget:
                    random_429s = 0.05 * ROWS if "random 429" in mode.name else 0.0
                    met = (
                        outcome.completed
                        and outcome.rate_limited / ROWS <= GOAL_429_PER_ROW + random_429s / ROWS
                        and outcome.max_running <= CONCURRENCY
                        and ratio <= GOAL_TIME
                    )
                    if not met:
                        verdicts.append(f"{mode.name}, {contender.name}")
    table.notes.append(
        f"Goal: every shared run completes, <= {GOAL_429_PER_ROW} 429s per row (beyond a mode's random ones),"
        f" <= --concurrency running, <= {GOAL_TIME}x the told worker's time: "
        + (goal_text(not verdicts) if not verdicts else f"{goal_text(False)} for {'; '.join(verdicts)}")
    )
    table.notes.append(
        "sim s: simulated seconds from the run's first task created to its last task's end (process start-up"
        " and downloads left out); vs told: against the reference row of the same mode."
    )
    return table


async def run(quick: bool = False) -> list[Table]:
    with redis_server() as server:
        table = await sweep(quick, server)
    table.print()
    return [table]


def main() -> None:
    asyncio.run(run(parse_quick_flag(__doc__ or "")))


if __name__ == "__main__":
    main()
