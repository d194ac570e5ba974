"""`as_completed` kept but no longer read: it stops buying once `max_concurrency` results wait unread."""

from __future__ import annotations

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
