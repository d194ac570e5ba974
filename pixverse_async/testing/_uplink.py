"""The users' uplink, as the simulator models it: one link of `uplink_mbps` (simulated megabits per second)
shared by every request body, and the server's `submit_latency` after a submission's body has arrived.

Bodies are read from the request stream a chunk at a time, each chunk waiting for its turn on the link (a
finish-time schedule: a chunk's transfer starts when the link is free, so concurrent bodies share it fairly,
chunk by chunk), in simulated time like everything else (`time_scale`, and `sim.advance()` frees a waiting
chunk). While a chunk waits nothing more is read, so TCP holds the client back as a slow link would; the
API site's socket also gets a small receive buffer, so that the backlog stays in the client's send queue
instead of the server's kernel. A body that stops short (the client closed the connection before its
`Content-Length` arrived) is counted (`SimCounters.bodies_cut_short`) and creates nothing.
"""

from __future__ import annotations

import typing

import attrs
from aiohttp import web

from pixverse_async.testing._sim_clock import SimClock

#: Bytes read from a request's stream at a time.
_CHUNK = 2**16
#: What an idle link may send at once to catch up (bytes).
_BURST_BYTES = 2**18
#: The API site's socket receive buffer when the link is modelled (bytes).
RECEIVE_BUFFER = 2**16


class BodyCutShort(Exception):
    """The client went away before its body was complete."""


@typing.final
@attrs.define(eq=False)
class Uplink:
    mbps: float | None
    submit_latency: float
    _clock: SimClock
    _free_at: float = 0.0

    async def read_body(self, request: web.Request, max_bytes: int) -> bytes:
        """The whole body, read through the link; `BodyCutShort` if it stops short."""
        expected = request.content_length
        parts: list[bytes] = []
        received = 0
        try:
            while chunk := await request.content.read(_CHUNK):
                received += len(chunk)
                if received > max_bytes:
                    raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=received)
                if self.mbps is not None:
                    await self._transfer(len(chunk))
                parts.append(chunk)
        except (ConnectionError, OSError) as error:
            raise BodyCutShort from error
        except Exception as error:  # aiohttp's payload errors: the body ended before its length
            if type(error).__name__.endswith("PayloadError"):
                raise BodyCutShort from error
            raise
        if expected is not None and received < expected:
            raise BodyCutShort
        if self.submit_latency > 0:
            await self._clock.sleep(self.submit_latency)
        return b"".join(parts)

    async def _transfer(self, size: int) -> None:
        assert self.mbps is not None
        now = self._clock.now()
        # A link idle for a moment may send a burst to catch up: a waiter woken late (timers are coarse)
        # loses no bandwidth, and the rate holds over any longer stretch.
        start = max(now - _BURST_BYTES * 8 / (self.mbps * 1e6), self._free_at)
        self._free_at = start + size * 8 / (self.mbps * 1e6)
        if self._free_at > now:
            await self._clock.sleep(self._free_at - now)
