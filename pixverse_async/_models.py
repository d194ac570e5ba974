"""The values the library passes around: a request, a submitted task, a poll's result and its videos.

`ImageToVideo` checks every rule of the API when it is built, so a bad request fails here, before anything is
sent or paid for.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import attrs

from ._exceptions import InvalidRequestError
from ._images import MAX_IMAGE_BYTES, ImageError, ImageInfo, probe_image

Resolution = Literal["360p", "540p", "720p", "1080p"]
Style = Literal["anime", "3d_animation", "clay", "comic", "cyberpunk"]
ImageInput = str | bytes | Path

RESOLUTIONS: tuple[str, ...] = get_args(Resolution)
STYLES: tuple[str, ...] = get_args(Style)
MAX_PROMPT_CHARS = 2048
MAX_SEED = 2_147_483_647

_DATA_URI = re.compile(r"data:image/(?P<subtype>[a-z]+);base64,(?P<payload>.*)", re.DOTALL | re.IGNORECASE)
# What a data URI may declare, for the formats the API takes.
_DATA_URI_SUBTYPES = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg"}


# A prompt is text for people: tab, line feed and carriage return are its only control characters, and it must
# show something (a prompt of spaces, zero-width or other format characters alone is blank).
_FORBIDDEN_IN_PROMPT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_VISIBLE_ASCII = re.compile(r"[!-~]")
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _prompt_text_problem(value: str, *, if_blank: str) -> str | None:
    """Why `value` cannot be a prompt's text (control characters, lone surrogates, blank), or None."""
    forbidden = _FORBIDDEN_IN_PROMPT.search(value)
    if forbidden is not None:
        char = forbidden.group()
        what = "a lone surrogate, which is not text" if "\ud800" <= char <= "\udfff" else "a control character"
        return f"holds U+{ord(char):04X} at position {forbidden.start()}: {what} (only tab, CR and LF are allowed)"
    if _VISIBLE_ASCII.search(value) is None and all(
        char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in value
    ):
        return f"must not be empty or hold only blank or invisible characters ({if_blank})"
    return None


def _check_prompt(instance: ImageToVideo, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequestError("prompt", f"must be a str, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError("prompt", f"is {len(value)} characters long; the limit is 1 to 2048")
    problem = _prompt_text_problem(value, if_blank="1 to 2048 characters")
    if problem is not None:
        raise InvalidRequestError("prompt", problem)


def _check_negative_prompt(instance: ImageToVideo, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidRequestError("negative_prompt", f"must be a str or None, not {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequestError("negative_prompt", f"is {len(value)} characters long; the limit is 2048")
    problem = _prompt_text_problem(value, if_blank="None for no negative prompt")
    if problem is not None:
        raise InvalidRequestError("negative_prompt", problem)


def _check_fast_mode(instance: ImageToVideo, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequestError("fast_mode", f"must be True or False, not {value!r}")


def _check_resolution(instance: ImageToVideo, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in RESOLUTIONS:
        raise InvalidRequestError("resolution", f"{value!r} is not one of {', '.join(RESOLUTIONS)}")
    if value == "1080p" and instance.fast_mode:
        raise InvalidRequestError("resolution", "'1080p' is not available with fast_mode=True (use 360p to 720p)")


def _check_style(instance: ImageToVideo, attribute: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and value not in STYLES:
        raise InvalidRequestError("style", f"{value!r} is not one of {', '.join(STYLES)} (or None)")


def _check_seed(instance: ImageToVideo, attribute: attrs.Attribute[int | None], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError("seed", f"must be an int from 0 to {MAX_SEED}, not {type(value).__name__}")
    if not 0 <= value <= MAX_SEED:
        raise InvalidRequestError("seed", f"{value} is outside 0 to {MAX_SEED}")


def _check_image(value: object) -> None:
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            if not urlsplit(value).hostname:
                raise InvalidRequestError("image", f"URL {value[:80]!r} has no host")
            return
        if value[:5].lower() == "data:":
            decode_data_uri(value)
            return
        raise InvalidRequestError(
            "image",
            "a str must be an http(s):// URL or a data:image/...;base64, URI; "
            "for a local file pass pathlib.Path(...), for the image's content pass bytes",
        )
    if isinstance(value, bytes | bytearray):
        inspect_image_bytes(bytes(value), source="bytes")
        return
    if isinstance(value, Path):
        inspect_image_bytes(read_image_file(value), source=str(value))
        return
    raise InvalidRequestError(
        "image", f"must be a URL str, a data URI, a pathlib.Path or bytes, not {type(value).__name__}"
    )


def inspect_image_bytes(data: bytes, *, source: str) -> ImageInfo:
    """Check an image's content against the API's rules, as an `InvalidRequestError` naming `source`."""
    try:
        return probe_image(data)
    except ImageError as error:
        raise InvalidRequestError("image", f"{source}: {error}") from None


def read_image_file(path: Path) -> bytes:
    """Read a first frame from disk, refusing (before reading) anything larger than the API accepts."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidRequestError(
                "image", f"{path}: file is {size} bytes; the API accepts at most {MAX_IMAGE_BYTES} bytes (10 MB)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequestError("image", f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidRequestError("image", f"{path}: is a directory, not an image file") from None
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: cannot be read ({error.strerror or error})") from None


def decode_data_uri(uri: str) -> tuple[bytes, ImageInfo]:
    """Decode a `data:image/...;base64,` URI and check the image it carries."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        raise InvalidRequestError("image", "a data URI must look like data:image/png;base64,<base64>")
    declared = _DATA_URI_SUBTYPES.get(match["subtype"].lower())
    if declared is None:
        raise InvalidRequestError(
            "image", f"data URI declares image/{match['subtype']}; only PNG and JPEG are accepted"
        )
    try:
        data = base64.b64decode(match["payload"], validate=True)
    except binascii.Error:
        raise InvalidRequestError("image", "the data URI's payload is not valid base64") from None
    info = inspect_image_bytes(data, source="data URI")
    if info.format != declared:
        raise InvalidRequestError(
            "image", f"data URI declares image/{match['subtype']} but carries a {info.format.upper()}"
        )
    return data, info


def check_timeout(timeout: object) -> None:
    """A caller's `timeout`: None, or a number of seconds >= 0."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise InvalidRequestError("timeout", f"must be a number of seconds >= 0 or None, not {timeout!r}")


def _image_repr(value: ImageInput) -> str:
    # A request's repr shows up in logs and errors: never dump megabytes of image data into them.
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and value[:5].lower() == "data:":
        return f"<data URI, {len(value)} chars>"
    return repr(value)


@attrs.frozen
class ImageToVideo:
    """One image-to-video job. Building it checks every rule of the API and raises `InvalidRequestError`.

    `image` is the first frame: an `http(s)://` URL (sent as is), a `data:image/...;base64,` URI, a
    `pathlib.Path` to a JPEG or PNG file, or the file's bytes. Local images are checked from their content:
    JPEG or PNG, at most 10 MB, both sides >= 300 px, aspect ratio between 1:2.5 and 2.5:1.
    """

    prompt: str = attrs.field(validator=_check_prompt)
    image: ImageInput = attrs.field(repr=_image_repr)
    # attrs runs validators after every field is set, so the 1080p rule can see fast_mode.
    resolution: Resolution = attrs.field(default="540p", kw_only=True, validator=_check_resolution)
    negative_prompt: str | None = attrs.field(default=None, kw_only=True, validator=_check_negative_prompt)
    fast_mode: bool = attrs.field(default=False, kw_only=True, validator=_check_fast_mode)
    style: Style | None = attrs.field(default=None, kw_only=True, validator=_check_style)
    seed: int | None = attrs.field(default=None, kw_only=True, validator=_check_seed)

    def __attrs_post_init__(self) -> None:
        # The image is checked last, after the cheap field rules, because it may mean reading a file.
        _check_image(self.image)


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
    """A submitted (and paid for) task: keep `task_id` to poll it, even from another process."""

    task_id: str
    request: ImageToVideo | None = None
