"""The API's wire protocol: its paths, the body of a submission, one task-result call, and the lenient parser
of its answers.

The parser never fails on what a server might plausibly send: missing fields become None or empty, numbers
may arrive as strings, unknown statuses become `TaskStatus.UNKNOWN` and unknown fields are ignored. It runs
on every poll, so it is written out by hand; `_convert` declares the same shape for cattrs, and a test holds
the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs

from ._exceptions import InvalidRequestError
from ._images import ImageFile, inspect_image_bytes, lowercase_scheme, recheck_file
from ._models import ImageToVideo, TaskResult, TaskStatus, TextToVideo, Video
from ._transport import COMPACT_JSON, AnswerLost, ApiTransport, RequestNotSent
from ._upload import BytesImage, DataUriImage, FileImage, StreamedBody

SUBMIT_PATH = "/v3/async/pixverse-v4.5-i2v"
TEXT_SUBMIT_PATH = "/v3/async/pixverse-v4.5-t2v"
TASK_RESULT_PATH = "/v3/async/task-result"


def lenient_float(value: object) -> float | None:
    """A number the API sent (maybe as a str), or None for anything that is not a finite number."""
    # Exact types first (the API sends plain numbers): this runs several times per poll.
    if type(value) is float:
        number = value
    elif type(value) is int or (isinstance(value, int | float) and not isinstance(value, bool)):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def lenient_int(value: object) -> int | None:
    """A whole number the API sent (maybe as a str), or None."""
    if type(value) is str and value.isascii() and value.isdigit():  # how the API sends the seed
        return int(value)
    number = lenient_float(value)
    return int(number) if number is not None and number.is_integer() else None


def lenient_str(value: object) -> str:
    """Text the API sent; "" for None, and any other value as its str."""
    if type(value) is str:
        return value
    return "" if value is None else str(value)


def _mapping(value: object) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    return value if isinstance(value, Mapping) else {}


def parse_task_result(body: object, *, received_at: datetime | None = None) -> TaskResult:
    """Parse a task-result answer; `received_at` stamps the videos so they know when they expire."""
    # A value of the type the API sends is taken inline: a call per field would cost more than the rest of the
    # parsing. Any other value goes through the lenient readers.
    top = body if type(body) is dict else _mapping(body)
    task = top.get("task")
    task = task if type(task) is dict else _mapping(task)
    status = task.get("status")
    status = status if type(status) is str else lenient_str(status)
    task_id = task.get("task_id")
    task_id = task_id if type(task_id) is str else lenient_str(task_id)
    reason = task.get("reason")
    reason = reason if type(reason) is str else lenient_str(reason)
    eta = task.get("eta")
    progress = task.get("progress_percent")
    extra = top.get("extra")
    seed = (extra if type(extra) is dict else _mapping(extra)).get("seed")
    raw_videos = top.get("videos")
    return TaskResult(
        task_id=task_id,
        status=TaskStatus.parse(status),
        reason=reason,
        eta=None if eta is None else lenient_float(eta),
        progress_percent=None if progress is None else lenient_float(progress),
        videos=_structure_videos(raw_videos, received_at) if raw_videos else (),
        seed=None if seed is None or seed == "" else lenient_int(seed),
        raw_status=status,
    )


def _structure_videos(raw_videos: object, received_at: datetime | None) -> tuple[Video, ...]:
    if not isinstance(raw_videos, list):
        return ()
    received_at = received_at or datetime.now(UTC)
    videos = []
    for video in raw_videos:
        fields = video if type(video) is dict else _mapping(video)
        url = fields.get("video_url")
        if type(url) is not str or not url:
            continue
        ttl = fields.get("video_url_ttl")
        kind = fields.get("video_type")
        videos.append(
            Video(
                url=url,
                ttl=None if ttl is None else lenient_float(ttl),
                type=(kind if type(kind) is str else lenient_str(kind)) or "mp4",
                received_at=received_at,
            )
        )
    return tuple(videos)


def submit_path(request: ImageToVideo | TextToVideo) -> str:
    """Where a request is submitted: each kind of job has its endpoint."""
    return TEXT_SUBMIT_PATH if isinstance(request, TextToVideo) else SUBMIT_PATH


async def submission_body(
    request: ImageToVideo | TextToVideo, *, image_as_data_uri: bool, webhook_url: str | None = None
) -> dict[str, Any] | StreamedBody:
    """The body of a submission, made when it is sent: a dict for an image given by URL, else a `StreamedBody`
    with the image's text streamed in, byte for byte what encoding the dict would give. A file image is
    checked again first, off the event loop, and refused (`InvalidRequestError`, before anything is sent) if
    it changed or vanished since the request was built. A text-to-video request has no image: a dict."""
    if isinstance(request, TextToVideo):
        return request_body(request, None, webhook_url=webhook_url)
    image = request.image
    if isinstance(image, str) and image[:5].lower() != "data:":
        # Checked when the request was built (a str cannot change since); only the scheme's case is fixed.
        return request_body(request, lowercase_scheme(image), webhook_url=webhook_url)
    text = await _image_text(image, request._image_file, as_data_uri=image_as_data_uri)
    around = COMPACT_JSON.encode(request_body(request, "", webhook_url=webhook_url))
    # The encoder writes the prompt first and the image second: the image's text goes between its quotes.
    head = '{"prompt":' + COMPACT_JSON.encode(request.prompt) + ',"image":"'
    if not around.startswith(head + '"'):
        raise RuntimeError("a submission body does not start with its prompt and image")  # pragma: no cover
    return StreamedBody(head.encode(), text, around[len(head) :].encode())


async def _image_text(
    image: str | bytes | Path, built: ImageFile | None, *, as_data_uri: bool
) -> FileImage | BytesImage | DataUriImage:
    if isinstance(image, Path):
        now = await anyio.to_thread.run_sync(recheck_file, image, built)
        head = f"data:{now.info.mime_type};base64,".encode() if as_data_uri else b""
        return FileImage(image, built or now, head)
    if isinstance(image, str):
        return _data_uri_text(image, as_data_uri=as_data_uri)
    # A bytearray may change while it is sent: copied once; bytes are immutable, and streamed from as they are.
    data = bytes(image) if isinstance(image, bytearray) else image
    info = inspect_image_bytes(data, source="image")
    return BytesImage(data, f"data:{info.mime_type};base64,".encode() if as_data_uri else b"")


def _data_uri_text(uri: str, *, as_data_uri: bool) -> DataUriImage:
    # Its head ("data:image/png;base64,") as JSON escapes it: a case-insensitive match may hold non-ASCII letters.
    escaped_head = COMPACT_JSON.encode(uri[: uri.index(",") + 1])[1:-1].encode()
    return DataUriImage(uri, raw=not as_data_uri, escaped_head=escaped_head)


def request_body(
    request: ImageToVideo | TextToVideo, image: str | None, *, webhook_url: str | None = None
) -> dict[str, Any]:
    """The JSON body of a submission (`image` for an image job; a text job sends its `aspect_ratio` instead);
    optional fields are left out when unset, `extra_body` merged in."""
    body: dict[str, Any] = {"prompt": request.prompt}
    if isinstance(request, TextToVideo):
        body["aspect_ratio"] = request.aspect_ratio
    else:
        body["image"] = image
    body["resolution"] = request.resolution
    body["fast_mode"] = request.fast_mode
    if request.negative_prompt is not None:
        body["negative_prompt"] = request.negative_prompt
    if request.style is not None:
        body["style"] = request.style
    if request.seed is not None:
        body["seed"] = request.seed
    extra_body = request.extra_body
    if extra_body is not None:
        body.update(extra_body)  # checked at construction: JSON values, no documented field
    if webhook_url is not None:
        extra = body.get("extra")
        if extra is None:
            body["extra"] = {"webhook": {"url": webhook_url}}
        elif isinstance(extra, dict) and "webhook" not in extra:
            body["extra"] = {**extra, "webhook": {"url": webhook_url}}
        else:
            raise InvalidRequestError(
                "extra_body",
                "'extra' must be an object without 'webhook' when the client has a webhook_url (it sets"
                " extra.webhook itself)",
            )
    return body


_TASK_FAILED = "TASK_FAILED"


async def fetch_task_once(transport: ApiTransport, task_id: str) -> TaskResult:
    """One poll, no retries (the caller decides): the task's state, or the typed error."""
    try:
        response = await transport.send("GET", TASK_RESULT_PATH, params={"task_id": task_id})
    except (RequestNotSent, AnswerLost) as failure:
        raise failure.error from None
    if response.status != 200:
        error = transport.status_error(response)
        del response  # its body may echo the key: not a local of a frame in the traceback
        if error.status_code == 500 and error.reason == _TASK_FAILED:
            # The router's documented answer about a failed task: the task's end, not a server failure to retry.
            return TaskResult(task_id, TaskStatus.FAILED, reason=error.message or _TASK_FAILED, raw_status=_TASK_FAILED)
        raise error
    result = parse_task_result(response.json())
    if not result.task_id:
        result = attrs.evolve(result, task_id=task_id)
    if result.reason:  # the server's words, which end up in TaskFailedError
        result = attrs.evolve(result, reason=transport.redact(result.reason))
    return result
