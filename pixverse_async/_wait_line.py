"""Waiters woken in order, only as many at a time as there is room for: `WaitLine`.

One `anyio.Event` shared by every waiter wakes them all at each change, and each takes a turn of the event
loop to find whether it may go on: the 64 submitters of a run waiting at the cap all woke for every slot
freed. `wake(room)` wakes the oldest waiters, as many as `room` less those woken that have not run yet; each
then checks again (a slot may have gone to a caller that did not wait), and waits again at the back if it
cannot go on. A waiter cancelled once woken passes its wake-up to the next, so that none is lost.
"""

from __future__ import annotations

import collections
from typing import final

import anyio
import anyio.lowlevel


@final
class WaitLine:
    """A line of waiters: `await line.wait()`, woken by `line.wake(room)`."""

    def __init__(self) -> None:
        self._waiting: collections.deque[anyio.Event] = collections.deque()
        self._woken = 0  # woken, not run yet

    async def wait(self) -> None:
        """Wait at the back of the line until `wake()` wakes this waiter."""
        woken = anyio.Event()
        self._waiting.append(woken)
        try:
            await woken.wait()
            # Cancelled as it was woken (its wake-up and the cancellation in one turn of the event loop): it goes
            # no further, and its wake-up goes to the next.
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if not woken.is_set():
                self._waiting.remove(woken)
            else:
                self._woken -= 1
                self._wake_next()
            raise
        self._woken -= 1

    def wake(self, room: int | None) -> None:
        """Wake the oldest waiters: as many as `room`, less those woken already that have not run yet (None:
        every one)."""
        waiting = len(self._waiting)
        for _ in range(waiting if room is None else min(room - self._woken, waiting)):
            self._wake_next()

    def _wake_next(self) -> None:
        if self._waiting:
            self._waiting.popleft().set()
            self._woken += 1
