"""A tiny real MP4 (ISO BMFF) file with one H.264 frame, built in code so no binary has to ship.

The file is `ftyp` + `moov` (`mvhd` and one video `trak` whose sample table lists one sample, an `avc1`
sample entry with its `avcC` parameter sets) + `mdat` holding that sample: one second of a 64x36 picture,
a single IDR frame of Constrained Baseline H.264 whose macroblocks are all I_PCM (raw samples, so no
encoder is needed). Players and decoders (FFmpeg, browsers) show it: a flat colour drawn from the task id.
Before the frame, the sample carries an SEI message (user data, which decoders ignore) with the task id in
clear, so two tasks never get the same bytes: a client that saves task A's video under task B's name is
caught by comparing with `Simulator.video_bytes`. The whole file is about 5.4 KB.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

__all__ = ["FRAME_HEIGHT", "FRAME_WIDTH", "mp4_for_task"]

#: The picture's size in pixels (coded as 4 x 3 macroblocks, the bottom 12 rows cropped away).
FRAME_WIDTH: Final = 64
FRAME_HEIGHT: Final = 36

_MB_COLUMNS, _MB_ROWS = 4, 3
_CROP_BOTTOM: Final = (_MB_ROWS * 16 - FRAME_HEIGHT) // 2  # in crop units: 2 rows for 4:2:0 frames
_TIMESCALE: Final = 1000
_DURATION: Final = 1000  # one second, the single frame's
_IDENTITY_MATRIX: Final = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
# Constrained Baseline (profile 66 with constraint_set0 and constraint_set1), level 1.0.
_PROFILE, _CONSTRAINTS, _LEVEL = 66, 0xC0, 10
# The SEI user-data UUID that marks this library's payload (any fixed 16 bytes do).
_SEI_UUID: Final = bytes.fromhex("7069787665727365a5796e63a5736d31")


class _Bits:
    """An H.264 RBSP written bit by bit: fixed-width fields and Exp-Golomb codes."""

    def __init__(self) -> None:
        self._bits: list[int] = []

    def u(self, width: int, value: int) -> None:
        self._bits.extend((value >> shift) & 1 for shift in range(width - 1, -1, -1))

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)  # bit_length - 1 leading zeros, then the code

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align_with_zeros(self) -> None:
        self._bits.extend([0] * (-len(self._bits) % 8))

    def aligned_bytes(self) -> bytes:
        """The bits written so far, a whole number of bytes."""
        bits = self._bits
        assert len(bits) % 8 == 0
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))

    def trailing(self) -> bytes:
        """End the RBSP (a stop bit, then zeros to the byte) and return its bytes."""
        self._bits.append(1)
        self.align_with_zeros()
        return self.aligned_bytes()


def _nal(nal_ref_idc: int, nal_unit_type: int, rbsp: bytes) -> bytes:
    """A NAL unit: its header byte, then the RBSP with emulation prevention (no 00 00 0x inside, x <= 3)."""
    if b"\x00\x00" not in rbsp:  # the common case, kept cheap: nothing to escape
        return bytes([nal_ref_idc << 5 | nal_unit_type]) + rbsp
    escaped = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes([nal_ref_idc << 5 | nal_unit_type]) + bytes(escaped)


def _sequence_parameter_set() -> bytes:
    bits = _Bits()
    bits.u(8, _PROFILE)
    bits.u(8, _CONSTRAINTS)
    bits.u(8, _LEVEL)
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(0)  # log2_max_frame_num_minus4
    bits.ue(2)  # pic_order_cnt_type 2: output order is decoding order, nothing to signal
    bits.ue(1)  # max_num_ref_frames
    bits.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    bits.ue(_MB_COLUMNS - 1)  # pic_width_in_mbs_minus1
    bits.ue(_MB_ROWS - 1)  # pic_height_in_map_units_minus1
    bits.u(1, 1)  # frame_mbs_only_flag
    bits.u(1, 1)  # direct_8x8_inference_flag
    bits.u(1, 1)  # frame_cropping_flag
    for offset in (0, 0, 0, _CROP_BOTTOM):  # left, right, top, bottom
        bits.ue(offset)
    bits.u(1, 0)  # vui_parameters_present_flag
    return _nal(3, 7, bits.trailing())


def _picture_parameter_set() -> bytes:
    bits = _Bits()
    bits.ue(0)  # pic_parameter_set_id
    bits.ue(0)  # seq_parameter_set_id
    bits.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    bits.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    bits.ue(0)  # num_slice_groups_minus1
    bits.ue(0)  # num_ref_idx_l0_default_active_minus1
    bits.ue(0)  # num_ref_idx_l1_default_active_minus1
    bits.u(1, 0)  # weighted_pred_flag
    bits.u(2, 0)  # weighted_bipred_idc
    bits.se(0)  # pic_init_qp_minus26
    bits.se(0)  # pic_init_qs_minus26
    bits.se(0)  # chroma_qp_index_offset
    bits.u(1, 1)  # deblocking_filter_control_present_flag: the slice turns the filter off
    bits.u(1, 0)  # constrained_intra_pred_flag
    bits.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(3, 8, bits.trailing())


def _pcm_macroblock_start() -> bytes:
    """mb_type I_PCM and the alignment after it, for a macroblock that starts on a byte boundary."""
    bits = _Bits()
    bits.ue(25)  # mb_type I_PCM
    bits.align_with_zeros()  # pcm_alignment_zero_bit
    return bits.aligned_bytes()


def _idr_slice_header() -> bytes:
    """The slice header and the first macroblock's start, up to its samples (a whole number of bytes)."""
    bits = _Bits()
    bits.ue(0)  # first_mb_in_slice
    bits.ue(7)  # slice_type: I, and every slice of the picture is I
    bits.ue(0)  # pic_parameter_set_id
    bits.u(4, 0)  # frame_num (log2_max_frame_num = 4)
    bits.ue(0)  # idr_pic_id
    bits.u(1, 0)  # dec_ref_pic_marking: no_output_of_prior_pics_flag
    bits.u(1, 0)  # long_term_reference_flag
    bits.se(0)  # slice_qp_delta
    bits.ue(1)  # disable_deblocking_filter_idc: off
    bits.ue(25)  # the first macroblock's mb_type, I_PCM
    bits.align_with_zeros()  # pcm_alignment_zero_bit
    return bits.aligned_bytes()


_SLICE_HEADER: Final = _idr_slice_header()
_PCM_START: Final = _pcm_macroblock_start()


def _idr_slice(luma: int, cb: int, cr: int) -> bytes:
    """The one frame: an IDR slice of I_PCM macroblocks, every sample of a plane the same value."""
    samples = bytes([luma]) * 256 + bytes([cb]) * 64 + bytes([cr]) * 64  # 16x16 luma, 8x8 Cb, 8x8 Cr
    macroblocks = samples + (_PCM_START + samples) * (_MB_COLUMNS * _MB_ROWS - 1)
    return _nal(3, 5, _SLICE_HEADER + macroblocks + b"\x80")  # then rbsp_slice_trailing_bits


def _sei_marker(task_id: str) -> bytes:
    """An SEI NAL unit of user data (payload type 5) holding the task id, which decoders ignore."""
    payload = _SEI_UUID + f"pixverse-async simulator video for task {task_id}".encode()
    size = len(payload)
    message = bytes([5]) + b"\xff" * (size // 255) + bytes([size % 255]) + payload
    return _nal(0, 6, message + b"\x80")  # rbsp_trailing_bits


def _colour(task_id: str) -> tuple[int, int, int]:
    """The frame's Y, Cb, Cr: drawn from the task id, inside the video range (16 to 235/240)."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return 16 + digest[0] * 219 // 255, 16 + digest[1] * 224 // 255, 16 + digest[2] * 224 // 255


def _box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def _full_box(box_type: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(box_type, bytes([version]) + flags.to_bytes(3, "big") + payload)


_SPS: Final = _sequence_parameter_set()
_PPS: Final = _picture_parameter_set()
_FTYP: Final = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")


def _sample_entry() -> bytes:
    """The `avc1` sample description: the picture's size and the `avcC` record with both parameter sets."""
    avcc = _box(
        b"avcC",
        bytes([1, _PROFILE, _CONSTRAINTS, _LEVEL, 0xFC | 3, 0xE0 | 1])  # 4-byte NAL lengths, one SPS
        + struct.pack(">H", len(_SPS))
        + _SPS
        + bytes([1])  # one PPS
        + struct.pack(">H", len(_PPS))
        + _PPS,
    )
    compressor = b"pixverse-async"
    return _box(
        b"avc1",
        bytes(6)  # reserved
        + struct.pack(">H", 1)  # data_reference_index
        + bytes(16)  # pre_defined, reserved
        + struct.pack(">HH", FRAME_WIDTH, FRAME_HEIGHT)
        + struct.pack(">II", 0x00480000, 0x00480000)  # 72 dpi
        + bytes(4)  # reserved
        + struct.pack(">H", 1)  # frame_count
        + bytes([len(compressor)])
        + compressor.ljust(31, b"\x00")
        + struct.pack(">Hh", 0x18, -1)  # depth, pre_defined
        + avcc,
    )


_AVC1: Final = _sample_entry()


def _moov(sample_size: int, sample_offset: int) -> bytes:
    """The movie header and the video track, whose one sample is `sample_size` bytes at `sample_offset`."""
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, _TIMESCALE, _DURATION)  # creation, modification, timescale, duration
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
        + struct.pack(">I", _DURATION)
        + bytes(8)  # reserved
        + struct.pack(">hhhH", 0, 0, 0, 0)  # layer, alternate_group, volume (video: 0), reserved
        + _IDENTITY_MATRIX
        + struct.pack(">II", FRAME_WIDTH << 16, FRAME_HEIGHT << 16),  # 16.16 fixed point
    )
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, _TIMESCALE, _DURATION, 0x55C4, 0))  # 'und'
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0) + b"vide" + bytes(12) + b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, bytes(8))  # graphicsmode + opcolor
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1) + _full_box(b"url ", 0, 1, b"")))
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1) + _AVC1)
        + _full_box(b"stts", 0, 0, struct.pack(">III", 1, 1, _DURATION))  # one sample lasting it all
        + _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, 1, 1))  # one chunk of one sample
        + _full_box(b"stsz", 0, 0, struct.pack(">III", 0, 1, sample_size))
        + _full_box(b"stco", 0, 0, struct.pack(">II", 1, sample_offset)),
    )
    minf = _box(b"minf", vmhd + dinf + stbl)
    trak = _box(b"trak", tkhd + _box(b"mdia", mdhd + hdlr + minf))
    return _box(b"moov", mvhd + trak)


# The movie box is the same for every task but for two numbers: built once, and those patched in per task.
_MOOV: Final = _moov(0, 0)
_STBL_AT: Final = _MOOV.index(b"stbl")
_SAMPLE_SIZE_AT: Final = _MOOV.index(b"stsz", _STBL_AT) + 16  # after the type, version+flags, size, count
_CHUNK_OFFSET_AT: Final = _MOOV.index(b"stco", _STBL_AT) + 12  # after the type, version+flags, count
_SAMPLE_OFFSET: Final = len(_FTYP) + len(_MOOV) + 8  # just past the mdat box header


def mp4_for_task(task_id: str) -> bytes:
    """The video file served for `task_id`: same bytes on every call, different for every task."""
    sample = b"".join(
        struct.pack(">I", len(nal)) + nal for nal in (_sei_marker(task_id), _idr_slice(*_colour(task_id)))
    )
    moov = bytearray(_MOOV)
    struct.pack_into(">I", moov, _SAMPLE_SIZE_AT, len(sample))
    struct.pack_into(">I", moov, _CHUNK_OFFSET_AT, _SAMPLE_OFFSET)
    return _FTYP + moov + _box(b"mdat", sample)
