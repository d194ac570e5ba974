"""Sending billed requests so that a caller who leaves loses nothing and starts nothing new."""

from __future__ import annotations

import anyio
import attrs


@attrs.frozen
class WireGuard:
    """What a task that sends submissions for someone gives `_submit_holding_slot`.

    `scope`, a cancel scope the sending task runs in, is shielded only while a request is on the wire: a
    cancellation then waits for the answer (bounded by the read timeout), so a task the server created is not
    lost. Nothing is sent once `stop`, the scope whose cancellation means the caller left (an `as_completed`
    run's, a `submit()` call's), has been cancelled. Toggling one scope per sending task costs far less than
    entering a new shielded scope per request.
    """

    scope: anyio.CancelScope
    stop: anyio.CancelScope
