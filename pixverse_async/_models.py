"""The values the library passes around: a request, a submitted task, a poll's result and its videos.

`ImageToVideo` checks every rule of the API when it is built, so a bad request fails here, before anything is
sent or paid for.
"""

from __future__ import annotations

import base64
import binascii
import enum
import errno
import math
import os
import re
import stat
import unicodedata
from collections.abc import Hashable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import attrs

from ._exceptions import InvalidRequestError
from ._images import MAX_IMAGE_BYTES, ImageError, ImageInfo, probe_image
from ._validation import check_number

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
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
# Whitespace and control characters have no place in a URL (a browser would percent-encode them).
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
# Opening a FIFO for reading waits for a writer unless non-blocking; reads of a regular file are unaffected.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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
        if value[:5].lower() == "data:":
            decode_data_uri(value)
            return
        check_image_url(value)
        return
    if isinstance(value, bytes | bytearray):
        inspect_image_bytes(bytes(value), source="bytes")
        return
    if isinstance(value, Path):
        inspect_image_bytes(read_image_file(value), source=str(value))
        return
    raise InvalidRequestError(
        "image", f"must be a URL str, a data URI, a pathlib.Path or bytes, not {type(value).__name__}"
    )


def has_url_scheme(value: str) -> bool:
    """Whether `value` starts like a URL (`scheme:`), not like a path (a Windows drive's `C:\\` is a path)."""
    return _URL_SCHEME.match(value) is not None and _WINDOWS_DRIVE.match(value) is None


def check_image_url(value: str) -> str:
    """An image given as a str that is not a data URI: an http(s) URL, returned with its scheme in lower case
    (`HTTPS://` is https; servers compare the scheme as written). Anything else is named as what it is."""
    shown = repr(value[:80])
    if not has_url_scheme(value):
        raise InvalidRequestError(
            "image",
            f"{shown} is not a URL: a str must be an http(s):// URL or a data:image/...;base64, URI; "
            "for a local file pass pathlib.Path(...), for the image's content pass bytes",
        )
    name = value.partition(":")[0].lower()
    if name not in ("http", "https"):
        raise InvalidRequestError(
            "image",
            f"unsupported URL scheme {name!r} in {shown}: only http:// and https:// URLs, data:image/ URIs, "
            "a pathlib.Path or bytes are accepted",
        )
    if _URL_FORBIDDEN.search(value):
        raise InvalidRequestError("image", f"malformed URL {shown}: it holds whitespace or a control character")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as error:
        raise InvalidRequestError("image", f"malformed URL {shown}: {error}") from None
    if not parts.hostname or not value[len(name) :].startswith("://"):
        raise InvalidRequestError("image", f"malformed URL {shown}: it has no host")
    return lowercase_scheme(value)


def lowercase_scheme(url: str) -> str:
    """`url` with its scheme in lower case; the very same str when it already is (the usual case)."""
    scheme, colon, rest = url.partition(":")
    return url if scheme.islower() else scheme.lower() + colon + rest


def inspect_image_bytes(data: bytes, *, source: str) -> ImageInfo:
    """Check an image's content against the API's rules, as an `InvalidRequestError` naming `source`."""
    try:
        return probe_image(data)
    except ImageError as error:
        raise InvalidRequestError("image", f"{source}: {error}") from None


def read_image_file(path: Path) -> bytes:
    """Read a first frame from disk: only a regular file, and at most the size limit plus one byte of it.

    A device (`/dev/zero` never ends), a FIFO (opening it would wait for a writer), a socket or a directory is
    refused before it is opened; the file is opened without blocking and checked again once open, in case the
    path was swapped in between.
    """
    try:
        status = os.stat(path)
    except (OSError, ValueError) as error:
        raise InvalidRequestError("image", f"{_shown_path(path)}: {_path_problem(error)}") from None
    _check_regular_file(path, status)
    try:
        descriptor = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: {_path_problem(error)}") from None
    try:
        status = os.fstat(descriptor)
        _check_regular_file(path, status)
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            data = file.read(MAX_IMAGE_BYTES + 1)
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequestError(
            "image", f"{path}: file is over {MAX_IMAGE_BYTES} bytes; the API accepts at most 10 MB"
        )
    return data


def _check_regular_file(path: Path, status: os.stat_result) -> None:
    mode = status.st_mode
    if stat.S_ISREG(mode):
        if status.st_size > MAX_IMAGE_BYTES:
            raise InvalidRequestError(
                "image",
                f"{path}: file is {status.st_size} bytes; the API accepts at most {MAX_IMAGE_BYTES} bytes (10 MB)",
            )
        return
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise InvalidRequestError("image", f"{path}: is {kind}, not an image file")


def _shown_path(path: Path) -> str:
    # A path the OS refuses may be unprintable or huge: shown as a short repr.
    text = str(path)
    return repr(text[:120] + "…") if len(text) > 120 else repr(text) if "\x00" in text else text


def _path_problem(error: OSError | ValueError) -> str:
    if isinstance(error, UnicodeError):
        return "the path cannot be encoded as a file name"
    if isinstance(error, ValueError):
        return "the path holds a NUL character, which no file name can"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ENAMETOOLONG:
        return "the path is too long for the file system"
    if error.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    return f"cannot be read ({error.strerror or error})"


def decode_data_uri(uri: str) -> tuple[bytes, ImageInfo]:
    """Decode a `data:image/...;base64,` URI and check the image it carries."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        media_type = uri[5:].split(",", 1)[0].split(";", 1)[0].strip()[:40]
        if media_type and not media_type.lower().startswith("image/"):
            raise InvalidRequestError(
                "image",
                f"a data URI of type {media_type!r} is not an image: only data:image/png;base64,... and "
                "data:image/jpeg;base64,... are accepted",
            )
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
    """A caller's `timeout`: None, or a finite number of seconds >= 0."""
    check_number("timeout", timeout, at_least=0, none_means="no limit")


# The fields `ImageToVideo` sends itself: `extra_body` may not set them (that would bypass their checks).
REQUEST_FIELDS = ("prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed")
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
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError("extra_body", f"must be a dict of extra request fields or None, not {value!r}")
    known = [name for name in value if name in REQUEST_FIELDS]
    if known:
        raise InvalidRequestError(
            "extra_body",
            f"{', '.join(map(repr, known))} is a field of ImageToVideo: pass it as "
            f"{', '.join(f'{name}=...' for name in known)} so that it is checked",
        )
    copy: dict[str, Any] = _json_copy(value, "extra_body")
    return copy


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

    `extra_body` adds fields this library does not know (yet) to the request body, for forward
    compatibility: JSON values only, and none of the documented fields above. An `extra` object there is
    merged with the client's `webhook_url`.
    """

    prompt: str = attrs.field(validator=_check_prompt)
    image: ImageInput = attrs.field(repr=_image_repr)
    # attrs runs validators after every field is set, so the 1080p rule can see fast_mode.
    resolution: Resolution = attrs.field(default="540p", kw_only=True, validator=_check_resolution)
    negative_prompt: str | None = attrs.field(default=None, kw_only=True, validator=_check_negative_prompt)
    fast_mode: bool = attrs.field(default=False, kw_only=True, validator=_check_fast_mode)
    style: Style | None = attrs.field(default=None, kw_only=True, validator=_check_style)
    seed: int | None = attrs.field(default=None, kw_only=True, validator=_check_seed)
    # Copied and checked at construction; left out of the hash (a dict is not hashable), not of equality.
    extra_body: dict[str, Any] | None = attrs.field(default=None, kw_only=True, converter=_extra_body, hash=False)

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
    """A submitted (and paid for) task: keep `task_id` to poll it, even from another process.

    `key` is the key of a keyed job of `as_completed` (see there), None otherwise; passed back to
    `as_completed`, a Task's key comes back on its `JobResult`.
    """

    task_id: str
    request: ImageToVideo | None = None
    key: Hashable = attrs.field(default=None, kw_only=True)
