"""Reading a first frame's format and size from its bytes, and checking it against the API's rules.

The API rejects an image only after the submission has been sent, so every rule it documents is checked
here first, from the file's content (never its name): JPEG or PNG, at most 10 MiB, both sides >= 300 px,
aspect ratio between 1:2.5 and 2.5:1. The header parsers are strict on purpose: a truncated or corrupt
header is an error, not a guess.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
import struct
from pathlib import Path
from typing import Literal, final
from urllib.parse import urlsplit

import attrs

from ._exceptions import InvalidRequestError

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE_PX = 300

ImageFormat = Literal["jpeg", "png"]
ImageInput = str | bytes | Path

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}


@final
class ImageError(ValueError):
    """An image the API would refuse; `api_reason` is the error reason the API itself would answer."""

    def __init__(self, message: str, api_reason: str) -> None:
        super().__init__(message)
        self.api_reason = api_reason


@attrs.frozen
class ImageInfo:
    format: ImageFormat
    width: int
    height: int
    size: int

    @property
    def mime_type(self) -> str:
        return f"image/{self.format}"


def probe_image(data: bytes) -> ImageInfo:
    """Read the format and pixel size of `data` and check every rule of the API; raise `ImageError` if not met."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(
            f"image is {len(data)} bytes; the API accepts at most {MAX_IMAGE_BYTES} bytes (10 MB)",
            "IMAGE_FILE_EXCEEDS_MAX_SIZE",
        )
    if data.startswith(_PNG_SIGNATURE):
        width, height = _png_size(data)
        image_format: ImageFormat = "png"
    elif data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(data)
        image_format = "jpeg"
    else:
        raise ImageError("image is neither JPEG nor PNG (judged from its content)", "INVALID_IMAGE_FORMAT")
    if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
        raise ImageError(
            f"image is {width}x{height} px; both sides must be at least {MIN_SIDE_PX} px",
            "INVALID_IMAGE_SIZE",
        )
    # Compare by cross-multiplying so that exactly 2.5:1 passes without float rounding.
    if 2 * max(width, height) > 5 * min(width, height):
        raise ImageError(
            f"image is {width}x{height} px; its aspect ratio must be between 1:2.5 and 2.5:1",
            "IMAGE_EXCEEDS_MAX_RESOLUTION",
        )
    return ImageInfo(format=image_format, width=width, height=height, size=len(data))


def _png_size(data: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length (13), type, then width and height as big-endian uint32.
    if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise ImageError("PNG header is truncated or corrupt (no IHDR chunk)", "INVALID_IMAGE_FORMAT")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ImageError("PNG header is corrupt (zero width or height)", "INVALID_IMAGE_FORMAT")
    return int(width), int(height)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while True:
        # Segments may be preceded by any number of 0xFF fill bytes.
        while position < len(data) and data[position] == 0xFF:
            position += 1
        if position >= len(data) or data[position - 1] != 0xFF:
            break
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            break
        if position + 2 > len(data):
            break
        (segment_length,) = struct.unpack(">H", data[position : position + 2])
        if segment_length < 2:
            break
        if marker in _JPEG_SOF_MARKERS:
            if segment_length < 7 or position + 7 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            if width == 0 or height == 0:
                raise ImageError("JPEG header is corrupt (zero width or height)", "INVALID_IMAGE_FORMAT")
            return int(width), int(height)
        position += segment_length
    raise ImageError("JPEG header is truncated or corrupt (no frame header found)", "INVALID_IMAGE_FORMAT")


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


def encode_image(image: bytes | str, *, as_data_uri: bool) -> str:
    """The `image` field for local image bytes or a data URI, as raw base64 or as a data URI."""
    if isinstance(image, str):
        if not as_data_uri:
            data, _ = decode_data_uri(image)
            return base64.b64encode(data).decode("ascii")
        return image
    info = inspect_image_bytes(image, source="image")
    encoded = base64.b64encode(image).decode("ascii")
    return f"data:{info.mime_type};base64,{encoded}" if as_data_uri else encoded


def _image_repr(value: ImageInput) -> str:
    # A request's repr shows up in logs and errors: never dump megabytes of image data into them.
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and value[:5].lower() == "data:":
        return f"<data URI, {len(value)} chars>"
    return repr(value)
