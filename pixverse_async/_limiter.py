"""How many tasks this client lets run on the server at once, learning the account's own cap from its 429s.

A slot is taken before a submission and given back when the task is seen to end (or the submission failed
without creating one). The API caps running tasks per key without saying where the cap is; when a
submission is refused with 429 while we hold `n` slots, the usable limit drops to `max(n, limit / 2)`, so the
next submissions wait for a running task to end instead of hammering the API. After every `limit` accepted
submissions the limit grows by one again, up to `max_concurrency`: an occasional probe for a raised cap.
"""

from __future__ import annotations

from typing import final

import anyio


@final
class RunningTaskLimiter:
    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.limit = max_concurrency
        self.in_use = 0
        self._accepted_since_change = 0
        self._changed = anyio.Event()

    @property
    def saturated(self) -> bool:
        return self.in_use >= self.limit

    async def acquire(self) -> None:
        while self.in_use >= self.limit:
            # Checked just above with nothing running in between: a set event is stale, so renew it.
            if self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._notify()

    def on_accepted(self) -> None:
        """A submission created a task: after `limit` of them in a row, probe one slot higher."""
        self._accepted_since_change += 1
        if self.limit < self.max_concurrency and self._accepted_since_change >= self.limit:
            self.limit += 1
            self._accepted_since_change = 0
            self._notify()

    def on_rate_limited(self) -> None:
        """A submission was refused with 429 while holding one of the `in_use` slots."""
        # The refused submission's own slot is not a running task: count the others.
        running = self.in_use - 1
        self.limit = max(1, running, self.limit // 2)
        self._accepted_since_change = 0

    def _notify(self) -> None:
        # Wake every waiter; each re-checks the limit. Cheap: waiters are at most the submitters in flight.
        self._changed.set()
