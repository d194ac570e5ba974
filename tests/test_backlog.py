"""`as_completed` kept but no longer read: it stops buying once `max_concurrency` results wait unread."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from pixverse_async import ImageToVideo
from pixverse_async.testing import Simulator, TaskPlan
from tests.helpers import SCALE, client_for

pytestmark = pytest.mark.anyio
URL = "https://example.com/frame.png"


@pytest.mark.parametrize("max_concurrency", [4, 16])
async def test_an_iterator_kept_but_not_read_stops_submitting(max_concurrency: int) -> None:
    async def endless() -> AsyncIterator[ImageToVideo]:
        number = 0
        while True:
            number += 1
            yield ImageToVideo(f"job {number}", URL)

    async with (
        Simulator(time_scale=SCALE, plan=lambda body: TaskPlan(duration=2.0)) as sim,
        client_for(sim, max_concurrency=max_concurrency) as client,
    ):
        it = aiter(client.as_completed(endless()))
        for _ in range(5):
            await anext(it)
        # Stop reading, and let every task the run could create finish: a run that kept buying would go on.
        created = -1
        with anyio.fail_after(10):
            while created != len(sim.tasks) or client.pending_tasks:
                created = len(sim.tasks)
                await anyio.sleep(50 * SCALE)
        # 5 read, at most max_concurrency waiting unread; the submitters that were past the check when the
        # backlog filled can each have had one more in flight.
        assert len(sim.tasks) <= 5 + 2 * max_concurrency
        await it.aclose()  # type: ignore[attr-defined]


async def test_results_that_ended_unread_keep_their_outcome_and_are_not_polled_again() -> None:
    def plan(body: object) -> TaskPlan:
        return TaskPlan(duration=1.0 if str(body["prompt"]).startswith("quick") else 100_000.0)  # type: ignore[index]

    quick = [ImageToVideo(f"quick {i}", URL) for i in range(2)]
    slow = [ImageToVideo(f"slow {i}", URL) for i in range(2)]
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=4) as client:
        async with client.as_completed([*quick, *slow]) as results:
            counts = results.counts
            with anyio.fail_after(10):
                while not (counts.done == 2 and counts.running == 2):
                    await anyio.sleep(10 * SCALE)
            # Leave without reading anything: two jobs have ended, two still run.
        assert {task.request for task in results.unfinished} == set(slow)
        assert sorted(r.request.prompt for r in results.unread) == ["quick 0", "quick 1"]  # type: ignore[union-attr]
        assert all(r.ok and r.videos for r in results.unread)
        ended = {r.task_id for r in results.unread if r.task_id is not None}
        polls_before = Counter(sim.counters.polls_by_task)
        sim.advance(100_000)
        async with client.as_completed(results.unfinished) as resumed:
            again = [r async for r in resumed]
        assert {r.task_id for r in again} == {task.task_id for task in results.unfinished}
        assert all(r.ok for r in again)
        assert all(sim.counters.polls_by_task[task_id] == polls_before[task_id] for task_id in ended)
