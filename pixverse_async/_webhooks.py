"""Webhook deliveries: an unsigned hint that a task ended, confirmed by one poll before anyone hears of it."""

from __future__ import annotations

import json

from ._convert import parse_task_result
from ._poller import Poller


def answer_delivery(body: bytes | str, poller: Poller) -> int:
    """The HTTP status to answer a delivery's raw body with (see `PixVerseClient.handle_webhook`); a terminal
    result for a task `poller` follows has it polled at once to confirm."""
    try:
        event = json.loads(body)
    except ValueError:
        return 400
    payload = event.get("payload") if isinstance(event, dict) else None
    if not isinstance(payload, dict):
        return 400
    if event.get("event_type") != "ASYNC_TASK_RESULT":
        return 202
    hint = parse_task_result(payload)
    if not hint.task_id:
        return 400
    if not hint.is_terminal:
        return 202
    return 200 if poller.confirm(hint.task_id) else 202
