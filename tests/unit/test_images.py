"""The header parsers read a file through small reads at offsets, and bytes in memory by slicing: both ways
give the same verdict on any content (the file's reader is the one a request built from a Path uses)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pixverse_async import InvalidRequestError
from pixverse_async._images import ImageError, probe_image, probe_image_file
from tests.images import jpeg, png

markers = st.sampled_from([0xC0, 0xC2, 0xC4, 0xD0, 0xD8, 0xD9, 0xDA, 0xDB, 0xE0, 0xE1, 0xFE, 0x01, 0xFF])


@st.composite
def jpeg_like(draw: st.DrawFn) -> bytes:
    """Starts like a JPEG; then segments of any marker and length (fill bytes, lengths that lie), maybe cut."""
    parts = [b"\xff\xd8"]
    for _ in range(draw(st.integers(0, 8))):
        parts.append(b"\xff" * draw(st.integers(0, 3)) + bytes([draw(markers)]))
        payload = draw(st.binary(max_size=12))
        length = draw(st.one_of(st.just(len(payload) + 2), st.integers(0, 0xFFFF)))
        parts.append(struct.pack(">H", length) + payload)
    data = b"".join(parts)
    return data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


def verdict_of_bytes(data: bytes) -> object:
    try:
        return probe_image(data)
    except ImageError as error:
        return str(error)


def verdict_of_file(data: bytes) -> object:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "frame"
        path.write_bytes(data)
        try:
            return probe_image_file(path).info
        except InvalidRequestError as error:
            return str(error).removeprefix(f"image: {path}: ")


@settings(max_examples=300)
@given(jpeg_like() | st.binary(max_size=64) | st.sampled_from([png(), jpeg(), png(300, 800), jpeg(299, 400)]))
def test_a_file_and_its_bytes_get_the_same_verdict(data: bytes) -> None:
    assert verdict_of_file(data) == verdict_of_bytes(data)
