"""The router's call-rate limits, per key and endpoint."""

from __future__ import annotations

import collections
import math
from typing import Literal

import attrs


@attrs.frozen
class CallRateLimit:
    """A router's call-rate limit on one endpoint, per key: at most ``calls`` calls per ``per`` simulated s.

    ``window`` is "sliding" (any ``per`` seconds) or "fixed" (consecutive windows of ``per`` seconds);
    ``retry_after`` says whether its 429s carry a ``Retry-After`` header. See the module documentation.
    """

    calls: int = attrs.field(validator=attrs.validators.ge(1))
    per: float = attrs.field(validator=attrs.validators.gt(0.0))
    window: Literal["sliding", "fixed"] = attrs.field(
        default="sliding", validator=attrs.validators.in_(("sliding", "fixed"))
    )
    retry_after: bool = True


@attrs.define
class _CallWindow:
    """The calls one key made to one endpoint that count against a :class:`CallRateLimit`."""

    times: collections.deque[float] = attrs.Factory(collections.deque)
    fixed_window: int = -1
    fixed_count: int = 0

    def refuse(self, limit: CallRateLimit, now: float, origin: float) -> float | None:
        """Seconds until a call would be let through, or None: the call is let through and counted."""
        if limit.window == "fixed":
            index = math.floor((now - origin) / limit.per)
            if index != self.fixed_window:
                self.fixed_window, self.fixed_count = index, 0
            if self.fixed_count >= limit.calls:
                return max(0.0, origin + (index + 1) * limit.per - now)
            self.fixed_count += 1
            return None
        times = self.times
        while times and times[0] <= now - limit.per:
            times.popleft()
        if len(times) >= limit.calls:
            return max(0.0, times[0] + limit.per - now)
        times.append(now)
        return None
