"""A local simulator of the PixVerse V4.5 image-to-video async job API, for tests and benchmarks.

It speaks the wire protocol of the real API (`POST /v3/async/pixverse-v4.5-i2v`,
`POST /v3/async/pixverse-v4.5-t2v` and `GET /v3/async/task-result` of the v3 async job API that model routers
serve) over real HTTP, on two local ports:

```python
async with Simulator(api_keys=("sk-test",), time_scale=0.001) as sim:
    sim.base_url        # the API site: submit + task-result
    sim.video_base_url  # a separate site (another origin, like a CDN) serving signed video URLs
```

This module is the simulator's configuration and lifecycle; each concern has its own module, whose
docstring tells its rules:

- `_api_site`: the submit and task-result calls, and in which order a submission is checked;
- `_validation`: what a submission must be (key, body, image);
- `_tasks`: the task lifecycle (durations, plans, a busy account's queue) and the hint modes;
- `_rate_limits`: the two kinds of 429 and the balance;
- `_faults`: injected and random misbehaviour of each endpoint;
- `_webhooks`: the POSTs sent when tasks end, their retries and timeout;
- `_video_host` (and `_video`, the MP4 it serves): signed links on a second origin;
- `_counters`: what the simulator saw; `_sim_clock`: simulated time.

## Time

Everything the simulator says or is configured with (durations, `eta`, `video_url_ttl`, `Retry-After`,
fault delays) is in *simulated* seconds. `time_scale` is the number of real seconds per simulated second:
with `time_scale=0.001` a 60 s job takes 60 ms. The simulated clock reads like a Unix time: it starts at the
wall-clock time of construction and runs `1 / time_scale` times faster. `sim.advance(seconds)` jumps it
forward, for tests that must not depend on real sleeps (it moves the simulator's clock only, not a client's
`ScaledClock`); what waits on it (webhook retries, `slow` faults) is brought forward too.

## Counters

`sim.counters` (`SimCounters`) tells what happened; `sim.reset_counters()` replaces it with a fresh one.
`sim.tasks` is a read-only mapping of task id to `SimTask`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import types
import typing
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Generic, TypeVar

import anyio
import attrs
from aiohttp import web

from pixverse_async.testing._api_site import ApiSite
from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import (
    Fault,
    FaultBox,
    check_random_faults,
)
from pixverse_async.testing._rate_limits import AccountGate, AccountLimits, CallRateLimit
from pixverse_async.testing._sim_clock import SimClock
from pixverse_async.testing._tasks import (
    DEFAULT_DURATION,
    EtaMode,
    ProgressMode,
    SimTask,
    TaskBook,
    TaskPlan,
    TaskRules,
    lognormal_durations,
)
from pixverse_async.testing._uplink import RECEIVE_BUFFER, Uplink
from pixverse_async.testing._video import mp4_for_task
from pixverse_async.testing._video_host import VideoHost
from pixverse_async.testing._webhooks import WEBHOOK_TIMEOUT, WebhookRules, WebhookSender

_T = TypeVar("_T")


@typing.final
class _Setting(Generic[_T]):
    """A read-only attribute of `Simulator` naming one configured value, which lives in an option group."""

    __slots__ = ("_read",)

    def __init__(self, read: Callable[[Simulator], _T]) -> None:
        self._read = read

    def __get__(self, simulator: Simulator, owner: type[Simulator] | None = None) -> _T:
        return self._read(simulator)


def _random(seed: int | None, purpose: str) -> random.Random:
    """An RNG of its own for one kind of draw, so that one kind shifts no other (seeded if `seed` is set)."""
    return random.Random(f"{purpose}:{seed}") if seed is not None else random.Random()


@typing.final
@attrs.define(init=False, eq=False, repr=False)  # no generated repr: it would print every task
class Simulator:
    """The simulated API on two local HTTP sites; see the module documentation for its behaviour."""

    host: str
    port: int
    video_port: int
    counters: SimCounters
    _clock: SimClock
    # One owner per concern, each with its options (`rules`, `limits`, ...).
    _book: TaskBook
    _faults: FaultBox
    _api: ApiSite
    _video_host: VideoHost
    _webhooks: WebhookSender
    # While running: what `close()` unwinds (both sites, the webhook dispatcher's task group), and the id
    # of the task that started it, the only one that can close that task group.
    _running: contextlib.AsyncExitStack | None
    _started_by: int | None
    _base_url: str | None
    _ssl_context: ssl.SSLContext | None

    def __init__(
        self,
        *,
        api_keys: Collection[str] = ("sk-test",),
        host: str = "127.0.0.1",
        port: int = 0,
        video_port: int = 0,
        time_scale: float = 1.0,
        duration: float | Callable[[random.Random], float] = DEFAULT_DURATION,
        text_duration: float | Callable[[random.Random], float] | None = None,
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
        webhook_repeat_rate: float = 0.0,
        webhook_repeats: int = 1,
        task_failed_rate: float = 0.0,
        surge_rate: float = 0.0,
        eta: EtaMode = "exact",
        eta_noise: float = 0.35,
        progress: ProgressMode = "linear",
        progress_step: int = 25,
        max_processing_per_key: int | None = None,
        accept_fields: Collection[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        uplink_mbps: float | None = None,
        submit_latency: float = 0.0,
    ) -> None:
        """Configure the simulator; nothing listens until `start()` or `async with`.

        - `api_keys`: the keys the API accepts.
        - `host`: interface both sites listen on; `port`, `video_port`: the API and video sites' ports (0: a
          free one).
        - `time_scale`: real seconds per simulated second.
        - `duration`: simulated seconds from submit to terminal, or a function drawing it from the RNG.
        - `text_duration`: the same for text-to-video tasks (None: as `duration`).
        - `queue_fraction`: share of the duration spent QUEUED before PROCESSING.
        - `failure_rate`: probability that a task ends FAILED.
        - `seed`: seeds the RNGs (durations, failures, seeds of tasks submitted without one, task ids, and
          apart from those: hints, random 429s and faults, webhook drops).
        - `plan`: per-submission override from the JSON body; `None` from it means the defaults.
        - `max_running_per_key`: at most this many non-terminal tasks per key; more answers 429;
          `rate_limit_retry_after`: `Retry-After` (simulated s) on those 429s (`None`: no header).
        - `submit_rate_limit`, `poll_rate_limit`: a `CallRateLimit` on submissions, or task-result calls, per
          key (see `_rate_limits`).
        - `random_rate_limit`: probability that any submit or poll is answered 429 (a busy router);
          `random_rate_limit_retry_after`: `Retry-After` (simulated s) on those (`None`: no header).
        - `random_faults`: `(fault, probability)` pairs: each request to `fault.endpoint` misbehaves like
          `fault` with that probability (see `_faults`).
        - `balance`: number of tasks each key can pay for; more answers 400 `BILLING_BALANCE_NOT_ENOUGH`.
        - `video_ttl`: simulated seconds a signed video URL stays valid.
        - `webhook_timeout`: simulated seconds a webhook receiver has to answer 2xx (the API's 5 by default);
          raise it to keep a loaded receiver from being retried at a small `time_scale`.
        - `webhook_drop_rate`: probability that a webhook delivery is lost (never sent, not retried); 1.0
          loses them all.
        - `webhook_repeat_rate`: probability that a delivery, once answered 2xx, is POSTed again
          `webhook_repeats` more times (same body), as a router that retries a delivered webhook does.
        - `task_failed_rate`: probability that a poll of a task that ended FAILED answers 500 `TASK_FAILED`.
        - `surge_rate`: probability that any submit or poll is answered 503 (surge protection; nothing is
          created), drawn apart from `random_faults`' entries, after them.
        - `eta`: what `task.eta` says while a task runs: "exact", "noisy" or "absent"; `eta_noise`: with
          "noisy", the sigma of each task's log-normal eta factor (see the hints in `_tasks`).
        - `progress`: what `task.progress_percent` says: "linear", "steps" or "absent"; `progress_step`: with
          "steps", the step in percent (1 to 100).
        - `max_processing_per_key`: at most this many tasks of a key PROCESSING at once; later ones queue.
        - `accept_fields`: top-level body fields to accept beyond the documented ones (by default an unknown
          field answers 400 `INVALID_REQUEST_BODY`); they are kept in `SimTask.request`.
        - `ssl_context`: a server-side SSL context: both sites then speak https (for tests of TLS and of
          proxies reached by CONNECT).
        - `uplink_mbps`: the users' uplink, simulated megabits per second shared by every request body (None:
          as fast as loopback); `submit_latency`: simulated seconds from a submission's last byte to its
          answer (see `_uplink`).
        """
        if isinstance(api_keys, str):
            raise TypeError("api_keys must be a collection of keys, not one string")
        if isinstance(accept_fields, str):
            raise TypeError("accept_fields must be a collection of field names, not one string")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if not 0.0 <= surge_rate <= 1.0 or not 0.0 <= task_failed_rate <= 1.0:
            raise ValueError(f"surge_rate and task_failed_rate must be in [0, 1], got {surge_rate}, {task_failed_rate}")
        if surge_rate > 0:
            random_faults = (
                *random_faults,
                (Fault("submit", "surge"), surge_rate),
                (Fault("poll", "surge"), surge_rate),
            )
        if uplink_mbps is not None and not uplink_mbps > 0:
            raise ValueError(f"uplink_mbps must be > 0 or None, got {uplink_mbps}")
        if not submit_latency >= 0:
            raise ValueError(f"submit_latency must be >= 0, got {submit_latency}")
        rules = TaskRules(
            duration=duration,
            text_duration=text_duration,
            queue_fraction=queue_fraction,
            failure_rate=failure_rate,
            plan=plan,
            eta=eta,
            eta_noise=eta_noise,
            progress=progress,
            progress_step=progress_step,
            max_processing_per_key=max_processing_per_key,
        )
        limits = AccountLimits(
            max_running_per_key=max_running_per_key,
            rate_limit_retry_after=rate_limit_retry_after,
            submit_rate_limit=submit_rate_limit,
            poll_rate_limit=poll_rate_limit,
            random_rate_limit=random_rate_limit,
            random_rate_limit_retry_after=random_rate_limit_retry_after,
            balance=balance,
        )
        webhook_rules = WebhookRules(
            timeout=webhook_timeout,
            drop_rate=webhook_drop_rate,
            repeat_rate=webhook_repeat_rate,
            repeats=webhook_repeats,
        )
        clock = SimClock(time_scale)
        book = TaskBook(rules, rng=random.Random(seed), hint_rng=_random(seed, "hints"))
        chaos_rng = _random(seed, "chaos")  # random 429s and random faults draw from one RNG, in turn
        faults = FaultBox(check_random_faults(random_faults), chaos_rng=chaos_rng)
        counters = self._current_counters
        video_host = VideoHost(video_ttl, clock=clock, faults=faults, tasks=book.tasks, counters=counters)

        def task_result(task: SimTask, now: float) -> dict[str, Any]:
            return book.result(task, now, video_host.link)

        webhooks = WebhookSender(
            webhook_rules,
            clock=clock,
            faults=faults,
            counters=counters,
            payload=task_result,
            rng=_random(seed, "webhooks"),
        )
        api = ApiSite(
            frozenset(api_keys),
            frozenset(accept_fields),
            clock=clock,
            book=book,
            gate=AccountGate(limits, window_origin=clock.origin, chaos_rng=chaos_rng),
            uplink=Uplink(uplink_mbps, submit_latency, clock=clock),
            faults=faults,
            webhooks=webhooks,
            counters=counters,
            task_result=task_result,
            task_failed_rate=task_failed_rate,
            chaos_rng=_random(seed, "task_failed"),
        )
        self.__attrs_init__(
            host=host,
            port=port,
            video_port=video_port,
            counters=SimCounters(),
            clock=clock,
            book=book,
            faults=faults,
            api=api,
            video_host=video_host,
            webhooks=webhooks,
            running=None,
            started_by=None,
            base_url=None,
            ssl_context=ssl_context,
        )

    def __repr__(self) -> str:
        where = f"{self._base_url} video={self._video_host.base_url}" if self._running else "not running"
        return f"<Simulator {where} tasks={len(self._book.tasks)} time_scale={self.time_scale}>"

    # The configured values, read-only, under the names of the keyword arguments that set them.
    duration = _Setting(lambda sim: sim._book.rules.duration)
    text_duration = _Setting(lambda sim: sim._book.rules.text_duration)
    task_failed_rate = _Setting(lambda sim: sim._api.task_failed_rate)
    queue_fraction = _Setting(lambda sim: sim._book.rules.queue_fraction)
    failure_rate = _Setting(lambda sim: sim._book.rules.failure_rate)
    plan = _Setting(lambda sim: sim._book.rules.plan)
    eta = _Setting(lambda sim: sim._book.rules.eta)
    eta_noise = _Setting(lambda sim: sim._book.rules.eta_noise)
    progress = _Setting(lambda sim: sim._book.rules.progress)
    progress_step = _Setting(lambda sim: sim._book.rules.progress_step)
    max_processing_per_key = _Setting(lambda sim: sim._book.rules.max_processing_per_key)
    max_running_per_key = _Setting(lambda sim: sim._api.gate.limits.max_running_per_key)
    rate_limit_retry_after = _Setting(lambda sim: sim._api.gate.limits.rate_limit_retry_after)
    submit_rate_limit = _Setting(lambda sim: sim._api.gate.limits.submit_rate_limit)
    poll_rate_limit = _Setting(lambda sim: sim._api.gate.limits.poll_rate_limit)
    random_rate_limit = _Setting(lambda sim: sim._api.gate.limits.random_rate_limit)
    random_rate_limit_retry_after = _Setting(lambda sim: sim._api.gate.limits.random_rate_limit_retry_after)
    balance = _Setting(lambda sim: sim._api.gate.limits.balance)
    random_faults = _Setting(lambda sim: sim._faults.random_faults)
    video_ttl = _Setting(lambda sim: sim._video_host.ttl)
    webhook_timeout = _Setting(lambda sim: sim._webhooks.rules.timeout)
    webhook_drop_rate = _Setting(lambda sim: sim._webhooks.rules.drop_rate)
    webhook_repeat_rate = _Setting(lambda sim: sim._webhooks.rules.repeat_rate)
    webhook_repeats = _Setting(lambda sim: sim._webhooks.rules.repeats)
    uplink_mbps = _Setting(lambda sim: sim._api.uplink.mbps)
    submit_latency = _Setting(lambda sim: sim._api.uplink.submit_latency)

    # ----------------------------------------------------------------------------------------------------
    # Public helpers

    lognormal = staticmethod(lognormal_durations)

    @property
    def api_keys(self) -> frozenset[str]:
        """The keys the API accepts."""
        return self._api.api_keys

    @property
    def accept_fields(self) -> frozenset[str]:
        """Top-level body fields accepted beyond the documented ones."""
        return self._api.accept_fields

    @property
    def time_scale(self) -> float:
        """Real seconds per simulated second."""
        return self._clock.time_scale

    @property
    def base_url(self) -> str:
        """`http://host:port` of the API site (submit and task-result)."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    @property
    def video_base_url(self) -> str:
        """`http://host:port` of the video site, a different origin from `base_url`."""
        if self._video_host.base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._video_host.base_url

    @property
    def tasks(self) -> Mapping[str, SimTask]:
        """Every task created so far, by task id (read-only)."""
        return types.MappingProxyType(self._book.tasks)

    def now(self) -> float:
        """The simulated clock, in Unix-like seconds."""
        return self._clock.now()

    def advance(self, seconds: float) -> None:
        """Move the simulated clock `seconds` forward at once (tasks progress, signed URLs age).

        Webhook deliveries and retries that fall due by the new time are sent at once, and `slow` faults
        whose delay has passed answer.
        """
        self._clock.advance(seconds)
        self._webhooks.wake()

    def task_status(self, task_id: str) -> str:
        """The `TASK_STATUS_*` a poll of `task_id` would answer now (`KeyError` if unknown)."""
        return self._book.tasks[task_id].status_at(self.now())

    def video_bytes(self, task_id: str) -> bytes:
        """The exact bytes the video site serves for `task_id` (a few KB, embedding the task id)."""
        return mp4_for_task(task_id)

    def inject(self, fault: Fault) -> None:
        """Queue `fault` for the next `fault.times` requests to `fault.endpoint`."""
        self._faults.inject(fault)

    def clear_faults(self) -> None:
        """Drop every fault not yet used up."""
        self._faults.clear()

    def reset_counters(self) -> None:
        """Replace `counters` with a fresh, all-zero `SimCounters` (tasks are kept)."""
        self.counters = SimCounters()

    def _current_counters(self) -> SimCounters:
        return self.counters

    # ----------------------------------------------------------------------------------------------------
    # Lifecycle

    async def start(self) -> None:
        """Start listening on both sites and sending webhooks; `base_url` and `video_base_url` are known then.

        The webhook dispatcher runs in a task group that `start()` opens and `close()` closes, so call both
        from one task, with the cancel scopes opened in between closed first, as `async with` does. A
        crash of the dispatcher then cancels that task, as a task group does.
        """
        if self._running is not None:
            raise RuntimeError("the simulator is already started")
        api_app = self._api.application()
        video_app = web.Application()
        video_app.router.add_route("*", "/{tail:.*}", self._video_host.handle)
        stack = contextlib.AsyncExitStack()
        try:
            receive_buffer = RECEIVE_BUFFER if self._api.uplink.mbps is not None else None
            base_url = await self._serve(stack, api_app, self.port, receive_buffer=receive_buffer)
            video_base_url = await self._serve(stack, video_app, self.video_port)
            self._base_url, self._video_host.base_url = base_url, video_base_url
            dispatcher = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(dispatcher.cancel_scope.cancel)  # unwound first: the task group then ends at once
            await dispatcher.start(self._webhooks.run)
        except BaseException:
            await stack.aclose()
            raise
        self._running, self._started_by = stack, anyio.get_current_task().id

    async def _serve(
        self, stack: contextlib.AsyncExitStack, app: web.Application, port: int, *, receive_buffer: int | None = None
    ) -> str:
        # One runner per site: an AppRunner serves one application, and the two sites must be two origins.
        # A short shutdown timeout, so that closing does not wait for a handler stuck in a "slow" fault.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        stack.push_async_callback(_shielded, runner.cleanup)
        site: web.BaseSite
        if receive_buffer is None:
            site = web.TCPSite(runner, self.host, port, ssl_context=self._ssl_context)
        else:
            # Set before listening, so that every accepted connection has it (and a window scale to match).
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((self.host, port))
            site = web.SockSite(runner, sock, ssl_context=self._ssl_context)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{url_host}:{bound_port}"

    async def close(self) -> None:
        """Stop the webhook dispatcher and both sites, and close open connections (a no-op if not running).

        Tasks, counters and URLs stay readable. Webhook attempts in flight are abandoned; deliveries not yet
        due stay queued (see `_webhooks`).
        """
        if self._running is None:
            return
        if anyio.get_current_task().id != self._started_by:
            raise RuntimeError(
                "close the simulator from the task that started it (as `async with` does): its webhook "
                "dispatcher runs in a task group of that task"
            )
        running, self._running = self._running, None
        await running.aclose()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _shielded(cleanup: Callable[[], Awaitable[None]]) -> None:
    # Closing often happens because the owner was cancelled (Ctrl-C on serve_forever, a task group torn
    # down), and an interrupted cleanup would leave listening sockets open. AppRunner.cleanup is bounded by
    # its shutdown_timeout.
    with anyio.CancelScope(shield=True):
        await cleanup()


async def serve_forever(
    port: int = 8080,
    host: str = "127.0.0.1",
    *,
    video_port: int | None = None,
    announce: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run a `Simulator` until cancelled (Ctrl-C), announcing its URLs and a usable API key.

    `video_port` defaults to `port + 1` (or a free port when `port` is 0); `options` are the other `Simulator`
    keyword arguments. `announce` receives each line to show (default: print, flushed).
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
