"""Webhook deliveries the simulator sends when tasks end."""

from __future__ import annotations

from typing import Final

import attrs

from pixverse_async.testing._tasks import SimTask

#: The ``event_type`` of the webhook sent when a task ends.
WEBHOOK_EVENT_TYPE: Final = "ASYNC_TASK_RESULT"
#: Simulated seconds a webhook receiver has to answer 2xx before the attempt counts as failed (the default
#: of ``Simulator(webhook_timeout=...)``).
WEBHOOK_TIMEOUT: Final = 5.0
#: Simulated seconds to wait before each retry of a failed webhook attempt: 5 retries, 6 attempts in all.
WEBHOOK_RETRY_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
#: At most this many webhook attempts in flight at once to one receiver (scheme, host and port); the others
#: wait for a slot. Kept well under a typical listen backlog (128), past which connections stall for seconds.
WEBHOOK_CONCURRENCY: Final = 32


@attrs.define(eq=False)
class _Delivery:
    """One webhook delivery of one task, between its attempts."""

    task: SimTask
    url: str
    attempts: int = 0  # attempts made so far
    duplicate: bool = False  # a ``duplicate`` fault was taken for it
