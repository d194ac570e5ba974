"""Webhook deliveries: an unsigned hint that a task ended, confirmed by one poll before anyone hears of it."""

from __future__ import annotations

from ._convert import parse_webhook
from ._poller import Poller


def answer_delivery(body: bytes | str, poller: Poller) -> int:
    """The HTTP status to answer a delivery's raw body with (see `PixVerseClient.handle_webhook`); a terminal
    result for a task `poller` follows has it polled at once to confirm."""
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
    return 200 if poller.confirm(hint.task_id) else 202
