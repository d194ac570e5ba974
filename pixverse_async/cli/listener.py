"""`run --webhook-url URL --webhook-listen HOST:PORT`: the run's own webhook receiver, and what its record of
listening says about a delivery that may have come while no run listened.

The receiver is a small aiohttp server, up from before the first submission to the run's end, with one POST
route at the URL's path (`pixverse_async.web`'s receiver, in front of which the run journals what it learns).
Each delivery names its submission by the token in its URL (`_lost_answers.TOKEN_PARAMETER`); a delivery for
a row of this journal that has no task id yet (sent but unanswered, uncertain) is written to the journal as
`submitted` *before* it is answered 2xx: a delivery the router was told arrived is never lost with a killed
run (killed before the journal write, the router gets no answer and delivers again).

Listening is recorded too (`ListenerSpan`: the URL, when the receiver came up, and a heartbeat every
`HEARTBEAT_API_SECONDS`), so that a resumed run can tell whether a row's delivery may have come and gone while
no run listened: `missed_delivery`. The router tries a delivery up to 6 times, 1, 2, 4, 8 and 16 s apart
after each failed try (a try fails at once on a refused connection, or after 5 s without an answer), so its
tries span at least `FIRST_TO_LAST_TRY` seconds, and two tries in a row are at most `LONGEST_BETWEEN_TRIES`
apart. All of a delivery's tries can fall where nobody listened only if some gap in listening lasts at least
`FIRST_TO_LAST_TRY`, or if a spell of listening between two gaps is shorter than `LONGEST_BETWEEN_TRIES` (a
try before it and the next after it). Short of that, a created task's delivery reached a run, and its
absence is evidence; otherwise it proves nothing, and the row's judgement stays unknown
(`UncertainSubmission(delivery_may_have_been_missed=True)`). Gaps are measured from the last heartbeat of a
run to the start of the next one's receiver, in wall-clock time, converted to API seconds with
`--time-scale`, with a `MARGIN` either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, final
from urllib.parse import urlsplit

import anyio
from aiohttp import web

from .._client import PixVerseClient
from .._convert import parse_webhook
from .._json_reader import MAX_WEBHOOK_BYTES
from .._lost_answers import token_of
from .._validation import task_id_problem
from .journal import ListenerSpan, RunJournal

#: API seconds between two heartbeats of a listening run (at least 0.05 and at most 1 real second).
HEARTBEAT_API_SECONDS: Final = 1.0
#: The router's waits between the tries of one delivery (API seconds), and a try's time to be answered.
ROUTER_RETRY_DELAYS: Final = (1.0, 2.0, 4.0, 8.0, 16.0)
ROUTER_TRY_TIMEOUT: Final = 5.0
FIRST_TO_LAST_TRY: Final = sum(ROUTER_RETRY_DELAYS)
LONGEST_BETWEEN_TRIES: Final = max(ROUTER_RETRY_DELAYS) + ROUTER_TRY_TIMEOUT
#: API seconds of doubt on every measured span (clocks, scheduling).
MARGIN: Final = 3.0


def parse_listen_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) into its parts; `ValueError` in the user's words."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"must be HOST:PORT (e.g. 127.0.0.1:8787), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ValueError(f"must be HOST:PORT with a port from 1 to 65535, not {text!r}")
    return host, int(port)


def missed_delivery(
    sent_at: float | None, url: str, spans: Sequence[ListenerSpan], *, listening_since: float, time_scale: float
) -> str | None:
    """Why the delivery of a submission sent at `sent_at` (wall clock) may have come while no run listened at
    `url`, which this run does from `listening_since` on; None if it cannot have (see the module docstring).
    `spans`: the earlier runs' listening, as the journal recorded it."""
    if sent_at is None:
        return "no record of when it was sent"
    sender = max((span for span in spans if span.started <= sent_at), key=lambda span: span.started, default=None)
    if sender is None or sender.url != url:
        return "it was sent by a run that listened at another URL" if sender else "no record of its run's listener"
    listened = sorted(
        (max(span.started, sent_at), span.alive) for span in spans if span.url == url and span.alive > sent_at
    )
    listened.append((listening_since, math.inf))
    gaps: list[tuple[float, float]] = []
    between: list[float] = []  # the spells of listening that follow each gap
    reached = sent_at
    for start, end in listened:
        if start > reached:
            gaps.append((reached, start))
            between.append(0.0)
        if end > reached:
            if between:
                between[-1] += end - max(start, reached)
            reached = end
    for (start, end), spell in zip(gaps, between, strict=True):
        gap = (end - start) / time_scale
        if gap + MARGIN >= FIRST_TO_LAST_TRY:
            return f"no run listened for {gap:.0f} API s from {_clock(start)} to {_clock(end)}"
        if not math.isinf(spell) and spell / time_scale - MARGIN <= LONGEST_BETWEEN_TRIES:
            return f"a run listened for only {spell / time_scale:.0f} API s between two gaps (from {_clock(end)})"
    return None


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


@final
class WebhookListener:
    """The run's receiver (see the module docstring). `on_delivery(token, task_id)` is called, before the
    delivery is answered, for every delivery that names a token and a task."""

    def __init__(
        self,
        client: PixVerseClient,
        journal: RunJournal,
        *,
        url: str,
        host: str,
        port: int,
        time_scale: float,
        on_delivery: Callable[[str, str], None],
    ) -> None:
        self._client = client
        self._journal = journal
        self.url = url
        self._host, self._port = host, port
        self._heartbeat = min(1.0, max(0.05, HEARTBEAT_API_SECONDS * time_scale))
        self._on_delivery = on_delivery
        self._runner: web.AppRunner | None = None
        self.since = 0.0

    async def start(self) -> float:
        """Listen (`OSError` if the address cannot be had) and record it; when it started (wall clock)."""
        app = web.Application(client_max_size=MAX_WEBHOOK_BYTES)
        app.router.add_post(urlsplit(self.url).path or "/", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.since = time.time()
        self._journal.listening(ListenerSpan(self.url, self.since, self.since))
        return self.since

    async def keep_alive(self) -> None:
        """The heartbeat, beside the run until cancelled (real seconds: the journal's times are wall-clock)."""
        while True:
            await anyio.sleep(self._heartbeat)
            self._journal.listening(ListenerSpan(self.url, self.since, time.time()))

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        url = str(request.rel_url)
        token = token_of(url)
        if token is not None:
            try:
                task_id = parse_webhook(body).result.task_id
            except ValueError:
                task_id = ""
            if task_id and task_id_problem(task_id) is None:
                self._on_delivery(token, task_id)
        return web.Response(status=await self._client.handle_webhook(body, url=url))

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
