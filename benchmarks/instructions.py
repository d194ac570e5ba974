"""Instructions per job, the steady figure on a noisy machine: run one contender of `throughput` under callgrind.

Wall-clock and CPU time vary by tens of percent here (shared cores, no hardware counters for `perf stat`), so
for deciding whether a change to the hot path helps, count instructions instead. Run each contender twice,
with N jobs and with none, and divide the difference by N (the simulator child process is not counted):

    export PYTHONHASHSEED=0   # set iteration order varies with it, and so does the count, by about 0.5%
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.instructions lib 400
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.instructions lib 0
    (and the same with `raw`, and with `webhooks`)

`webhooks` is `lib` with `PixVerseClient(webhook_url=...)` and an aiohttp receiver in this process (counted
too: a delivery's handling is the client's work). Its polls are as soon as possible, as `lib`'s: each job is
one submission, one poll and one delivery, however slowly callgrind runs it (with the default `PollPolicy`,
how many fallback polls a job makes depends on how fast the client runs, and the count with it). To count an
older commit's package with this script, check it out (`git worktree add /tmp/old COMMIT`) and set
`PIXVERSE_ASYNC_FROM=/tmp/old` (see `benchmarks/__init__.py`).

Measured on 2026-11-26: the raw aiohttp loop 1.034M instructions per job, `as_completed` 1.154M (1.12x); the
history is in benchmarks/README.md. The count comes from the client process only (not the kernel, not the
server).
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from aiohttp import web

from benchmarks._common import IMAGE_URL, SimConfig, SimulatorProcess
from benchmarks.throughput import ASAP_POLLING, library_as_completed, raw_aiohttp_loop
from pixverse_async import ImageToVideo, PixVerseClient
from pixverse_async.testing import ScaledClock
from pixverse_async.web import aiohttp_webhook_handler

TIME_SCALE = 0.001
WARM_UP_JOBS = 50
CONCURRENCY = 64


async def webhooked_as_completed(sim: SimulatorProcess, jobs: int, concurrency: int) -> int:
    """`as_completed` with webhooks on, the deliveries received here; the number of failed jobs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    client = PixVerseClient(
        sim.api_key,
        base_url=sim.base_url,
        clock=ScaledClock(sim.time_scale),
        max_concurrency=concurrency,
        polling=ASAP_POLLING,
        webhook_url=f"http://127.0.0.1:{listener.getsockname()[1]}/hook",
    )
    receiver = web.Application()
    receiver.router.add_post("/hook", aiohttp_webhook_handler(client))
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listener, backlog=1024).start()
    failed = 0
    try:
        requests = (ImageToVideo(f"job {index}", IMAGE_URL) for index in range(jobs))
        async with client, client.as_completed(requests) as results:
            async for result in results:
                failed += not result.ok
    finally:
        await runner.cleanup()
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "contender",
        choices=("raw", "lib", "webhooks"),
        help="the raw aiohttp loop, as_completed, or as_completed with webhooks on",
    )
    parser.add_argument("jobs", type=int, help="jobs after the warm-up (0 to measure the fixed cost)")
    arguments = parser.parse_args()
    run = {
        "raw": raw_aiohttp_loop,
        "lib": library_as_completed(ASAP_POLLING),
        "webhooks": webhooked_as_completed,
    }[arguments.contender]

    async def measured(sim: SimulatorProcess) -> None:
        await run(sim, WARM_UP_JOBS, CONCURRENCY)
        if arguments.jobs:
            await run(sim, arguments.jobs, CONCURRENCY)

    # The API gives a receiver 5 simulated seconds to answer: 5 ms of real time here, far less than callgrind's
    # pace allows, and each delivery would be retried up to 5 times. A minute of real time instead.
    with SimulatorProcess(SimConfig(time_scale=TIME_SCALE, duration=0.0, webhook_timeout=60.0 / TIME_SCALE)) as sim:
        asyncio.run(measured(sim))


if __name__ == "__main__":
    main()
