"""Faults: the next requests to an endpoint, or the next webhook deliveries, misbehave on purpose.

`sim.inject(Fault(endpoint, kind, times=1, ...))` makes the next `times` requests to `endpoint` ("submit",
"poll" or "video"), or the next `times` webhook deliveries ("webhook"), misbehave; faults are consumed in the
order injected, whatever the request holds. A webhook fault is taken when a delivery first falls due (once
per delivery, not per attempt). See `Fault` for each kind. `sim.clear_faults()` drops those not yet used.
`random_faults=[(Fault("poll", "server_error"), 0.05)]` makes each request to that endpoint misbehave so
with that probability (the fault's `times` is ignored), when no injected fault is pending for it; the
entries of an endpoint are drawn in turn and the first that strikes wins. Their draws come from an RNG of
their own (shared with random 429s), derived from `seed`, so that they do not shift task ids or durations.
"""

from __future__ import annotations

import random
import typing
from collections.abc import Collection
from typing import Final, Literal

import attrs
from aiohttp import web

from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._responses import api_error, retry_after_header, s3_error

FaultEndpoint = Literal["submit", "poll", "video", "webhook"]
FaultKind = Literal[
    "server_error",
    "rate_limit",
    "reset",
    "slow",
    "html_error",
    "empty_error",
    "truncated_json",
    "expired",
    "drop",
    "duplicate",
    "surge",
    "gateway_timeout",
    "illegal_prompt",
    "illegal_image",
]
_WEBHOOK_FAULT_KINDS: Final = frozenset({"drop", "duplicate"})
_ALONE_API_ERRORS: Final = {
    "surge": (503, "SERVICE_UNAVAILABLE", "the service is busy, slow down (surge protection)"),
    "gateway_timeout": (504, "GATEWAY_TIMEOUT", "the upstream did not answer in time"),
    "illegal_prompt": (400, "ILLEGAL_PROMPT", "the prompt was refused by content moderation"),
    "illegal_image": (400, "ILLEGAL_IMAGE_CONTENT", "the image was refused by content moderation"),
}

_NGINX_502_PAGE: Final = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@attrs.frozen
class Fault:
    """A misbehaviour for the next `times` requests to `endpoint`, or the next `times` webhook deliveries.

    `endpoint` is "submit", "poll" or "video" (requests the simulator receives) or "webhook" (deliveries it
    sends, see `pixverse_async.testing._webhooks`). "webhook" takes only the kinds `drop` and `duplicate`,
    and those kinds apply to "webhook" only; `expired` applies to "video" only. Any other pairing raises
    `ValueError`. `times`, `retry_after`, `delay` and `create_task` mean nothing to webhook faults.

    Kinds, by endpoint (on submit, `create_task` says whether the task is created, and billed, before the
    fault strikes, for the kinds marked *creates*; when the request is invalid nothing is created and the
    fault still strikes):

    - `server_error`: 500 JSON error: `CREATE_TASK_FAILED` on submit (*creates*), `GET_RESULT_FAILED` on
      poll, an S3-style `InternalError` XML on video.
    - `rate_limit`: 429 `RATE_LIMIT_EXCEEDED` (XML `SlowDown` on video), with `Retry-After: <retry_after>`
      (simulated seconds rounded up) if `retry_after` is set, else without the header. Never creates.
    - `reset`: closes the TCP connection abruptly (`transport.abort()`) without a byte of answer: the client
      sees `aiohttp.ServerDisconnectedError` (a connection error), never an HTTP status. On submit the body
      is read and the task created first (*creates*); with `create_task=False` the connection is dropped
      before the body is looked at (the client may then see `ClientOSError`, connection reset, instead).
      aiohttp's client resends an idempotent request (GET) once by itself after a disconnection, so one
      reset on poll or video is invisible to it: inject `times=2` to make the error reach the caller.
    - `slow`: waits `delay` simulated seconds on the simulator's clock (so `sim.advance` ends the wait
      early), then answers normally. On submit the task is created before the wait (the client's read
      timeout may fire after the task exists).
    - `html_error`: 502 `text/html` nginx page; nothing is created.
    - `empty_error`: 503 with an empty body; nothing is created.
    - `truncated_json`: 200 `application/json` whose body is the first half of the normal answer (submit:
      *creates*). On video: headers announce the full `Content-Length`, half the file is sent, then the
      connection is aborted (a download cut short).
    - `surge`, `gateway_timeout`: submit or poll: 503 / 504 JSON `SERVICE_UNAVAILABLE` / `GATEWAY_TIMEOUT`, the
      router's traffic shaping; nothing is created.
    - `illegal_prompt`, `illegal_image`: submit only: 400 `ILLEGAL_PROMPT` / `ILLEGAL_IMAGE_CONTENT`, a
      moderation refusal; nothing is created or billed.
    - `expired`: video only: 403 "Request has expired", as if the signed link had run out (counted in
      `video_expired`); polling again gives a link that works.
    - `drop`: webhook only: the delivery is lost, never sent and never retried (counted in
      `webhooks_dropped`).
    - `duplicate`: webhook only: once an attempt of the delivery is answered 2xx, a second POST with the very
      same body (same bytes, same signed URL) is sent right after it, once, whatever it is answered (counted
      in `webhooks_duplicated`). If every attempt fails, nothing is duplicated.
    """

    endpoint: FaultEndpoint = attrs.field(validator=attrs.validators.in_(typing.get_args(FaultEndpoint)))
    kind: FaultKind = attrs.field(validator=attrs.validators.in_(typing.get_args(FaultKind)))
    times: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    retry_after: float | None = None
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    create_task: bool = True

    def __attrs_post_init__(self) -> None:
        if self.kind in ("illegal_prompt", "illegal_image") and self.endpoint != "submit":
            raise ValueError(f"the {self.kind!r} fault applies to the submit endpoint only")
        if self.kind in ("surge", "gateway_timeout") and self.endpoint not in ("submit", "poll"):
            raise ValueError(f"the {self.kind!r} fault applies to the submit and poll endpoints only")
        if self.kind == "expired" and self.endpoint != "video":
            raise ValueError("the 'expired' fault applies to the video endpoint only")
        if self.kind in _WEBHOOK_FAULT_KINDS and self.endpoint != "webhook":
            raise ValueError(f"the {self.kind!r} fault applies to the webhook endpoint only")
        if self.endpoint == "webhook" and self.kind not in _WEBHOOK_FAULT_KINDS:
            raise ValueError(f"the webhook endpoint takes only the 'drop' and 'duplicate' faults, not {self.kind!r}")


@attrs.define
class _PendingFault:
    fault: Fault
    remaining: int


def check_random_faults(entries: Collection[tuple[Fault, float]]) -> tuple[tuple[Fault, float], ...]:
    """`Simulator(random_faults=...)` as a tuple, or `TypeError`/`ValueError` naming the bad entry."""
    checked = tuple(entries)
    for entry in checked:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], Fault)):
            raise TypeError(f"random_faults takes (Fault, probability) pairs, not {entry!r}")
        if entry[0].endpoint == "webhook" or not 0.0 <= entry[1] <= 1.0:
            raise ValueError(f"random_faults: a submit/poll/video fault and a probability in [0, 1], not {entry!r}")
    return checked


@typing.final
@attrs.define(eq=False)
class FaultBox:
    """The faults waiting to strike, in the order injected, and those that strike at random rates."""

    random_faults: tuple[tuple[Fault, float], ...]
    # Shared with random 429s, apart from the task RNG so that draws shift no task ids or durations.
    _chaos_rng: random.Random
    _pending: list[_PendingFault] = attrs.Factory(list)

    def inject(self, fault: Fault) -> None:
        self._pending.append(_PendingFault(fault, fault.times))

    def clear(self) -> None:
        self._pending.clear()

    def take(self, endpoint: FaultEndpoint, counters: SimCounters) -> Fault | None:
        """The fault that strikes this request (or delivery) of `endpoint`, if any, counted as applied."""
        for index, pending in enumerate(self._pending):
            if pending.fault.endpoint == endpoint:
                pending.remaining -= 1
                if pending.remaining == 0:
                    del self._pending[index]
                counters.faults_applied[f"{endpoint}:{pending.fault.kind}"] += 1
                return pending.fault
        for fault, probability in self.random_faults:
            if fault.endpoint == endpoint and self._chaos_rng.random() < probability:
                counters.faults_applied[f"{endpoint}:{fault.kind}"] += 1
                return fault
        return None


def answer_alone(fault: Fault, server_error_reason: str) -> web.Response | None:
    """The answer of the faults that answer instead of the normal handling; None for the others."""
    if fault.kind == "rate_limit":
        headers = retry_after_header(fault.retry_after)
        if fault.endpoint == "video":
            return s3_error(429, "SlowDown", "Please reduce your request rate.", headers)
        return api_error(429, "RATE_LIMIT_EXCEEDED", "rate limit exceeded (injected)", headers)
    if fault.kind == "server_error" and fault.endpoint == "video":
        return s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
    if fault.kind == "server_error" and not (fault.endpoint == "submit" and fault.create_task):
        return api_error(500, server_error_reason, "internal error (injected)")
    if fault.kind == "html_error":
        return web.Response(text=_NGINX_502_PAGE, status=502, content_type="text/html")
    if fault.kind == "empty_error":
        return web.Response(status=503)
    if fault.kind in _ALONE_API_ERRORS:
        status, reason, message = _ALONE_API_ERRORS[fault.kind]
        return api_error(status, reason, message)
    return None


async def drop_connection(request: web.Request) -> web.Response:
    """Abort the TCP connection without answering; aiohttp then fails to write the dummy response, quietly."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def truncated(response: web.Response) -> web.Response:
    """The same answer with the first half of its body only (Content-Length matches what is sent)."""
    body = response.body
    assert isinstance(body, bytes)
    return web.Response(body=body[: len(body) // 2], status=response.status, content_type=response.content_type)


async def cut_short(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Announce the full body, send half of it, then abort: a download that breaks in the middle."""
    body = response.body
    assert isinstance(body, bytes)
    stream = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    await stream.drain()
    transport = request.transport
    if transport is not None:
        transport.abort()
    return stream
