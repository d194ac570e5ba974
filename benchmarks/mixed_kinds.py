"""Mixed kinds and a misbehaving router: text and image jobs in one run, then documented faults all at once.

**Mixed manifest.** 1,000 rows through `pixverse-async run` (a real subprocess, its defaults, told nothing of
the workload) against a simulator in this process: an image-only manifest, then the same prompts with every
other row a text-to-video row. Each prompt has its duration (log-normal, median 40 simulated seconds, sigma
0.5) whatever its kind, so the two runs poll the same durations: the baseline is the image-only run of the
same process. Then `pixverse-async status --json` must tell the kinds apart.

**Faults.** 400 mixed jobs through `client.as_completed` with webhooks on (an aiohttp receiver in this
process), against a simulator where a tenth of the tasks fail, a poll of a failed task answers 500
`TASK_FAILED` with chance 5%, every submit and poll answers 503 with chance 5%, and every webhook delivery is
POSTed three more times. Every job must be accounted for (a result each: succeeded, failed, or uncertain when
a submission's 503 left it unknown whether a task was created), no task polled after a poll showed its end,
and one confirming poll per delivered task, retries after a 503 aside.

    python -m benchmarks.mixed_kinds [--quick]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks._common import LogNormal, Table, duration_of, goal_text, parse_quick_flag
from pixverse_async import ImageToVideo, PixVerseClient, SubmissionUncertainError, TaskFailedError, TextToVideo
from pixverse_async.testing import ScaledClock, Simulator, TaskPlan
from pixverse_async.web import aiohttp_webhook_handler

KEY = "sk-bench"
DURATIONS = LogNormal(40.0, 0.5)
SEED = 7
FULL_ROWS, QUICK_ROWS = 1000, 100
FULL_FAULT_JOBS, QUICK_FAULT_JOBS = 400, 60
CLI_TIME_SCALE = 0.01  # real seconds per simulated second: a 40 s job takes 0.4 s
FAULT_TIME_SCALE = 0.01
IMAGE_URL = "https://example.com/first-frame.png"


def _plan(body: Any) -> TaskPlan:
    return TaskPlan(duration=duration_of(DURATIONS, SEED, str(body["prompt"])))


def _manifest(path: Path, rows: int, *, mixed: bool) -> Path:
    lines = []
    for index in range(rows):
        row: dict[str, Any] = {"id": f"r{index}", "prompt": f"job {index}"}
        if mixed and index % 2 == 0:
            row["aspect_ratio"] = "9:16"
        else:
            row["image"] = IMAGE_URL
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


async def _cli(*args: str) -> tuple[int, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PIXVERSE_")}
    env["PIXVERSE_API_KEY"] = KEY
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pixverse_async", *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    return process.returncode or 0, stdout.decode()


async def _cli_run(rows: int, *, mixed: bool, folder: Path) -> dict[str, Any]:
    manifest = _manifest(folder / f"{'mixed' if mixed else 'image'}.jsonl", rows, mixed=mixed)
    out = folder / f"out-{'mixed' if mixed else 'image'}"
    async with Simulator(api_keys=(KEY,), time_scale=CLI_TIME_SCALE, plan=_plan, seed=SEED) as sim:
        started = time.monotonic()
        code, _ = await _cli(
            "run", str(manifest), "--out", str(out), "--base-url", sim.base_url, "--time-scale", str(CLI_TIME_SCALE),
            "--no-progress",
        )  # fmt: skip
        elapsed = time.monotonic() - started
        polls: dict[str, list[int]] = {"text": [], "image": []}
        for task_id, task in sim.tasks.items():
            polls["text" if task.is_text else "image"].append(sim.counters.polls_by_task[task_id])
        counters = sim.counters
        _, status = await _cli("status", "--journal", str(out / "pixverse-journal.sqlite"), "--json")
    kinds = collections.Counter((row["kind"], row["outcome"]) for row in json.loads(status))
    return {
        "code": code,
        "seconds": elapsed,
        "created": counters.tasks_created,
        "once": all(count == 1 for count in counters.tasks_created_by_prompt.values()),
        "polls": polls,
        "all_polls": [count for kind in polls.values() for count in kind],
        "after_end": counters.polls_after_terminal,
        "kinds": kinds,
        "videos": len(list(out.glob("*.mp4"))),
    }


async def mixed_manifest(rows: int) -> Table:
    with tempfile.TemporaryDirectory() as directory:
        image_only = await _cli_run(rows, mixed=False, folder=Path(directory))
        mixed = await _cli_run(rows, mixed=True, folder=Path(directory))
    table = Table(
        f"mixed kinds: {rows} rows through `pixverse-async run` (defaults), same durations by prompt",
        ["run", "exit", "tasks", "each row once", "videos", "polls/task", "text", "image", "after end", "wall s"],
    )
    for name, run in (("image only (baseline)", image_only), ("half text, half image", mixed)):
        polls = run["polls"]
        table.add(
            name,
            run["code"],
            run["created"],
            "yes" if run["once"] else "NO",
            run["videos"],
            statistics.mean(run["all_polls"]),
            statistics.mean(polls["text"]) if polls["text"] else "-",
            statistics.mean(polls["image"]) if polls["image"] else "-",
            run["after_end"],
            run["seconds"],
        )
    ratio = statistics.mean(mixed["all_polls"]) / statistics.mean(image_only["all_polls"])
    kinds = mixed["kinds"]
    told_apart = kinds[("text", "succeeded")] == rows // 2 and kinds[("image", "succeeded")] == rows - rows // 2
    every_row_once = all(run["once"] and run["created"] == rows for run in (image_only, mixed))
    table.notes.append(
        f"polls per task, mixed / image-only: {ratio:.3f} (goal within 5%: {goal_text(abs(ratio - 1) <= 0.05)})"
    )
    table.notes.append(f"every row once in both runs: {goal_text(every_row_once)}")
    table.notes.append(f"status --json by (kind, outcome): {dict(kinds)} ({goal_text(told_apart)})")
    return table


def _fault_plan(body: Any) -> TaskPlan:
    prompt = str(body["prompt"])
    fails = int(prompt.split()[-1]) % 10 == 3  # a tenth of the tasks
    return TaskPlan(duration=duration_of(DURATIONS, SEED, prompt), fail_reason="generation failed" if fails else None)


async def _faulty_run(jobs: int, repeats: int) -> dict[str, Any]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    requests: list[ImageToVideo | TextToVideo] = [
        TextToVideo(f"job {i}") if i % 2 else ImageToVideo(f"job {i}", IMAGE_URL) for i in range(jobs)
    ]
    async with Simulator(
        api_keys=(KEY,),
        time_scale=FAULT_TIME_SCALE,
        plan=_fault_plan,
        seed=SEED,
        task_failed_rate=0.05,
        surge_rate=0.05,
        webhook_repeat_rate=1.0 if repeats else 0.0,
        webhook_repeats=max(1, repeats),
        webhook_timeout=200.0,  # 2 real seconds: a loaded machine's slow answer is not a retry
    ) as sim:
        client = PixVerseClient(
            KEY, base_url=sim.base_url, clock=ScaledClock(FAULT_TIME_SCALE), webhook_url=f"http://127.0.0.1:{port}/hook"
        )
        app = web.Application()
        app.router.add_post("/hook", aiohttp_webhook_handler(client))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        started = time.monotonic()
        try:
            async with client:
                async with client.as_completed(requests) as results:
                    outcomes = [result async for result in results]
                # The last repeats still reach an open client (a closed one answers them 500).
                deadline = time.monotonic() + 10
                while sim.counters.webhooks_repeated < repeats * sim.counters.webhooks_delivered:
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()
        elapsed = time.monotonic() - started
        counters = sim.counters
        failed_tasks = {task_id for task_id, task in sim.tasks.items() if task.fail_reason is not None}
        polls = [counters.polls_by_task[task_id] for task_id in sim.tasks]
    succeeded = sum(result.ok for result in outcomes)
    failed = sum(isinstance(result.error, TaskFailedError) for result in outcomes)
    uncertain = sum(isinstance(result.error, SubmissionUncertainError) for result in outcomes)
    reported_failed = {result.task_id for result in outcomes if isinstance(result.error, TaskFailedError)}
    return {
        "results": len(outcomes),
        "succeeded": succeeded,
        "failed": failed,
        "uncertain": uncertain,
        "other": len(outcomes) - succeeded - failed - uncertain,
        "after_end": counters.polls_after_terminal,
        "polls": polls,
        "seconds": elapsed,
        "failed_reported": reported_failed == failed_tasks,
        "delivered": counters.webhooks_delivered,
        "repeats": counters.webhooks_repeated,
        "surges": counters.errors_by_reason["SERVICE_UNAVAILABLE"],
        "task_failed": counters.errors_by_reason["TASK_FAILED"],
        "created": counters.tasks_created,
    }


async def faults(jobs: int) -> Table:
    table = Table(
        f"faults: {jobs} mixed jobs, 10% failing, 5% TASK_FAILED on their polls, 5% 503 on every call, webhooks",
        ["webhooks", "results", "ok", "failed", "uncertain", "other", "after end", "polls/task", "max", "wall s"],
    )
    runs = {"each once (baseline)": await _faulty_run(jobs, 0), "each 4 times": await _faulty_run(jobs, 3)}
    for name, run in runs.items():
        table.add(
            name,
            run["results"],
            run["succeeded"],
            run["failed"],
            run["uncertain"],
            run["other"],
            run["after_end"],
            statistics.mean(run["polls"]),
            max(run["polls"]),
            run["seconds"],
        )
    for name, run in runs.items():
        table.notes.append(
            f"{name}: tasks created {run['created']}, webhooks delivered {run['delivered']}, repeats sent "
            f"{run['repeats']}; 503 answers {run['surges']}, TASK_FAILED answers {run['task_failed']}; polls per "
            f"task {dict(sorted(collections.Counter(run['polls']).items()))}"
        )
    baseline, repeated = runs.values()
    accounted = all(run["results"] == jobs and run["other"] == 0 for run in runs.values())
    ratio = statistics.mean(repeated["polls"]) / statistics.mean(baseline["polls"])
    table.notes.append(f"every job accounted for (a result each, ok/failed/uncertain): {goal_text(accounted)}")
    table.notes.append(
        f"no task polled after its end: {goal_text(all(run['after_end'] == 0 for run in runs.values()))}"
    )
    table.notes.append(
        f"every failed task reported failed: {goal_text(all(run['failed_reported'] for run in runs.values()))}"
    )
    table.notes.append(
        f"polls per task, repeated / once: {ratio:.3f} (one confirmation per task whatever the repeats: "
        f"{goal_text(ratio <= 1.05)})"
    )
    return table


async def run(quick: bool) -> list[Table]:
    tables = [await mixed_manifest(QUICK_ROWS if quick else FULL_ROWS)]
    tables[-1].print()
    tables.append(await faults(QUICK_FAULT_JOBS if quick else FULL_FAULT_JOBS))
    tables[-1].print()
    return tables


def main() -> None:
    asyncio.run(run(parse_quick_flag(__doc__ or "")))


if __name__ == "__main__":
    main()
