"""The input of an `as_completed` run, shared by its submitters (`_bulk.py`), which read it in turns.

`turn` is a lock: an async generator may not be advanced by two tasks at once, and the submitter holding the
turn is the only one that may wait for the input holding a running-task slot (see `_bulk.py`'s docstring).
When the input ends, the submitters still waiting for a slot to read it with are stopped: each would take a
slot only to give it back, a round trip each to a shared budget.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any, final

import anyio

#: What `JobSource.next()` returns once the input has ended.
EXHAUSTED = object()


@final
class JobSource:
    """The input, read in turns (`turn`); `exhausted` once it has ended."""

    def __init__(self, jobs: Iterable[object] | AsyncIterable[object]) -> None:
        self._sync = iter(jobs) if not isinstance(jobs, AsyncIterable) else None
        self._async = aiter(jobs) if isinstance(jobs, AsyncIterable) else None
        self.turn = anyio.Lock(fast_acquire=True)
        self.exhausted = False
        #: The cancel scopes of the submitters waiting for a slot to read the next job with (each adds its own
        #: while it waits): cancelled when the input ends.
        self.waiting_to_read: set[anyio.CancelScope] = set()

    async def next(self) -> Any:
        """The next job, or `EXHAUSTED`; called holding `turn`."""
        if self._sync is not None:
            job = next(self._sync, EXHAUSTED)
        else:
            assert self._async is not None
            job = await anext(self._async, EXHAUSTED)
        if job is EXHAUSTED:
            self.exhausted = True
            for scope in self.waiting_to_read:
                scope.cancel()
        return job
