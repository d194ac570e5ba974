"""A worker process for the Redis budget tests: one client, one batch, each event a JSON line on stdout.

    python -m tests.redis_worker BASE_URL REDIS_URL --jobs 8 --prompt w1 --max-concurrency 4 --scale 0.01

Lines: {"event": "open"} once the client is open (with --hold, it then waits for a line on stdin),
{"event": "submitted", "task_id": ..., "at": <client clock>} per task, {"event": "done", "ok": N, "failed":
[...], "round_trips": N, "adopted": N, "cap": ...} at the end (with --linger, it then waits for another line
before closing). With --no-budget the client keeps its own (local) budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import anyio

from pixverse_async import EventKind, ImageToVideo, JobEvent, PixVerseClient, RateLimits, RetryPolicy
from pixverse_async.redis import RedisBudget
from pixverse_async.testing import ScaledClock

IMAGE_URL = "https://example.com/first-frame.png"


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def main(arguments: argparse.Namespace) -> None:
    clock = ScaledClock(arguments.scale)
    budget = None if arguments.no_budget else RedisBudget(arguments.redis_url, lease=arguments.lease)
    client = PixVerseClient(
        arguments.api_key,
        base_url=arguments.base_url,
        max_concurrency=arguments.max_concurrency,
        rate_limits=RateLimits(max_running=arguments.max_running),
        retry=RetryPolicy(max_attempts=20, initial_backoff=0.5, max_backoff=4.0),
        clock=clock,
        budget=budget,
    )
    jobs = [ImageToVideo(f"{arguments.prompt} {index}", IMAGE_URL) for index in range(arguments.jobs)]

    def on_event(event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTED:
            say(event="submitted", task_id=event.task_id, at=clock.now())

    async with client:
        say(event="open")
        if arguments.hold:
            await anyio.to_thread.run_sync(sys.stdin.readline)  # until told to go
        ok, failed = 0, []
        async with client.as_completed(jobs, on_event=on_event) as results:
            async for result in results:
                if result.ok:
                    ok += 1
                else:
                    failed.append(repr(result.error))
        say(
            event="done",
            ok=ok,
            failed=failed,
            round_trips=budget.round_trips if budget is not None else 0,
            adopted=budget.adopted_tasks if budget is not None else 0,
            cap=client._budget.cap,
        )
        if arguments.linger:
            # Keep the client (and its lease) alive until told to stop: adopted tasks are polled meanwhile.
            await anyio.to_thread.run_sync(sys.stdin.readline)
            say(event="lingered", adopted=budget.adopted_tasks if budget is not None else 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("redis_url")
    parser.add_argument("--api-key", default="sk-test")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--prompt", default="job")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--max-running", type=int, default=None)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--no-budget", action="store_true")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--linger", action="store_true")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    anyio.run(main, parser.parse_args())
