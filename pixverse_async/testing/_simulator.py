"""A local simulator of the PixVerse V4.5 image-to-video async job API, for tests and benchmarks.

It speaks the wire protocol of the real API (``POST /v3/async/pixverse-v4.5-i2v`` and
``GET /v3/async/task-result`` of the v3 async job API that model routers serve) over real HTTP, on two local
ports::

    async with Simulator(api_keys=("sk-test",), time_scale=0.001) as sim:
        sim.base_url        # the API site: submit + task-result
        sim.video_base_url  # a separate site (another origin, like a CDN) serving signed video URLs

Time
    Everything the simulator says or is configured with (durations, ``eta``, ``video_url_ttl``,
    ``Retry-After``, fault delays) is in *simulated* seconds. ``time_scale`` is the number of real seconds per
    simulated second: with ``time_scale=0.001`` a 60 s job takes 60 ms. The simulated clock reads like a Unix
    time: it starts at the wall-clock time of construction and runs ``1 / time_scale`` times faster.
    ``sim.advance(seconds)`` jumps it forward, for tests that must not depend on real sleeps (it moves the
    simulator's clock only, not a client's ``ScaledClock``).
    Task state is computed from timestamps at each request; no timer or task runs per job, so 100,000 jobs
    cost only their records.

Submit: ``POST /v3/async/pixverse-v4.5-i2v``
    Checked in this order, the first problem answering:

    1. ``Authorization: Bearer <key>``: missing, not Bearer, or empty -> 400 ``MISSING_API_KEY``;
       a key not in ``api_keys`` -> 403 ``INVALID_API_KEY``.
       Then the router's call limits, before the body is looked at (see Rate limits): ``submit_rate_limit``,
       then ``random_rate_limit``. A call refused there creates nothing.
    2. The body: ``Content-Type`` other than ``application/json``, invalid JSON, not an object, an unknown top-level
       key (only ``extra`` is allowed beyond the documented fields), a missing, wrong-typed or out-of-range field ->
       400 ``INVALID_REQUEST_BODY``. The real API's answer to fields it does not document is not documented;
       ``accept_fields`` names top-level fields to accept anyway (kept, like every field but ``image``, in
       ``SimTask.request``), for tests of ``ImageToVideo(extra_body=...)``. ``null`` is not accepted for any field:
       omit the field instead. ``prompt`` must be a non-blank string of at most 2048 characters; ``resolution`` one
       of 360p/540p/720p/1080p (default 540p; 1080p is refused with ``fast_mode: true``); ``seed`` an integer (not a
       boolean) in 0..2147483647; ``style`` one of anime/3d_animation/clay/comic/cyberpunk; ``extra`` an object.
       ``extra.webhook``, if present, must be an object whose ``url`` is a string starting with ``http://`` or
       ``https://`` (in any case) and naming a host, with a valid port if any (see Webhooks); other keys of
       ``extra`` and of ``extra.webhook`` are ignored.
    3. ``image``: an ``http://`` or ``https://`` URL is accepted without fetching it. Anything else is raw
       base64 or a ``data:image/(png|jpeg|jpg);base64,`` URI (another ``data:image/...`` type answers
       ``INVALID_IMAGE_FORMAT``); base64 that does not decode strictly (standard alphabet, padded, no line
       breaks) -> 400 ``INVALID_REQUEST_BODY``. The decoded bytes are checked by
       ``pixverse_async._images.probe_image``, the same checker the client uses, and its verdict is answered
       as 400 with its reason (``INVALID_IMAGE_FORMAT``, ``IMAGE_FILE_EXCEEDS_MAX_SIZE``,
       ``INVALID_IMAGE_SIZE``, ``IMAGE_EXCEEDS_MAX_RESOLUTION``).
    4. ``balance``: a key that has already created ``balance`` tasks -> 400 ``BILLING_BALANCE_NOT_ENOUGH``.
    5. ``max_running_per_key``: a key with that many tasks not yet terminal -> 429 ``RATE_LIMIT_EXCEEDED``,
       with ``Retry-After`` (``rate_limit_retry_after`` rounded up to whole simulated seconds) only if set.
    6. Otherwise the task is created and billed: 200 ``{"task_id": "<uuid4>"}``.

    A task is ``TASK_STATUS_QUEUED`` for the first ``queue_fraction`` of its duration, then
    ``TASK_STATUS_PROCESSING``, then ends ``TASK_STATUS_SUCCEED`` or ``TASK_STATUS_FAILED`` (chance
    ``failure_rate``, reason :data:`DEFAULT_FAIL_REASON`). ``duration`` is a number of simulated seconds or a
    function of a :class:`random.Random` (see :func:`lognormal_durations`); by default log-normal around 40 s
    (:data:`DEFAULT_DURATION`: median 40, sigma 0.3, so most tasks take 25 to 65 s, as real PixVerse jobs do).
    ``plan`` can decide per submission from its JSON body: return a :class:`TaskPlan` to fix the duration and
    outcome, or ``None`` for the defaults.

    A busy account (``max_processing_per_key``): at most that many of a key's tasks are PROCESSING at once;
    a task submitted beyond that sits ``TASK_STATUS_QUEUED`` (no progress, its ``eta`` counting the wait)
    until an earlier one ends, first come first served, and then runs for its whole duration.

Poll: ``GET /v3/async/task-result?task_id=<id>``
    Same authentication, then ``poll_rate_limit`` and ``random_rate_limit``. No ``task_id`` -> 400
    ``INVALID_REQUEST_BODY``; an unknown task or one created with
    another key -> 404 ``TASK_NOT_FOUND``. The answer has the real API's shape: ``extra.seed`` (the
    submitted seed, or a random one, as a string), ``extra.debug_info`` (times in simulated epoch
    milliseconds, as strings, empty until reached), ``task.eta``, ``task.progress_percent`` (see Hints),
    ``task.reason`` ("" unless failed), ``images: []``, ``audios: []``
    and ``videos``: empty until success, then one entry whose ``video_url`` is signed afresh at every poll
    (a new expiry ``video_ttl`` simulated seconds from now, so polling again refreshes an expired link) and
    whose ``video_url_ttl`` is a string, as the real API sends it.

    Any other path or method on the API site -> 404 ``API_NOT_FOUND``.

Hints: ``eta`` and ``progress_percent``
    The real API's hints cannot be trusted to be there or to be right (see ``shared/API.md``), so each has
    modes. ``eta`` (0 once terminal, whatever the mode):

    - ``"exact"`` (default): whole simulated seconds left, rounded up;
    - ``"noisy"``: the same times a per-task factor drawn log-normal with sigma ``eta_noise`` (default 0.35)
      when the task is created, so one task's estimate is consistently off (it counts down ``factor`` times
      too fast or too slow); the draws come from their own RNG, so they shift no task ids or durations;
    - ``"absent"``: always 0, as a router that does not fill the field sends it.

    ``progress_percent`` (100 on success, 0 on failure and while queued, whatever the mode):

    - ``"linear"`` (default): linear in processing time, whole percents, capped at 99;
    - ``"steps"``: the linear value rounded down to a multiple of ``progress_step`` (default 25);
    - ``"absent"``: 0 until the task ends. Error bodies are
    ``{"code": <status>, "reason": "<REASON>", "message": "...", "metadata": {}}``.

Video site: ``GET /videos/<task_id>.mp4?expires=<unix sim seconds>&signature=<hmac-sha256 hex>``
    200 ``video/mp4`` with ``Content-Length``; the body is :meth:`Simulator.video_bytes` (a few KB of
    structurally valid MP4 that embeds the task id, so it differs per task). Missing or wrong signature ->
    403 ``SignatureDoesNotMatch``; past ``expires`` -> 403 "Request has expired"; both as S3-style XML.
    ``Range`` is ignored. A request carrying an ``Authorization`` header is still served, but counted in
    ``counters.key_leaks_to_video_host``: a client must never send its API key there.

Webhooks
    A task submitted with ``"extra": {"webhook": {"url": "http(s)://..."}}`` (kept as ``SimTask.webhook_url``)
    is announced to that URL when it ends (SUCCEED or FAILED, at ``ends_at`` on the simulated clock): the
    simulator POSTs ``{"event_type": "ASYNC_TASK_RESULT", "payload": <body>}`` with
    ``Content-Type: application/json``, where ``<body>`` is exactly what a task-result poll by the task's
    owner would answer at the moment of the attempt (a success carries a freshly signed ``video_url``).
    Sending it does not count as a poll and does not mark the task as seen terminal. There is no signature
    and no ``Authorization`` header, as in the API documentation: a receiver should treat the payload as a
    hint and confirm it with one task-result call.

    An attempt succeeds when the receiver answers 2xx within ``webhook_timeout`` simulated seconds (default
    :data:`WEBHOOK_TIMEOUT`, 5, as the API documents; the whole answer read; real time
    ``webhook_timeout * time_scale``). A slower answer, another status (redirects are not followed: a 3xx
    is a failure), or a connection that fails is retried after
    :data:`WEBHOOK_RETRY_DELAYS` simulated seconds (1, 2, 4, 8, 16 after attempts 1 to 5): at most 5
    retries, 6 attempts in all, spanning about 31 simulated seconds plus the attempts themselves; then the
    delivery is given up. Retries wait on the simulated clock, so ``sim.advance`` brings them forward too.

    One background dispatcher per running simulator keeps pending deliveries and retries in a heap by due
    time and sleeps until the earliest (woken early by an earlier one and by ``sim.advance``), so waiting
    deliveries cost a heap entry each and no task or timer. Due deliveries are sent concurrently through one
    ``aiohttp.ClientSession`` (keep-alive connections are reused), at most :data:`WEBHOOK_CONCURRENCY` (32)
    attempts at a time to each receiver (scheme, host and port; a delivery waiting for a slot has not started
    its timeout), so a slow receiver holds up neither other receivers nor, below that many, its own other
    deliveries. Deliveries go out only while the simulator is running: ``close()`` abandons attempts in
    flight (counted as sent, neither delivered nor failed) and keeps the others queued for a later
    ``start()``.

    Mind the real timeout at small time scales: at ``time_scale=0.001`` a receiver has 5 *real*
    milliseconds, and a receiver served by the same event loop as the simulator and a busy client (a burst
    of submissions, dozens of deliveries at once) easily misses that, so attempts time out and are retried
    (the receiver then sees the same event again) or even given up. Use ``time_scale=0.01`` or more when
    counts matter, or raise ``webhook_timeout``.

    ``webhook_drop_rate`` loses each delivery with that probability (a separate RNG derived from ``seed``,
    so it does not shift task ids or durations); the ``drop`` and ``duplicate`` faults of endpoint
    ``"webhook"`` act on chosen deliveries (see :class:`Fault`). An injected fault takes precedence over the
    drop rate, which applies to the deliveries no fault was taken for.

Rate limits
    A router answers 429 ``RATE_LIMIT_EXCEEDED`` for two reasons that its body does not tell apart; the
    simulator models both, per API key, and ``counters.rate_limited_by`` says which one answered each 429:

    - ``"running_cap"``: ``max_running_per_key`` tasks are not yet terminal (step 5 of Submit), with
      ``Retry-After`` only if ``rate_limit_retry_after`` is set.
    - ``"submit_rate"`` / ``"poll_rate"``: ``submit_rate_limit`` / ``poll_rate_limit``, each a
      :class:`CallRateLimit` ``(calls, per, window="sliding" | "fixed", retry_after=True)``: at most ``calls``
      calls of that endpoint per ``per`` simulated seconds. ``"sliding"`` counts the calls of the last ``per``
      seconds; ``"fixed"`` counts them in consecutive windows of ``per`` seconds from the simulator's start.
      Only calls let through count (a refused call does not use up the window). With ``retry_after`` the 429
      carries ``Retry-After``: the seconds until a call would be let through, rounded up.
    - ``"random"``: ``random_rate_limit`` answers any submit or poll 429 with that probability (a busy
      router), with ``Retry-After: <random_rate_limit_retry_after>`` if that is set.
    - ``"fault"``: an injected or random ``rate_limit`` fault.

    Random draws (``random_rate_limit`` and ``random_faults``) come from an RNG of their own, derived from
    ``seed``, so that they do not shift task ids or durations.

Faults
    ``sim.inject(Fault(endpoint, kind, times=1, ...))`` makes the next ``times`` requests to ``endpoint``
    ("submit", "poll" or "video"), or the next ``times`` webhook deliveries ("webhook"), misbehave; faults
    are consumed in the order injected, whatever the request holds. A webhook fault is taken when a delivery
    first falls due (once per delivery, not per attempt). See :class:`Fault` for each kind.
    ``sim.clear_faults()`` drops those not yet used. ``random_faults=[(Fault("poll", "server_error"), 0.05)]``
    makes each request to that endpoint misbehave so with that probability (the fault's ``times`` is
    ignored), when no injected fault is pending for it; the entries of an endpoint are drawn in turn and the
    first that strikes wins.

Counters
    ``sim.counters`` (:class:`SimCounters`) tells what happened; ``sim.reset_counters()`` replaces it with a
    fresh one. ``sim.tasks`` is a read-only mapping of task id to :class:`SimTask`.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import hmac
import itertools
import json
import math
import random
import secrets
import time
import types
import typing
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs
from aiohttp import web

from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import (
    _NGINX_502_PAGE,
    Fault,
    FaultEndpoint,
    FaultKind,
    _cut_short,
    _drop_connection,
    _PendingFault,
    _truncated,
)
from pixverse_async.testing._rate_limits import CallRateLimit, _CallWindow
from pixverse_async.testing._responses import _LIMITED_BY, _REASON, _json_response, _retry_after_header, _s3_error
from pixverse_async.testing._tasks import (
    DEFAULT_DURATION,
    DEFAULT_FAIL_REASON,
    FAILED,
    SUCCEED,
    EtaMode,
    ProgressMode,
    SimTask,
    TaskPlan,
    lognormal_durations,
)
from pixverse_async.testing._validation import (
    MAX_SEED,
    SubmittedImage,
    _BadRequest,
    _bearer_key,
    _check_body,
    _check_image,
    _webhook_url,
)
from pixverse_async.testing._video import mp4_for_task
from pixverse_async.testing._webhooks import (
    WEBHOOK_CONCURRENCY,
    WEBHOOK_EVENT_TYPE,
    WEBHOOK_RETRY_DELAYS,
    WEBHOOK_TIMEOUT,
    _Delivery,
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
    "ProgressMode",
    "SimCounters",
    "SimTask",
    "Simulator",
    "SubmittedImage",
    "TaskPlan",
    "lognormal_durations",
    "serve_forever",
]

SUBMIT_PATH: Final = "/v3/async/pixverse-v4.5-i2v"
RESULT_PATH: Final = "/v3/async/task-result"
TASK_TYPE: Final = "PIXVERSE_V4_5_I2V"

# A 10 MB image is about 13.4 MB once base64-encoded; accept bodies well past that so that an oversized
# image reaches the image check (IMAGE_FILE_EXCEEDS_MAX_SIZE) instead of aiohttp's generic 413.
_MAX_BODY_BYTES: Final = 64 * 1024 * 1024


@typing.final
@attrs.define(init=False, eq=False, repr=False)  # no generated repr: it would print every task
class Simulator:
    """The simulated API on two local HTTP sites; see the module documentation for its behaviour."""

    api_keys: frozenset[str]
    host: str
    port: int
    video_port: int
    time_scale: float
    duration: float | Callable[[random.Random], float]
    queue_fraction: float
    failure_rate: float
    plan: Callable[[Mapping[str, Any]], TaskPlan | None] | None
    max_running_per_key: int | None
    rate_limit_retry_after: float | None
    submit_rate_limit: CallRateLimit | None
    poll_rate_limit: CallRateLimit | None
    random_rate_limit: float
    random_rate_limit_retry_after: float | None
    random_faults: tuple[tuple[Fault, float], ...]
    balance: int | None
    video_ttl: float
    webhook_timeout: float
    webhook_drop_rate: float
    eta: EtaMode
    eta_noise: float
    progress: ProgressMode
    progress_step: int
    max_processing_per_key: int | None
    accept_fields: frozenset[str]
    counters: SimCounters

    _rng: random.Random
    _signing_key: bytes
    _clock_origin_real: float
    _clock_origin_sim: float
    _clock_offset: float
    _tasks: dict[str, SimTask]
    # Per key: end times of tasks that may still be running, as a min-heap; finished ones are popped lazily.
    _running_ends: dict[str, list[float]]
    _created_by_key: collections.Counter[str]
    # Per key, with max_processing_per_key: when each processing place frees up next, as a min-heap.
    _processing_free_at: dict[str, list[float]]
    # Per-task eta factors (eta="noisy"), drawn apart from ``_rng`` so that they shift no ids or durations.
    _hint_rng: random.Random
    _faults: list[_PendingFault]
    # Per (key, endpoint): the calls counted against a CallRateLimit.
    _call_windows: dict[tuple[str, str], _CallWindow]
    # Random 429s and random faults: kept apart from ``_rng`` so that they do not shift task ids and durations.
    _chaos_rng: random.Random
    _runners: list[web.AppRunner]
    _base_url: str | None
    _video_base_url: str | None
    # Webhooks: drop-rate draws, kept apart from ``_rng`` so that they do not shift task ids and durations.
    _webhook_rng: random.Random
    # Deliveries waiting for their (first or next) attempt: a min-heap of (due simulated time, tie-break, delivery).
    _webhook_queue: list[tuple[float, int, _Delivery]]
    _webhook_order: itertools.count[int]
    # Only while running: the dispatcher task, its cancel scope, what wakes it early, and what it sends with.
    _webhook_dispatcher: asyncio.Task[None] | None
    _webhook_scope: anyio.CancelScope | None
    _webhook_wake: asyncio.Event | None
    _webhook_session: aiohttp.ClientSession | None
    # Per receiver origin ("scheme://host:port"): bounds its attempts in flight.
    _webhook_limiters: dict[str, anyio.CapacityLimiter]

    def __init__(
        self,
        *,
        api_keys: Collection[str] = ("sk-test",),
        host: str = "127.0.0.1",
        port: int = 0,
        video_port: int = 0,
        time_scale: float = 1.0,
        duration: float | Callable[[random.Random], float] = DEFAULT_DURATION,
        queue_fraction: float = 0.1,
        failure_rate: float = 0.0,
        seed: int | None = None,
        plan: Callable[[Mapping[str, Any]], TaskPlan | None] | None = None,
        max_running_per_key: int | None = None,
        rate_limit_retry_after: float | None = None,
        submit_rate_limit: CallRateLimit | None = None,
        poll_rate_limit: CallRateLimit | None = None,
        random_rate_limit: float = 0.0,
        random_rate_limit_retry_after: float | None = None,
        random_faults: Collection[tuple[Fault, float]] = (),
        balance: int | None = None,
        video_ttl: float = 3600.0,
        webhook_timeout: float = WEBHOOK_TIMEOUT,
        webhook_drop_rate: float = 0.0,
        eta: EtaMode = "exact",
        eta_noise: float = 0.35,
        progress: ProgressMode = "linear",
        progress_step: int = 25,
        max_processing_per_key: int | None = None,
        accept_fields: Collection[str] = (),
    ) -> None:
        """Configure the simulator; nothing listens until ``start()`` or ``async with``.

        :param api_keys: the keys the API accepts.
        :param host: interface both sites listen on.
        :param port: API site port (0: a free one). :param video_port: video site port (0: a free one).
        :param time_scale: real seconds per simulated second.
        :param duration: simulated seconds from submit to terminal, or a function drawing it from the RNG.
        :param queue_fraction: share of the duration spent QUEUED before PROCESSING.
        :param failure_rate: probability that a task ends FAILED.
        :param seed: seeds the RNG (durations, failures, seeds of tasks submitted without one).
        :param plan: per-submission override from the JSON body; ``None`` from it means the defaults.
        :param max_running_per_key: at most this many non-terminal tasks per key; more answers 429.
        :param rate_limit_retry_after: ``Retry-After`` (simulated s) on those 429s; ``None``: no header.
        :param submit_rate_limit: a :class:`CallRateLimit` on submissions per key (see Rate limits).
        :param poll_rate_limit: a :class:`CallRateLimit` on task-result calls per key.
        :param random_rate_limit: probability that any submit or poll is answered 429 (a busy router).
        :param random_rate_limit_retry_after: ``Retry-After`` (simulated s) on those; ``None``: no header.
        :param random_faults: ``(fault, probability)`` pairs: each request to ``fault.endpoint`` misbehaves
            like ``fault`` with that probability (see Faults).
        :param balance: number of tasks each key can pay for; more answers 400 BILLING_BALANCE_NOT_ENOUGH.
        :param video_ttl: simulated seconds a signed video URL stays valid.
        :param webhook_timeout: simulated seconds a webhook receiver has to answer 2xx (the API's 5 by
            default); raise it to keep a loaded receiver from being retried at a small ``time_scale``.
        :param webhook_drop_rate: probability that a webhook delivery is lost (never sent, not retried);
            1.0 loses them all.
        :param eta: what ``task.eta`` says while a task runs: "exact", "noisy" or "absent" (see Hints).
        :param eta_noise: with ``eta="noisy"``, the sigma of each task's log-normal eta factor.
        :param progress: what ``task.progress_percent`` says: "linear", "steps" or "absent" (see Hints).
        :param progress_step: with ``progress="steps"``, the step in percent (1 to 100).
        :param max_processing_per_key: at most this many tasks of a key PROCESSING at once; later ones queue.
        :param accept_fields: top-level body fields to accept beyond the documented ones (by default an
            unknown field answers 400 ``INVALID_REQUEST_BODY``); they are kept in ``SimTask.request``.
        """
        if isinstance(api_keys, str):
            raise TypeError("api_keys must be a collection of keys, not one string")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if not 0.0 <= queue_fraction <= 1.0:
            raise ValueError(f"queue_fraction must be in [0, 1], got {queue_fraction}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        if max_running_per_key is not None and max_running_per_key < 0:
            raise ValueError(f"max_running_per_key must be >= 0, got {max_running_per_key}")
        if balance is not None and balance < 0:
            raise ValueError(f"balance must be >= 0, got {balance}")
        if not 0.0 <= random_rate_limit <= 1.0:
            raise ValueError(f"random_rate_limit must be in [0, 1], got {random_rate_limit}")
        for limit in (submit_rate_limit, poll_rate_limit):
            if limit is not None and not isinstance(limit, CallRateLimit):
                raise TypeError(f"a call-rate limit must be a CallRateLimit, not {type(limit).__name__}")
        chaos = tuple(random_faults)
        for entry in chaos:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Fault)):
                raise TypeError(f"random_faults takes (Fault, probability) pairs, not {entry!r}")
            if entry[0].endpoint == "webhook" or not 0.0 <= entry[1] <= 1.0:
                raise ValueError(f"random_faults: a submit/poll/video fault and a probability in [0, 1], not {entry!r}")
        if video_ttl <= 0:
            raise ValueError(f"video_ttl must be > 0, got {video_ttl}")
        if webhook_timeout <= 0:
            raise ValueError(f"webhook_timeout must be > 0, got {webhook_timeout}")
        if not 0.0 <= webhook_drop_rate <= 1.0:
            raise ValueError(f"webhook_drop_rate must be in [0, 1], got {webhook_drop_rate}")
        if eta not in typing.get_args(EtaMode):
            raise ValueError(f"eta must be one of {typing.get_args(EtaMode)}, got {eta!r}")
        if progress not in typing.get_args(ProgressMode):
            raise ValueError(f"progress must be one of {typing.get_args(ProgressMode)}, got {progress!r}")
        if not eta_noise >= 0:
            raise ValueError(f"eta_noise must be >= 0, got {eta_noise}")
        if isinstance(progress_step, bool) or not isinstance(progress_step, int) or not 1 <= progress_step <= 100:
            raise ValueError(f"progress_step must be an int in 1..100, got {progress_step!r}")
        if max_processing_per_key is not None and max_processing_per_key < 1:
            raise ValueError(f"max_processing_per_key must be >= 1, got {max_processing_per_key}")
        if isinstance(accept_fields, str):
            raise TypeError("accept_fields must be a collection of field names, not one string")
        self.__attrs_init__(
            api_keys=frozenset(api_keys),
            host=host,
            port=port,
            video_port=video_port,
            time_scale=time_scale,
            duration=duration,
            queue_fraction=queue_fraction,
            failure_rate=failure_rate,
            plan=plan,
            max_running_per_key=max_running_per_key,
            rate_limit_retry_after=rate_limit_retry_after,
            submit_rate_limit=submit_rate_limit,
            poll_rate_limit=poll_rate_limit,
            random_rate_limit=random_rate_limit,
            random_rate_limit_retry_after=random_rate_limit_retry_after,
            random_faults=chaos,
            balance=balance,
            video_ttl=video_ttl,
            webhook_timeout=webhook_timeout,
            webhook_drop_rate=webhook_drop_rate,
            eta=eta,
            eta_noise=eta_noise,
            progress=progress,
            progress_step=progress_step,
            max_processing_per_key=max_processing_per_key,
            accept_fields=frozenset(accept_fields),
            counters=SimCounters(),
            rng=random.Random(seed),
            signing_key=secrets.token_bytes(32),
            clock_origin_real=time.monotonic(),
            clock_origin_sim=time.time(),
            clock_offset=0.0,
            tasks={},
            running_ends={},
            created_by_key=collections.Counter(),
            processing_free_at={},
            hint_rng=random.Random(f"hints:{seed}") if seed is not None else random.Random(),
            faults=[],
            call_windows={},
            chaos_rng=random.Random(f"chaos:{seed}") if seed is not None else random.Random(),
            runners=[],
            base_url=None,
            video_base_url=None,
            webhook_rng=random.Random(f"webhooks:{seed}") if seed is not None else random.Random(),
            webhook_queue=[],
            webhook_order=itertools.count(),
            webhook_dispatcher=None,
            webhook_scope=None,
            webhook_wake=None,
            webhook_session=None,
            webhook_limiters={},
        )

    def __repr__(self) -> str:
        where = f"{self._base_url} video={self._video_base_url}" if self._runners else "not running"
        return f"<Simulator {where} tasks={len(self._tasks)} time_scale={self.time_scale}>"

    # ----------------------------------------------------------------------------------------------------
    # Public helpers

    lognormal = staticmethod(lognormal_durations)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the API site (submit and task-result)."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    @property
    def video_base_url(self) -> str:
        """``http://host:port`` of the video site, a different origin from ``base_url``."""
        if self._video_base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._video_base_url

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        """Every task created so far, by task id (read-only)."""
        return types.MappingProxyType(self._tasks)

    def now(self) -> float:
        """The simulated clock, in Unix-like seconds."""
        real_elapsed = time.monotonic() - self._clock_origin_real
        return self._clock_origin_sim + real_elapsed / self.time_scale + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the simulated clock ``seconds`` forward at once (tasks progress, signed URLs age).

        Webhook deliveries and retries that fall due by the new time are sent at once.
        """
        if seconds < 0:
            raise ValueError("the simulated clock only moves forward")
        self._clock_offset += seconds
        if self._webhook_wake is not None:
            self._webhook_wake.set()

    def task_status(self, task_id: str) -> str:
        """The ``TASK_STATUS_*`` a poll of ``task_id`` would answer now (``KeyError`` if unknown)."""
        return self._tasks[task_id].status_at(self.now())

    def video_bytes(self, task_id: str) -> bytes:
        """The exact bytes the video site serves for ``task_id`` (a few KB, embedding the task id)."""
        return mp4_for_task(task_id)

    def inject(self, fault: Fault) -> None:
        """Queue ``fault`` for the next ``fault.times`` requests to ``fault.endpoint``."""
        self._faults.append(_PendingFault(fault, fault.times))

    def clear_faults(self) -> None:
        """Drop every fault not yet used up."""
        self._faults.clear()

    def reset_counters(self) -> None:
        """Replace ``counters`` with a fresh, all-zero ``SimCounters`` (tasks are kept)."""
        self.counters = SimCounters()

    # ----------------------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Start listening on both sites; ``base_url`` and ``video_base_url`` are known afterwards."""
        if self._runners:
            raise RuntimeError("the simulator is already started")
        api_app = web.Application(client_max_size=_MAX_BODY_BYTES)
        api_app.router.add_post(SUBMIT_PATH, self._handle_submit)
        api_app.router.add_get(RESULT_PATH, self._handle_poll, allow_head=False)
        # Anything else, including a wrong method on a known path, is answered like the real router does.
        api_app.router.add_route("*", "/{tail:.*}", self._handle_api_not_found)
        video_app = web.Application()
        video_app.router.add_route("*", "/{tail:.*}", self._handle_video)
        try:
            self._base_url = await self._serve(api_app, self.port)
            self._video_base_url = await self._serve(video_app, self.video_port)
        except BaseException:
            await self.close()
            raise
        self._start_webhooks()

    async def _serve(self, app: web.Application, port: int) -> str:
        # One runner per site: an AppRunner serves one application, and the two sites must be two origins.
        # A short shutdown timeout, so that closing does not wait for a handler stuck in a "slow" fault.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{url_host}:{bound_port}"

    async def close(self) -> None:
        """Stop both sites and the webhook dispatcher, and close open connections.

        Tasks, counters and URLs stay readable. Webhook attempts in flight are abandoned; deliveries not yet
        due stay queued (see the module documentation).
        """
        runners, self._runners = self._runners, []
        # Shielded: closing often happens because the owner was cancelled (Ctrl-C on serve_forever, a task
        # group torn down), and an interrupted cleanup would leave listening sockets open.
        with anyio.CancelScope(shield=True):
            try:
                await self._stop_webhooks()
            finally:
                for runner in reversed(runners):
                    await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----------------------------------------------------------------------------------------------------
    # Shared plumbing

    def _take_fault(self, endpoint: FaultEndpoint) -> Fault | None:
        if not self._faults:  # the common case, kept cheap
            return self._random_fault(endpoint) if self.random_faults else None
        for index, pending in enumerate(self._faults):
            if pending.fault.endpoint == endpoint:
                pending.remaining -= 1
                if pending.remaining == 0:
                    del self._faults[index]
                self.counters.faults_applied[f"{endpoint}:{pending.fault.kind}"] += 1
                return pending.fault
        return self._random_fault(endpoint) if self.random_faults else None

    def _random_fault(self, endpoint: FaultEndpoint) -> Fault | None:
        for fault, probability in self.random_faults:
            if fault.endpoint == endpoint and self._chaos_rng.random() < probability:
                self.counters.faults_applied[f"{endpoint}:{fault.kind}"] += 1
                return fault
        return None

    def _call_limit_answer(self, key: str, endpoint: str, limit: CallRateLimit | None) -> web.Response | None:
        """The 429 of the router's call limits (rate window, then random), or None: the call goes on."""
        if limit is not None:
            window = self._call_windows.get((key, endpoint))
            if window is None:
                window = self._call_windows[(key, endpoint)] = _CallWindow()
            wait = window.refuse(limit, self.now(), self._clock_origin_sim)
            if wait is not None:
                headers = _retry_after_header(wait) if limit.retry_after else {}
                message = f"too many {endpoint} calls: at most {limit.calls} per {limit.per:g} s per key"
                return self._rate_limited(f"{endpoint}_rate", message, headers)
        if self.random_rate_limit and self._chaos_rng.random() < self.random_rate_limit:
            headers = _retry_after_header(self.random_rate_limit_retry_after)
            return self._rate_limited("random", "rate limit exceeded (the router is busy)", headers)
        return None

    def _rate_limited(self, limited_by: str, message: str, headers: Mapping[str, str]) -> web.Response:
        response = self._error(429, "RATE_LIMIT_EXCEEDED", message, headers)
        response[_LIMITED_BY] = limited_by
        return response

    async def _sleep(self, simulated_seconds: float) -> None:
        await asyncio.sleep(simulated_seconds * self.time_scale)

    def _error(self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        response = _json_response(
            {"code": status, "reason": reason, "message": message, "metadata": {}}, status, headers
        )
        # Counted when sent (see ``_sent``), not here: a fault may throw this answer away.
        response[_REASON] = reason
        return response

    def _sent(self, response: web.StreamResponse) -> web.StreamResponse:
        """Count an answer that is about to leave."""
        reason = response.get(_REASON)
        if reason is not None:
            self.counters.errors_by_reason[reason] += 1
        if response.status == 429:
            self.counters.rate_limited += 1
            self.counters.rate_limited_by[response.get(_LIMITED_BY, "fault")] += 1
        return response

    def _fault_answer(self, fault: Fault, server_error_reason: str) -> web.Response | None:
        """The answer of the faults that answer alone (no normal handling); None for the others."""
        if fault.kind == "rate_limit":
            headers = _retry_after_header(fault.retry_after)
            if fault.endpoint == "video":
                return _s3_error(429, "SlowDown", "Please reduce your request rate.", headers)
            return self._error(429, "RATE_LIMIT_EXCEEDED", "rate limit exceeded (injected)", headers)
        if fault.kind == "server_error" and fault.endpoint == "video":
            return _s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
        if fault.kind == "server_error" and not (fault.endpoint == "submit" and fault.create_task):
            return self._error(500, server_error_reason, "internal error (injected)")
        if fault.kind == "html_error":
            return web.Response(text=_NGINX_502_PAGE, status=502, content_type="text/html")
        if fault.kind == "empty_error":
            return web.Response(status=503)
        return None

    # ----------------------------------------------------------------------------------------------------
    # API site

    async def _handle_api_not_found(self, request: web.Request) -> web.StreamResponse:
        return self._sent(self._error(404, "API_NOT_FOUND", f"no API at {request.method} {request.path}"))

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """The caller's API key, or the error answer."""
        key = _bearer_key(request)
        if key is None:
            return self._error(400, "MISSING_API_KEY", "missing API key: send Authorization: Bearer <key>")
        if key not in self.api_keys:
            return self._error(403, "INVALID_API_KEY", "invalid API key")
        return key

    async def _handle_submit(self, request: web.Request) -> web.StreamResponse:
        self.counters.submit_requests += 1
        fault = self._take_fault("submit")
        if fault is None:
            response, _ = await self._submit(request)
            return self._sent(response)
        alone = self._fault_answer(fault, "CREATE_TASK_FAILED")
        if alone is not None:
            return self._sent(alone)
        if fault.kind == "slow":
            response, _ = await self._submit(request)  # created first: the client may time out after it
            await self._sleep(fault.delay)
            return self._sent(response)
        if fault.kind == "reset":
            if fault.create_task:
                await self._submit(request)
            return await _drop_connection(request)
        if fault.kind == "server_error":  # only with create_task, see _fault_answer
            await self._submit(request)
            return self._sent(self._error(500, "CREATE_TASK_FAILED", "internal error (injected)"))
        # truncated_json
        if fault.create_task:
            response, _ = await self._submit(request)
        else:
            response = _json_response({"task_id": str(uuid.uuid4())})
        return _truncated(response)

    async def _submit(self, request: web.Request) -> tuple[web.Response, SimTask | None]:
        """Handle a submission normally: its answer, and the task if one was created."""
        key = self._authenticate(request)
        if isinstance(key, web.Response):
            return key, None
        limited = self._call_limit_answer(key, "submit", self.submit_rate_limit)
        if limited is not None:
            return limited, None
        if request.content_type != "application/json":
            return self._error(400, "INVALID_REQUEST_BODY", "Content-Type must be application/json"), None
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            return self._error(400, "INVALID_REQUEST_BODY", "request body is not valid JSON"), None
        try:
            _check_body(body, self.accept_fields)
            image = _check_image(body["image"])
        except _BadRequest as problem:
            return self._error(400, problem.reason, problem.message), None

        if self.balance is not None and self._created_by_key[key] >= self.balance:
            return self._error(400, "BILLING_BALANCE_NOT_ENOUGH", "balance not enough"), None
        now = self.now()
        running = self._running_ends.setdefault(key, [])
        while running and running[0] <= now:  # tasks that have ended since the last submission of this key
            heapq.heappop(running)
        if self.max_running_per_key is not None and len(running) >= self.max_running_per_key:
            message = f"too many running tasks: at most {self.max_running_per_key} per key"
            headers = _retry_after_header(self.rate_limit_retry_after)
            return self._rate_limited("running_cap", message, headers), None

        task = self._create_task(key, body, image, now)
        if task.ends_at > now:
            heapq.heappush(running, task.ends_at)
        counters = self.counters
        counters.tasks_created += 1
        counters.tasks_created_by_prompt[task.prompt] += 1
        if len(running) > counters.max_running_by_key.get(key, 0):
            counters.max_running_by_key[key] = len(running)
        return _json_response({"task_id": task.task_id}), task

    def _create_task(self, key: str, body: dict[str, Any], image: SubmittedImage, now: float) -> SimTask:
        planned = self.plan(body) if self.plan is not None else None
        if planned is not None:
            duration, fail_reason = planned.duration, planned.fail_reason
        else:
            duration = self.duration(self._rng) if callable(self.duration) else self.duration
            duration = max(0.0, duration)
            fail_reason = DEFAULT_FAIL_REASON if self._rng.random() < self.failure_rate else None
        seed = body["seed"] if "seed" in body else self._rng.randint(0, MAX_SEED)
        # Ids come from the seeded RNG, so a seeded simulator replays the same ids.
        task_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        starts_at = self._processing_place(key, now, duration)
        task = SimTask(
            task_id=task_id,
            api_key=key,
            request={name: value for name, value in body.items() if name != "image"},
            image=image,
            seed=seed,
            submitted_at=now,
            processing_at=starts_at + duration * self.queue_fraction,
            ends_at=starts_at + duration,
            fail_reason=fail_reason,
            webhook_url=_webhook_url(body),
            eta_factor=self._hint_rng.lognormvariate(0.0, self.eta_noise) if self.eta == "noisy" else 1.0,
        )
        self._tasks[task_id] = task
        self._created_by_key[key] += 1
        if task.webhook_url is not None:
            self._schedule_webhook(task.ends_at, _Delivery(task, task.webhook_url))
        return task

    def _processing_place(self, key: str, now: float, duration: float) -> float:
        """When a task of ``key`` submitted now starts running: now, or (a busy account) when a place frees."""
        if self.max_processing_per_key is None:
            return now
        places = self._processing_free_at.setdefault(key, [])
        # Full: this task takes the place that frees first (FIFO), from when it does.
        starts_at = now if len(places) < self.max_processing_per_key else max(now, heapq.heappop(places))
        heapq.heappush(places, starts_at + duration)
        return starts_at

    def _eta_at(self, task: SimTask, now: float) -> int:
        if self.eta == "absent" or now >= task.ends_at:
            return 0
        return math.ceil(task.eta_factor * (task.ends_at - now))

    def _progress_at(self, task: SimTask, now: float) -> int:
        progress = task.progress_at(now)
        if progress == 100 or self.progress == "linear":
            return progress
        if self.progress == "absent":
            return 0
        return progress - progress % self.progress_step

    async def _handle_poll(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.poll_requests += 1
        task_id = request.query.get("task_id", "")
        if task_id:
            counters.polls_by_task[task_id] += 1
            known = self._tasks.get(task_id)
            if known is not None and known.terminal_seen:
                counters.polls_after_terminal += 1
        fault = self._take_fault("poll")
        if fault is None:
            return self._sent(self._poll(request, task_id, settle=True))
        alone = self._fault_answer(fault, "GET_RESULT_FAILED")
        if alone is not None:
            return self._sent(alone)
        if fault.kind == "reset":
            return await _drop_connection(request)
        if fault.kind == "slow":
            await self._sleep(fault.delay)
            return self._sent(self._poll(request, task_id, settle=True))
        # truncated_json: the client could not read it, so a terminal answer does not count as seen.
        return _truncated(self._poll(request, task_id, settle=False))

    def _poll(self, request: web.Request, task_id: str, *, settle: bool) -> web.Response:
        """The normal poll answer; ``settle``: this answer will reach the client whole."""
        key = self._authenticate(request)
        if isinstance(key, web.Response):
            return key
        limited = self._call_limit_answer(key, "poll", self.poll_rate_limit)
        if limited is not None:
            return limited
        if not task_id:
            return self._error(400, "INVALID_REQUEST_BODY", "task_id is required")
        task = self._tasks.get(task_id)
        if task is None or task.api_key != key:  # another key's task is as invisible as a missing one
            return self._error(404, "TASK_NOT_FOUND", f"task {task_id} not found")
        now = self.now()
        if settle and task.status_at(now) in (SUCCEED, FAILED):
            task.terminal_seen = True
        return _json_response(self._task_result(task, now))

    def _task_result(self, task: SimTask, now: float) -> dict[str, Any]:
        """The JSON body of a task-result answer about ``task`` at simulated time ``now``."""
        task_id = task.task_id
        status = task.status_at(now)
        terminal = status in (SUCCEED, FAILED)
        videos: list[dict[str, str]] = []
        if status == SUCCEED:
            expires = math.ceil(now + self.video_ttl)
            videos.append(
                {
                    "video_url": f"{self.video_base_url}/videos/{task_id}.mp4"
                    f"?expires={expires}&signature={self._sign(task_id, str(expires))}",
                    "video_url_ttl": _format_seconds(self.video_ttl),
                    "video_type": "mp4",
                }
            )
        return {
            "extra": {
                "seed": str(task.seed),
                "debug_info": {
                    "request_info": "",
                    "submit_time_ms": _epoch_ms(task.submitted_at),
                    "execute_time_ms": _epoch_ms(task.processing_at) if now >= task.processing_at else "",
                    "complete_time_ms": _epoch_ms(task.ends_at) if terminal else "",
                },
            },
            "task": {
                "task_id": task_id,
                "status": status,
                "reason": task.fail_reason if status == FAILED and task.fail_reason is not None else "",
                "task_type": TASK_TYPE,
                "eta": self._eta_at(task, now),
                "progress_percent": self._progress_at(task, now),
            },
            "images": [],
            "audios": [],
            "videos": videos,
        }

    # ----------------------------------------------------------------------------------------------------
    # Webhooks

    def _start_webhooks(self) -> None:
        self._webhook_wake = asyncio.Event()
        self._webhook_limiters = {}  # CapacityLimiters belong to one event loop
        # No connection limit in aiohttp: the limiters bound attempts, and an attempt's timeout must not
        # include waiting for a pooled connection. No cookies kept between receivers.
        self._webhook_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),  # each attempt is bounded by _post_webhook
        )
        self._webhook_scope = anyio.CancelScope()
        self._webhook_dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch_webhooks(self._webhook_scope, self._webhook_wake),
            name=f"webhook dispatcher of {self.base_url}",
        )

    async def _stop_webhooks(self) -> None:
        """Cancel the dispatcher (and the attempts in flight), wait for it, close the session."""
        dispatcher, scope, session = self._webhook_dispatcher, self._webhook_scope, self._webhook_session
        try:
            if dispatcher is not None and scope is not None:
                scope.cancel()
                await asyncio.wait({dispatcher})
                if not dispatcher.cancelled():  # cancelled from outside, e.g. by asyncio.run's final cleanup
                    dispatcher.result()  # re-raise a crash of the dispatcher, if it had one
        finally:
            # Cleared once nothing runs that reads them.
            self._webhook_dispatcher = self._webhook_scope = self._webhook_session = None
            self._webhook_wake = None
            if session is not None:
                await session.close()

    def _schedule_webhook(self, due: float, delivery: _Delivery) -> None:
        """Queue ``delivery`` for an attempt at simulated time ``due``, waking the dispatcher if it is first."""
        queue = self._webhook_queue
        heapq.heappush(queue, (due, next(self._webhook_order), delivery))
        if queue[0][2] is delivery and self._webhook_wake is not None:
            self._webhook_wake.set()

    async def _dispatch_webhooks(self, scope: anyio.CancelScope, wake: asyncio.Event) -> None:
        """Start every delivery that is due, then sleep until the next one is, or until woken; forever."""
        with scope:
            async with anyio.create_task_group() as group:
                queue = self._webhook_queue
                while True:
                    wake.clear()
                    now = self.now()
                    while queue and queue[0][0] <= now:
                        _, _, delivery = heapq.heappop(queue)
                        group.start_soon(self._attempt_webhook, delivery)
                    delay = (queue[0][0] - now) * self.time_scale if queue else math.inf
                    with anyio.move_on_after(delay):
                        await wake.wait()

    async def _attempt_webhook(self, delivery: _Delivery) -> None:
        """Make one attempt of ``delivery`` (deciding its fault first, if it is the first), then follow up."""
        if delivery.attempts == 0:
            fault = self._take_fault("webhook")
            if fault is not None:
                dropped = fault.kind == "drop"
                delivery.duplicate = fault.kind == "duplicate"
            else:
                dropped = self.webhook_drop_rate > 0 and self._webhook_rng.random() < self.webhook_drop_rate
            if dropped:
                self.counters.webhooks_dropped += 1
                return
        async with self._webhook_limiter(delivery.url):
            delivery.attempts += 1
            # The payload as a poll would answer it now: a retry carries a freshly signed video URL.
            event = {"event_type": WEBHOOK_EVENT_TYPE, "payload": self._task_result(delivery.task, self.now())}
            body = json.dumps(event, separators=(",", ":")).encode()
            delivered = await self._post_webhook(delivery.url, body)
            if delivered:
                self.counters.webhooks_delivered += 1
                if delivery.duplicate:
                    self.counters.webhooks_duplicated += 1
                    await self._post_webhook(delivery.url, body)
        if delivered:
            return
        if delivery.attempts > len(WEBHOOK_RETRY_DELAYS):
            self.counters.webhooks_failed += 1
            return
        self._schedule_webhook(self.now() + WEBHOOK_RETRY_DELAYS[delivery.attempts - 1], delivery)

    def _webhook_limiter(self, url: str) -> anyio.CapacityLimiter:
        """The limiter of the receiver at ``url`` (its origin; the URL was checked on submit)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        origin = f"{scheme}://{parts.hostname}:{parts.port or (443 if scheme == 'https' else 80)}"
        limiter = self._webhook_limiters.get(origin)
        if limiter is None:
            limiter = self._webhook_limiters[origin] = anyio.CapacityLimiter(WEBHOOK_CONCURRENCY)
        return limiter

    async def _post_webhook(self, url: str, body: bytes) -> bool:
        """POST ``body`` once; whether the receiver answered 2xx in time."""
        self.counters.webhooks_sent += 1
        session = self._webhook_session
        assert session is not None
        try:
            with anyio.fail_after(self.webhook_timeout * self.time_scale):
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}, allow_redirects=False
                ) as response:
                    await response.read()
                    return 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            # Too slow, connection refused or reset, a URL aiohttp cannot use: a failed attempt.
            return False

    # ----------------------------------------------------------------------------------------------------
    # Video site

    def _sign(self, task_id: str, expires: str) -> str:
        return hmac.new(self._signing_key, f"{task_id}\n{expires}".encode(), "sha256").hexdigest()

    async def _handle_video(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.video_requests += 1
        if "Authorization" in request.headers:
            counters.key_leaks_to_video_host += 1
        fault = self._take_fault("video")
        if fault is None:
            return self._video(request)
        alone = self._fault_answer(fault, "")
        if alone is not None:
            return self._sent(alone)
        if fault.kind == "reset":
            return await _drop_connection(request)
        if fault.kind == "slow":
            await self._sleep(fault.delay)
            return self._video(request)
        if fault.kind == "expired":
            self.counters.video_expired += 1
            return _s3_error(403, "AccessDenied", "Request has expired")
        return await _cut_short(request, self._video(request))

    def _video(self, request: web.Request) -> web.Response:
        path = request.path
        is_video_path = path.startswith("/videos/") and path.endswith(".mp4")
        if request.method not in ("GET", "HEAD") or not is_video_path:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        task_id = path[len("/videos/") : -len(".mp4")]
        expires_text = request.query.get("expires", "")
        signature = request.query.get("signature", "")
        expected = self._sign(task_id, expires_text)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            self.counters.video_bad_signature += 1
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        # The signature covers ``expires``, so it was written by _poll and parses.
        if self.now() > float(expires_text):
            self.counters.video_expired += 1
            return _s3_error(403, "AccessDenied", "Request has expired")
        if task_id not in self._tasks:  # only if the simulator was restarted with the same signing key
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        self.counters.videos_served += 1
        return web.Response(body=mp4_for_task(task_id), content_type="video/mp4")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)


def _epoch_ms(simulated_time: float) -> str:
    return str(int(simulated_time * 1000))


async def serve_forever(
    port: int = 8080,
    host: str = "127.0.0.1",
    *,
    video_port: int | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run a :class:`Simulator` until cancelled (Ctrl-C), announcing its URLs and a usable API key.

    ``video_port`` defaults to ``port + 1`` (or a free port when ``port`` is 0); ``options`` are the other
    :class:`Simulator` keyword arguments. ``announce`` receives each line to show (default: print, flushed).
    """
    if video_port is None:
        video_port = port + 1 if port else 0
    say = announce if announce is not None else _print_flushed
    async with Simulator(host=host, port=port, video_port=video_port, **options) as sim:
        say("PixVerse API simulator running (Ctrl-C to stop)")
        say(f"  API base URL:   {sim.base_url}")
        say(f"  video base URL: {sim.video_base_url}")
        say(f"  API key:        {min(sim.api_keys)}")
        say(f"  time scale:     {sim.time_scale} real s per simulated s")
        await anyio.sleep_forever()


def _print_flushed(line: str) -> None:
    print(line, flush=True)
