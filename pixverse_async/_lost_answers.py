"""Lost submission answers, resolved by webhooks: every submission names itself in the webhook URL it sends.

A submission whose request went out and whose answer never came back may have created a billed task (API.md
section 5), and the API can neither list tasks nor take an idempotency key. With webhooks on
(`PixVerseClient(webhook_url=...)`), each submission's webhook URL carries a token of its own, the query
parameter `TOKEN_PARAMETER` (a keyed hash of a counter: unguessable, unique to the submission, never the
key), and the router calls that URL, query included, when the task ends, with the task's id in the payload:

- A submission whose answer was lost keeps its running-task slot and waits for its delivery (`LostAnswer`).
  The delivery names the submission by its token and the task by its id: the job goes on as if the answer had
  come, followed by the poller, which confirms it with one poll at once, as it does every delivery.
- A delivery that comes while its submission is still on the wire is kept for it: if the answer is then lost,
  the task is known at once.
- No delivery by the time every task of its kind would have ended (`WAIT_FACTOR` times the learnt p99
  duration of its kind, or `LOST_ANSWER_HOLD` while fewer than `MIN_ENDS` tasks have ended, plus
  `DELIVERY_RETRY_SPAN` for the router's retries of a delivery) ends the job `SubmissionUncertainError` with
  `likely_created` judged from what was measured: how often the deliveries of the tasks this client followed
  to their end arrived at all (`DeliveryRecord`). `False` only when a created task's delivery would be missing
  with chance at most `NOT_CREATED_BELOW` (Laplace's estimate, over at least `MIN_DELIVERY_EVIDENCE` tasks);
  otherwise `None`: where deliveries go missing, a missing one proves nothing.
- A delivery this client cannot place (a sibling process's submission or task) is offered to the shared
  budget's `DeliveryExchange`, if it has one, which passes it on to the client it belongs to as it comes
  (`hear_deliveries`); a waiting lost answer also looks there every `EXCHANGE_LOOKUP_EVERY` seconds, for
  what it did not hear.
- A submission given up while its request was out or its delivery awaited (the caller left) keeps its token
  as long as it would have waited, and a judged one for `DELIVERY_RETRY_SPAN` more: a delivery for it means a
  billed task exists, and it is reported (`on_orphan_found`: the client's `abandoned_tasks` and a warning)
  rather than dropped.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Protocol, final, runtime_checkable
from urllib.parse import urlsplit

import anyio

from ._budget import Slot
from ._cap_state import LOST_ANSWER_HOLD
from ._clock import Clock
from ._exceptions import SubmissionUncertainError
from ._forecast import Forecaster, Kind
from ._validation import SUBMISSION_TOKEN_LENGTH, submission_token_problem

#: The query parameter of the webhook URL that names the submission.
TOKEN_PARAMETER = "pixverse_submission"
#: API seconds a delivery may come after its task ended: the router retries 5 times (after 1, 2, 4, 8 and
#: 16 s), each attempt given 5 s to be answered (API.md section 4), with some margin.
DELIVERY_RETRY_SPAN = 75.0
#: How many of its kind's p99 duration a lost answer waits for its delivery (queueing varies).
WAIT_FACTOR = 2.0
#: The longest p99 duration a lost answer's wait rests on, and so the longest it waits (API seconds).
LONGEST_P99 = 4 * LOST_ANSWER_HOLD
LONGEST_WAIT = WAIT_FACTOR * LONGEST_P99 + DELIVERY_RETRY_SPAN
#: Tasks of a kind seen ending before their p99 duration is trusted over `LOST_ANSWER_HOLD`.
MIN_ENDS = 8
#: Tasks whose delivery was awaited before a missing delivery is taken as evidence.
MIN_DELIVERY_EVIDENCE = 20
#: The largest chance that a created task's delivery is missing, for a submission without one to be judged
#: not created.
NOT_CREATED_BELOW = 0.05
#: API seconds between two looks at the shared budget's exchange while a lost answer waits.
EXCHANGE_LOOKUP_EVERY = 5.0

_log = logging.getLogger("pixverse_async")


@runtime_checkable
class DeliveryExchange(Protocol):
    """Where clients sharing a budget leave each other the deliveries they received for tokens they do not
    know (`RedisBudget` is one)."""

    async def offer_delivery(self, token: str, task_id: str) -> None:
        """Keep `task_id` for `token`, for the client that sent it (a while: it may not be waiting yet)."""
        ...

    async def find_delivery(self, token: str) -> str | None:
        """The task id another client received for `token`, if any."""
        ...

    def hear_deliveries(self, take: Callable[[str, str], bool]) -> None:
        """From now on, call `take(token, task_id)` with each delivery another client offers, as it comes
        (`take` says whether it was this client's); what is missed is still found by `find_delivery`."""
        ...


def token_of(url: str | None) -> str | None:
    """The submission token in the query of the URL a delivery was posted to (or None)."""
    if not url:
        return None
    query = urlsplit(url).query if "://" in url or url.startswith("/") else url.lstrip("?")
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == TOKEN_PARAMETER:
            # Anyone may post to a webhook URL: what is not a token of the client's making is no token.
            return value if submission_token_problem(value) is None else None
    return None


@final
class DeliveryRecord:
    """Whether the deliveries of the tasks this client followed to their end arrived (within
    `DELIVERY_RETRY_SPAN` of the end): the measure of how much a missing delivery says.

    A task announced by its delivery before a poll saw it end is delivered; one first seen ended by a poll
    waits `DELIVERY_RETRY_SPAN` for a late delivery, else it is missed. Both are counted only once that span has
    passed since their end, in one queue, so that the counts cover the same tasks (counting the delivered ones
    at once and the missed ones later would make deliveries look surer than they are).
    """

    __slots__ = ("_awaiting", "_ended", "delivered", "missed")

    def __init__(self) -> None:
        self.delivered = 0
        self.missed = 0
        # (when it ended, task id) of tasks whose end is younger than DELIVERY_RETRY_SPAN, oldest first.
        self._ended: deque[tuple[float, str]] = deque()
        # The same tasks: task id -> its delivery is still awaited.
        self._awaiting: dict[str, bool] = {}

    def ended(self, task_id: str, *, announced: bool, now: float) -> None:
        """A task followed here ended; `announced`: its delivery came first."""
        self._ended.append((now, task_id))
        self._awaiting[task_id] = not announced
        self._settle(now)

    def ended_here(self, task_id: str) -> bool:
        """Whether `task_id` is a task followed here that ended within `DELIVERY_RETRY_SPAN`: a delivery for
        it is a late one or a repeat, nobody else's."""
        return task_id in self._awaiting

    def late_delivery(self, task_id: str) -> None:
        """A delivery came for a task after a poll saw it end."""
        if task_id in self._awaiting:
            self._awaiting[task_id] = False

    def counts(self, now: float) -> tuple[int, int]:
        """(delivered, missed) among the tasks that ended at least `DELIVERY_RETRY_SPAN` ago."""
        self._settle(now)
        return self.delivered, self.missed

    def _settle(self, now: float) -> None:
        ended, awaiting = self._ended, self._awaiting
        settled_before = now - DELIVERY_RETRY_SPAN
        while ended and ended[0][0] <= settled_before:
            _, task_id = ended.popleft()
            if awaiting.pop(task_id, False):
                self.missed += 1
            else:
                self.delivered += 1


@final
class SubmissionTokens:
    """The tokens of one open client's submissions, and what deliveries said of them (see the module
    docstring). `forecaster` and `record` are the poller's."""

    def __init__(
        self,
        webhook_url: str,
        *,
        clock: Clock,
        forecaster: Forecaster,
        record: DeliveryRecord,
        exchange: DeliveryExchange | None = None,
        on_orphan_found: Callable[[str, object], None] | None = None,
    ) -> None:
        parts = urlsplit(webhook_url)
        fragment_at = len(webhook_url) - (len(parts.fragment) + 1 if "#" in webhook_url else 0)
        head, self._tail = webhook_url[:fragment_at], webhook_url[fragment_at:]
        self._head = f"{head}{'&' if parts.query else '?' if not head.endswith('?') else ''}{TOKEN_PARAMETER}="
        self.clock = clock
        self.forecaster = forecaster
        self.record = record
        self.exchange = exchange
        self._on_orphan_found = on_orphan_found
        self._key = os.urandom(32)
        self._counter = itertools.count()
        # Submissions on the wire: token -> the task id a delivery named before the answer came (or None).
        self._sending: dict[str, str | None] = {}
        self._lost: dict[str, LostAnswer] = {}
        # Given up on or judged: token -> (kept until, the request).
        self._orphans: dict[str, tuple[float, object]] = {}

    def issue(self) -> tuple[str, str]:
        """A new submission's token and the webhook URL that carries it."""
        counter = next(self._counter).to_bytes(8, "big")
        token = hashlib.blake2b(counter, key=self._key, digest_size=SUBMISSION_TOKEN_LENGTH // 2).hexdigest()
        return token, self._head + token + self._tail

    def sending(self, token: str) -> None:
        """The submission's request is about to go out."""
        self._sending.setdefault(token, None)

    def answered(self, token: str) -> None:
        """Its answer came (a task, or a refusal: nothing to wait for)."""
        self._sending.pop(token, None)

    def lost(
        self, token: str, request: object, slot: Slot, cause: BaseException, kind: Kind, *, judgeable: bool = True
    ) -> LostAnswer:
        """Its answer was lost (`cause`): wait for its delivery, holding `slot` (see `LostAnswer.resolved`).
        Also for a submission an earlier run sent and lost (`UncertainSubmission`); not `judgeable`: its
        delivery may have come while nobody listened, so a missing one proves nothing."""
        lost = LostAnswer(self, token, request, slot, cause, kind, judgeable=judgeable)
        known = self._sending.pop(token, None)
        self._orphans.pop(token, None)
        self._lost[token] = lost
        if known is not None:
            lost.found(known)
        return lost

    def given_up(self, token: str, request: object, *, kind: Kind = None, judged: bool = False) -> None:
        """The submission was left with its request out, or `judged` (its wait is over): a delivery for it is
        reported while one may still come (`DELIVERY_RETRY_SPAN` once judged; else as long as a lost answer of
        its `kind` would wait)."""
        self._sending.pop(token, None)
        self._lost.pop(token, None)
        now = self.clock.now()
        keep_for = DELIVERY_RETRY_SPAN if judged else self.horizon(kind)[0]
        self._orphans[token] = (now + keep_for, request)
        if len(self._orphans) > 64:
            for stale in [name for name, (until, _) in self._orphans.items() if until < now]:
                del self._orphans[stale]

    def received(self, token: str, task_id: str) -> bool:
        """A terminal delivery named `token` and `task_id`; True if the token is one of this client's."""
        if token in self._sending:
            self._sending[token] = task_id
            return True
        lost = self._lost.get(token)
        if lost is not None:
            lost.found(task_id)
            return True
        orphan = self._orphans.pop(token, None)
        if orphan is not None:
            if self._on_orphan_found is not None:
                self._on_orphan_found(task_id, orphan[1])
            return True
        return False

    def _done(self, token: str) -> None:
        self._lost.pop(token, None)

    def horizon(self, kind: Kind) -> tuple[float, float | None]:
        """(how long a lost answer waits for its delivery, the p99 duration it rests on: None if unlearnt)."""
        forecaster = self.forecaster
        if forecaster.duration_model(kind).ended < MIN_ENDS:
            return LOST_ANSWER_HOLD + DELIVERY_RETRY_SPAN, None
        p99 = forecaster.webhook_fallback(kind, 0.0, 0.01, LONGEST_P99)
        return WAIT_FACTOR * p99 + DELIVERY_RETRY_SPAN, p99

    def judgement(self) -> tuple[bool | None, float | None, str]:
        """(likely_created, the chance that a created task's delivery goes missing, the evidence in words)."""
        delivered, missed = self.record.counts(self.clock.now())
        measured = delivered + missed
        if measured < MIN_DELIVERY_EVIDENCE:
            return None, None, f"only {measured} tasks' deliveries measured so far, too few to judge"
        missing = (missed + 1) / (measured + 2)
        said = f"{delivered} of {measured} ended tasks' deliveries arrived"
        if missing <= NOT_CREATED_BELOW:
            return False, missing, f"{said}, so a created task's would be missing with chance {missing:.2%}"
        return None, missing, f"{said}: deliveries go missing here, so a missing one proves nothing"


@final
class LostAnswer:
    """One submission whose answer was lost, waiting for the delivery that names it (see the module
    docstring). It holds the submission's running-task slot until `resolved()` returns or raises: adopted at
    once, as the slot of a task that may run, so that the budget's slow start counts it as it counts a lost
    answer given back (a fresh client's first slot waiting here would otherwise keep every other job waiting).
    """

    def __init__(
        self,
        tokens: SubmissionTokens,
        token: str,
        request: object,
        slot: Slot,
        cause: BaseException,
        kind: Kind,
        *,
        judgeable: bool = True,
    ) -> None:
        self._tokens = tokens
        self._judgeable = judgeable
        self.token = token
        self.request = request
        self._slot = slot
        slot.adopted()
        self._cause = cause
        self._kind = kind
        self._lost_at = tokens.clock.now()
        self._found = anyio.Event()
        self.task_id: str | None = None

    def found(self, task_id: str) -> None:
        if self.task_id is None:
            self.task_id = task_id
            self._found.set()

    async def resolved(self) -> tuple[str, Slot]:
        """The task's id and the slot, which now stands for it, once its delivery came; raises
        `SubmissionUncertainError` (judged, see `SubmissionUncertainError.likely_created`) when none came by
        the deadline. Cancelled, it gives the slot back once the task could have ended.

        The deadline is looked at again every `EXCHANGE_LOOKUP_EVERY` seconds: a run that has learnt nothing
        yet (a resumed one) waits `LOST_ANSWER_HOLD` only until the durations of its kind are learnt."""
        tokens, clock = self._tokens, self._tokens.clock
        wait, p99 = tokens.horizon(self._kind)
        try:
            while self.task_id is None and (now := clock.now()) < self._lost_at + wait:
                exchange = tokens.exchange
                await _wait_or_sleep(self._found, clock, min(self._lost_at + wait - now, EXCHANGE_LOOKUP_EVERY))
                if self.task_id is None and exchange is not None:
                    found = await _looked_up(exchange, self.token)
                    if found is not None:
                        self.found(found)
                wait, p99 = tokens.horizon(self._kind)
        except BaseException:
            tokens.given_up(self.token, self.request, kind=self._kind)
            self._slot.release_when_ended()
            raise
        if self.task_id is not None:
            tokens._done(self.token)
            self._slot.task_id = self.task_id
            return self.task_id, self._slot
        tokens.given_up(self.token, self.request, judged=True)
        self._slot.release()
        likely_created, missing, evidence = tokens.judgement() if self._judgeable else _UNJUDGEABLE
        learnt = f"the learnt p99 duration of its kind is {p99:.0f} s" if p99 is not None else "no duration learnt yet"
        verdict = "likely not created" if likely_created is False else "created or not, unknown"
        detail = (
            f"no webhook delivery named this submission in {clock.now() - self._lost_at:.0f} s ({learnt}); "
            f"{evidence}: {verdict}"
        )
        raise SubmissionUncertainError(
            self.request,
            self._cause,
            likely_created=likely_created,
            missing_chance=missing,
            detail=detail,
            webhook_token=self.token,
        ) from self._cause


_UNJUDGEABLE: tuple[None, None, str] = (
    None,
    None,
    "its delivery may have been sent while nobody listened (before this client), so a missing one proves nothing",
)


async def _wait_or_sleep(event: anyio.Event, clock: Clock, seconds: float) -> None:
    """Until `event` is set or `seconds` have passed on `clock`."""
    async with anyio.create_task_group() as group:

        async def ring() -> None:
            await event.wait()
            group.cancel_scope.cancel()

        group.start_soon(ring)
        await clock.sleep(seconds)
        group.cancel_scope.cancel()


async def _looked_up(exchange: DeliveryExchange, token: str) -> str | None:
    try:
        return await exchange.find_delivery(token)
    except Exception as error:  # the exchange is a help, not a need: the wait goes on
        _log.warning("could not look up a webhook delivery in the shared budget: %s", type(error).__name__)
        return None
