"""Streamed submission bodies (`_upload.py`): byte for byte today's JSON body with its exact `Content-Length`;
a file that changes while it is sent stops the body short and fails the job; an upload that stalls is not
an answer lost but a request not sent, retried without a second task; the read timeout counts from the
body's last byte; with the upload lane, bodies finish one after another."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixverse_async import ImageToVideo, InvalidRequestError, PixVerseClient, RateLimits, Timeouts
from pixverse_async.testing import Simulator
from tests.helpers import FAST_RETRY, KEY, client_for
from tests.images import jpeg, png

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def server(handler: Handler, *, receive_buffer: int | None = None) -> AsyncIterator[str]:
    """`handler` on a loopback port; `receive_buffer` shrinks the socket's buffer, so that a server that stops
    reading stops the client's upload within a few hundred kilobytes."""
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


def client(base_url: str, **options: Any) -> PixVerseClient:
    options.setdefault("retry", FAST_RETRY)
    return PixVerseClient(KEY, base_url=base_url, **options)


# -- the streamed body is today's body -----------------------------------------------------------------------

prompts = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f") | st.sampled_from('"\\\n\t\r/'),
    min_size=1,
    max_size=40,
).filter(lambda text: text.strip() and any(char.isprintable() and not char.isspace() for char in text))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
extra_bodies = st.none() | st.dictionaries(st.sampled_from(["duration", "motion_mode", "x_ü"]), json_values, max_size=2)


def _image(kind: str, size_past: int) -> bytes:
    # A size 0, 1 or 2 bytes past a multiple of 3 (and past a multiple of the streamed chunk, for the PNG).
    if kind == "png":  # padded inside the file: data after a PNG's IEND is refused
        return png(300, 300, pad_to=(3 * 2**16 + 3) // 3 * 3 + size_past)
    base = jpeg(640, 480)
    target = (len(base) + 3) // 3 * 3 + size_past
    return base + b"\x00" * (target - len(base))  # a few NULs after EOI: padding some encoders write


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=prompts,
    negative=st.none() | prompts,
    resolution=st.sampled_from(["360p", "540p", "720p"]),
    fast_mode=st.booleans(),
    style=st.none() | st.sampled_from(["anime", "clay"]),
    seed=st.none() | st.integers(0, 2_147_483_647),
    extra_body=extra_bodies,
    kind=st.sampled_from(["png", "jpeg"]),
    size_past=st.sampled_from([0, 1, 2]),
    form=st.sampled_from(["path", "bytes", "bytearray", "data-uri"]),
    as_data_uri=st.booleans(),
    webhook=st.booleans(),
)
def test_the_streamed_body_is_byte_for_byte_the_json_body_with_its_exact_length(
    tmp_path: Path,
    prompt: str,
    negative: str | None,
    resolution: str,
    fast_mode: bool,
    style: str | None,
    seed: int | None,
    extra_body: dict[str, Any] | None,
    kind: str,
    size_past: int,
    form: str,
    as_data_uri: bool,
    webhook: bool,
) -> None:
    data = _image(kind, size_past)
    encoded = base64.b64encode(data).decode()
    mime = "image/png" if kind == "png" else "image/jpeg"
    image: Any
    if form == "path":
        image = tmp_path / f"frame-{kind}-{size_past}"
        image.write_bytes(data)
    elif form == "data-uri":
        image = f"data:{mime};base64,{encoded}"
    else:
        image = data if form == "bytes" else bytearray(data)
    optional = {"negative_prompt": negative, "style": style, "seed": seed}
    request = ImageToVideo(
        prompt,
        image,
        resolution=resolution,  # type: ignore[arg-type]
        fast_mode=fast_mode,
        negative_prompt=negative,
        style=style,  # type: ignore[arg-type]
        seed=seed,
        extra_body=extra_body,
    )
    webhook_url = "https://hooks.example.com/pixverse?x=1" if webhook else None
    # Today's body: the fields in their order, dumped whole.
    expected: dict[str, Any] = {
        "prompt": prompt,
        "image": f"data:{mime};base64,{encoded}" if as_data_uri else encoded,
        "resolution": resolution,
        "fast_mode": fast_mode,
    }
    expected.update({name: value for name, value in optional.items() if value is not None})
    expected.update(extra_body or {})
    if webhook_url is not None:
        expected["extra"] = {**expected.get("extra", {}), "webhook": {"url": webhook_url}}
    wanted = json.dumps(expected, separators=(",", ":")).encode()
    received: list[tuple[bytes, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("Content-Length")))
        return web.json_response({"task_id": "t-1"})

    async def submit() -> None:
        async with server(handler) as url:
            options: dict[str, Any] = {"image_as_data_uri": as_data_uri, "webhook_url": webhook_url}
            async with client(url, **options) as pixverse:
                await pixverse.submit(request)

    if isinstance(extra_body, dict) and webhook_url is not None and not isinstance(extra_body.get("extra", {}), dict):
        return  # refused before sending, as before (tested in test_extra_body)
    anyio.run(submit)
    [(body, length)] = received
    if webhook_url is not None:
        # The URL carries the submission's own token (random): the rest of the body is as before.
        sent_url = json.loads(body)["extra"]["webhook"]["url"]
        assert re.fullmatch(re.escape(webhook_url) + "&pixverse_submission=[0-9a-f]{32}", sent_url)
        expected["extra"]["webhook"]["url"] = sent_url
        wanted = json.dumps(expected, separators=(",", ":")).encode()
    assert body == wanted
    assert length == str(len(wanted))


# -- a file that changes while it is sent ---------------------------------------------------------------------


def _grown(frame: Path) -> None:
    with frame.open("ab") as file:
        file.write(b"\x00" * 3)


def _replaced(frame: Path) -> None:
    copy = frame.with_name("copy.png")
    copy.write_bytes(frame.read_bytes())
    copy.replace(frame)


def _written_to(frame: Path) -> None:
    with frame.open("r+b") as file:
        file.seek(1000)
        file.write(b"\x01")


@pytest.mark.anyio
@pytest.mark.parametrize("change", [_grown, _replaced, _written_to], ids=["grown", "replaced", "written-to"])
async def test_a_file_changed_while_it_is_sent_cuts_the_body_short_and_fails_the_job(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=9 * 2**20))
    request = ImageToVideo("p", frame)
    started, go_on = anyio.Event(), anyio.Event()
    seen: list[tuple[int, int]] = []

    async def handler(request: web.Request) -> web.Response:
        got = 0
        while got < 2**20:  # well into the image
            got += len(await request.content.read(2**16))
        started.set()
        await go_on.wait()
        try:
            while chunk := await request.content.read(2**16):
                got += len(chunk)
        finally:
            seen.append((got, request.content_length or 0))
        return web.json_response({"task_id": "must-not-exist"})

    async with server(handler, receive_buffer=2**16) as url, client(url) as pixverse:
        async with anyio.create_task_group() as group:
            outcome: list[BaseException] = []

            async def submit() -> None:
                try:
                    await pixverse.submit(request)
                except InvalidRequestError as error:
                    outcome.append(error)

            group.start_soon(submit)
            with anyio.fail_after(10):
                await started.wait()
            change(frame)
            go_on.set()
        with anyio.fail_after(10):
            while not seen:
                await anyio.sleep(0.01)
    [error] = outcome
    assert "the file changed while it was being sent" in str(error)
    [(got, length)] = seen
    assert got < length  # the server saw a body cut short, never a whole body with a wrong image


# -- an upload that stalls is a request not sent ------------------------------------------------------------


@pytest.mark.anyio
async def test_an_upload_that_stalls_is_retried_as_not_sent_and_creates_one_task(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=9 * 2**20))
    requests: list[str] = []
    whole_bodies = 0
    leave = anyio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal whole_bodies
        requests.append(request.path)
        if len(requests) == 1:
            await request.content.read(2**16)
            with anyio.move_on_after(10):
                await leave.wait()  # reads nothing more: the upload stalls
            return web.json_response({"task_id": "never-read"})
        body = await request.read()
        whole_bodies += len(body) == request.content_length
        return web.json_response({"task_id": "t-1"})

    timeouts = Timeouts(upload=1.0, read=60.0)  # a loaded machine may pause a moving upload for a fraction of that
    async with server(handler, receive_buffer=2**16) as url, client(url, timeouts=timeouts) as pixverse:
        task = await pixverse.submit(ImageToVideo("p", frame))
        leave.set()
    assert task.task_id == "t-1"
    assert len(requests) == 2 and whole_bodies == 1


@pytest.mark.anyio
async def test_the_read_timeout_counts_from_the_last_byte_of_the_body(tmp_path: Path) -> None:
    """A body that takes longer to send than the read timeout, answered at once once whole, is no timeout."""
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=4 * 2**20))
    requests = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal requests
        requests += 1
        # Reads slowly: at least 2.2 s for the body (64 pauses of 35 ms), over twice the read timeout; bytes keep
        # moving meanwhile.
        while await request.content.read(2**16):
            await anyio.sleep(0.035)
        return web.json_response({"task_id": "t-1"})

    timeouts = Timeouts(read=1.0, upload=5.0)
    async with server(handler, receive_buffer=2**16) as url, client(url, timeouts=timeouts) as pixverse:
        task = await pixverse.submit(ImageToVideo("p", frame))
    assert task.task_id == "t-1" and requests == 1


# -- bodies take turns on the link ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("bound", [None, 2**20], ids=["all-at-once", "one-at-a-time"])
async def test_with_the_lane_bodies_finish_one_after_another(tmp_path: Path, bound: int | None) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=6 * 2**20))  # a body of 8 MiB
    jobs = 4
    sim = Simulator(time_scale=1.0, uplink_mbps=100.0)  # 4 x 8 MiB: 2.7 s of link
    limits = RateLimits(max_running=jobs)  # no slow start: all four may go at once
    async with sim, client_for(sim, rate_limits=limits, max_upload_bytes_in_flight=bound) as client:
        started = sim.now()
        async with anyio.create_task_group() as group:
            for number in range(jobs):
                group.start_soon(client.submit, ImageToVideo(f"p{number}", frame))
        arrivals = sorted(task.submitted_at - started for task in sim.tasks.values())
    link = jobs * (8 * 2**20) * 8 / 100e6
    if bound is None:
        assert arrivals[0] > 0.6 * link  # sharing the link, every body ends near the end
    else:
        assert arrivals[0] < 0.45 * link  # the first body had the link to itself


# -- memory ----------------------------------------------------------------------------------------------------

_CLIENT_RUN = """
import asyncio, sys
from pathlib import Path
from pixverse_async import ImageToVideo, PixVerseClient

async def main(url, frame, jobs):
    succeeded = 0
    async with PixVerseClient("sk-test", base_url=url) as client:
        requests = [ImageToVideo(f"frame {n}", Path(frame)) for n in range(jobs)]
        async with client.as_completed(requests) as results:
            async for result in results:
                succeeded += result.error is None
                if result.error is not None:
                    print(repr(result.error), file=sys.stderr)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forked copy of the parent (pytest).
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(succeeded, peak // 1024)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.anyio
async def test_64_frames_of_8_7_mb_peak_under_200_mb_in_the_client_process(tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    frame.write_bytes(png(400, 300, pad_to=8_700_000))
    # The client in a process of its own, so that its peak RSS is its own; the simulator in another, as
    # `pixverse-async simulate` runs it (so that how fast it reads does not depend on what this process did
    # before), with a fast link.
    simulate = [sys.executable, "-m", "pixverse_async", "simulate", "--port", "0", "--duration", "1"]
    async with await anyio.open_process([*simulate, "--uplink-mbps", "4000"]) as simulator:
        try:
            assert simulator.stdout is not None
            lines = b""
            with anyio.fail_after(30):
                while b"video base URL" not in lines:
                    lines += await simulator.stdout.receive()
            base_url = lines.decode().split("API base URL:")[1].split()[0]
            with anyio.fail_after(300):
                done = await anyio.run_process([sys.executable, "-c", _CLIENT_RUN, base_url, str(frame), "64"])
        finally:
            simulator.terminate()
    succeeded, peak_mb = map(int, done.stdout.split())
    assert succeeded == 64, done.stderr.decode()[-2000:]
    assert peak_mb <= 200, f"peak RSS {peak_mb} MB"
