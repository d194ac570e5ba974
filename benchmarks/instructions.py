"""Instructions per job, the steady figure on a noisy machine: run one contender of `throughput` under callgrind.

Wall-clock and CPU time vary by tens of percent here (shared cores, no hardware counters for `perf stat`), so
for deciding whether a change to the hot path helps, count instructions instead. Run each contender twice,
with N jobs and with none, and divide the difference by N (the simulator child process is not counted):

    export PYTHONHASHSEED=0   # set iteration order varies with it, and so does the count, by about 0.5%
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.instructions lib 400
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m benchmarks.instructions lib 0
    (and the same with `raw`)

Measured on 2026-11-26: the raw aiohttp loop 1.034M instructions per job, `as_completed` 1.154M (1.12x); the
history is in benchmarks/README.md. The count comes from the client process only (not the kernel, not the
server).
"""

from __future__ import annotations

import argparse
import asyncio

from benchmarks._common import SimConfig, SimulatorProcess
from benchmarks.throughput import ASAP_POLLING, library_as_completed, raw_aiohttp_loop

WARM_UP_JOBS = 50
CONCURRENCY = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("contender", choices=("raw", "lib"), help="the raw aiohttp loop, or as_completed")
    parser.add_argument("jobs", type=int, help="jobs after the warm-up (0 to measure the fixed cost)")
    arguments = parser.parse_args()
    run = raw_aiohttp_loop if arguments.contender == "raw" else library_as_completed(ASAP_POLLING)

    async def measured(sim: SimulatorProcess) -> None:
        await run(sim, WARM_UP_JOBS, CONCURRENCY)
        if arguments.jobs:
            await run(sim, arguments.jobs, CONCURRENCY)

    with SimulatorProcess(SimConfig(time_scale=0.001, duration=0.0)) as sim:
        asyncio.run(measured(sim))


if __name__ == "__main__":
    main()
