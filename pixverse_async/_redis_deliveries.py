"""Webhook deliveries passed between the clients of one account through Redis: the `RedisBudget` side of
`_lost_answers.DeliveryExchange`.

Clients behind one webhook URL (the workers of a web service behind its load balancer) each receive
deliveries meant for the others. A client that cannot place one (its token names none of its submissions,
its task is none it follows) leaves it in Redis under its token, kept as long as a lost answer may wait for
it (`KEPT_API_SECONDS`), and publishes it on the account's deliveries channel in the same round trip. Every
client of the account listens there (the budget's listening task) and takes what is its own at once: a lost
answer finds its task, a task it follows is confirmed by one poll and its delivery counted as arrived. A
client that missed the message (cut off from Redis then, or opened since) finds a lost answer's delivery by
its token when it looks (`find`). A delivery that lands where its task is followed costs nothing here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from ._exceptions import BudgetUnavailableError, ClientClosedError
from ._lost_answers import LONGEST_WAIT
from ._redis_common import shown_url
from ._validation import submission_token_problem

if TYPE_CHECKING:
    import redis.asyncio

#: API seconds a delivery is kept for the client whose submission it names: the longest a lost answer waits
#: (81 minutes).
KEPT_API_SECONDS: Final = LONGEST_WAIT
#: The account's channel of deliveries (a part of the budget's namespace, as its keys are).
DELIVERIES_CHANNEL: Final = "deliveries"
#: The longest task id a message may carry (the API's are 19 digits or so).
_LONGEST_TASK_ID = 200

#: `take(token, task_id)`: a sibling's delivery, placed by this client (True) or not its own (False).
TakeDelivery = Callable[[str, str], bool]
_log = logging.getLogger("pixverse_async")


@final
class DeliveryPost:
    """One budget's share of the exchange: `offer` and `find` on its connection (None: not open), `heard` for
    what its listening task hears on the deliveries channel. `sender` (the budget's client id) tells its own
    messages; `url` is Redis's, for messages; `redis_module` is `redis.asyncio`; `call_timeout` the real
    seconds a round trip may take."""

    def __init__(self, sender: str, url: str, redis_module: Any, *, call_timeout: float) -> None:
        self.sender = sender
        self.take: TakeDelivery | None = None
        self._url = url
        self._redis_module = redis_module
        self._call_timeout = call_timeout

    async def offer(
        self, connection: redis.asyncio.Redis | None, space: str, token: str, task_id: str, kept_for: float
    ) -> None:
        """Keep `task_id` under the token's key of `space` for `kept_for` real seconds and publish it, in one
        round trip; `BudgetUnavailableError` when Redis cannot be reached."""
        message = json.dumps({"from": self.sender, "token": token, "task": task_id})
        with self._round_trip("leave a webhook delivery for another client"):
            async with self._open(connection).pipeline(transaction=False) as pipe:
                pipe.set(f"{space}delivery:{token}", task_id, px=max(1, round(kept_for * 1000)))
                pipe.publish(f"{space}{DELIVERIES_CHANNEL}", message)
                await pipe.execute()

    async def find(self, connection: redis.asyncio.Redis | None, space: str, token: str) -> str | None:
        """The task id left under the token's key of `space`, if any."""
        with self._round_trip("look up a webhook delivery"):
            found = await self._open(connection).get(f"{space}delivery:{token}")
        return found if isinstance(found, str) and found else None

    def heard(self, data: object) -> bool:
        """A message on the deliveries channel, given to `take` unless it is this budget's own or malformed:
        True if `take` placed it."""
        take = self.take
        if take is None or not isinstance(data, str):
            return False
        try:
            message = json.loads(data)
            sender, token, task_id = message["from"], message["token"], message["task"]
        except (ValueError, TypeError, KeyError):
            _log.debug("ignored a malformed message on the deliveries channel")
            return False
        if sender == self.sender or submission_token_problem(token) is not None:
            return False
        if not isinstance(task_id, str) or not 0 < len(task_id) <= _LONGEST_TASK_ID:
            return False
        try:
            return take(token, task_id)
        except Exception:  # the listening task also wakes the budget's slot waiters: it must go on
            _log.exception("could not take a webhook delivery another client left")
            return False

    @staticmethod
    def _open(connection: redis.asyncio.Redis | None) -> redis.asyncio.Redis:
        if connection is None:
            raise ClientClosedError("the client is not open: its RedisBudget is not running")
        return connection

    @contextlib.contextmanager
    def _round_trip(self, what: str) -> Iterator[None]:
        redis_module = self._redis_module
        try:
            with anyio.fail_after(self._call_timeout):
                yield
        except (OSError, TimeoutError, redis_module.ConnectionError, redis_module.TimeoutError) as error:
            said = str(error) or type(error).__name__
            raise BudgetUnavailableError(f"cannot reach Redis at {shown_url(self._url)} to {what}: {said}") from None
