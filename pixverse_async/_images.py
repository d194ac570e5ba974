"""Reading a first frame's format and size from its bytes, and checking it against the API's rules.

The API rejects an image only after the submission has been sent, so every rule it documents is checked
here first, from the file's content (never its name): JPEG or PNG, at most 10 MiB, both sides >= 300 px,
aspect ratio between 1:2.5 and 2.5:1. The header parsers are strict on purpose: a truncated or corrupt
header is an error, not a guess.
"""

from __future__ import annotations

import struct
from typing import Literal, final

import attrs

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_SIDE_PX = 300

ImageFormat = Literal["jpeg", "png"]

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
