"""The simulator's clock: simulated seconds that run `1 / time_scale` times as fast as real ones.

It reads like a Unix time: it starts at the wall-clock time of its construction, and `advance(seconds)`
jumps it forward. What waits on it (`sleep`, a `slow` fault, the webhook dispatcher) wakes when it jumps.
"""

from __future__ import annotations

import time
import typing

import anyio
import attrs


@typing.final
@attrs.define(eq=False)
class SimClock:
    """Simulated time for one simulator; `time_scale` is real seconds per simulated second."""

    time_scale: float
    #: The simulated time at construction (fixed rate windows count from it).
    origin: float = attrs.field(factory=time.time)
    _origin_real: float = attrs.field(factory=time.monotonic)
    _offset: float = 0.0
    # One event per wait in progress, set when the clock jumps (each made by its waiter, inside its event
    # loop, and dropped when the wait ends: none outlives the loop, if the simulator later runs in another).
    _waiters: set[anyio.Event] = attrs.Factory(set)

    def now(self) -> float:
        """Simulated seconds, Unix-like."""
        return self.origin + (time.monotonic() - self._origin_real) / self.time_scale + self._offset

    def advance(self, seconds: float) -> None:
        """Jump `seconds` forward, waking whatever waits on the clock."""
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._offset += seconds
        for waiter in self._waiters:
            waiter.set()

    async def wait_for_jump(self, simulated_seconds: float) -> None:
        """Wait until the clock jumps, or `simulated_seconds` pass at the time scale (`inf`: no deadline)."""
        jumped = anyio.Event()
        self._waiters.add(jumped)
        try:
            with anyio.move_on_after(simulated_seconds * self.time_scale):
                await jumped.wait()
        finally:
            self._waiters.discard(jumped)

    async def sleep(self, simulated_seconds: float) -> None:
        """Wait `simulated_seconds` on this clock: in real time at the scale, or sooner when it jumps."""
        until = self.now() + simulated_seconds
        while (left := until - self.now()) > 0:
            await self.wait_for_jump(left)
