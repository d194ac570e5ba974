"""JSON in and out: the request body the API expects, and a lenient parser for its task-result answers.

One private cattrs `Converter` holds every hook. Parsing never fails on what a server might plausibly send:
missing fields become None or empty, numbers may arrive as strings, unknown statuses become
`TaskStatus.UNKNOWN` and unknown fields are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._exceptions import InvalidRequestError
from ._images import image_field
from ._models import ImageToVideo, TaskResult, TaskStatus, Video

SUBMIT_PATH = "/v3/async/pixverse-v4.5-i2v"
TASK_RESULT_PATH = "/v3/async/task-result"

_converter = cattrs.Converter()


def _lenient_float(value: object) -> float | None:
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


def _lenient_int(value: object) -> int | None:
    if type(value) is str and value.isascii() and value.isdigit():  # how the API sends the seed
        return int(value)
    number = _lenient_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _lenient_str(value: object) -> str:
    if type(value) is str:
        return value
    return "" if value is None else str(value)


_VIDEO_FIELDS = {
    "url": override(rename="video_url"),
    "ttl": override(rename="video_url_ttl"),
    "type": override(rename="video_type"),
    "received_at": override(omit=True),
}
_converter.register_unstructure_hook(Video, make_dict_unstructure_fn(Video, _converter, **_VIDEO_FIELDS))  # type: ignore[arg-type]


def _mapping(value: object) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    return value if isinstance(value, Mapping) else {}


def _structure_task_result(body: object, _: object = None, received_at: datetime | None = None) -> TaskResult:
    # This runs on every poll, so it is written out by hand rather than generated, and a value of the type
    # the API sends is taken inline: a call per field would cost more than the rest of the parsing. Any
    # other value goes through the lenient readers.
    top = body if type(body) is dict else _mapping(body)
    task = top.get("task")
    task = task if type(task) is dict else _mapping(task)
    status = task.get("status")
    status = status if type(status) is str else _lenient_str(status)
    task_id = task.get("task_id")
    task_id = task_id if type(task_id) is str else _lenient_str(task_id)
    reason = task.get("reason")
    reason = reason if type(reason) is str else _lenient_str(reason)
    eta = task.get("eta")
    progress = task.get("progress_percent")
    extra = top.get("extra")
    seed = (extra if type(extra) is dict else _mapping(extra)).get("seed")
    raw_videos = top.get("videos")
    return TaskResult(
        task_id=task_id,
        status=TaskStatus.parse(status),
        reason=reason,
        eta=None if eta is None else _lenient_float(eta),
        progress_percent=None if progress is None else _lenient_float(progress),
        videos=_structure_videos(raw_videos, received_at) if raw_videos else (),
        seed=None if seed is None or seed == "" else _lenient_int(seed),
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
                ttl=None if ttl is None else _lenient_float(ttl),
                type=(kind if type(kind) is str else _lenient_str(kind)) or "mp4",
                received_at=received_at,
            )
        )
    return tuple(videos)


def _unstructure_task_result(result: TaskResult) -> dict[str, Any]:
    return {
        "extra": {"seed": "" if result.seed is None else str(result.seed)},
        "task": {
            "task_id": result.task_id,
            "status": result.raw_status or result.status.value,
            "reason": result.reason,
            "task_type": "PIXVERSE_V4_5_I2V",
            "eta": result.eta,
            "progress_percent": result.progress_percent,
        },
        "images": [],
        "audios": [],
        "videos": [_converter.unstructure(video) for video in result.videos],
    }


_converter.register_structure_hook(TaskResult, _structure_task_result)
_converter.register_unstructure_hook(TaskResult, _unstructure_task_result)


def parse_task_result(body: object, *, received_at: datetime | None = None) -> TaskResult:
    """Parse a task-result answer; `received_at` stamps the videos so they know when they expire."""
    # The converter's hook, called directly: the generic dispatch costs more than the parsing, once per poll.
    return _structure_task_result(body, received_at=received_at)


def task_result_to_json(result: TaskResult) -> dict[str, Any]:
    """The API's JSON shape of a result (for the simulator's answers and for round-trip tests)."""
    return _converter.unstructure(result)  # type: ignore[no-any-return]


async def submission_body(
    request: ImageToVideo, *, image_as_data_uri: bool, webhook_url: str | None = None
) -> dict[str, Any]:
    """The JSON body of a submission, made when it is sent: a file image is read then, off the event loop, and
    refused (`InvalidRequestError`, before anything is sent) if it changed or vanished since the request was
    built."""
    image = await image_field(request.image, request._image_file, as_data_uri=image_as_data_uri)
    return request_body(request, image, webhook_url=webhook_url)


def request_body(request: ImageToVideo, image_field: str, *, webhook_url: str | None = None) -> dict[str, Any]:
    """The JSON body of a submission; optional fields are left out when unset, `extra_body` merged in."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "image": image_field,
        "resolution": request.resolution,
        "fast_mode": request.fast_mode,
    }
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
