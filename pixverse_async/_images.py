"""Image inputs: every form a first frame may take (an http(s) URL, a data URI, bytes, a file), checked against
the API's rules, and the request body's `image` value made from it.

The API rejects an image only after the submission has been sent, so every rule it documents is checked
here first, from the content (never a file's name): JPEG or PNG, at most 10 MiB, both sides >= 300 px,
aspect ratio between 1:2.5 and 2.5:1. The header parsers are strict on purpose: a truncated or corrupt
header is an error, not a guess.

A file is checked from its size and header when its request is built (a few small reads, in whatever
coroutine builds it), checked again at submission (`recheck_file`), and streamed into the request body
chunk by chunk (`_upload`) only while it is still the file that was checked (`ImageFile`).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
import struct
from collections.abc import Callable
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


# Reads `count` bytes at `offset` (fewer at the end): the header parsers see bytes in memory and open files
# alike, so that a file's header is read without reading the file.
_ReadAt = Callable[[int, int], bytes]


def probe_image(data: bytes) -> ImageInfo:
    """Read the format and pixel size of `data` and check every rule of the API; raise `ImageError` if not met."""
    return _probe(lambda offset, count: data[offset : offset + count], len(data))


def _probe(read: _ReadAt, size: int) -> ImageInfo:
    if size > MAX_IMAGE_BYTES:
        raise ImageError(
            f"image is {size} bytes; the API accepts at most {MAX_IMAGE_BYTES} bytes (10 MB)",
            "IMAGE_FILE_EXCEEDS_MAX_SIZE",
        )
    signature = read(0, len(_PNG_SIGNATURE))
    if signature == _PNG_SIGNATURE:
        width, height = _png_size(read(0, 33))
        image_format: ImageFormat = "png"
    elif signature.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(read, size)
        image_format = "jpeg"
    else:
        raise ImageError("image is neither JPEG nor PNG (judged from its content)", "INVALID_IMAGE_FORMAT")
    check_complete(read, size, image_format)
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
    return ImageInfo(format=image_format, width=width, height=height, size=size)


def _png_size(head: bytes) -> tuple[int, int]:
    # The IHDR chunk must come first: length (13), type, then width and height as big-endian uint32.
    if len(head) < 33 or head[12:16] != b"IHDR" or struct.unpack(">I", head[8:12])[0] != 13:
        raise ImageError("PNG header is truncated or corrupt (no IHDR chunk)", "INVALID_IMAGE_FORMAT")
    width, height = struct.unpack(">II", head[16:24])
    if width == 0 or height == 0:
        raise ImageError("PNG header is corrupt (zero width or height)", "INVALID_IMAGE_FORMAT")
    return int(width), int(height)


def _jpeg_size(read: _ReadAt, size: int) -> tuple[int, int]:
    # Walks the segments up to the frame header, skipping each segment's body unread.
    position = 2
    while True:
        # Segments may be preceded by any number of 0xFF fill bytes.
        while position < size and read(position, 1) == b"\xff":
            position += 1
        if position >= size or read(position - 1, 1) != b"\xff":
            break
        marker_byte = read(position, 1)
        if not marker_byte:  # a file cut short while it was read
            break
        marker = marker_byte[0]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header
            break
        length_field = read(position, 2)
        if len(length_field) < 2:
            break
        (segment_length,) = struct.unpack(">H", length_field)
        if segment_length < 2:
            break
        if marker in _JPEG_SOF_MARKERS:
            dimensions = read(position + 3, 4) if segment_length >= 7 else b""
            if len(dimensions) < 4:
                break
            height, width = struct.unpack(">HH", dimensions)
            if width == 0 or height == 0:
                raise ImageError("JPEG header is corrupt (zero width or height)", "INVALID_IMAGE_FORMAT")
            return int(width), int(height)
        position += segment_length
    raise ImageError("JPEG header is truncated or corrupt (no frame header found)", "INVALID_IMAGE_FORMAT")


# How an image must end: PNG's IEND chunk (length 0, type, CRC), JPEG's end-of-image marker.
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# After its end an image may carry padding (NULs, 0xFF fill, whitespace), as some encoders and tools write,
# within the last 4 KiB, all read at once: a file cut short ends with no end marker in it.
_TAIL_BYTES = 4096
_PADDING = b"\x00\xff \t\r\n"


def check_complete(read: _ReadAt, size: int, image_format: ImageFormat) -> None:
    """Raise `ImageError` unless the image ends as its format says: a PNG has image data (an IDAT chunk,
    found by walking the chunk headers from IHDR) and ends with IEND; a JPEG ends with EOI. Either may be
    followed by a little padding. A few small reads and one of the tail: for bytes, files and streams."""
    tail_start = max(0, size - _TAIL_BYTES)
    tail = read(tail_start, size - tail_start).rstrip(_PADDING)
    if image_format == "png":
        _check_png_has_data(read, size)
        if not tail.endswith(_PNG_IEND):
            raise ImageError("PNG is truncated or corrupt (it does not end with an IEND chunk)", "INVALID_IMAGE_FORMAT")
    elif not tail.endswith(_JPEG_EOI):
        raise ImageError(
            "JPEG is truncated, or has data after its end (it does not end with an EOI marker)",
            "INVALID_IMAGE_FORMAT",
        )


def _check_png_has_data(read: _ReadAt, size: int) -> None:
    position = len(_PNG_SIGNATURE)
    while position + 8 <= size:
        header = read(position, 8)
        if len(header) < 8:
            break
        (length,) = struct.unpack(">I", header[:4])
        kind = header[4:8]
        if kind == b"IDAT" and length > 0:
            return
        if kind == b"IEND":
            break
        position += 12 + length  # length, type, data, CRC
    raise ImageError("PNG has no image data (no IDAT chunk)", "INVALID_IMAGE_FORMAT")


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


def check_image_input(value: object) -> ImageFile | None:
    """Check a request's `image` as it is built; for a `Path`, from the file's header and size alone, and
    return what the file was then (see `ImageFile`). Raise `InvalidRequestError` naming what is wrong."""
    if isinstance(value, str):
        if value[:5].lower() == "data:":
            decode_data_uri(value)
            return None
        check_image_url(value)
        return None
    if isinstance(value, bytes | bytearray):
        inspect_image_bytes(bytes(value), source="bytes")
        return None
    if isinstance(value, Path):
        return probe_image_file(value)
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


@attrs.frozen
class ImageFile:
    """A first frame on disk as it was when its request was built: what its header says, and what identifies
    its content without reading it (device, inode, size, modification time), to notice a change before the
    submission sends it."""

    info: ImageInfo
    device: int
    inode: int
    size: int
    modified_ns: int

    @classmethod
    def of(cls, info: ImageInfo, status: os.stat_result) -> ImageFile:
        return cls(info, status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def describes(self, status: os.stat_result) -> bool:
        return (self.device, self.inode, self.size, self.modified_ns) == (
            status.st_dev,
            status.st_ino,
            status.st_size,
            status.st_mtime_ns,
        )


def probe_image_file(path: Path) -> ImageFile:
    """Check a first frame on disk from its size and its header alone (the JPEG segments before the frame
    header are skipped unread): a few small reads, however big the file."""
    descriptor, status = _open_regular_file(path, built=None)
    try:
        info = _probe(_HeaderReader(descriptor).read, status.st_size)
    except ImageError as error:
        raise InvalidRequestError("image", f"{path}: {error}") from None
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)
    return ImageFile.of(info, status)


@final
class _HeaderReader:
    """Small reads at offsets of an open file, a few bytes ahead each (enough for a JPEG segment's marker and
    length): unbuffered, so that skipping a segment reads none of it."""

    _AHEAD = 16

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor
        self._start = 0
        self._block = b""

    def read(self, offset: int, count: int) -> bytes:
        start = offset - self._start
        if start < 0 or start + count > len(self._block):
            os.lseek(self._descriptor, offset, os.SEEK_SET)
            self._start, self._block, start = offset, os.read(self._descriptor, max(count, self._AHEAD)), 0
        return self._block[start : start + count]


def recheck_file(path: Path, built: ImageFile | None) -> ImageFile:
    """A first frame on disk at submission, before anything is sent: refused (`InvalidRequestError`) if it was
    removed, replaced, written to or touched since `built` (the file when its request was built) was taken,
    or if its header now says otherwise. A few small reads, in a worker thread; the body then streams it."""
    descriptor, status = _open_regular_file(path, built=built)
    try:
        info = _probe(_HeaderReader(descriptor).read, status.st_size)
    except ImageError as error:
        since = "the file changed since the request was built, and now: " if built is not None else ""
        raise InvalidRequestError("image", f"{path}: {since}{error}") from None
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: cannot be read ({error.strerror or error})") from None
    finally:
        os.close(descriptor)
    now = ImageFile.of(info, status)
    if built is not None and (not built.describes(status) or info != built.info):
        raise InvalidRequestError("image", f"{path}: {FILE_CHANGED}")
    return now


#: Why a file is refused when it is not what its request was built from (before sending, or while sent).
FILE_CHANGED = (
    "the file changed since the request was built (its size, modification time, inode or header differ);"
    " build the ImageToVideo again to send what the file holds now"
)


def open_image_file(path: Path, built: ImageFile) -> int:
    """A descriptor of `path` to stream it from, if it is still the file `built` describes; else
    `InvalidRequestError`."""
    descriptor, status = _open_regular_file(path, built=built)
    if not built.describes(status):
        os.close(descriptor)
        raise InvalidRequestError("image", f"{path}: {FILE_CHANGED}")
    return descriptor


def _open_regular_file(path: Path, *, built: ImageFile | None) -> tuple[int, os.stat_result]:
    """Open `path` for reading if it is a regular file within the size limit; return its descriptor and status.

    A device (`/dev/zero` never ends), a FIFO (opening it would wait for a writer), a socket or a directory is
    refused before it is opened; the file is opened without blocking and checked again once open, in case the
    path was swapped in between.
    """
    try:
        status = os.stat(path)
    except (OSError, ValueError) as error:
        if built is not None and isinstance(error, FileNotFoundError):
            raise InvalidRequestError(
                "image", f"{_shown_path(path)}: no such file: it was removed since the request was built"
            ) from None
        raise InvalidRequestError("image", f"{_shown_path(path)}: {_path_problem(error)}") from None
    _check_regular_file(path, status)
    try:
        descriptor = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as error:
        raise InvalidRequestError("image", f"{path}: {_path_problem(error)}") from None
    try:
        status = os.fstat(descriptor)
        _check_regular_file(path, status)
    except BaseException as error:
        os.close(descriptor)
        if isinstance(error, OSError):
            raise InvalidRequestError("image", f"{path}: cannot be read ({error.strerror or error})") from None
        raise
    return descriptor, status


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


def image_repr(value: ImageInput) -> str:
    # A request's repr shows up in logs and errors: never dump megabytes of image data into them.
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and value[:5].lower() == "data:":
        return f"<data URI, {len(value)} chars>"
    return repr(value)
