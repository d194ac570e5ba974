"""The values the library passes around: a request, a submitted task, a poll's result and its videos.

`ImageToVideo` and `TextToVideo` check every rule of the API when they are built, with the same validators
for the fields they share, so a bad request fails here, before anything is sent or paid for.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import attrs

from ._exceptions import InvalidRequestError, PixVerseError
from ._images import ImageFile, ImageInput, check_image_input, image_repr
from ._validation import check_number, submission_token_problem

Resolution = Literal["360p", "540p", "720p", "1080p"]
Style = Literal["anime", "3d_animation", "clay", "comic", "cyberpunk"]
AspectRatio = Literal["16:9", "4:3", "1:1", "3:4", "9:16"]

RESOLUTIONS: tuple[str, ...] = get_args(Resolution)
STYLES: tuple[str, ...] = get_args(Style)
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)
MAX_PROMPT_CHARS = 2048
MAX_SEED = 2_147_483_647


# A prompt is text for people: tab, line feed and carriage return are its only control characters, and it must
# show something (a prompt of spaces, zero-width or other format characters, combining marks with nothing to
# mark, or the letters that draw nothing alone is blank).
_FORBIDDEN_IN_PROMPT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_VISIBLE_ASCII = re.compile(r"[!-~]")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})
# Hangul fillers and the blank Braille pattern: letters (or a symbol) that draw nothing.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _prompt_text_problem(value: str, *, if_blank: str) -> str | None:
    """Why `value` cannot be a prompt's text (control characters, lone surrogates, blank), or None."""
    forbidden = _FORBIDDEN_IN_PROMPT.search(value)
    if forbidden is not None:
        char = forbidden.group()
        what = "a lone surrogate, which is not text" if "\ud800" <= char <= "\udfff" else "a control character"
        return f"holds U+{ord(char):04X} at position {forbidden.start()}: {what} (only tab, CR and LF are allowed)"
    if _VISIBLE_ASCII.search(value) is None and all(
        char.isspace() or char in _BLANK_LETTERS or unicodedata.category(char) in _INVISIBLE_CATEGORIES
        for char in value
    ):
        return f"must not be empty or hold only blank or invisible characters ({if_blank})"
    return None


def _check_prompt(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequestError("prompt", f"must be a str, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError("prompt", f"is {len(value)} characters long; the limit is 1 to 2048")
    problem = _prompt_text_problem(value, if_blank="1 to 2048 characters")
    if problem is not None:
        raise InvalidRequestError("prompt", problem)


def _check_negative_prompt(instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidRequestError("negative_prompt", f"must be a str or None, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError("negative_prompt", f"is {len(value)} characters long; the limit is 2048")
    problem = _prompt_text_problem(value, if_blank="None for no negative prompt")
    if problem is not None:
        raise InvalidRequestError("negative_prompt", problem)


def _check_fast_mode(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequestError("fast_mode", f"must be True or False, not {value!r}")


def _check_resolution(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in RESOLUTIONS:
        raise InvalidRequestError("resolution", f"{value!r} is not one of {', '.join(RESOLUTIONS)}")


def _check_resolution_with_fast_mode(
    instance: ImageToVideo | TextToVideo, attribute: attrs.Attribute[str], value: object
) -> None:
    if value == "1080p" and instance.fast_mode:
        raise InvalidRequestError("resolution", "'1080p' is not available with fast_mode=True (use 360p to 720p)")


def _check_style(instance: object, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and value not in STYLES:
        raise InvalidRequestError("style", f"{value!r} is not one of {', '.join(STYLES)} (or None)")


def _check_aspect_ratio(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in ASPECT_RATIOS:
        raise InvalidRequestError("aspect_ratio", f"{value!r} is not one of {', '.join(ASPECT_RATIOS)}")


def _check_seed(instance: object, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError("seed", f"must be an int from 0 to {MAX_SEED}, not {type(value).__name__}")
    if not 0 <= value <= MAX_SEED:
        raise InvalidRequestError("seed", f"{value} is outside 0 to {MAX_SEED}")


def check_timeout(timeout: object) -> None:
    """A caller's `timeout`: None, or a finite number of seconds >= 0."""
    check_number("timeout", timeout, at_least=0, none_means="no limit")


# The fields `ImageToVideo` and `TextToVideo` send themselves: `extra_body` may not set them (that would bypass
# their checks).
REQUEST_FIELDS = ("prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed")
TEXT_REQUEST_FIELDS = ("prompt", "aspect_ratio", "resolution", "negative_prompt", "fast_mode", "style", "seed")
_MAX_JSON_DEPTH = 64


def _json_copy(value: object, path: str, depth: int = 0) -> Any:
    """A deep copy of `value` made of JSON values only (dict with str keys, list, str, int, finite float,
    bool, None), or an `InvalidRequestError` naming where it is not."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequestError("extra_body", f"{path} is {value!r}; JSON has no NaN or infinity")
        return value
    if depth >= _MAX_JSON_DEPTH:
        raise InvalidRequestError(
            "extra_body", f"{path[:60]}... is nested more than {_MAX_JSON_DEPTH} deep (or contains itself)"
        )
    if isinstance(value, Mapping):
        copy = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise InvalidRequestError("extra_body", f"{path} has a key {name!r}; JSON object keys are str")
            copy[name] = _json_copy(item, f"{path}[{name!r}]", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [_json_copy(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise InvalidRequestError(
        "extra_body",
        f"{path} is of type {type(value).__name__}; only JSON values (dict, list, str, int, float, bool, None)",
    )


def _extra_body(value: object) -> dict[str, Any] | None:
    return _extra_body_of(value, REQUEST_FIELDS, "ImageToVideo")


def _text_extra_body(value: object) -> dict[str, Any] | None:
    return _extra_body_of(value, TEXT_REQUEST_FIELDS, "TextToVideo")


def _extra_body_of(value: object, fields: tuple[str, ...], model: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError("extra_body", f"must be a dict of extra request fields or None, not {value!r}")
    known = [name for name in value if name in fields]
    if known:
        raise InvalidRequestError(
            "extra_body",
            f"{', '.join(map(repr, known))} is a field of {model}: pass it as "
            f"{', '.join(f'{name}=...' for name in known)} so that it is checked",
        )
    copy: dict[str, Any] = _json_copy(value, "extra_body")
    return copy


@attrs.frozen
class ImageToVideo:
    """One image-to-video job. Building it checks every rule of the API and raises `InvalidRequestError`.

    `image` is the first frame: an `http(s)://` URL (sent as is), a `data:image/...;base64,` URI, a
    `pathlib.Path` to a JPEG or PNG file, or the file's bytes. Local images are checked from their content:
    JPEG or PNG, at most 10 MB, both sides >= 300 px, aspect ratio between 1:2.5 and 2.5:1.

    `extra_body` adds fields this library does not know (yet) to the request body, for forward
    compatibility: JSON values only, and none of the documented fields above. An `extra` object there is
    merged with the client's `webhook_url`.
    """

    prompt: str = attrs.field(validator=_check_prompt)
    image: ImageInput = attrs.field(repr=image_repr)
    # attrs runs validators after every field is set, so the 1080p rule can see fast_mode.
    resolution: Resolution = attrs.field(
        default="540p", kw_only=True, validator=[_check_resolution, _check_resolution_with_fast_mode]
    )
    negative_prompt: str | None = attrs.field(default=None, kw_only=True, validator=_check_negative_prompt)
    fast_mode: bool = attrs.field(default=False, kw_only=True, validator=_check_fast_mode)
    style: Style | None = attrs.field(default=None, kw_only=True, validator=_check_style)
    seed: int | None = attrs.field(default=None, kw_only=True, validator=_check_seed)
    # Copied and checked at construction; left out of the hash (a dict is not hashable), not of equality.
    extra_body: dict[str, Any] | None = attrs.field(default=None, kw_only=True, converter=_extra_body, hash=False)

    # What the image file was when the request was built (None for other images): a submission sends the file
    # only if it is still that file (see `ImageFile`).
    _image_file: ImageFile | None = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # The image is checked last, after the cheap field rules, because it may mean reading a file's header.
        object.__setattr__(self, "_image_file", check_image_input(self.image))


@attrs.frozen
class TextToVideo:
    """One text-to-video job (`POST /v3/async/pixverse-v4.5-t2v`): no first frame, an `aspect_ratio` instead
    (16:9 by default; 4:3, 1:1, 3:4 or 9:16). Building it checks every rule of the API, the same way as
    `ImageToVideo` for the fields they share, and raises `InvalidRequestError`. `extra_body` as there."""

    prompt: str = attrs.field(validator=_check_prompt)
    aspect_ratio: AspectRatio = attrs.field(default="16:9", validator=_check_aspect_ratio)
    resolution: Resolution = attrs.field(
        default="540p", kw_only=True, validator=[_check_resolution, _check_resolution_with_fast_mode]
    )
    negative_prompt: str | None = attrs.field(default=None, kw_only=True, validator=_check_negative_prompt)
    fast_mode: bool = attrs.field(default=False, kw_only=True, validator=_check_fast_mode)
    style: Style | None = attrs.field(default=None, kw_only=True, validator=_check_style)
    seed: int | None = attrs.field(default=None, kw_only=True, validator=_check_seed)
    extra_body: dict[str, Any] | None = attrs.field(default=None, kw_only=True, converter=_text_extra_body, hash=False)


#: Any request the client submits.
VideoRequest = ImageToVideo | TextToVideo
REQUEST_TYPES = (ImageToVideo, TextToVideo)


_FIELD_RULES: dict[str, Callable[[object, Any, object], None]] = {
    "prompt": _check_prompt,
    "aspect_ratio": _check_aspect_ratio,
    "resolution": _check_resolution,
    "negative_prompt": _check_negative_prompt,
    "fast_mode": _check_fast_mode,
    "style": _check_style,
    "seed": _check_seed,
}


def check_request_field(name: str, value: object, *, text: bool = False) -> Any:
    """`value` checked by the rule of the field `name` alone (of `TextToVideo` when `text`, else of
    `ImageToVideo`), and returned as the field takes it (`extra_body` copied), or `InvalidRequestError`. Rules
    that join two fields (1080p only without fast_mode) run when the request is built."""
    if name == "extra_body":
        return _text_extra_body(value) if text else _extra_body(value)
    if name == "image":
        check_image_input(value)
    else:
        _FIELD_RULES[name](None, None, value)
    return value


class TaskStatus(enum.Enum):
    """A task's state. `UNKNOWN` stands for any status the API sends that this library does not know."""

    QUEUED = "TASK_STATUS_QUEUED"
    PROCESSING = "TASK_STATUS_PROCESSING"
    SUCCEED = "TASK_STATUS_SUCCEED"
    FAILED = "TASK_STATUS_FAILED"
    UNKNOWN = "TASK_STATUS_UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)

    @classmethod
    def parse(cls, value: object) -> TaskStatus:
        """The status for an API value; `UNKNOWN` for anything else."""
        # A dict lookup, not cls(value): this runs on every poll, and calling the enum costs about three times
        # as much.
        member = cls._value2member_map_.get(value) if isinstance(value, str) else None
        return member if isinstance(member, TaskStatus) else cls.UNKNOWN


@attrs.frozen
class Video:
    """A finished video: a signed `url` valid for `ttl` seconds from when the poll answered."""

    url: str = attrs.field(repr=lambda url: repr(url.split("?", 1)[0] + ("?…" if "?" in url else "")))
    ttl: float | None = None
    type: str = "mp4"
    received_at: datetime | None = attrs.field(default=None, eq=False)

    @property
    def expires_at(self) -> datetime | None:
        """When the link stops working (UTC), or None if the API gave no TTL."""
        if self.ttl is None or self.received_at is None:
            return None
        return self.received_at + timedelta(seconds=self.ttl)


@attrs.frozen
class TaskResult:
    """One answer of the task-result endpoint, parsed leniently (missing fields become None or empty)."""

    task_id: str
    status: TaskStatus
    reason: str = ""
    eta: float | None = None
    progress_percent: float | None = None
    videos: tuple[Video, ...] = ()
    seed: int | None = None
    raw_status: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@attrs.frozen
class Task:
    """A submitted (and paid for) task: keep `task_id` to poll it, even from another process.

    `key` is the key of a keyed job of `as_completed` (see there), None otherwise; passed back to
    `as_completed`, a Task's key comes back on its `JobResult`.
    """

    task_id: str
    request: ImageToVideo | TextToVideo | None = None
    key: Hashable = attrs.field(default=None, kw_only=True)


@attrs.frozen
class UncertainSubmission:
    """A submission whose answer was lost, named by the webhook token its URL carried
    (`SubmissionUncertainError.webhook_token`), as an earlier run (or process) left it.

    Passed to `as_completed()` of a client with webhooks on, it sends nothing: it takes a running-task slot
    and waits for the delivery that names it, as a lost answer does (see `SubmissionUncertainError`); found,
    its task is followed to its end, else it ends `SubmissionUncertainError` again, judged. `key` as on `Task`.

    `delivery_may_have_been_missed`: nobody may have listened at the webhook URL for part of the time since
    the submission was sent (the earlier run was killed, the receiver was down), so its delivery may have come
    and gone: it is still awaited, but a missing one proves nothing, and `likely_created` stays `None`.
    """

    request: ImageToVideo | TextToVideo = attrs.field()
    webhook_token: str = attrs.field()
    key: Hashable = attrs.field(default=None, kw_only=True)
    delivery_may_have_been_missed: bool = attrs.field(default=False, kw_only=True)

    @request.validator
    def _check_request(self, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, ImageToVideo | TextToVideo):
            kind = type(value).__name__
            raise InvalidRequestError("request", f"must be an ImageToVideo or a TextToVideo, not {kind}")

    @webhook_token.validator
    def _check_token(self, attribute: attrs.Attribute[str], value: object) -> None:
        problem = submission_token_problem(value)
        if problem is not None:
            raise InvalidRequestError("webhook_token", problem)

    @delivery_may_have_been_missed.validator
    def _check_missed(self, attribute: attrs.Attribute[bool], value: object) -> None:
        if not isinstance(value, bool):
            raise InvalidRequestError("delivery_may_have_been_missed", f"must be a bool, not {value!r}")


Job = ImageToVideo | TextToVideo | Task | UncertainSubmission | str


@attrs.frozen
class JobResult:
    """How one job of `as_completed` ended. `request` is the very object you passed in (the job of a
    `(key, job)` pair); `key` is that pair's key, or a `Task`'s own `key`, else None."""

    request: Job
    task_id: str | None
    status: TaskStatus | None
    videos: tuple[Video, ...] = ()
    error: PixVerseError | None = None
    result: TaskResult | None = None
    key: Hashable = None

    @property
    def ok(self) -> bool:
        """True when the task succeeded and its videos are here."""
        return self.error is None and self.status is TaskStatus.SUCCEED
