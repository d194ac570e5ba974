"""A first frame that cannot be one is refused before any request, named as what it is: a path that is not a
regular file (a device, a FIFO, a directory), a path the OS refuses, a URL that is malformed or of another
scheme. Only regular files are read, and never more than the size limit plus one byte."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pixverse_async import ImageToVideo, InvalidRequestError
from pixverse_async.testing import Simulator
from tests.helpers import SCALE, client_for
from tests.images import jpeg, png

pytestmark = pytest.mark.anyio


def refused(image: object) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        ImageToVideo("p", image)  # type: ignore[arg-type]
    assert caught.value.field == "image"
    return str(caught.value)


@contextlib.contextmanager
def no_hang(seconds: int = 5) -> Iterator[None]:
    """Fail, instead of hanging the run, if reading a device or opening a FIFO never returns."""

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError("the image check hung")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_without_being_read() -> None:
    with no_hang():
        assert "is a character device, not an image file" in refused(Path("/dev/zero"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    with no_hang():
        assert "is a FIFO (named pipe), not an image file" in refused(fifo)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "is a directory, not an image file" in refused(tmp_path)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (Path("frame\x00.png"), "holds a NUL character"),
        (Path("x" * 5000 + ".png"), "too long for the file system"),
        (Path("/" + "d" * 300 + "/frame.png"), "too long for the file system"),
        (Path("frame\udcff\ud800.png"), "cannot be encoded as a file name"),
    ],
    ids=["nul", "long-path", "long-name", "lone-surrogate"],
)
def test_paths_the_os_refuses_are_named(path: Path, problem: str) -> None:
    message = refused(path)
    assert problem in message and len(message) < 400


def test_a_file_that_is_not_readable_is_named(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    locked = tmp_path / "frame.png"
    locked.write_bytes(png())
    locked.chmod(0)
    assert "permission denied" in refused(locked)


def test_a_part_of_the_path_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    assert "not a directory" in refused(tmp_path / "file" / "frame.png")


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("file:///tmp/a.png", "unsupported URL scheme 'file'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("FTP://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("data:text/html;base64,PGI+", "a data URI of type 'text/html' is not an image"),
        ("data:application/pdf,x", "a data URI of type 'application/pdf' is not an image"),
        ("https://", "malformed URL 'https://': it has no host"),
        ("https:/example.com/a.png", "it has no host"),
        ("https://exa mple.com/a.png", "holds whitespace or a control character"),
        ("https://example.com:99999/a.png", "malformed URL"),
        ("https://[::1/a.png", "malformed URL"),
        ("frame.png", "'frame.png' is not a URL"),
        ("C:\\frames\\a.png", "is not a URL"),
    ],
)
def test_strings_that_are_not_usable_urls_are_named_as_what_they_are(image: str, problem: str) -> None:
    message = refused(image)
    assert problem in message
    assert "no such file" not in message


async def test_an_upper_case_scheme_is_https_and_is_sent_in_lower_case() -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        task = await client.submit(ImageToVideo("p", "HTTPS://example.com/A.png"))
        image = sim.tasks[task.task_id].image
    assert image.url == "https://example.com/A.png"


async def test_a_file_replaced_by_a_fifo_after_the_request_was_built_is_refused_before_sending(
    tmp_path: Path,
) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png())
    request = ImageToVideo("p", frame)
    frame.unlink()
    os.mkfifo(frame)
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with no_hang(), pytest.raises(InvalidRequestError, match="FIFO"):
            await client.submit(request)
        assert sim.counters.submit_requests == 0


def test_a_file_over_the_limit_is_refused_from_its_size_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as file:
        file.truncate(50 * 1024 * 1024)
    assert "the API accepts at most 10485760 bytes" in refused(big)


# -- a file is read only when it is sent ---------------------------------------------------------------------


def _bytes_read_by_this_process() -> int:
    # rchar: every byte the process's read calls returned, whatever read them.
    with open("/proc/self/io", "rb") as io:
        return next(int(line.split()[1]) for line in io if line.startswith(b"rchar:"))


def _jpeg_with_a_big_app_segment_first(width: int, height: int) -> bytes:
    """A JPEG whose frame header comes after 8 MB of APP segments (EXIF and ICC data can be that big)."""
    app_segment = b"\xff\xe2" + (0xFFFF).to_bytes(2, "big") + b"\x00" * (0xFFFF - 2)
    image = jpeg(width, height)
    return image[:2] + app_segment * 128 + image[2:]


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize(
    "content",
    [png(400, 300, pad_to=9 * 1024 * 1024), _jpeg_with_a_big_app_segment_first(640, 480)],
    ids=["png-9MB", "jpeg-8MB-of-app-segments"],
)
async def test_building_a_request_from_a_path_in_a_coroutine_reads_the_header_only(
    tmp_path: Path, content: bytes
) -> None:
    frame = tmp_path / "frame.img"
    frame.write_bytes(content)
    before = _bytes_read_by_this_process()
    request = ImageToVideo("p", frame)
    read = _bytes_read_by_this_process() - before
    assert request.image == frame
    assert len(content) > 8_000_000 and read < 64 * 1024


async def test_the_file_is_read_at_submission_in_worker_threads_only(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300))
    opened_in: list[int] = []
    watching = True

    def on_audit(event: str, args: tuple[object, ...]) -> None:
        if watching and event == "open" and args and args[0] == str(frame):
            opened_in.append(threading.get_ident())

    sys.addaudithook(on_audit)  # audit hooks cannot be removed: this one stops listening below
    try:
        async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
            request = ImageToVideo("p", frame)
            built = len(opened_in)
            await client.submit(request)
            assert sim.counters.tasks_created == 1
    finally:
        watching = False
    loop_thread = threading.get_ident()
    assert built == 1 and opened_in[0] == loop_thread  # the header, read where the request is built
    # Checked again before sending, then opened to be streamed: both off the event loop.
    assert len(opened_in) == 3 and loop_thread not in opened_in[1:]


def _same_times(path: Path, status: os.stat_result) -> None:
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def _rewritten_same_size_and_times(frame: Path) -> None:
    status = frame.stat()
    frame.write_bytes(png(300, 400, pad_to=status.st_size))
    _same_times(frame, status)  # the header still shows the change: 300x400, not 400x300


def _replaced_by_a_copy(frame: Path) -> None:
    status = frame.stat()
    copy = frame.with_name("copy.png")
    copy.write_bytes(frame.read_bytes())
    _same_times(copy, status)
    copy.replace(frame)  # same content, size and times; another inode


def _touched(frame: Path) -> None:
    status = frame.stat()
    os.utime(frame, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    "change",
    [
        lambda frame: frame.write_bytes(png(600, 400)),
        _rewritten_same_size_and_times,
        _replaced_by_a_copy,
        _touched,
    ],
    ids=["another-image", "same-size-and-times", "replaced-by-a-copy", "touched"],
)
async def test_a_file_changed_since_the_request_was_built_is_refused_before_sending(
    tmp_path: Path, change: Any
) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=4096))
    request = ImageToVideo("p", frame)
    change(frame)
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match="the file changed since the request was built") as caught:
            await client.submit(request)
        assert caught.value.field == "image"
        assert sim.counters.submit_requests == 0
        # Built again, the request sends what the file holds now.
        await client.submit(ImageToVideo("p", frame))
        assert sim.counters.tasks_created == 1


async def test_a_file_removed_since_the_request_was_built_is_refused_before_sending(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300))
    request = ImageToVideo("p", frame)
    frame.unlink()
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match="no such file: it was removed since the request was built"):
            await client.submit(request)
        assert sim.counters.submit_requests == 0


async def test_an_unchanged_file_is_sent_whole_as_built(tmp_path: Path) -> None:
    frame = tmp_path / "frame.jpg"
    content = _jpeg_with_a_big_app_segment_first(640, 480)[: 2 + 4 * 0x10001] + jpeg(640, 480)[2:]
    frame.write_bytes(content)
    request = ImageToVideo("p", frame)
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as client:
        task = await client.submit(request)
        image = sim.tasks[task.task_id].image
    assert (image.width, image.height) == (640, 480)


PNG_HEADER_ONLY = png()[:33]  # signature and IHDR: the 33 bytes a header check reads


def _incomplete_frames() -> dict[str, tuple[bytes, str]]:
    whole_png, whole_jpeg = png(), jpeg()
    return {
        "a PNG header with no image data": (PNG_HEADER_ONLY, "PNG has no image data (no IDAT chunk)"),
        "a PNG cut inside its data": (whole_png[: len(whole_png) // 2], "does not end with an IEND chunk"),
        "a PNG cut inside its IEND": (whole_png[:-3], "does not end with an IEND chunk"),
        "a JPEG cut before its end": (whole_jpeg[:-2], "does not end with an EOI marker"),
        "a JPEG with data after its end": (whole_jpeg + b"trailer" * 10, "does not end with an EOI marker"),
    }


@pytest.mark.parametrize("what", list(_incomplete_frames()))
def test_an_image_cut_short_or_without_data_is_refused_in_every_form(what: str, tmp_path: Path) -> None:
    data, problem = _incomplete_frames()[what]
    frame = tmp_path / "frame.img"
    frame.write_bytes(data)
    mime = "png" if data.startswith(b"\x89PNG") else "jpeg"
    encoded = base64.b64encode(data).decode()
    for form in (data, frame, f"data:image/{mime};base64,{encoded}"):
        assert problem in refused(form), form if isinstance(form, Path) else what


def test_padding_after_an_images_end_is_allowed() -> None:
    for padding in (b"\x00" * 100, b"\xff" * 7, b"\r\n", b"\x00" * 4000):
        ImageToVideo("p", jpeg() + padding)
        ImageToVideo("p", png() + padding)


async def test_a_file_cut_short_after_the_request_was_built_is_refused_before_sending(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    whole = png()
    frame.write_bytes(whole)
    request = ImageToVideo("p", frame)
    status = frame.stat()
    with frame.open("r+b") as file:  # the same inode, size and modification time: only the content differs
        file.seek(len(whole) - 12)
        file.write(b"\x00" * 12)
    os.utime(frame, ns=(status.st_atime_ns, status.st_mtime_ns))
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE) as sim, client_for(sim) as client:
        with pytest.raises(InvalidRequestError, match="does not end with an IEND chunk"):
            await client.submit(request)
    assert sim.counters.submit_requests == 0
