"""Real, small first-frame images for tests, built with the standard library."""

from __future__ import annotations

import struct
import zlib


def png(width: int = 400, height: int = 300, *, pad_to: int | None = None) -> bytes:
    """A valid grey PNG; `pad_to` adds an ancillary chunk before IEND to reach an exact file size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
    )
    if pad_to is not None:
        data += chunk(b"tEXt", b"padding\x00" + b" " * (pad_to - len(data) - 12 - 12 - 8))
    return data + chunk(b"IEND", b"")


def jpeg(width: int = 640, height: int = 480, *, with_exif: bool = True) -> bytes:
    """A JPEG whose headers (APP0, optional APP1, SOF0) carry the given size."""

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    parts = [b"\xff\xd8", segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")]
    if with_exif:
        parts.append(segment(0xE1, b"Exif\x00\x00" + b"\x00" * 200))
    parts.append(segment(0xDB, b"\x00" + bytes(range(64))))
    parts.append(segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"))
    parts.append(b"\xff\xd9")
    return b"".join(parts)
