"""One key's budget shared by every client of the account, through Redis: `RedisBudget`.

    async with PixVerseClient(budget=RedisBudget("redis://redis.internal:6379/0")) as client:
        ...

Needs the `redis` package: `pip install 'pixverse-async[redis]'`. Every client that uses the same Redis and
the same account `name` (default: a hash of the API key, never the key) shares:

- the running-task slots: `max_concurrency` bounds all of them together (each client keeps to its own
  `max_concurrency` against the shared count), lost answers held as in one process;
- what is learnt of the account's limits: the running-task cap (from 429s, with the same rules as
  `LocalBudget`: the step's Lua ports `_cap_state.CapState`), the slow start of the first burst
  (submissions not yet answered at most one more than those accepted, for all clients together, until the
  cap is known), the longest task seen (how long a lost answer's slot is held), and each pause of an
  endpoint on evidence of a rate limit (every client pauses and cuts its pace);
- leases: each client renews its lease (`lease` API seconds, 20 by default) every third of it while open.
  A client whose lease lapses (killed, hung, cut off) is dead to the others: its running tasks (recorded by
  task id) are adopted by the next client that talks to Redis, which polls them to their end and frees
  their slots then; a slot it held for a submission whose answer it never heard is held as a lost answer
  (the longest task seen, 600 s before any ended). A slot is never freed while its task may still run.
  A client that closes hands its running tasks over at once the same way;
- webhook deliveries (`_redis_deliveries`): one a client cannot place is left in Redis and published, for
  the client whose submission or task it is (a lost answer in one worker found by a delivery to another).

Each operation is one atomic Lua script (registered once, run by EVALSHA; Redis 6.2 or later): reports of
the slots (accepted, refused, released...) are queued by the synchronous slot methods and sent by the
budget's own task, in the same round trip as the next slot taken when there is one. A client waiting for a
slot is woken by a message on the account's channel when one is freed.

Redis unreachable: opening the client raises `BudgetUnavailableError`; later, submissions wait (no slot, no
submission) while the budget retries, with a warning in the log, and go on when it is back; after
`give_up_after` API seconds without it, waiting submissions raise `BudgetUnavailableError`. A Redis that
comes back empty (restarted without persistence) is told again by every live client what slots it holds
before anyone takes a new one (for 1.5 renewals); learnt limits start again.

Times in Redis are the Redis server's (real seconds); the client's clock must run at a fixed rate against
real time (`SystemClock`, or `ScaledClock` in tests).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.abc
import attrs

from ._budget import AdoptTask, BudgetSettings, Endpoint, Pacer, Slot, adopted_slot
from ._cap_state import CAP_EVIDENCE, CAP_STRIKES, LOST_ANSWER_HOLD, looks_like_cap
from ._clock import Clock, ScaledClock, SystemClock
from ._exceptions import BudgetUnavailableError, ClientClosedError, InvalidRequestError
from ._redis_common import namespace, outage_wait, process_id, redis_asyncio, register_scripts, scheme_of
from ._redis_common import shown_url as _shown
from ._redis_deliveries import DELIVERIES_CHANNEL, KEPT_API_SECONDS, DeliveryPost
from ._redis_script import STEP

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_LEASE", "RedisBudget"]

#: How long a client's lease lasts unless renewed (API seconds); it is renewed every third of it.
DEFAULT_LEASE_API_SECONDS = 20.0
DEFAULT_LEASE = DEFAULT_LEASE_API_SECONDS
#: How long submissions wait for an unreachable Redis before they fail (API seconds).
DEFAULT_GIVE_UP_AFTER = 60.0
#: Real seconds one call to Redis may take, and the close's last report.
CALL_TIMEOUT = 5.0
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_log = logging.getLogger("pixverse_async")


def _real_seconds_per_second(clock: Clock) -> float:
    if isinstance(clock, SystemClock):
        return 1.0
    if isinstance(clock, ScaledClock):
        return clock.scale
    raise InvalidRequestError(
        "clock",
        "a RedisBudget needs a clock that runs at a fixed rate against real time (SystemClock or ScaledClock): "
        f"leases and holds are kept on the Redis server's clock; not {type(clock).__name__}",
    )


@attrs.define(eq=False)
class _Waiter:
    granted: anyio.Event = attrs.field(factory=anyio.Event)
    slot: Slot | None = None
    error: BaseException | None = None
    gone: bool = False


class _Unreachable(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)


@final
class RedisBudget:
    """The key's budget, shared through Redis by every client of the account (see the module docstring).

    `url` is a `redis://`, `rediss://` or `unix://` URL (`redis.asyncio.from_url`'s); `name` names the account
    (default: a hash of the client's API key); `lease` (API seconds) is how long a client that stops renewing
    keeps its slots before another adopts its tasks; `give_up_after` (API seconds) how long submissions wait
    for an unreachable Redis before they raise `BudgetUnavailableError`; `prefix` starts every key. One
    `RedisBudget` per client: clients share through Redis, not through the object. It is the client's
    `_lost_answers.DeliveryExchange`: `offer_delivery`, `find_delivery`, `hear_deliveries`.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        lease: float = DEFAULT_LEASE,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER,
        prefix: str = "pixverse-async",
    ) -> None:
        self._redis_module = redis_asyncio("pixverse_async.redis")
        if not isinstance(url, str) or scheme_of(url) not in ("redis", "rediss", "unix"):
            shown = _shown(url) if isinstance(url, str) else type(url).__name__
            raise InvalidRequestError("url", f"must be a redis://, rediss:// or unix:// URL, not {shown!r}")
        for field, value in (("name", name), ("prefix", prefix)):
            if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
                raise InvalidRequestError(field, f"must be 1-100 letters, digits or _.:- characters, not {value!r}")
        for field, number in (("lease", lease), ("give_up_after", give_up_after)):
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < math.inf:
                raise InvalidRequestError(field, f"must be a positive number of seconds, not {number!r}")
        self.url = url
        self.name = name
        self.lease = float(lease)
        self.give_up_after = float(give_up_after)
        self.prefix = prefix
        #: Calls made to Redis (each one round trip), for metrics.
        self.round_trips = 0
        #: Tasks adopted from clients whose lease lapsed.
        self.adopted_tasks = 0
        #: Webhook deliveries left for other clients, and deliveries they left that this one took as they came.
        self.deliveries_offered = self.deliveries_taken = 0
        self._client_id = process_id()
        self._deliveries = DeliveryPost(self._client_id, url, self._redis_module, call_timeout=CALL_TIMEOUT)
        self._outage_rng = random.Random()  # jitter of the waits for an unreachable Redis
        self._settings: BudgetSettings | None = None
        self._scale = 1.0
        self._pacers: dict[Endpoint, Pacer] = {}
        self._pauses_seen: dict[Endpoint, int] = {"submit": 0, "task-result": 0}
        self._ops: list[dict[str, Any]] = []  # reports not sent yet (`_redis_script.STEP_OPS`)
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._slots: dict[str, Slot] = {}
        self._epoch = ""
        self._restoring = False
        self._leaving = False
        self._redis: redis.asyncio.Redis | None = None
        self._script: Any = None
        self._serving = False
        self._dirty = False
        self._sleeper: anyio.CancelScope | None = None
        self._down_since: float | None = None
        self._next_event: float = math.inf  # client clock
        self._renew_at = -math.inf
        # The shared state as last heard (and moved by this client's own reports since).
        self.in_use = 0
        self._running = 0
        self._proven = 0.0
        self._cap: int | None = None
        self._floor: int | None = None
        self.limit = 1

    def __repr__(self) -> str:
        account = self.name if self.name is not None else "<key hash>"
        return f"<RedisBudget {_shown(self.url)} name={account} lease={self.lease:g}s>"

    # -- the Budget protocol ------------------------------------------------------------------------------

    @property
    def submissions(self) -> Pacer:
        return self._pacer("submit")

    @property
    def task_results(self) -> Pacer:
        return self._pacer("task-result")

    @property
    def cap(self) -> int | None:
        """The account's running-task cap as last heard (None while unknown)."""
        return self._cap

    @property
    def running(self) -> int:
        """Tasks that may run, of all clients of the account, as last heard."""
        return self._running

    def _pacer(self, endpoint: Endpoint) -> Pacer:
        try:
            return self._pacers[endpoint]
        except KeyError:
            raise RuntimeError("this RedisBudget is not bound to a client yet: pass it as budget=...") from None

    def bind(self, settings: BudgetSettings) -> None:
        if self._settings is not None:
            raise InvalidRequestError(
                "budget",
                "this RedisBudget already serves another client: make one per client (they share through Redis)",
            )
        self._scale = _real_seconds_per_second(settings.clock)
        self._settings = settings
        if self.name is None:
            self.name = f"key-{settings.key_hash}"
        limits = settings.limits
        self._pacers = {
            "submit": Pacer(
                "submit",
                per_minute=limits.submits_per_minute,
                per_second_burst=None,
                retry=settings.retry,
                rng=settings.rng,
            ),
            "task-result": Pacer(
                "task-result",
                per_minute=limits.polls_per_minute,
                per_second_burst=settings.max_polls_per_second,
                retry=settings.retry,
                rng=settings.rng,
            ),
        }
        for endpoint, pacer in self._pacers.items():
            pacer.on_pause = lambda seconds, endpoint=endpoint: self._queue(
                {"op": "paused", "endpoint": endpoint, "seconds": seconds * self._scale}
            )
        self.limit = min(settings.max_concurrency, limits.max_running or settings.max_concurrency)

    async def acquire(self) -> Slot:
        """Wait for a slot of the account (one round trip when one is free) and take it."""
        if not self._serving:
            raise ClientClosedError("the client is not open: its RedisBudget is not running")
        waiter = _Waiter()
        self._waiters.append(waiter)
        self._poke()
        try:
            await waiter.granted.wait()
        except BaseException:
            waiter.gone = True
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.slot is not None:
                waiter.slot.release()
            raise
        if waiter.error is not None:
            raise waiter.error
        assert waiter.slot is not None
        return waiter.slot

    # -- what slots report (synchronously: queued for the budget's task) ------------------------------------

    def _queue(self, report: dict[str, Any]) -> None:
        self._ops.append(report)
        self._poke()

    def _on_accepted(self, slot: Slot) -> float:
        now = self._clock.now()
        if slot.token in self._slots:
            self._running += 1
            self._proven = max(self._proven, self._running)
            self._queue({"op": "accepted", "slot": slot.token, "task": slot.task_id or ""})
        self.submissions.accepted()
        return now

    def _on_adopted(self, slot: Slot) -> float:
        if slot.token in self._slots:
            self._running += 1
            self._queue({"op": "adopted", "slot": slot.token, "task": slot.task_id or ""})
        return self._clock.now()

    def _on_refused(self, slot: Slot, retry_after: float | None) -> bool:
        if self._slots.pop(slot.token or "", None) is None:
            return False
        self._queue({"op": "refused", "slot": slot.token, "retry_after": retry_after})
        self.in_use -= 1
        if retry_after is not None and retry_after <= 0:
            return False
        if looks_like_cap(self._running, self._proven, self._floor):
            # The cap's 429, as far as this client heard (Redis counts the strikes, all clients' in a row):
            # wait for a slot if none is free, as LocalBudget does.
            return self.in_use >= self.limit
        self.submissions.refused(self._clock.now(), retry_after)
        return False

    def _on_released(self, slot: Slot, *, running: bool) -> None:
        if self._slots.pop(slot.token or "", None) is None:
            return
        took = None
        if running:
            self._running -= 1
            if slot.accepted_at is not None:
                took = (self._clock.now() - slot.accepted_at) * self._scale
        self.in_use -= 1
        self._queue({"op": "released", "slot": slot.token, "took": took})

    def _on_abandoned(self, slot: Slot, *, running: bool) -> None:
        if self._slots.pop(slot.token or "", None) is None:
            return
        if not running:
            self._running += 1
        self._queue({"op": "abandoned", "slot": slot.token})

    # -- the DeliveryExchange of `_lost_answers` (see `_redis_deliveries`) ----------------------------------

    async def offer_delivery(self, token: str, task_id: str) -> None:
        """Leave a delivery for the client whose submission `token` names: kept, and published to all."""
        kept_for = KEPT_API_SECONDS * self._scale
        await self._deliveries.offer(self._redis if self._serving else None, self._key(""), token, task_id, kept_for)
        self.round_trips += 1
        self.deliveries_offered += 1

    async def find_delivery(self, token: str) -> str | None:
        """The task id another client left for `token`, if any."""
        found = await self._deliveries.find(self._redis if self._serving else None, self._key(""), token)
        self.round_trips += 1
        return found

    def hear_deliveries(self, take: Callable[[str, str], bool]) -> None:
        """Give `take(token, task_id)` each delivery another client leaves, as it comes."""
        self._deliveries.take = take

    # -- the budget's own task -----------------------------------------------------------------------------

    @property
    def _clock(self) -> Clock:
        if self._settings is None:
            raise RuntimeError("this RedisBudget is not bound to a client yet: pass it as budget=...")
        return self._settings.clock

    @contextlib.asynccontextmanager
    async def serve(self, adopt: AdoptTask) -> AsyncIterator[None]:
        """Run the budget while its client is open (the client calls this): connect and register the lease
        (`BudgetUnavailableError` if Redis cannot be reached), then report, renew and adopt from a task of
        its own until the client closes, and hand the client's running tasks over then."""
        if self._settings is None:
            raise RuntimeError("this RedisBudget is not bound to a client yet: pass it as budget=...")
        if self._serving:
            raise RuntimeError("this RedisBudget is already running")
        self._redis = self._redis_module.from_url(
            self.url, decode_responses=True, socket_timeout=CALL_TIMEOUT, socket_connect_timeout=CALL_TIMEOUT
        )
        self._script = register_scripts(self._redis, {"step": STEP})["step"]
        self._leaving = False
        try:
            try:
                await self._step(adopt)
            except _Unreachable as error:
                raise BudgetUnavailableError(
                    f"cannot reach Redis at {_shown(self.url)} for the shared budget: {error}"
                ) from None
            self._serving = True
            try:
                async with anyio.create_task_group() as group:
                    await group.start(self._drive, adopt)
                    try:
                        yield
                    finally:
                        group.cancel_scope.cancel()
            finally:
                self._serving = False
                self._leaving = True
                self._fail_waiters(ClientClosedError("the client was closed while waiting for a running-task slot"))
                with anyio.CancelScope(shield=True), anyio.move_on_after(CALL_TIMEOUT):
                    try:
                        await self._step(adopt)
                    except _Unreachable as error:
                        _log.warning(
                            "closing: Redis at %s unreachable (%s): this client's lease lapses by itself, and "
                            "another client adopts its running tasks then",
                            _shown(self.url),
                            error,
                        )
        finally:
            redis_client, self._redis = self._redis, None
            with anyio.CancelScope(shield=True), anyio.move_on_after(CALL_TIMEOUT):
                await redis_client.aclose()

    async def _drive(self, adopt: AdoptTask, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with anyio.create_task_group() as group:
            await group.start(self._listen)
            task_status.started()
            failures = 0
            while True:
                now = self._clock.now()
                if self._should_step(now):
                    try:
                        await self._step(adopt)
                    except _Unreachable as error:
                        failures += 1
                        self._on_unreachable(error)
                        await self._clock.sleep(outage_wait(failures, rng=self._outage_rng) / self._scale)
                        continue
                    if failures:
                        _log.warning("Redis at %s is back: the shared budget goes on", _shown(self.url))
                    failures = 0
                    self._down_since = None
                    continue
                await self._sleep_until(min(self._renew_at, self._next_event))

    def _should_step(self, now: float) -> bool:
        """Whether there is work for a round trip now. `_dirty` alone is not: a poke for waiters that a step
        then served (a message heard during the round trip that granted their slots) leaves it set."""
        if self._ops or now >= self._renew_at or now >= self._next_event:
            return True
        return self._dirty and any(waiter.slot is None for waiter in self._waiters)

    async def _sleep_until(self, when: float) -> None:
        with anyio.CancelScope() as scope:
            self._sleeper = scope
            try:
                # Skipped only on the rule `_drive` steps by: skipping on a stale `_dirty` made `_drive` spin
                # without a checkpoint, blocking the event loop until the next renewal.
                if self._should_step(self._clock.now()):
                    return
                await self._clock.sleep(when - self._clock.now())
            finally:
                self._sleeper = None

    def _poke(self) -> None:
        self._dirty = True
        if self._sleeper is not None:
            self._sleeper.cancel()

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Wake this budget when another client frees a slot (while some wait) or hands its tasks over; take
        the webhook deliveries other clients leave."""
        deliveries = self._key(DELIVERIES_CHANNEL)
        started = False
        failures = 0
        while True:
            assert self._redis is not None
            pubsub = self._redis.pubsub()
            try:
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        await pubsub.subscribe(self._key("changed"), deliveries)
                    failures = 0
                    if not started:
                        started = True
                        task_status.started()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=CALL_TIMEOUT)
                        if message is None:
                            continue
                        if message.get("channel") == deliveries:
                            self.deliveries_taken += self._deliveries.heard(message.get("data"))
                        elif message.get("data") == "lapse" or self._waiters:
                            self._next_event = -math.inf if message.get("data") == "lapse" else self._next_event
                            self._poke()
                except (OSError, TimeoutError, self._redis_module.RedisError):
                    if not started:
                        started = True
                        task_status.started()
                    failures += 1
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(CALL_TIMEOUT):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2 on
            await self._clock.sleep(outage_wait(failures, rng=self._outage_rng) / self._scale)

    def _key(self, part: str) -> str:
        return f"{namespace(self.prefix, self.name or '')}:{part}"

    def _on_unreachable(self, error: _Unreachable) -> None:
        now = self._clock.now()
        if self._down_since is None:
            self._down_since = now
            _log.warning(
                "Redis at %s unreachable (%s): no submissions until it is back (they fail after %g s)",
                _shown(self.url),
                error,
                self.give_up_after,
            )
        if now - self._down_since >= self.give_up_after:
            self._fail_waiters(
                BudgetUnavailableError(
                    f"Redis at {_shown(self.url)} has been unreachable for {now - self._down_since:.0f} s "
                    f"({error}): no submission without a running-task slot"
                )
            )

    def _fail_waiters(self, error: BaseException) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.slot is None:
                waiter.error = error
            waiter.granted.set()

    async def _step(self, adopt: AdoptTask) -> None:
        """One round trip: send the queued reports, renew the lease, take slots for the waiters."""
        settings = self._settings
        assert settings is not None
        assert self._script is not None
        ops, self._ops = self._ops, []
        self._dirty = False
        if self._restoring:
            slots = self._slots.items()
            ops = [{"op": "restored", "slot": token, "task": slot.task_id or ""} for token, slot in slots] + ops
        want = 0 if self._leaving else sum(1 for waiter in self._waiters if waiter.slot is None)
        renew = self.lease / 3
        inputs: dict[str, Any] = {  # `_redis_script.STEP_INPUTS`
            "client": self._client_id,
            "epoch": self._epoch,
            "lease": self.lease * self._scale,
            "max_concurrency": settings.max_concurrency,
            "want": want,
            "fallback_hold": LOST_ANSWER_HOLD * self._scale,
            "grace": 1.5 * renew * self._scale,
            "leaving": self._leaving,
            "restoring": self._restoring,
            "cap_evidence": CAP_EVIDENCE,
            "cap_strikes": CAP_STRIKES,
            "ops": ops,
        }
        if settings.limits.max_running is not None:
            inputs["given_cap"] = settings.limits.max_running
        keys = [self._key(part) for part in ("state", "owners", "tasks", "since", "leases", "held", "changed")]
        redis_module = self._redis_module
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(CALL_TIMEOUT):
                reply = json.loads(await self._script(keys=keys, args=[json.dumps(inputs)]))
        except (OSError, TimeoutError, redis_module.ConnectionError, redis_module.TimeoutError) as error:
            if not self._restoring:
                self._ops = ops + self._ops
            raise _Unreachable(error) from None
        except redis_module.ResponseError as error:
            if "LOADING" in str(error) or "BUSY" in str(error):  # a restarted server loading its data
                self._ops = ops + self._ops
                raise _Unreachable(error) from None
            raise
        self.round_trips += 1
        status, epoch = reply["status"], reply["epoch"]
        now = self._clock.now()
        self._renew_at = now + renew
        if status == "restore":
            # Redis lost what it knew (restarted empty): tell it this client's slots before anything else.
            _log.warning(
                "Redis at %s came back empty: restoring this client's %d running-task slots",
                _shown(self.url),
                len(self._slots),
            )
            self._epoch = epoch
            self._restoring = True
            self._dirty = True
            self._next_event = -math.inf
            return
        self._epoch = epoch
        self._restoring = False
        if status == "lapsed":
            _log.warning(
                "this client's lease in Redis lapsed (it could not renew it for %g s): its %d running tasks "
                "were adopted by other clients, whose slots they now hold",
                self.lease,
                len(self._slots),
            )
            self._slots.clear()
        # Pauses from before this client's first round trip are history, not news.
        own_pauses = [report["endpoint"] for report in ops if report["op"] == "paused"]
        self._take_snapshot(reply, now, own_pauses, heard_before=self.round_trips > 1)
        for token in reply["granted"]:
            slot = Slot(self, token)
            self._slots[token] = slot
            while self._waiters and self._waiters[0].gone:
                self._waiters.popleft()
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.slot = slot
                waiter.granted.set()
            else:
                slot.release()
        for token, task_id in reply["adopted"].items():
            slot = adopted_slot(self, token, task_id)
            self._slots[token] = slot
            self.adopted_tasks += 1
            _log.info("adopted task %s from a client of this account whose lease lapsed", task_id)
            adopt(task_id, slot)

    def _take_snapshot(self, reply: dict[str, Any], now: float, own_pauses: list[str], *, heard_before: bool) -> None:
        self.in_use, self._running, self._proven = reply["in_use"], reply["running"], reply["proven"]
        self._cap, self._floor, self.limit = reply.get("cap"), reply.get("floor"), reply["limit"]
        next_event = reply.get("next_event")
        self._next_event = math.inf if next_event is None else now + next_event / self._scale
        endpoints: tuple[Endpoint, ...] = ("submit", "task-result")
        for endpoint in endpoints:
            pause, count = reply["pauses"][endpoint]["left"], reply["pauses"][endpoint]["count"]
            foreign = count - self._pauses_seen[endpoint] - own_pauses.count(endpoint)
            self._pauses_seen[endpoint] = count
            if foreign > 0 and heard_before:
                # Another client's evidence of a rate limit: pause what is left of its pause, cut the pace.
                self._pacers[endpoint].follow_pause(now, max(0.0, float(pause)) / self._scale)
