"""Test helpers for code that uses ``pixverse_async``: a local simulator of the remote API, and clocks.

See :mod:`pixverse_async.testing._simulator` for what the simulator does. Give the client a
``ScaledClock(sim.time_scale)`` so that client and simulator agree on what a second is, or an
``InstantClock`` to make retry backoff cost no real time.

`redis_server()` starts a real `redis-server` on a random port for tests of `pixverse_async.redis`.

The simulator also POSTs webhooks (``extra.webhook.url``) when tasks end, with retries and faults: see the
"Webhooks" section there and the ``WEBHOOK_*`` constants.
"""

from pixverse_async._clock import InstantClock, ScaledClock
from pixverse_async.testing._redis_server import RedisServer, RedisServerNotFound, find_redis_server, redis_server
from pixverse_async.testing._simulator import (
    DEFAULT_DURATION,
    DEFAULT_FAIL_REASON,
    WEBHOOK_CONCURRENCY,
    WEBHOOK_EVENT_TYPE,
    WEBHOOK_RETRY_DELAYS,
    WEBHOOK_TIMEOUT,
    CallRateLimit,
    EtaMode,
    Fault,
    FaultEndpoint,
    FaultKind,
    ProgressMode,
    SimCounters,
    SimTask,
    Simulator,
    SubmittedImage,
    TaskPlan,
    lognormal_durations,
    serve_forever,
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
