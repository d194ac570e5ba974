"""The one source of time for the client's own waiting: retry backoff, poll intervals, pacing, callers' timeouts.

The network timeouts (`Timeouts`: connect, read, download_read) are the exception: real seconds, kept by
aiohttp and the transport's read-timeout watchdog, because they bound real sockets.

Tests swap in a faster clock (`pixverse_async.testing.ScaledClock` to match the simulator's time scale,
`InstantClock` to make backoff take no time at all) instead of waiting real seconds.

A client built without a clock takes `default_clock()`: `SystemClock()`, except while a test that uses the
pytest plugin's `pixverse_simulator` fixture runs. That fixture (and nothing else) sets `_testing_default` to
a `ScaledClock` at its simulator's time scale for the test's duration, so that application code which builds
`PixVerseClient()` unchanged keeps the simulator's time. Production code never sees it: nothing sets it
unless that fixture is used.
"""

from __future__ import annotations

import time
from typing import Protocol, final

import anyio
import attrs

from ._validation import number


class Clock(Protocol):
    """Where the client reads the time and sleeps. Times are in the API's seconds."""

    def now(self) -> float:
        """A monotonic reading in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds`; must be cancellable, like `anyio.sleep`."""
        ...


@final
@attrs.frozen
class SystemClock:
    """Real time: `time.monotonic()` and `anyio.sleep`. The default."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


@final
@attrs.frozen
class ScaledClock:
    """Time that runs `1 / scale` times faster than real time.

    With the simulator's `time_scale=0.001`, `ScaledClock(0.001)` makes a 60-second poll interval take 60 ms
    of real time, so client and simulator agree on what a "second" is.
    """

    scale: float = attrs.field(validator=number(above=0))

    def now(self) -> float:
        return time.monotonic() / self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) * self.scale)


@final
@attrs.define
class InstantClock:
    """Virtual time that jumps forward on every sleep, and remembers each sleep it was asked for.

    For tests of retry policy against a small local server: backoff costs nothing and `sleeps` shows exactly
    what the client waited (e.g. that it honoured `Retry-After`).
    """

    current: float = attrs.field(default=0.0, validator=number())
    sleeps: list[float] = attrs.field(factory=list)

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self.current += seconds
        await anyio.lowlevel.checkpoint()


# Set only by the pytest plugin's `pixverse_simulator` fixture, for the duration of one test (see above).
# A module global rather than a context variable: the test's client may be built in another thread or in an
# event loop's task that was created before the fixture ran, and must still see it.
_testing_default: Clock | None = None


def default_clock() -> Clock:
    """The clock of a client built without one: real time, unless a `pixverse_simulator` test is running."""
    return _testing_default if _testing_default is not None else SystemClock()
