"""Deadlines for API requests, kept by one watchdog task per client instead of event-loop timers per request.

aiohttp's `sock_read` timeout arms a timer when a request is sent and arms a new one on every chunk received,
and asyncio keeps its timers in a heap of Python objects: measured with `benchmarks.instructions`, the four
timers of a job (its submission and its poll) cost 67k instructions, a twentieth of the client's work per
job. Here a request costs an entry in a set. One task looks at the set every eighth of the limit and cancels
each request past its deadline; the request takes that cancellation back (`Task.uncancel()`, as
`asyncio.timeout()` does) and raises its timeout error instead, while a cancellation from anyone else still
propagates.
"""

from __future__ import annotations

import asyncio
import time
from typing import final

import anyio

_CHECKS_PER_LIMIT = 8


@final
class Deadline:
    """When one request, running in `task`, must have ended (`time.monotonic()`)."""

    __slots__ = ("at", "cancelling", "expired", "task")

    def __init__(self, task: asyncio.Task[object], at: float) -> None:
        self.task = task
        self.at = at
        self.cancelling = task.cancelling()
        self.expired = False


@final
class Deadlines:
    """The deadlines of the requests in flight, each `limit` seconds after its request started."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self._armed: set[Deadline] = set()

    def arm(self) -> Deadline | None:
        """A deadline for the request the current task starts now (None when there is no limit)."""
        if self.limit is None:
            return None
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("API requests must run in an asyncio task")
        deadline = Deadline(task, time.monotonic() + self.limit)
        self._armed.add(deadline)
        return deadline

    def disarm(self, deadline: Deadline | None) -> None:
        """The request ended, one way or another."""
        if deadline is not None:
            self._armed.discard(deadline)

    @staticmethod
    def timed_out(deadline: Deadline | None) -> bool:
        """On a `CancelledError` in the request: whether it came from its deadline alone. If so it is taken
        back, and the caller raises its timeout error instead."""
        return deadline is not None and deadline.expired and deadline.task.uncancel() <= deadline.cancelling

    async def watch(self) -> None:
        """Cancel every request past its deadline, until cancelled; at most an eighth of the limit late.

        Cancelled (the client closing), it goes on while requests remain: a submission shielded to learn its
        task id still needs its deadline.
        """
        if self.limit is None:
            return
        try:
            while True:
                await self._check_after(self.limit / _CHECKS_PER_LIMIT)
        finally:
            with anyio.CancelScope(shield=True):
                while any(not deadline.expired for deadline in self._armed):
                    await self._check_after(self.limit / _CHECKS_PER_LIMIT)

    async def _check_after(self, seconds: float) -> None:
        await anyio.sleep(seconds)
        now = time.monotonic()
        for deadline in self._armed:
            if deadline.at <= now and not deadline.expired:
                deadline.expired = True
                deadline.task.cancel()
