"""Test helpers for code that uses `pixverse_async`: a local simulator of the remote API, and clocks.

`Simulator` serves the API over real HTTP on loopback. Its behaviour is documented by concern:
`pixverse_async.testing._simulator` (configuration, lifecycle, time, and which module tells what),
`_api_site` (submit and task-result), `_validation`, `_tasks` (lifecycle and hint modes), `_rate_limits`,
`_faults`, `_webhooks` (the POSTs sent when tasks end, and the `WEBHOOK_*` constants), `_video_host`,
`_counters`. Give the client a `ScaledClock(sim.time_scale)` so that client and simulator agree on what a
second is, or an `InstantClock` to make retry backoff cost no real time.

`redis_server()` starts a real `redis-server` on a random port for tests of `pixverse_async.redis`.
"""

from pixverse_async._clock import InstantClock, ScaledClock
from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import Fault, FaultEndpoint, FaultKind
from pixverse_async.testing._rate_limits import CallRateLimit
from pixverse_async.testing._redis_server import RedisServer, RedisServerNotFound, find_redis_server, redis_server
from pixverse_async.testing._simulator import Simulator, serve_forever
from pixverse_async.testing._tasks import (
    DEFAULT_DURATION,
    DEFAULT_FAIL_REASON,
    EtaMode,
    ProgressMode,
    SimTask,
    TaskPlan,
    lognormal_durations,
)
from pixverse_async.testing._validation import SubmittedImage
from pixverse_async.testing._webhooks import (
    WEBHOOK_CONCURRENCY,
    WEBHOOK_EVENT_TYPE,
    WEBHOOK_RETRY_DELAYS,
    WEBHOOK_TIMEOUT,
)

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_FAIL_REASON",
    "WEBHOOK_CONCURRENCY",
    "WEBHOOK_EVENT_TYPE",
    "WEBHOOK_RETRY_DELAYS",
    "WEBHOOK_TIMEOUT",
    "CallRateLimit",
    "EtaMode",
    "Fault",
    "FaultEndpoint",
    "FaultKind",
    "InstantClock",
    "ProgressMode",
    "RedisServer",
    "RedisServerNotFound",
    "ScaledClock",
    "SimCounters",
    "SimTask",
    "Simulator",
    "SubmittedImage",
    "TaskPlan",
    "find_redis_server",
    "lognormal_durations",
    "redis_server",
    "serve_forever",
]
