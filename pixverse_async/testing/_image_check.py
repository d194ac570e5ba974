"""The simulator's own reading of a first frame: its format and pixel size, from the PNG and JPEG formats.

Written apart from the client's checker (`pixverse_async._images`) on purpose: the simulator judges what the
client sends, so a bug in the client's reading of images shows as a refusal here instead of being shared.
It reads only what the API's rules need, from the formats' specifications:

- PNG (ISO/IEC 15948, 5.2-5.3, 11.2.2): the 8-byte signature, then the IHDR chunk, which must come first: its
  length (4 bytes, big-endian: 13), its type `IHDR`, then width and height (4 bytes each, 1 to 2**31 - 1).
- JPEG (ITU-T T.81, B.1): SOI (`FF D8`), then marker segments. A marker is `FF` (after any number of `FF`
  fill bytes) and a code; RSTn (`D0`-`D7`) and TEM (`01`) stand alone, every other marker is followed by a
  2-byte big-endian length that counts itself. The frame header is a SOFn segment (codes `C0`-`CF` but `C4`
  DHT, `C8` JPG and `CC` DAC): sample precision (1 byte), number of lines (2), samples per line (2). A scan
  (SOS, `DA`) or the end (EOI, `D9`) before any frame header, a length that runs past the data, or a size of
  0 (lines given later by a DNL segment: not taken) is not a usable image.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI: Final = b"\xff\xd8"
_JPEG_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_FRAME_HEADERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


class NotAnImage(ValueError):
    """The bytes are no PNG or JPEG whose size can be read."""


@attrs.frozen
class ImageSize:
    format: Literal["png", "jpeg"]
    width: int
    height: int


def read_image_size(data: bytes) -> ImageSize:
    """The format and pixel size of a PNG or JPEG; `NotAnImage` for anything else, or one cut short."""
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith(_JPEG_SOI):
        return _jpeg(data)
    raise NotAnImage("neither a PNG nor a JPEG signature")


def _png(data: bytes) -> ImageSize:
    ihdr = data[len(PNG_SIGNATURE) : len(PNG_SIGNATURE) + 16]
    if len(ihdr) < 16 or int.from_bytes(ihdr[0:4], "big") != 13 or ihdr[4:8] != b"IHDR":
        raise NotAnImage("PNG without an IHDR chunk first")
    width, height = int.from_bytes(ihdr[8:12], "big"), int.from_bytes(ihdr[12:16], "big")
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise NotAnImage(f"PNG of {width}x{height}: sides must be 1 to 2**31 - 1")
    return ImageSize("png", width, height)


def _jpeg(data: bytes) -> ImageSize:
    at = len(_JPEG_SOI)
    while True:
        if at >= len(data) or data[at] != 0xFF:
            raise NotAnImage("JPEG whose segments end, or break off, before a frame header")
        while at < len(data) and data[at] == 0xFF:
            at += 1
        if at >= len(data):
            raise NotAnImage("JPEG cut short in a marker")
        code = data[at]
        at += 1
        if code in _JPEG_STANDALONE:
            continue
        if code in (_JPEG_SOS, _JPEG_EOI):
            raise NotAnImage("JPEG with a scan, or its end, before any frame header")
        if at + 2 > len(data):
            raise NotAnImage("JPEG cut short in a segment's length")
        length = int.from_bytes(data[at : at + 2], "big")
        if length < 2 or at + length > len(data):
            raise NotAnImage("JPEG segment whose length runs past the data")
        if code in _JPEG_FRAME_HEADERS:
            if length < 7:
                raise NotAnImage("JPEG frame header too short for its size")
            height, width = int.from_bytes(data[at + 3 : at + 5], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
            if width == 0 or height == 0:
                raise NotAnImage(f"JPEG frame of {width}x{height} (a height given later by DNL is not taken)")
            return ImageSize("jpeg", width, height)
        at += length
