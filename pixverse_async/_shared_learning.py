"""What the clients sharing a `RedisBudget` learnt about their tasks, pooled in Redis.

Everything a client's forecaster learns (see `_forecast.py` and `_durations.py`) is kept as sums: per kind of
job, the ends and task-seconds per age bin and the ends counted; the sums behind the eta ratio and the
queueing share; how many first polls read a hint. Sums add up, so clients pool them without any merging
rule: each exchange adds this client's increments since its last exchange to one Redis hash in the budget's
namespace (HINCRBYFLOAT) and reads the hash back in the same round trip (one MULTI/EXEC pipeline). What the
others learnt is the hash less this client's own sums; the forecaster counts it alongside its own until the
next exchange. Eight workers then learn from every worker's ends, as one client with eight times the tasks.

A client exchanges every `EXCHANGE_EVERY` API seconds while it has learnt something since the last time. An
exchange that fails (Redis unreachable) is tried again later with the increments it did not send; one whose
answer was lost after Redis applied it counts those increments twice, which only weighs this client's
statistics a little more (nothing is paid or run on them). A closing client exchanges once more. The hash
expires a week after the last exchange.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.abc

from ._clock import Clock
from ._durations import BIN_COUNT
from ._forecast import Forecaster, Kind

if TYPE_CHECKING:
    import redis.asyncio

#: How often (API seconds) a client that learnt something exchanges it with the others.
EXCHANGE_EVERY: Final = 2.0
#: How long (real seconds) an exchange may take, and how long the pooled sums outlive the last exchange.
_CALL_TIMEOUT: Final = 5.0
_EXPIRE_SECONDS: Final = 7 * 24 * 3600
_ALL_KINDS: Final = "*"

_log = logging.getLogger("pixverse_async")


def _kind_key(kind: Kind) -> str:
    return _ALL_KINDS if kind is None else json.dumps(kind, separators=(",", ":"))


def _kind_from(key: str) -> Kind:
    if key == _ALL_KINDS:
        return None
    value = json.loads(key)
    return tuple(value) if isinstance(value, list) else value


def local_statistics(forecaster: Forecaster) -> dict[str, float]:
    """Every sum this client learnt (not the priors, not what it heard from others), by field name."""
    fields: dict[str, float] = {}
    for kind, model in forecaster.kinds().items():
        name = _kind_key(kind)
        ends, exposure = model.statistics()
        for index in range(BIN_COUNT):
            if ends[index]:
                fields[f"d|{name}|e|{index}"] = ends[index]
            if exposure[index]:
                fields[f"d|{name}|x|{index}"] = exposure[index]
        fields[f"d|{name}|n"] = float(model.local_ended)
    for prefix, mean in (("eta", forecaster.eta_log_ratio), ("queue", forecaster.queue_share)):
        for index, value in enumerate(mean.sums):
            fields[f"{prefix}|{index}"] = value
    for index, value in enumerate(forecaster.first_reads):
        fields[f"first|{index}"] = value
    return fields


def apply_remote(forecaster: Forecaster, others: dict[str, float]) -> None:
    """Count what the other clients learnt (their sums, by field name) alongside this client's own."""
    durations: dict[str, tuple[list[float], list[float], list[float]]] = {}
    eta, queue, first = [0.0] * 4, [0.0] * 4, [0.0, 0.0]
    for field, value in others.items():
        parts = field.split("|")
        try:
            if parts[0] == "d":
                ends, exposure, ended = durations.setdefault(parts[1], ([0.0] * BIN_COUNT, [0.0] * BIN_COUNT, [0.0]))
                if parts[2] == "n":
                    ended[0] = value
                else:
                    (ends if parts[2] == "e" else exposure)[int(parts[3])] = value
            elif parts[0] in ("eta", "queue", "first"):
                {"eta": eta, "queue": queue, "first": first}[parts[0]][int(parts[1])] = value
        except (IndexError, ValueError):
            continue  # a field of another version of this library: not ours to read
    for name, (ends, exposure, ended) in durations.items():
        try:
            kind = _kind_from(name)
            hash(kind)
        except (ValueError, TypeError):
            continue
        forecaster.model_for_sharing(kind).set_remote(ends, exposure, ended[0])
    forecaster.eta_log_ratio.remote = eta
    forecaster.queue_share.remote = queue
    forecaster.remote_first_reads = first


async def exchange_forever(
    connection: redis.asyncio.Redis,
    key: str,
    forecaster: Forecaster,
    clock: Clock,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Exchange what `forecaster` learns with the other clients through the hash `key`, until cancelled, and
    once more then (what was learnt last is not lost with the client). Started once the first exchange is
    over (or failed): the client's first tasks are planned with what the others learnt."""
    exchange = _Exchange(connection, key, forecaster)
    try:
        await exchange.once()
        task_status.started()
        while True:
            await exchange.once()
            await clock.sleep(EXCHANGE_EVERY * (1 + min(exchange.failures, 5)))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CALL_TIMEOUT):
            await exchange.once()


@final
class _Exchange:
    """This client's side of the pooled sums: what it sent so far."""

    def __init__(self, connection: redis.asyncio.Redis, key: str, forecaster: Forecaster) -> None:
        self._connection, self._key, self._forecaster = connection, key, forecaster
        self._pushed: dict[str, float] = {}
        self.failures = 0

    async def once(self) -> None:
        local = local_statistics(self._forecaster)
        increments = {field: value - self._pushed.get(field, 0.0) for field, value in local.items()}
        increments = {field: value for field, value in increments.items() if value}
        if not increments and self._pushed:
            return
        try:
            replies = await _exchange(self._connection, self._key, increments)
        except (OSError, TimeoutError, _redis_error()) as error:
            self.failures += 1
            if self.failures == 1:
                _log.info("could not share what this client learnt through Redis (%s); trying again", error)
            return
        self.failures = 0
        self._pushed = local
        totals = {str(field): float(value) for field, value in replies.items()}
        apply_remote(self._forecaster, {field: value - local.get(field, 0.0) for field, value in totals.items()})


async def _exchange(connection: redis.asyncio.Redis, key: str, increments: dict[str, float]) -> dict[Any, Any]:
    with anyio.fail_after(_CALL_TIMEOUT):
        async with connection.pipeline(transaction=True) as pipe:
            for field, value in increments.items():
                pipe.hincrbyfloat(key, field, value)
            pipe.expire(key, _EXPIRE_SECONDS)
            pipe.hgetall(key)
            replies = await pipe.execute()
    totals: dict[Any, Any] = replies[-1]
    return totals


def _redis_error() -> type[Exception]:
    # Imported by RedisBudget already: this module runs only under it.
    error: type[Exception] = importlib.import_module("redis").RedisError
    return error
