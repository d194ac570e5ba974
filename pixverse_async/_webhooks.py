"""Webhook deliveries: an unsigned hint that a task ended, confirmed by one poll before anyone hears of it.

A delivery's URL may name the submission it answers (`_lost_answers.TOKEN_PARAMETER`): a token of this
client's goes to its submission first (one whose answer was lost learns its task that way), its task id
second; a delivery neither places is left in the shared budget's exchange for a sibling client, if any, and
the deliveries siblings leave there are placed here the same way (`take_sibling_delivery`).
"""

from __future__ import annotations

import functools
import logging

from ._budget import Budget
from ._clock import Clock
from ._convert import parse_webhook
from ._lost_answers import DeliveryExchange, SubmissionTokens, token_of
from ._models import REQUEST_TYPES, Task
from ._poller import Poller

_log = logging.getLogger("pixverse_async")


async def answer_delivery(body: bytes | str, poller: Poller, tokens: SubmissionTokens | None, url: str | None) -> int:
    """The HTTP status to answer a delivery's raw body with (see `PixVerseClient.handle_webhook`); a terminal
    result for a task `poller` follows has it polled at once to confirm. `url` is the URL (or just the query)
    the delivery was posted to."""
    try:
        event = parse_webhook(body)
    except ValueError:
        return 400
    if not event.is_task_result:
        return 202
    hint = event.result
    if not hint.task_id:
        return 400
    if not hint.is_terminal:
        return 202
    token = token_of(url) if tokens is not None else None
    if token is not None and tokens is not None and tokens.received(token, hint.task_id):
        # Its submission's answer was lost, or is not in yet: the job polls it once it knows it.
        poller.confirm(hint.task_id)
        return 200
    if poller.confirm(hint.task_id):
        return 200
    if token is not None and tokens is not None and tokens.exchange is not None:
        if poller.deliveries.ended_here(hint.task_id):
            return 202  # late, or a repeat: this client's task, no sibling's
        try:
            await tokens.exchange.offer_delivery(token, hint.task_id)
        except Exception as error:  # the router delivers again later: say so rather than drop it
            _log.warning("could not leave a webhook delivery in the shared budget: %s", type(error).__name__)
            return 503
        return 200
    return 202


def submission_tokens(
    webhook_url: str, *, clock: Clock, poller: Poller, budget: Budget, abandoned: list[Task]
) -> SubmissionTokens:
    """The tokens of an open client's submissions; a task found for a submission given up on is appended to
    `abandoned` (the client's `abandoned_tasks`) and followed to its end."""
    exchange = budget if isinstance(budget, DeliveryExchange) else None
    tokens = SubmissionTokens(
        webhook_url,
        clock=clock,
        forecaster=poller.forecaster,
        record=poller.deliveries,
        exchange=exchange,
        on_orphan_found=functools.partial(_follow_found_orphan, poller, abandoned),
    )
    if exchange is not None:
        exchange.hear_deliveries(functools.partial(take_sibling_delivery, poller, tokens))
    return tokens


def take_sibling_delivery(poller: Poller, tokens: SubmissionTokens, token: str, task_id: str) -> bool:
    """A terminal delivery a sibling client received and could not place: True if it is this client's (its
    submission's, or a task it follows, which is polled at once to confirm, as a delivery here would be)."""
    if tokens.received(token, task_id):
        poller.confirm(task_id)
        return True
    return poller.confirm(task_id)


def _follow_found_orphan(poller: Poller, abandoned: list[Task], task_id: str, request: object) -> None:
    abandoned.append(Task(task_id=task_id, request=request if isinstance(request, REQUEST_TYPES) else None))
    _log.warning(
        "a webhook delivery named a submission given up on while its answer was lost: task %s exists and is "
        "billed; the client follows it until it ends (see client.abandoned_tasks)",
        task_id,
    )
    poller.track(task_id, slot=None, learns=False)
