"""The API site: `POST /v3/async/pixverse-v4.5-i2v` and `POST /v3/async/pixverse-v4.5-t2v` create tasks,
`GET /v3/async/task-result` tells of them.

## Submit: `POST /v3/async/pixverse-v4.5-i2v`

Checked in this order, the first problem answering:

1. The caller's key (400 `MISSING_API_KEY`, 403 `INVALID_API_KEY`), see `_validation`.
2. The router's call limits, before the body is looked at: `submit_rate_limit`, then `random_rate_limit`
   (see `_rate_limits`). A call refused there creates nothing.
3. The body, read through the shared uplink if one is modelled, then `submit_latency` (see `_uplink`; a
   body cut short answers 400 and creates nothing), then the body and the image (400
   `INVALID_REQUEST_BODY` and the image reasons), see `_validation`.
4. `balance`: a key that has already created `balance` tasks -> 400 `BILLING_BALANCE_NOT_ENOUGH`.
5. `max_running_per_key`: a key with that many tasks not yet terminal -> 429 `RATE_LIMIT_EXCEEDED`, with
   `Retry-After` (`rate_limit_retry_after` rounded up to whole simulated seconds) only if set.
6. Otherwise the task is created and billed: 200 `{"task_id": "<uuid4>"}`; it then runs as `_tasks` says.

`POST /v3/async/pixverse-v4.5-t2v` (text-to-video) goes through the same steps, its body checked by
`check_text_body` (no image, an `aspect_ratio`); its tasks have `task_type` `PIXVERSE_V4_5_T2V` and their
own durations (`Simulator(text_duration=...)`).

Surge protection: `Simulator(surge_rate=p)` answers each submit and poll 503 with chance `p`, before
anything else (nothing is created); the faults `surge` (503) and `gateway_timeout` (504) do so on chosen
calls. Moderation: the faults `illegal_prompt` and `illegal_image` answer a submission 400 `ILLEGAL_PROMPT` /
`ILLEGAL_IMAGE_CONTENT` (nothing is created or billed).

## Poll: `GET /v3/async/task-result?task_id=<id>`

Same authentication, then `poll_rate_limit` and `random_rate_limit`. A poll of a task that has ended
FAILED answers 500 `TASK_FAILED` (its reason in `message`) with chance `Simulator(task_failed_rate=...)`, as
the router documents for failed tasks. No `task_id` -> 400
`INVALID_REQUEST_BODY`; an unknown task or one created with another key -> 404 `TASK_NOT_FOUND`. The answer
has the real API's shape: `extra.seed` (the submitted seed, or a random one, as a string),
`extra.debug_info` (times in simulated epoch milliseconds, as strings, empty until reached), `task.eta`,
`task.progress_percent` (see the hints in `_tasks`), `task.reason` ("" unless failed), `images: []`,
`audios: []` and `videos`: empty until success, then one entry with a freshly signed link (see
`_video_host`).

Any other path or method on the API site -> 404 `API_NOT_FOUND`. Error bodies are
`{"code": <status>, "reason": "<REASON>", "message": "...", "metadata": {}}`.
"""

from __future__ import annotations

import random
import typing
import uuid
from collections.abc import Callable
from typing import Any, Final

import attrs
from aiohttp import web

from pixverse_async._json_reader import read_json
from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import FaultBox, answer_alone, drop_connection, truncated
from pixverse_async.testing._rate_limits import AccountGate
from pixverse_async.testing._responses import api_error, count_sent, json_response
from pixverse_async.testing._sim_clock import SimClock
from pixverse_async.testing._tasks import FAILED, SUCCEED, SimTask, TaskBook
from pixverse_async.testing._uplink import BodyCutShort, Uplink
from pixverse_async.testing._validation import (
    NO_IMAGE,
    BadRequest,
    bearer_key,
    check_body,
    check_image,
    check_text_body,
)
from pixverse_async.testing._webhooks import WebhookSender

SUBMIT_PATH: Final = "/v3/async/pixverse-v4.5-i2v"
TEXT_SUBMIT_PATH: Final = "/v3/async/pixverse-v4.5-t2v"
RESULT_PATH: Final = "/v3/async/task-result"

# A 10 MB image is about 13.4 MB once base64-encoded; accept bodies well past that so that an oversized
# image reaches the image check (IMAGE_FILE_EXCEEDS_MAX_SIZE) instead of aiohttp's generic 413.
_MAX_BODY_BYTES: Final = 64 * 1024 * 1024


@typing.final
@attrs.define(eq=False)
class ApiSite:
    """The API site's handlers: each call checked, limited, faulted and answered as the real API does."""

    api_keys: frozenset[str]
    accept_fields: frozenset[str]
    _clock: SimClock
    _book: TaskBook
    gate: AccountGate
    uplink: Uplink
    _faults: FaultBox
    _webhooks: WebhookSender
    # The simulator's counters are replaced by `reset_counters`, so they are looked up at each request.
    _counters: Callable[[], SimCounters]
    # The body of a task-result answer about a task at a simulated time (with a freshly signed link).
    _task_result: Callable[[SimTask, float], dict[str, Any]]
    #: Chance that a poll of a task that ended FAILED answers 500 TASK_FAILED.
    task_failed_rate: float = 0.0
    _chaos_rng: random.Random = attrs.Factory(random.Random)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post(SUBMIT_PATH, self._handle_submit)
        app.router.add_post(TEXT_SUBMIT_PATH, self._handle_submit)
        app.router.add_get(RESULT_PATH, self._handle_poll, allow_head=False)
        # Anything else, including a wrong method on a known path, is answered like the real router does.
        app.router.add_route("*", "/{tail:.*}", self._handle_api_not_found)
        return app

    async def _handle_api_not_found(self, request: web.Request) -> web.StreamResponse:
        answer = api_error(404, "API_NOT_FOUND", f"no API at {request.method} {request.path}")
        return count_sent(self._counters(), answer)

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """The caller's API key, or the error answer."""
        key = bearer_key(request)
        if key is None:
            return api_error(400, "MISSING_API_KEY", "missing API key: send Authorization: Bearer <key>")
        if key not in self.api_keys:
            return api_error(403, "INVALID_API_KEY", "invalid API key")
        return key

    async def _handle_submit(self, request: web.Request) -> web.StreamResponse:
        counters = self._counters()
        counters.submit_requests += 1
        fault = self._faults.take("submit", counters)
        if fault is None:
            return count_sent(counters, await self._submit(request))
        alone = answer_alone(fault, "CREATE_TASK_FAILED")
        if alone is not None:
            return count_sent(counters, alone)
        if fault.kind == "slow":
            response = await self._submit(request)  # created first: the client may time out after it
            await self._clock.sleep(fault.delay)
            return count_sent(self._counters(), response)
        if fault.kind == "reset":
            if fault.create_task:
                await self._submit(request)
            return await drop_connection(request)
        if fault.kind == "server_error":  # only with create_task, see answer_alone
            await self._submit(request)
            return count_sent(counters, api_error(500, "CREATE_TASK_FAILED", "internal error (injected)"))
        # truncated_json
        response = await self._submit(request) if fault.create_task else json_response({"task_id": str(uuid.uuid4())})
        return truncated(response)

    async def _submit(self, request: web.Request) -> web.Response:
        """Handle a submission normally: its answer (a task was created if it is a 200)."""
        key = self._authenticate(request)
        if isinstance(key, web.Response):
            return key
        limited = self.gate.refuse_call(key, "submit", self._clock.now())
        if limited is not None:
            return limited
        if request.content_type != "application/json":
            return api_error(400, "INVALID_REQUEST_BODY", "Content-Type must be application/json")
        try:
            raw = await self.uplink.read_body(request, _MAX_BODY_BYTES)
        except BodyCutShort:
            self._counters().bodies_cut_short += 1
            return api_error(400, "INVALID_REQUEST_BODY", "request body cut short")
        try:
            body = read_json(raw)
        except ValueError:  # not JSON, not UTF-8, or nested too deep for the parser
            return api_error(400, "INVALID_REQUEST_BODY", "request body is not valid JSON")
        try:
            if request.path == TEXT_SUBMIT_PATH:
                check_text_body(body, self.accept_fields)
                image = NO_IMAGE
            else:
                check_body(body, self.accept_fields)
                image = check_image(body["image"])
        except BadRequest as problem:
            return api_error(400, problem.reason, problem.message)
        now = self._clock.now()
        refused = self.gate.refuse_task(key, now)
        if refused is not None:
            return refused

        task = self._book.create(key, body, image, now)
        running = self.gate.task_created(key, task.ends_at, now)
        self._webhooks.deliver_when_ended(task)
        counters = self._counters()
        counters.tasks_created += 1
        counters.tasks_created_by_prompt[task.prompt] += 1
        if running > counters.max_running_by_key.get(key, 0):
            counters.max_running_by_key[key] = running
        return json_response({"task_id": task.task_id})

    async def _handle_poll(self, request: web.Request) -> web.StreamResponse:
        counters = self._counters()
        counters.poll_requests += 1
        task_id = request.query.get("task_id", "")
        if task_id:
            counters.polls_by_task[task_id] += 1
            known = self._book.tasks.get(task_id)
            if known is not None and known.terminal_seen:
                counters.polls_after_terminal += 1
        fault = self._faults.take("poll", counters)
        if fault is None:
            return count_sent(counters, self._poll(request, task_id, settle=True))
        alone = answer_alone(fault, "GET_RESULT_FAILED")
        if alone is not None:
            return count_sent(counters, alone)
        if fault.kind == "reset":
            return await drop_connection(request)
        if fault.kind == "slow":
            await self._clock.sleep(fault.delay)
            return count_sent(self._counters(), self._poll(request, task_id, settle=True))
        # truncated_json: the client could not read it, so a terminal answer does not count as seen.
        return truncated(self._poll(request, task_id, settle=False))

    def _poll(self, request: web.Request, task_id: str, *, settle: bool) -> web.Response:
        """The normal poll answer; `settle`: this answer will reach the client whole."""
        key = self._authenticate(request)
        if isinstance(key, web.Response):
            return key
        limited = self.gate.refuse_call(key, "poll", self._clock.now())
        if limited is not None:
            return limited
        if not task_id:
            return api_error(400, "INVALID_REQUEST_BODY", "task_id is required")
        task = self._book.tasks.get(task_id)
        if task is None or task.api_key != key:  # another key's task is as invisible as a missing one
            return api_error(404, "TASK_NOT_FOUND", f"task {task_id} not found")
        now = self._clock.now()
        status = task.status_at(now)
        if settle and status in (SUCCEED, FAILED):
            task.terminal_seen = True
        if status == FAILED and self.task_failed_rate > 0 and self._chaos_rng.random() < self.task_failed_rate:
            return api_error(500, "TASK_FAILED", f"task failed: {task.fail_reason or 'no reason'}")
        return json_response(self._task_result(task, now))
