"""A submission's body streamed from its image, and the lane that keeps few bodies on the uplink at once.

Why streamed: a frame is up to 10 MB, 13.4 MB once base64-encoded, and a body built whole holds the file, its
base64 text, the JSON text and its bytes (about 17 MB per submission in flight for an 8.7 MB PNG). A
`StreamedBody` holds the JSON before and after the image (made by the same encoder as any body, so the bytes
are the same) and writes the image's base64 between them chunk by chunk: from the file (read in worker
threads), or from the bytes or data URI the user already holds (never copied whole). Chunks are a multiple
of 3 bytes of image (4 characters of base64), so their encodings concatenate into the encoding of the whole;
the length is exact in advance and sent as `Content-Length`. The body counts as sent once its bytes have
left the socket's send queue (on Linux; elsewhere, once handed to it): the read timeout starts then.

What a failure means: the server cannot have created a task from a body whose last byte never left (its
`Content-Length` says bytes are missing). `UploadProgress.body_sent` turns true only when the last bytes are
handed to the connection; until then a failure is "not sent" (`RequestNotSent`: safe to retry). A file that
changes, grows or is replaced while it is streamed stops the body before its last image chunk: the server
sees a body cut short, never a wrong image, and the job fails with an `InvalidRequestError`.

Why a lane: every body shares the user's uplink. Sent all at once, each gets a sliver of it and all finish
near the end (tasks start late, and each upload is long); a few at a time, they finish one after another and
each task starts as its body arrives. `UploadLane` admits bodies while the bytes in flight stay within
`max_upload_bytes_in_flight` (one body is always admitted, however big); a body counts until its last byte
is handed over, not until it is answered, so the link never idles waiting for the server's answer.
"""

from __future__ import annotations

import base64
import collections
import math
import os
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, final

import anyio
import anyio.to_thread
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from ._exceptions import InvalidRequestError
from ._images import ImageFile, open_image_file

#: Bytes of image per chunk: a multiple of 3, so that chunks encode to whole base64 quanta (256 KiB each).
IMAGE_CHUNK = 3 * 2**16
#: Bytes handed to the connection at a time: each write waits for the connection to drain, which is what
#: shows the upload moving.
_WRITE_SLICE = 2**16
#: Worker threads reading the files of one client's uploads at once.
_READ_THREADS = 2
#: Characters of a data URI's base64 per chunk: a multiple of 4.
_TEXT_CHUNK = 4 * 2**16

#: How often a body's last bytes are looked for in the socket's send queue (real seconds).
_DELIVERY_CHECK = 0.005

if sys.platform == "linux":
    import fcntl
    import termios

    def _send_queue(descriptor: int) -> int:
        """Linux's SIOCOUTQ (TIOCOUTQ): the bytes in a TCP socket's send queue, not yet acknowledged."""
        return int(struct.unpack("i", fcntl.ioctl(descriptor, termios.TIOCOUTQ, b"\0\0\0\0"))[0])
else:  # pragma: no cover

    def _send_queue(descriptor: int) -> int:
        return 0


Send = Callable[[bytes], Awaitable[None]]


async def _until_delivered(writer: AbstractStreamWriter, progress: UploadProgress) -> None:
    """Wait until the body's bytes have left this machine: out of asyncio's buffer, and (on Linux) out of the
    socket's send queue, acknowledged by the server. Only then does the read timeout start: a send buffer of
    megabytes on a slow uplink takes seconds to drain. Bytes leaving count as progress meanwhile."""
    transport = getattr(writer, "transport", None)
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    descriptor = sock.fileno() if sock is not None else -1
    left = math.inf
    while True:
        queued = transport.get_write_buffer_size() if not transport.is_closing() else 0
        if descriptor >= 0 and not transport.is_closing():
            try:
                queued += _send_queue(descriptor)
            except OSError:
                descriptor = -1
        if queued <= 0:
            return
        if queued < left:
            progress.moved()
        left = queued
        await anyio.sleep(_DELIVERY_CHECK)


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


class _Deadline(Protocol):
    at: float


@final
class UploadProgress:
    """One attempt of a streamed body: whether its last bytes were handed to the connection (`body_sent`:
    from then on the server may have it whole), why it stopped short (a file that changed), and the request's
    deadline, moved as the body moves.

    Until the body has left this machine, the deadline is `stall` seconds after bytes last moved; from then on
    (`delivered()`) it is `read` seconds later (a limit that is None is `inf`).
    """

    __slots__ = ("_deadline", "_read", "_stall", "body_sent", "failure")

    def __init__(self, deadline: _Deadline | None, *, stall: float | None, read: float | None) -> None:
        self._deadline = deadline
        self._stall = math.inf if stall is None else stall
        self._read = math.inf if read is None else read
        self.body_sent = False
        self.failure: InvalidRequestError | None = None
        self.moved()

    def moved(self) -> None:
        if self._deadline is not None:
            self._deadline.at = time.monotonic() + self._stall

    def delivered(self) -> None:
        """The body has left this machine: the read timeout starts."""
        self.body_sent = True
        if self._deadline is not None:
            self._deadline.at = time.monotonic() + self._read


class _ImageText(Protocol):
    """The `image` field's text, written in chunks."""

    size: int

    async def write(self, send: Send, reads: anyio.CapacityLimiter | None) -> None: ...


@final
class BytesImage:
    """Image bytes the user holds, base64-encoded a chunk at a time; `head` goes before (a data URI's)."""

    __slots__ = ("_data", "_head", "size")

    def __init__(self, data: bytes, head: bytes = b"") -> None:
        self._data = data
        self._head = head
        self.size = len(head) + base64_length(len(data))

    async def write(self, send: Send, reads: anyio.CapacityLimiter | None = None) -> None:
        if self._head:
            await send(self._head)
        view = memoryview(self._data)
        for start in range(0, len(view), IMAGE_CHUNK):
            await send(base64.b64encode(view[start : start + IMAGE_CHUNK]))


@final
class DataUriImage:
    """A data URI the user holds: sent as is (its head escaped as JSON would escape it), or its payload alone
    (`raw`), each chunk decoded and encoded again so that the text is what encoding the decoded image gives."""

    __slots__ = ("_head", "_raw", "_start", "_uri", "size")

    def __init__(self, uri: str, *, raw: bool, escaped_head: bytes) -> None:
        self._uri = uri
        self._raw = raw
        self._start = uri.index(",") + 1
        self._head = b"" if raw else escaped_head
        payload = len(uri) - self._start
        # Checked when the request was built: base64 alphabet, then at most two "=", a multiple of 4 long.
        padding = 2 if uri.endswith("==") else 1 if uri.endswith("=") else 0
        self.size = len(self._head) + base64_length(payload // 4 * 3 - padding)

    async def write(self, send: Send, reads: anyio.CapacityLimiter | None = None) -> None:
        if self._head:
            await send(self._head)
        uri = self._uri
        for start in range(self._start, len(uri), _TEXT_CHUNK):
            text = uri[start : start + _TEXT_CHUNK]
            await send(base64.b64encode(base64.b64decode(text)) if self._raw else text.encode("ascii"))


@final
class FileImage:
    """A first frame on disk, read and encoded a chunk at a time in worker threads, and sent only while it is
    the file `built` describes: checked when opened, and before its last chunk is sent (not grown, not
    written to, not replaced)."""

    __slots__ = ("_built", "_head", "_path", "size")

    def __init__(self, path: Path, built: ImageFile, head: bytes = b"") -> None:
        self._path = path
        self._built = built
        self._head = head
        self.size = len(head) + base64_length(built.size)

    async def write(self, send: Send, reads: anyio.CapacityLimiter | None = None) -> None:
        descriptor = await anyio.to_thread.run_sync(open_image_file, self._path, self._built, limiter=reads)
        try:
            if self._head:
                await send(self._head)
            total = self._built.size
            for offset in range(0, total, IMAGE_CHUNK):
                count = min(IMAGE_CHUNK, total - offset)
                chunk = await anyio.to_thread.run_sync(self._read_chunk, descriptor, offset, count, limiter=reads)
                await send(chunk)
        finally:
            os.close(descriptor)

    def _read_chunk(self, descriptor: int, offset: int, count: int) -> bytes:
        path, built = self._path, self._built
        try:
            data = os.pread(descriptor, count, offset)
            changed = len(data) != count
            if not changed and offset + count == built.size:
                # The last chunk: the file must still be the one built, not grown, written to or replaced.
                changed = (
                    os.pread(descriptor, 1, built.size) != b""
                    or not built.describes(os.fstat(descriptor))
                    or not built.describes(os.stat(path))
                )
        except FileNotFoundError:
            changed = True
        except OSError as error:
            raise InvalidRequestError(
                "image", f"{path}: cannot be read ({error.strerror or error}); the body was cut short, so no task"
            ) from None
        if changed:
            raise InvalidRequestError(
                "image",
                f"{path}: the file changed while it was being sent (its size, modification time or inode"
                " differ from when the request was built); the body was cut short, so no task was created."
                " Build the ImageToVideo again to send what the file holds now",
            )
        return base64.b64encode(data)


@final
class LaneTicket:
    """One body's room in the `UploadLane`, given back once (the first `release()`)."""

    __slots__ = ("_lane", "_size")

    def __init__(self, lane: UploadLane | None, size: int) -> None:
        self._lane = lane
        self._size = size

    def release(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            lane.give_back(self._size)


@final
class StreamedBody(Payload):
    """A submission's JSON body with its image streamed in; see the module documentation. Sent again as a
    whole on a retry (each attempt opens the file again)."""

    _autoclose = True  # holds no resource between attempts: a file is opened and closed by each write()

    def __init__(self, head: bytes, image: _ImageText, tail: bytes) -> None:
        super().__init__(b"", content_type="application/json")
        self._head = head
        self._image = image
        self._tail = tail
        self._size = len(head) + image.size + len(tail)
        #: The attempt being sent (set by the transport), and its room in the upload lane (by the submitter).
        self.progress: UploadProgress | None = None
        self.lane_ticket: LaneTicket | None = None
        #: The worker threads its file is read in (the lane's, so a few threads serve every upload).
        self.reads: anyio.CapacityLimiter | None = None

    @property
    def length(self) -> int:
        return len(self._head) + self._image.size + len(self._tail)

    def release_lane(self) -> None:
        ticket, self.lane_ticket = self.lane_ticket, None
        if ticket is not None:
            ticket.release()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed body is written to the connection, never decoded whole")

    async def write(self, writer: AbstractStreamWriter) -> None:
        progress = self.progress or UploadProgress(None, stall=None, read=None)

        async def send(data: bytes) -> None:
            view = memoryview(data)
            for start in range(0, len(view), _WRITE_SLICE):
                await writer.write(view[start : start + _WRITE_SLICE])
                progress.moved()

        try:
            await send(self._head)
            await self._image.write(send, self.reads)
        except InvalidRequestError as error:
            progress.failure = error
            raise
        # From here on the server may have the whole body: a failure is an answer lost.
        progress.body_sent = True
        self.release_lane()
        await writer.write(self._tail)
        await _until_delivered(writer, progress)
        progress.delivered()

    def __repr__(self) -> str:
        return f"<StreamedBody {self.length} bytes>"


@final
class UploadLane:
    """Admits streamed bodies while the bytes in flight stay within `max_bytes` (None: no bound), first come
    first served; a body bigger than the bound goes alone."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.bytes_in_flight = 0
        self._waiting: collections.deque[tuple[int, anyio.Event]] = collections.deque()
        # File chunks are read in a few threads, not any of the default 40: every thread that allocates
        # chunks may get a malloc arena of its own (glibc), each keeping freed chunks for reuse.
        self.reads = anyio.CapacityLimiter(_READ_THREADS)

    async def enter(self, body: StreamedBody) -> None:
        """Wait for room, then give `body` its `lane_ticket` (given back when its last bytes are handed over,
        or when its attempt ends)."""
        size = body.length
        body.reads = self.reads
        if self.max_bytes is None:
            body.lane_ticket = LaneTicket(None, size)
            return
        if not self._waiting and self._fits(size):
            self.bytes_in_flight += size
            body.lane_ticket = LaneTicket(self, size)
            return
        entry = (size, anyio.Event())
        self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.give_back(size)
            else:
                self._waiting.remove(entry)
                self._admit()
            raise
        body.lane_ticket = LaneTicket(self, size)

    def give_back(self, size: int) -> None:
        self.bytes_in_flight -= size
        self._admit()

    def _fits(self, size: int) -> bool:
        return self.bytes_in_flight == 0 or self.max_bytes is None or self.bytes_in_flight + size <= self.max_bytes

    def _admit(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, admitted = self._waiting.popleft()
            self.bytes_in_flight += size
            admitted.set()
