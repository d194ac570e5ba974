"""The video site: a second origin (like a CDN) serving each succeeded task's video behind a signed link.

`GET /videos/<task_id>.mp4?expires=<unix sim seconds>&signature=<hmac-sha256 hex>` answers 200 `video/mp4`
with `Content-Length`; the body is `Simulator.video_bytes(task_id)` (see `pixverse_async.testing._video`:
a real MP4 of about 5.4 KB, one second of one 64x36 H.264 frame, which names the task id so that videos
differ per task).
Missing or wrong signature -> 403 `SignatureDoesNotMatch`; past `expires` -> 403 "Request has expired"; both
as S3-style XML. `Range` is ignored. A request carrying an `Authorization` header is still served, but
counted in `counters.key_leaks_to_video_host`: a client must never send its API key there.

Task-result answers carry a link signed afresh at every poll (a new expiry `video_ttl` simulated seconds
from then, so polling again refreshes an expired link), with `video_url_ttl` as a string, as the real API
sends it.
"""

from __future__ import annotations

import hmac
import math
import secrets
import typing
from collections.abc import Callable, Mapping

import attrs
from aiohttp import web

from pixverse_async.testing._counters import SimCounters
from pixverse_async.testing._faults import FaultBox, answer_alone, cut_short, drop_connection
from pixverse_async.testing._responses import count_sent, s3_error
from pixverse_async.testing._sim_clock import SimClock
from pixverse_async.testing._tasks import SimTask
from pixverse_async.testing._video import mp4_for_task


@typing.final
@attrs.define(eq=False)
class VideoHost:
    """Signs links to tasks' videos and serves the videos (and the video faults) to whoever holds one."""

    ttl: float
    _clock: SimClock
    _faults: FaultBox
    _tasks: Mapping[str, SimTask]
    # The simulator's counters are replaced by `reset_counters`, so they are looked up at each request.
    _counters: Callable[[], SimCounters]
    _signing_key: bytes = attrs.Factory(lambda: secrets.token_bytes(32))
    #: `http://host:port` once the site listens.
    base_url: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.ttl <= 0:
            raise ValueError(f"video_ttl must be > 0, got {self.ttl}")

    def link(self, task_id: str, now: float) -> dict[str, str]:
        """The `videos` entry of a task-result answer at `now`: a link valid for `ttl` simulated seconds."""
        expires = math.ceil(now + self.ttl)
        signature = self._sign(task_id, str(expires))
        return {
            "video_url": f"{self.base_url}/videos/{task_id}.mp4?expires={expires}&signature={signature}",
            "video_url_ttl": _format_seconds(self.ttl),
            "video_type": "mp4",
        }

    def _sign(self, task_id: str, expires: str) -> str:
        return hmac.new(self._signing_key, f"{task_id}\n{expires}".encode(), "sha256").hexdigest()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request to the video site."""
        counters = self._counters()
        counters.video_requests += 1
        if "Authorization" in request.headers:
            counters.key_leaks_to_video_host += 1
        fault = self._faults.take("video", counters)
        if fault is None:
            return self._video(request, counters)
        alone = answer_alone(fault, "")
        if alone is not None:
            return count_sent(counters, alone)
        if fault.kind == "reset":
            return await drop_connection(request)
        if fault.kind == "slow":
            await self._clock.sleep(fault.delay)
            return self._video(request, self._counters())
        if fault.kind == "expired":
            counters.video_expired += 1
            return s3_error(403, "AccessDenied", "Request has expired")
        return await cut_short(request, self._video(request, counters))

    def _video(self, request: web.Request, counters: SimCounters) -> web.Response:
        path = request.path
        is_video_path = path.startswith("/videos/") and path.endswith(".mp4")
        if request.method not in ("GET", "HEAD") or not is_video_path:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        task_id = path[len("/videos/") : -len(".mp4")]
        expires_text = request.query.get("expires", "")
        signature = request.query.get("signature", "")
        expected = self._sign(task_id, expires_text)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            counters.video_bad_signature += 1
            return s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        # The signature covers `expires`, so it was written by `link` and parses.
        if self._clock.now() > float(expires_text):
            counters.video_expired += 1
            return s3_error(403, "AccessDenied", "Request has expired")
        if task_id not in self._tasks:  # only if the simulator was restarted with the same signing key
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        counters.videos_served += 1
        return web.Response(body=mp4_for_task(task_id), content_type="video/mp4")


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else str(seconds)
