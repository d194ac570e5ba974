"""The library's cattrs converters: JSON shapes declared once as attrs classes and structured by hooks, for the
places that are not on the hot path.

- Task-result bodies as they come in webhook deliveries (`parse_webhook`). The API's shape is declared by the
  `_Wire*` classes below and read as leniently as `_protocol.parse_task_result`, the hand-written parser of
  every poll: missing fields become None or empty, numbers may arrive as strings, unknown fields are ignored.
  A test holds the two to the same result.
- Rows of a manifest into `ImageToVideo` (`request_reader`): each field is read and checked by its own hook,
  and every field's problem is collected, not only the first.
- Values out as JSON (`unstructure`), e.g. `status --json`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, final

import attrs
import cattrs
from cattrs.errors import ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from ._exceptions import InvalidRequestError
from ._json_reader import MAX_WEBHOOK_BYTES, read_json
from ._models import (
    REQUEST_FIELDS,
    TEXT_REQUEST_FIELDS,
    ImageToVideo,
    TaskResult,
    TaskStatus,
    TextToVideo,
    Video,
    check_request_field,
)
from ._protocol import lenient_float, lenient_int, lenient_str

WEBHOOK_TASK_RESULT = "ASYNC_TASK_RESULT"


@attrs.frozen
class _WireTask:
    task_id: str = ""
    status: str = ""
    reason: str = ""
    eta: float | None = None
    progress_percent: float | None = None


@attrs.frozen
class _WireVideo:
    video_url: str = ""
    video_url_ttl: float | None = None
    video_type: str = ""


@attrs.frozen
class _WireExtra:
    seed: int | None = None


@attrs.frozen
class _WireTaskResult:
    """The task-result body (API.md section 3): `task`, `videos`, `extra.seed`; `images`, `audios` unused."""

    task: _WireTask = _WireTask()
    videos: tuple[_WireVideo, ...] = ()
    extra: _WireExtra = _WireExtra()


def _lenient_optional_float(value: object, _: object) -> float | None:
    return None if value is None else lenient_float(value)


def _lenient_seed(value: object, _: object) -> int | None:
    return None if value is None or value == "" else lenient_int(value)


def _str_only(value: object, _: object) -> str:
    # A video without a URL string is no video (a number there is not a link).
    return value if type(value) is str else ""


@functools.cache  # built on first use: a client that gets no webhook never pays for the code generation
def _wire_converter() -> cattrs.Converter:
    converter = cattrs.Converter()  # unknown fields are ignored (cattrs' default)
    converter.register_structure_hook(str, lambda value, _: lenient_str(value))
    converter.register_structure_hook_func(lambda kind: kind == float | None, _lenient_optional_float)
    converter.register_structure_hook_func(lambda kind: kind == int | None, _lenient_seed)
    converter.register_structure_hook_func(
        lambda kind: kind == tuple[_WireVideo, ...],
        lambda value, _: (
            tuple(converter.structure(video, _WireVideo) for video in value) if isinstance(value, list) else ()
        ),
    )
    overrides: dict[type, dict[str, Any]] = {_WireVideo: {"video_url": override(struct_hook=_str_only)}}
    for wire_class in (_WireTask, _WireVideo, _WireExtra, _WireTaskResult):
        structure = make_dict_structure_fn(wire_class, converter, **overrides.get(wire_class, {}))
        # A part that is not an object (null, a list, a number) is read as an empty one.
        converter.register_structure_hook(
            wire_class,
            lambda value, kind, structure=structure: structure(value if isinstance(value, Mapping) else {}, kind),
        )
    return converter


def structure_task_result(body: object, *, received_at: datetime | None = None) -> TaskResult:
    """A task-result body read through the converter: the same result as `_protocol.parse_task_result`."""
    wire = _wire_converter().structure(body, _WireTaskResult)
    task = wire.task
    stamped = received_at or datetime.now(UTC)
    return TaskResult(
        task_id=task.task_id,
        status=TaskStatus.parse(task.status),
        reason=task.reason,
        eta=task.eta,
        progress_percent=task.progress_percent,
        videos=tuple(
            Video(url=video.video_url, ttl=video.video_url_ttl, type=video.video_type or "mp4", received_at=stamped)
            for video in wire.videos
            if video.video_url
        ),
        seed=wire.extra.seed,
        raw_status=task.status,
    )


@attrs.frozen
class WebhookEvent:
    """One webhook delivery: its `event_type` and the task result it carries (a hint, to be confirmed)."""

    event_type: str
    result: TaskResult

    @property
    def is_task_result(self) -> bool:
        return self.event_type == WEBHOOK_TASK_RESULT


def parse_webhook(body: bytes | str) -> WebhookEvent:
    """A delivery's raw body, `{"event_type": ..., "payload": <task-result body>}` (API.md section 4); raise
    `ValueError` when it is not JSON (or bigger or deeper than `read_json` allows) or its payload is not an
    object."""
    event = read_json(body, max_bytes=MAX_WEBHOOK_BYTES)
    payload = event.get("payload") if isinstance(event, dict) else None
    if not isinstance(payload, dict):
        raise ValueError("a webhook delivery's payload must be a JSON object")
    return WebhookEvent(event_type=lenient_str(event.get("event_type")), result=structure_task_result(payload))


# -- manifest rows into requests -------------------------------------------------------------------------------

Reader = Callable[[Any], Any]


@final
class RequestReader:
    """Builds an `ImageToVideo` (or, with `text=True`, a `TextToVideo`) from a row of fields (a manifest's),
    reading each value first with the row format's own reader of that field (CSV cells are text), then
    checking it by the field's rule. Every field is read and checked, so `read` raises an `ExceptionGroup` of
    every field's `InvalidRequestError`."""

    def __init__(
        self,
        readers: Mapping[str, Reader],
        *,
        required: Mapping[str, str],
        columns: Mapping[str, str],
        text: bool = False,
    ) -> None:
        """`readers` by field name; `required`: what to say of a required field that is missing; `columns`:
        the row's name of a field that it names otherwise."""
        self._required = dict(required)
        self._model: type[ImageToVideo | TextToVideo] = TextToVideo if text else ImageToVideo
        converter = cattrs.Converter(detailed_validation=True)

        def field_hook(name: str) -> Callable[[Any, Any], Any]:
            read = readers.get(name)
            if read is None:
                return lambda value, _: check_request_field(name, value, text=text)
            return lambda value, _: check_request_field(name, read(value), text=text)

        fields: dict[str, Any] = {
            name: override(struct_hook=field_hook(name), rename=columns.get(name))
            for name in (*(TEXT_REQUEST_FIELDS if text else REQUEST_FIELDS), "extra_body")
        }
        converter.register_structure_hook(
            self._model, make_dict_structure_fn(self._model, converter, _cattrs_forbid_extra_keys=False, **fields)
        )
        self._converter = converter

    def read(self, fields: Mapping[str, Any]) -> ImageToVideo | TextToVideo:
        try:
            request: ImageToVideo | TextToVideo = self._converter.structure(fields, self._model)
        except ClassValidationError as group:
            raise ExceptionGroup("the row's fields", [self._problem(error) for error in group.exceptions]) from None
        except InvalidRequestError as error:  # a rule that joins two fields, checked as the request is built
            raise ExceptionGroup("the row's fields", [error]) from None
        return request

    def _problem(self, error: Exception) -> InvalidRequestError:
        if isinstance(error, InvalidRequestError):
            return error
        # cattrs notes which attribute it was structuring.
        notes = [note for note in getattr(error, "__notes__", ()) if "@ attribute " in note]
        name = notes[0].rpartition("@ attribute ")[2] if notes else "row"
        if isinstance(error, KeyError):  # a required field that is missing
            return InvalidRequestError(name, self._required.get(name, "is required"))
        return InvalidRequestError(name, f"cannot be read ({type(error).__name__}: {error})")


def unstructure(value: object) -> Any:
    """`value` (attrs classes, lists, dicts of them) as JSON values."""
    return cattrs.Converter().unstructure(value)
