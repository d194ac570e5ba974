"""Shared runs on a key whose account caps its running tasks below `--concurrency`: real `pixverse-async run`
processes on one manifest, one simulator with a running-task cap, a real redis-server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixverse_async.testing import RedisServer, Simulator, TaskPlan
from tests.cli.test_cli import SCALE
from tests.cli.test_shared_runs import KEY, check_every_row_done_once, manifest_of, shared_rows, start_worker

pytestmark = pytest.mark.anyio
CAP = 5
WORKERS = 4
ROWS = 40
CONCURRENCY = 16


@pytest.fixture
async def capped_sim() -> AsyncIterator[Simulator]:
    durations = random.Random(21)

    def plan(body: Mapping[str, Any]) -> TaskPlan:
        return TaskPlan(duration=durations.uniform(200, 400))  # 0.2-0.4 s of real time

    async with Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, seed=21, max_running_per_key=CAP) as simulator:
        yield simulator


async def test_workers_on_a_capped_key_finish_the_run(
    capped_sim: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim = capped_sim
    manifest, out = manifest_of(tmp_path, ROWS), tmp_path / "out"
    # Alone, the run takes a few seconds; a minute is a hang even on a loaded machine (each worker is killed
    # then: the test fails, it does not hang).
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            workers = [
                await start_worker(group, manifest, out, redis_server.url, sim, concurrency=CONCURRENCY)
                for _ in range(WORKERS)
            ]
            codes = [await worker.ended() for worker in workers]
    lines = [f"worker {number}: {line}" for number, worker in enumerate(workers) for line in worker.lines]
    assert codes == [0] * WORKERS, "\n".join(lines)
    rows = shared_rows(redis_server.url)
    assert check_every_row_done_once(sim, out, rows) == set() and len(rows) == ROWS
    assert sim.counters.tasks_created == ROWS
    assert sim.counters.max_running_by_key[KEY] <= CAP
    # One budget learns the cap for all four: few 429s (about 0.25 per row here; the slow start meets the cap).
    assert sim.counters.rate_limited <= ROWS // 2, sim.counters.rate_limited_by
