"""Lost answers: paid tasks whose id is lost, with and without webhooks, when submission answers go missing.

The API takes no idempotency key and lists no tasks, so a submission whose answer is lost after the server
created its task is paid for and, without webhooks, unknown to the caller (`SubmissionUncertainError`). With
`PixVerseClient(webhook_url=...)` each submission's webhook URL carries a token of its own, and the delivery
that names it gives the job its task back (see `pixverse_async._lost_answers`). This benchmark runs 2,000
jobs through `as_completed` with the library's defaults (never told durations or caps) against the simulator
losing 1% of submission answers, in every way an answer is lost:

- **after creation**: the connection reset once the task is created (`Fault("submit", "reset")`), a 500 after
  creating it (`server_error`), and (exact eta, webhooks delivered, full run only) an answer slower than the
  default read timeout (`slow`: the row lasts over a minute of real time);
- **before creation**: the connection reset before the body is read (`create_task=False`); the right verdict
  is then "not created".

crossed with three webhook settings (none; every delivery arriving; 20% of deliveries lost at random,
`webhook_drop_rate=0.2`) and two hint modes of the simulator (exact eta; neither eta nor progress). Task
durations are log-normal (median 60 simulated seconds, sigma 0.5: mostly 20 to 200 s), by prompt, so that a
lost answer's wait for its delivery matters.

The simulator's ground truth decides: every task it created is paid; one whose id no job's result carries is
**paid and lost**. An uncertain result is matched to its task by the token of its webhook URL
(`SubmissionUncertainError.webhook_token`) or, without webhooks, by its prompt (each job's is unique); a
verdict `likely_created=False` for a task that exists is **dishonest**. Calls per task are submissions plus
task-result calls per created task. Each row's figures are set against the same mode's row without losses.
With 20% of deliveries lost, the row of resets after creation runs with several seeds: about 20 answers
lost, a fifth of their deliveries too, so paid-and-lost is binomial around 4 (0.2% of the jobs) against a
goal of 0.25%.

"No cost without losses": the runs without losses, webhooks on, are run again for this package and for the
package of `REFERENCE_COMMIT` (the commit before the per-submission tokens, taken with `git archive` into a
temporary directory and imported by a child process through `PIXVERSE_ASYNC_FROM`, see
`benchmarks/__init__.py`), both at `REFERENCE_TIME_SCALE`: at `TIME_SCALE` a client whose event loop lags
behind (804992a planned each fallback poll by a 30-step bisection) polls late and so finds more tasks already
announced by their delivery, and the comparison then measures CPU time rather than the polls decided.

The simulator posts the webhooks to an aiohttp receiver in this process. At this time scale the API's 5
simulated seconds for a receiver to answer would be 10 ms of real time, so the simulator waits 2 real seconds
(`webhook_timeout`) instead, to keep a loaded machine from turning slow answers into retries.

    python -m benchmarks.lost_answers [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from benchmarks._common import (
    IMAGE_URL,
    CreatedTask,
    LogNormal,
    SimConfig,
    SimulatorProcess,
    Table,
    goal_text,
    median,
)
from pixverse_async import ImageToVideo, JobResult, PixVerseClient, SubmissionUncertainError, Timeouts
from pixverse_async.testing import Fault, ScaledClock
from pixverse_async.web import aiohttp_webhook_handler

TIME_SCALE = 0.002  # a 60 s task takes 0.12 s; 2,000 jobs at the default max_concurrency=64, about 5 s
DURATIONS = LogNormal(median=60.0, sigma=0.5)
FULL_JOBS = 2_000
QUICK_JOBS = 200
LOSS_RATE = 0.01
DROP_RATE = 0.2
FULL_SEEDS = (1, 2, 3, 4, 5, 6)
QUICK_SEEDS = (1, 2)
#: The runs of "no cost without losses": slower time, so that neither client's event loop lags behind it.
REFERENCE_TIME_SCALE = 0.01
FULL_REFERENCE_JOBS = 500
QUICK_REFERENCE_JOBS = 100
#: A slow answer comes this long after the default read timeout (real seconds, enforced at most 1/8 late).
SLOW_MARGIN = 10.0
#: The query parameter the client adds to each submission's webhook URL (`_lost_answers.TOKEN_PARAMETER`;
#: spelt here so that the reference package, which has none, runs this script too).
TOKEN_PARAMETER = "pixverse_submission"
REFERENCE_COMMIT = "804992a"
GOAL_LOST_SHARE = 0.0025
GOAL_CALLS_WITHIN = 0.02
#: A row that has not ended after this many times its expected real time is a hang.
HANG_FACTOR = 20.0


@dataclass(frozen=True)
class Loss:
    name: str
    fault: Fault | None
    #: Whether the lost answers' tasks were created (the truth a verdict is judged by).
    created: bool


NO_LOSS = Loss("no loss", None, created=False)
RESET_AFTER = Loss("reset after creation", Fault("submit", "reset"), created=True)
LOSSES = (
    RESET_AFTER,
    Loss("500 after creation", Fault("submit", "server_error"), created=True),
    Loss("reset before creation", Fault("submit", "reset", create_task=False), created=False),
)
_READ_TIMEOUT = Timeouts().read or 60.0
SLOW = Loss(
    "answer past the read timeout",
    Fault("submit", "slow", delay=(_READ_TIMEOUT * 1.125 + SLOW_MARGIN) / TIME_SCALE),
    created=True,
)


@dataclass(frozen=True)
class Hints:
    name: str
    eta: str
    progress: str


HINTS = (Hints("exact eta", "exact", "linear"), Hints("no eta, no progress", "absent", "absent"))


@dataclass(frozen=True)
class Deliveries:
    name: str
    webhooks: bool
    drop_rate: float = 0.0


NO_WEBHOOKS = Deliveries("no webhooks", webhooks=False)
DELIVERED = Deliveries("webhooks", webhooks=True)
DROPPED = Deliveries(f"webhooks, {DROP_RATE:.0%} lost", webhooks=True, drop_rate=DROP_RATE)
DELIVERIES = (NO_WEBHOOKS, DELIVERED, DROPPED)


@dataclass(frozen=True)
class Row:
    """The figures of one run (plain values, so that the reference child process can send them as JSON)."""

    hints: str
    deliveries: str
    loss: str
    seed: int
    jobs: int
    results: int
    created: int
    #: Submission answers the simulator lost (its faults applied).
    answers_lost: int
    ok: int
    ok_with_video: int
    paid_and_lost: int
    #: Of those, the ones whose webhook delivery did reach the receiver (a delivery the client failed to use).
    lost_though_delivered: int
    #: Uncertain results by verdict, and how many of them had a task in fact.
    uncertain_not_created: int
    uncertain_unknown: int
    uncertain_with_task: int
    dishonest: int
    other_failures: int
    paid_twice: int
    wrong_task: int
    abandoned: int
    webhooks_dropped: int
    calls_per_task: float
    seconds: float


def token_in(url: str | None) -> str | None:
    if url is None:
        return None
    return parse_qs(urlsplit(url).query).get(TOKEN_PARAMETER, [None])[0]


def tally(
    results: list[JobResult], tasks: dict[str, CreatedTask]
) -> tuple[dict[str, int], Counter[str], dict[str, str]]:
    """(the counts of a row, tasks created per prompt, created task id per token)."""
    per_prompt = Counter(task.prompt for task in tasks.values())
    by_token = {token: task_id for task_id, task in tasks.items() if (token := token_in(task.webhook_url))}
    carried = {result.task_id for result in results if result.task_id is not None}
    counts = Counter[str]()
    for result in results:
        request = result.request
        prompt = request.prompt if isinstance(request, ImageToVideo) else ""
        if result.ok:
            counts["ok"] += 1
            counts["ok_with_video"] += bool(result.videos)
        if result.task_id is not None and tasks.get(result.task_id, CreatedTask(prompt, None)).prompt != prompt:
            counts["wrong_task"] += 1
        error = result.error
        if isinstance(error, SubmissionUncertainError):
            token = getattr(error, "webhook_token", None)
            has_task = token in by_token if token else per_prompt[prompt] > 0
            likely_created = getattr(error, "likely_created", None)
            counts["uncertain_not_created" if likely_created is False else "uncertain_unknown"] += 1
            counts["uncertain_with_task"] += has_task
            counts["dishonest"] += has_task and likely_created is False
        elif error is not None:
            counts["other_failures"] += 1
    counts["paid_and_lost"] = sum(task_id not in carried for task_id in tasks)
    counts["paid_twice"] = sum(count - 1 for count in per_prompt.values() if count > 1)
    return dict(counts), per_prompt, by_token


async def run_row(
    hints: Hints, deliveries: Deliveries, loss: Loss, jobs: int, seed: int = 1, time_scale: float = TIME_SCALE
) -> Row:
    """`jobs` jobs through a default client's as_completed against a fresh simulator; its figures."""
    options = () if loss.fault is None else (("random_faults", ((loss.fault, LOSS_RATE),)),)
    config = SimConfig(
        time_scale=time_scale,
        duration=DURATIONS,
        duration_by_prompt=True,
        seed=seed,
        webhook_timeout=2.0 / time_scale,
        webhook_drop_rate=deliveries.drop_rate,
        eta=hints.eta,
        progress=hints.progress,
        options=options,
    )
    # The tasks' time at the default concurrency, the longest wait of a lost answer, a slow answer's wait.
    expected = (jobs * 70.0 / 64 + 1_500.0) * time_scale + (_READ_TIMEOUT * 1.2 if loss is SLOW else 0.0)
    with SimulatorProcess(config) as sim:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        hook_url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook" if deliveries.webhooks else None
        client = PixVerseClient(
            sim.api_key, base_url=sim.base_url, clock=ScaledClock(sim.time_scale), webhook_url=hook_url
        )
        handler = aiohttp_webhook_handler(client)
        delivered_tokens: set[str] = set()

        async def receive(request: web.Request) -> web.StreamResponse:
            token = request.rel_url.query.get(TOKEN_PARAMETER)
            if token is not None:
                delivered_tokens.add(token)
            return await handler(request)

        receiver = web.Application()
        receiver.router.add_post("/hook", receive)
        runner = web.AppRunner(receiver, access_log=None)
        await runner.setup()
        await web.SockSite(runner, listener, backlog=1024).start()
        results: list[JobResult] = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(HANG_FACTOR * expected):
                requests = (ImageToVideo(f"job {index}", IMAGE_URL) for index in range(jobs))
                async with client, client.as_completed(requests) as stream:
                    async for result in stream:
                        results.append(result)
                    abandoned = len(client.abandoned_tasks)
        except TimeoutError:
            raise RuntimeError(
                f"{hints.name}, {deliveries.name}, {loss.name}: no end after {HANG_FACTOR * expected:.0f} s "
                f"({len(results)} of {jobs} results)"
            ) from None
        finally:
            await runner.cleanup()
        seconds = time.perf_counter() - started
        stats = sim.stats()
        tasks = sim.created_tasks()
    counts, _, by_token = tally(results, tasks)
    carried = {result.task_id for result in results}
    delivered_ids = {by_token[token] for token in delivered_tokens if token in by_token}
    return Row(
        hints=hints.name,
        deliveries=deliveries.name,
        loss=loss.name,
        seed=seed,
        jobs=jobs,
        results=len(results),
        created=len(tasks),
        answers_lost=sum(count for fault, count in stats.faults_applied.items() if fault.startswith("submit:")),
        ok=counts.get("ok", 0),
        ok_with_video=counts.get("ok_with_video", 0),
        paid_and_lost=counts.get("paid_and_lost", 0),
        lost_though_delivered=len(delivered_ids - carried),
        uncertain_not_created=counts.get("uncertain_not_created", 0),
        uncertain_unknown=counts.get("uncertain_unknown", 0),
        uncertain_with_task=counts.get("uncertain_with_task", 0),
        dishonest=counts.get("dishonest", 0),
        other_failures=counts.get("other_failures", 0),
        paid_twice=counts.get("paid_twice", 0),
        wrong_task=counts.get("wrong_task", 0),
        abandoned=abandoned,
        webhooks_dropped=stats.webhooks_dropped,
        calls_per_task=(stats.submit_requests + stats.poll_requests) / max(1, len(tasks)),
        seconds=seconds,
    )


def anomalies(row: Row) -> list[str]:
    """What must never happen, whatever the losses: said in words, or nothing."""
    found = []
    if row.results != row.jobs:
        found.append(f"{row.jobs - row.results} jobs without a result")
    if row.paid_twice:
        found.append(f"{row.paid_twice} paid twice")
    if row.wrong_task:
        found.append(f"{row.wrong_task} results carrying another job's task")
    if row.lost_though_delivered:
        found.append(f"{row.lost_though_delivered} paid tasks lost though their webhook delivery arrived")
    if row.ok_with_video != row.ok:
        found.append(f"{row.ok - row.ok_with_video} ok without a video")
    return found


def mode_table(hints: Hints, rows: list[Row], jobs: int) -> Table:
    table = Table(
        f"Lost answers, {hints.name}: {jobs:,} jobs (log-normal, median {DURATIONS.median:.0f} s, sigma "
        f"{DURATIONS.sigma}), {LOSS_RATE:.0%} of submission answers lost, default client, time_scale {TIME_SCALE}",
        (
            "deliveries / answers lost",
            "lost",
            "created",
            "ok",
            "paid+lost",
            "uncert. False",
            "uncert. None",
            "of them with task",
            "dishonest",
            "abandoned",
            "calls/task",
            "vs no loss",
            "run (s)",
            "vs no loss",
        ),
    )
    baselines = {row.deliveries: row for row in rows if row.loss == NO_LOSS.name}
    for row in rows:
        base = baselines[row.deliveries]
        table.add(
            f"{row.deliveries} / {row.loss}",
            row.answers_lost,
            row.created,
            row.ok,
            row.paid_and_lost,
            row.uncertain_not_created,
            row.uncertain_unknown,
            row.uncertain_with_task,
            row.dishonest,
            row.abandoned,
            row.calls_per_task,
            row.calls_per_task / base.calls_per_task,
            row.seconds,
            row.seconds / base.seconds,
        )
        for anomaly in anomalies(row):
            table.notes.append(f"ANOMALY in {row.deliveries} / {row.loss}: {anomaly}")
    return table


def goal_notes(rows: list[Row], seeds: list[Row], jobs: int) -> list[str]:
    notes = []
    for hints in HINTS:
        mode = [row for row in rows if row.hints == hints.name]
        created_losses = {loss.name for loss in (*LOSSES, SLOW) if loss.created}
        delivered = [row for row in mode if row.deliveries == DELIVERED.name and row.loss in created_losses]
        without = [row for row in mode if row.deliveries == NO_WEBHOOKS.name and row.loss == RESET_AFTER.name]
        met = all(row.paid_and_lost == 0 and row.ok == row.jobs and not anomalies(row) for row in delivered)
        notes.append(
            f"goal ({hints.name}): answers lost after creation, every delivery arriving: 0 paid-and-lost and every "
            f"job ending with its video: paid-and-lost {', '.join(str(row.paid_and_lost) for row in delivered)}, "
            f"ok {', '.join(f'{row.ok:,}' for row in delivered)} of {jobs:,} ({', '.join(r.loss for r in delivered)}), "
            f"{goal_text(met)}; without webhooks: {', '.join(str(row.paid_and_lost) for row in without)} paid-and-lost"
        )
    dropped = [row for row in rows if row.deliveries == DROPPED.name] + seeds
    worst = max(row.paid_and_lost for row in dropped)
    over = [row for row in dropped if row.paid_and_lost > GOAL_LOST_SHARE * row.jobs]
    dishonest = sum(row.dishonest for row in dropped)
    spread = sorted(row.paid_and_lost for row in seeds)
    expected = DROP_RATE * sum(row.answers_lost for row in seeds) / len(seeds)
    mean = sum(spread) / len(spread)
    notes.append(
        f"goal: {DROP_RATE:.0%} of deliveries lost: paid-and-lost at most {GOAL_LOST_SHARE:.2%} of jobs "
        f"({GOAL_LOST_SHARE * jobs:g}) and 0 dishonest verdicts: worst {worst} over {len(dropped)} runs, "
        f"{len(over)} over the goal; reset after creation, exact eta, seeds {seeds[0].seed}-{seeds[-1].seed}: "
        f"{', '.join(map(str, spread))} (median {median(spread):g}, mean {mean:.2f} = {mean / jobs:.2%}; "
        f"answers lost x {DROP_RATE:.0%}: {expected:.1f}); {dishonest} dishonest: "
        f"{goal_text(not over and dishonest == 0)}"
    )
    return notes


async def reference_rows(jobs: int) -> list[Row]:
    """The runs without losses, webhooks on: the figures "no cost without losses" is judged by."""
    await run_row(HINTS[0], DELIVERED, NO_LOSS, 3)  # imports and first connections, as in `run`
    return [
        await run_row(hints, deliveries, NO_LOSS, jobs, time_scale=REFERENCE_TIME_SCALE)
        for hints in HINTS
        for deliveries in (DELIVERED, DROPPED)
    ]


def unpack_reference(root: Path, tree: str) -> str | None:
    """Put `REFERENCE_COMMIT`'s package into the directory `tree`; None, or why it could not."""
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", REFERENCE_COMMIT, "pixverse_async"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return f"git archive {REFERENCE_COMMIT} failed: {archive.stderr.decode(errors='replace').strip()}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="data")
    return None


async def measure_reference(quick: bool) -> list[Row] | str:
    """`reference_rows` with the package of `REFERENCE_COMMIT`, in a child process; or why not."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="pixverse-reference-") as tree:
        problem = await asyncio.to_thread(unpack_reference, root, tree)
        if problem is not None:
            return problem
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.lost_answers",
            "--reference-rows",
            *(["--quick"] if quick else []),
            cwd=root,
            env={**os.environ, "PIXVERSE_ASYNC_FROM": tree},
            stdout=subprocess.PIPE,
        )
        output, _ = await process.communicate()
    if process.returncode != 0:
        return f"the reference run failed (exit {process.returncode})"
    return [Row(**fields) for fields in json.loads(output.decode().splitlines()[-1])]


def reference_table(rows: list[Row], reference: list[Row] | str) -> Table:
    table = Table(
        f"No cost without losses: calls per task with webhooks on, no answer lost, this package against "
        f"{REFERENCE_COMMIT} (before the per-submission tokens), {len(rows) and rows[0].jobs} jobs each at "
        f"time_scale {REFERENCE_TIME_SCALE}",
        ("mode", "calls/task", f"{REFERENCE_COMMIT}", "ratio", "run (s)", f"{REFERENCE_COMMIT} (s)"),
    )
    if isinstance(reference, str):
        table.notes.append(f"goal: calls per task within {GOAL_CALLS_WITHIN:.0%}: not measured ({reference})")
        return table
    ratios = []
    for old in reference:
        new = next(
            row for row in rows if (row.hints, row.deliveries, row.loss) == (old.hints, old.deliveries, old.loss)
        )
        ratios.append(new.calls_per_task / old.calls_per_task)
        table.add(
            f"{new.hints}, {new.deliveries}",
            new.calls_per_task,
            old.calls_per_task,
            ratios[-1],
            new.seconds,
            old.seconds,
        )
    # A cost is more calls; fewer is no cost (and run-to-run noise is about 2% either way).
    met = all(ratio <= 1.0 + GOAL_CALLS_WITHIN for ratio in ratios)
    table.notes.append(
        f"goal: calls per task at most {GOAL_CALLS_WITHIN:.0%} above {REFERENCE_COMMIT}'s: "
        f"{min(ratios):.3f}x to {max(ratios):.3f}x, {goal_text(met)} (instructions per job: benchmarks/instructions.py)"
    )
    return table


async def run(quick: bool = False) -> list[Table]:
    jobs = QUICK_JOBS if quick else FULL_JOBS
    await run_row(HINTS[0], DELIVERED, NO_LOSS, 3)  # imports and first connections, outside the measured rows
    tables, rows = [], []
    for hints in HINTS:
        mode = []
        for deliveries in DELIVERIES:
            losses = (
                NO_LOSS,
                *LOSSES,
                *((SLOW,) if not quick and deliveries is DELIVERED and hints is HINTS[0] else ()),
            )
            for loss in losses:
                mode.append(await run_row(hints, deliveries, loss, jobs))
        table = mode_table(hints, mode, jobs)
        table.print()
        tables.append(table)
        rows += mode
    seeds = [
        row for row in rows if (row.hints, row.deliveries, row.loss) == (HINTS[0].name, DROPPED.name, RESET_AFTER.name)
    ]
    for seed in (QUICK_SEEDS if quick else FULL_SEEDS)[1:]:
        seeds.append(await run_row(HINTS[0], DROPPED, RESET_AFTER, jobs, seed))
    seed_table = Table(
        f"Paid-and-lost by seed: {HINTS[0].name}, {DROPPED.name}, {RESET_AFTER.name} ({jobs:,} jobs)",
        (
            "seed",
            "answers lost",
            "webhooks dropped",
            "paid+lost",
            "share",
            "of lost",
            "uncert. False",
            "uncert. None",
            "dishonest",
        ),
    )
    for row in seeds:
        seed_table.add(
            str(row.seed),
            row.answers_lost,
            f"{row.webhooks_dropped / row.created:.1%}",
            row.paid_and_lost,
            f"{row.paid_and_lost / row.jobs:.2%}",
            f"{row.paid_and_lost / max(1, row.answers_lost):.0%}",
            row.uncertain_not_created,
            row.uncertain_unknown,
            row.dishonest,
        )
    seed_table.notes.extend(goal_notes(rows, seeds, jobs))
    seed_table.print()
    reference_jobs = QUICK_REFERENCE_JOBS if quick else FULL_REFERENCE_JOBS
    reference = reference_table(await reference_rows(reference_jobs), await measure_reference(quick))
    reference.print()
    return [*tables, seed_table, reference]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes about 10x smaller, for a smoke run")
    parser.add_argument(
        "--reference-rows", action="store_true", help="only the runs without losses, webhooks on, as JSON"
    )
    arguments = parser.parse_args()
    if arguments.reference_rows:
        rows = asyncio.run(reference_rows(QUICK_REFERENCE_JOBS if arguments.quick else FULL_REFERENCE_JOBS))
        print(json.dumps([asdict(row) for row in rows]), flush=True)
    else:
        asyncio.run(run(arguments.quick))


if __name__ == "__main__":
    main()
