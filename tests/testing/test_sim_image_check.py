"""The simulator's own image reader (`pixverse_async.testing._image_check`), against bytes built here from the
formats: it must read what they allow and refuse what is cut short or out of order."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pixverse_async.testing._image_check import ImageSize, NotAnImage, read_image_size
from tests.images import jpeg, png

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_head(width: int, height: int, *, length: int = 13, kind: bytes = b"IHDR") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return SIGNATURE + struct.pack(">I", length) + kind + ihdr + bytes(4)  # the CRC is not read


def segment(code: int, payload: bytes) -> bytes:
    return bytes([0xFF, code]) + struct.pack(">H", len(payload) + 2) + payload


def frame(code: int, width: int, height: int) -> bytes:
    return segment(code, struct.pack(">BHHB", 8, height, width, 3) + bytes(9))


@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_a_png_size_is_read_from_its_ihdr(width: int, height: int) -> None:
    assert read_image_size(png_head(width, height)) == ImageSize("png", width, height)


def test_a_whole_png_is_read() -> None:
    assert read_image_size(png(640, 360)) == ImageSize("png", 640, 360)


@pytest.mark.parametrize(
    "data",
    [
        png_head(400, 300)[:cut] for cut in range(len(SIGNATURE), len(SIGNATURE) + 16)
    ]  # cut short before the height's last byte
    + [
        png_head(400, 300, length=12),
        png_head(400, 300, kind=b"IDAT"),
        png_head(0, 300),
        png_head(400, 0),
        png_head(2**31, 300),
    ],
)
def test_a_png_cut_short_or_without_ihdr_first_is_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        read_image_size(data)


NOT_FRAME_HEADERS = [0xE0, 0xE1, 0xEE, 0xDB, 0xC4, 0xC8, 0xCC, 0xFE, 0xDD]  # APPn, DQT, DHT, JPG, DAC, COM, DRI
BEFORE_THE_FRAME = st.lists(
    st.one_of(
        st.builds(segment, st.sampled_from(NOT_FRAME_HEADERS), st.binary(max_size=40)),
        st.sampled_from([b"\xff\x01", b"\xff\xd0", b"\xff\xd7"]),  # markers that stand alone
    ),
    max_size=6,
)


@given(
    width=st.integers(1, 65535),
    height=st.integers(1, 65535),
    code=st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]),
    before=BEFORE_THE_FRAME,
    fill=st.integers(0, 3),
)
def test_a_jpeg_size_is_read_from_its_frame_header(
    width: int, height: int, code: int, before: list[bytes], fill: int
) -> None:
    # Fill bytes may come before any marker; DHT (C4), JPG (C8) and DAC (CC) are not frame headers.
    data = b"\xff\xd8" + b"".join(b"\xff" * fill + part for part in before) + frame(code, width, height)
    assert read_image_size(data + b"\xff\xda") == ImageSize("jpeg", width, height)


def test_a_whole_jpeg_is_read() -> None:
    assert read_image_size(jpeg(1280, 720)) == ImageSize("jpeg", 1280, 720)


WHOLE_JPEG = b"\xff\xd8" + segment(0xE0, b"JFIF\x00" + bytes(9)) + frame(0xC0, 400, 300)


@pytest.mark.parametrize(
    "data",
    [WHOLE_JPEG[:cut] for cut in range(2, len(WHOLE_JPEG))]  # cut anywhere before the frame header's end
    + [
        b"\xff\xd8" + b"\xff\xda" + frame(0xC0, 400, 300),  # a scan before the frame header
        b"\xff\xd8" + b"\xff\xd9" + frame(0xC0, 400, 300),  # the end before it
        b"\xff\xd8" + frame(0xC0, 400, 0),  # lines to come in a DNL segment
        b"\xff\xd8" + frame(0xC0, 0, 300),
        b"\xff\xd8" + b"\xff\xe0\x00\x01" + frame(0xC0, 400, 300),  # a length that does not count itself
        b"\xff\xd8" + b"\x00" + frame(0xC0, 400, 300),  # no marker where a segment should start
        b"\xff\xd8" + segment(0xC0, b"\x08\x01"),  # a frame header too short for a size
    ],
)
def test_a_jpeg_cut_short_or_out_of_order_is_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        read_image_size(data)


@pytest.mark.parametrize("data", [b"", b"GIF89a" + bytes(100), b"\x89PNG", b"\xff", b"BM" + bytes(60)])
def test_what_is_neither_png_nor_jpeg_is_refused(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        read_image_size(data)
