"""Answers of the simulator's two sites: JSON errors of the API, S3-style XML of the video host."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

# Where an error answer keeps its reason until it is counted as sent.
_REASON: Final = web.ResponseKey("reason", str)
# Where a 429 keeps the limit that answered it (see SimCounters.rate_limited_by).
_LIMITED_BY: Final = web.ResponseKey("limited_by", str)


def _retry_after_header(retry_after: float | None) -> dict[str, str]:
    return {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(payload, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _s3_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    # Shaped like S3's error documents, since signed video URLs usually point at object storage or a CDN.
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>\n'
    return web.Response(text=body, status=status, content_type="application/xml", headers=headers)
