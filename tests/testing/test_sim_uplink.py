"""The simulator's uplink (`testing/_uplink.py`): bodies share `uplink_mbps` in simulated time, a submission is
answered `submit_latency` after its body, and a body cut short creates nothing."""

from __future__ import annotations

import socket

import anyio
import pytest

from pixverse_async import ImageToVideo
from pixverse_async.testing import Simulator
from tests.helpers import KEY, client_for, eventually
from tests.images import png

pytestmark = pytest.mark.anyio


async def test_bodies_share_the_uplink_and_tasks_start_after_the_latency() -> None:
    frame = png(400, 300, pad_to=3 * 2**20 // 4 * 3)  # a body of about 3 MiB
    async with Simulator(time_scale=0.01, uplink_mbps=100.0, submit_latency=2.0) as sim, client_for(sim) as client:
        started = sim.now()
        async with anyio.create_task_group() as group:
            for number in range(3):
                group.start_soon(client.submit, ImageToVideo(f"p{number}", frame))
        tasks = list(sim.tasks.values())
    link_seconds = 3 * (3 * 2**20) * 8 / 100e6  # all bodies over the link
    assert len(tasks) == 3 and sim.counters.bodies_cut_short == 0
    # No body can arrive faster than the link carries it; the last arrives after all bytes crossed it.
    assert max(task.submitted_at for task in tasks) - started >= link_seconds * 0.99 + 2.0
    assert min(task.submitted_at for task in tasks) - started >= (3 * 2**20) * 8 / 100e6 * 0.99 + 2.0


async def test_a_body_cut_short_creates_nothing() -> None:
    async with Simulator(time_scale=0.01, uplink_mbps=100.0) as sim:
        host, port = sim.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(
                b"POST /v3/async/pixverse-v4.5-i2v HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n\r\n".encode()
                + b'{"prompt":"p","image":"'
                + b"A" * 5000
            )
        await eventually(lambda: sim.counters.bodies_cut_short == 1)
        assert sim.counters.tasks_created == 0 and sim.counters.submit_requests == 1
