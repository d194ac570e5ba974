"""Answers of the simulator's two sites: JSON errors of the API, S3-style XML of the video host.

Error bodies of the API site are `{"code": <status>, "reason": "<REASON>", "message": "...", "metadata": {}}`.
An error answer is counted (`SimCounters.errors_by_reason`, `rate_limited`, `rate_limited_by`) when it is
sent (`count_sent`), not when it is made: a fault may throw it away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from pixverse_async.testing._counters import SimCounters

# `web.ResponseKey` came with aiohttp 3.14 (which warns on str keys); on older versions a str key does its job.
_response_key: Any = getattr(web, "ResponseKey", lambda name, kind: name)
# Where an error answer keeps its reason until it is counted as sent.
_REASON: Final[web.ResponseKey[str]] = _response_key("reason", str)
# Where a 429 keeps the limit that answered it (see SimCounters.rate_limited_by).
_LIMITED_BY: Final[web.ResponseKey[str]] = _response_key("limited_by", str)


def retry_after_header(retry_after: float | None) -> dict[str, str]:
    """`Retry-After` in whole seconds, rounded up; no header for `None`."""
    return {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def api_error(status: int, reason: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON error answer of the API site, counted once sent."""
    response = json_response({"code": status, "reason": reason, "message": message, "metadata": {}}, status, headers)
    response[_REASON] = reason
    return response


def rate_limited(limited_by: str, message: str, headers: Mapping[str, str]) -> web.Response:
    """A 429 of the API site, remembering which limit answered it (see `SimCounters.rate_limited_by`)."""
    response = api_error(429, "RATE_LIMIT_EXCEEDED", message, headers)
    response[_LIMITED_BY] = limited_by
    return response


def count_sent(counters: SimCounters, response: web.StreamResponse) -> web.StreamResponse:
    """Count an answer that is about to leave; return it."""
    reason = response.get(_REASON)
    if reason is not None:
        counters.errors_by_reason[reason] += 1
    if response.status == 429:
        counters.rate_limited += 1
        counters.rate_limited_by[response.get(_LIMITED_BY, "fault")] += 1
    return response


def s3_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    # Shaped like S3's error documents, since signed video URLs usually point at object storage or a CDN.
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>\n'
    return web.Response(text=body, status=status, content_type="application/xml", headers=headers)
