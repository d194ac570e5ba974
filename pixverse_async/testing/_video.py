"""A tiny, structurally valid MP4 (ISO BMFF) file, built in code so no binary has to ship.

The file is ``ftyp`` + ``moov`` (``mvhd`` and one video ``trak`` with a complete but empty sample table)
+ ``mdat``. It parses with any ISO BMFF box reader, but it holds no frames, so a player shows nothing.
The ``mdat`` payload starts with the task id, so two tasks never get the same bytes: a client that
saves task A's video under task B's name is caught by comparing with ``Simulator.video_bytes``.
"""

from __future__ import annotations

import struct

__all__ = ["MDAT_PAYLOAD_SIZE", "mp4_for_task"]

#: Size of the ``mdat`` payload, padding included: the whole file is about 2.6 KB for every task.
MDAT_PAYLOAD_SIZE = 2048

_IDENTITY_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_WIDTH, _HEIGHT = 960, 540
_TIMESCALE = 1000


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def _full_box(box_type: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(box_type, bytes([version]) + flags.to_bytes(3, "big") + payload)


def _build_header() -> bytes:
    """Every box before ``mdat``; identical for every task, so built once at import."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, _TIMESCALE, 0)  # creation, modification, timescale, duration
        + struct.pack(">IH", 0x00010000, 0x0100)  # rate 1.0, volume 1.0
        + bytes(10)  # reserved
        + _IDENTITY_MATRIX
        + bytes(24)  # pre_defined
        + struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x3,  # enabled | in movie
        struct.pack(">IIII", 0, 0, 1, 0)  # creation, modification, track_ID, reserved
        + struct.pack(">I", 0)  # duration
        + bytes(8)  # reserved
        + struct.pack(">hhhH", 0, 0, 0, 0)  # layer, alternate_group, volume (video: 0), reserved
        + _IDENTITY_MATRIX
        + struct.pack(">II", _WIDTH << 16, _HEIGHT << 16),  # 16.16 fixed point
    )
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, _TIMESCALE, 0, 0x55C4, 0))  # 'und'
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0) + b"vide" + bytes(12) + b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, bytes(8))  # graphicsmode + opcolor
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1) + _full_box(b"url ", 0, 1, b"")))
    empty_table = struct.pack(">I", 0)
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, empty_table)
        + _full_box(b"stts", 0, 0, empty_table)
        + _full_box(b"stsc", 0, 0, empty_table)
        + _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0))
        + _full_box(b"stco", 0, 0, empty_table),
    )
    minf = _box(b"minf", vmhd + dinf + stbl)
    trak = _box(b"trak", tkhd + _box(b"mdia", mdhd + hdlr + minf))
    moov = _box(b"moov", mvhd + trak)
    return ftyp + moov


_HEADER = _build_header()
_FILLER = bytes(range(256)) * (MDAT_PAYLOAD_SIZE // 256 + 1)


def mp4_for_task(task_id: str) -> bytes:
    """The video file served for ``task_id``: same bytes on every call, different for every task."""
    marker = f"pixverse-async simulator video for task {task_id}\n".encode()[:MDAT_PAYLOAD_SIZE]
    payload = marker + _FILLER[: MDAT_PAYLOAD_SIZE - len(marker)]
    return _HEADER + _box(b"mdat", payload)
