"""Downloads fetch only what they should: http(s) without credentials, redirects checked hop by hop and never
with the key, an MP4 body or nothing on disk, private addresses refused on request; and every failure is a
`DownloadError`, transient ones retried first."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from pixverse_async import (
    APIError,
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    ImageToVideo,
    PixVerseClient,
    RetryPolicy,
    Timeouts,
    Video,
    VideoHostError,
)
from pixverse_async.testing import InstantClock, Simulator
from pixverse_async.testing._video import mp4_for_task
from tests.helpers import KEY, SCALE, client_for, tiny_server

pytestmark = pytest.mark.anyio
MP4 = mp4_for_task("t1")
RETRY = RetryPolicy(max_attempts=3)
# Short: a test server that does not answer shows up in a second, not a minute.
QUICK = Timeouts(connect=2, read=2, download_read=2)


class VideoHost:
    """A video host whose answer for each path is set by the test; it records every request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.answers: dict[str, list[Callable[[], web.Response]]] = {}
        self.base = ""

    def answer(self, path: str, *responses: Callable[[], web.Response]) -> None:
        """Answer `path` with each of `responses` (made afresh) in turn, then with the last one again."""
        self.answers[path] = list(responses)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization")))
        answers = self.answers.get(request.path, [])
        if not answers:
            return web.Response(status=404)
        return (answers.pop(0) if len(answers) > 1 else answers[0])()


def redirect(location: str, status: int = 302) -> Callable[[], web.Response]:
    return lambda: web.Response(status=status, headers={"Location": location})


def status(code: int, headers: dict[str, str] | None = None) -> Callable[[], web.Response]:
    return lambda: web.Response(status=code, headers=headers)


def mp4() -> web.Response:
    return web.Response(body=MP4, content_type="video/mp4")


@pytest.fixture
async def host() -> AsyncIterator[VideoHost]:
    video_host = VideoHost()
    async with tiny_server(video_host.handle) as url:
        video_host.base = url
        yield video_host


def client(**options: object) -> PixVerseClient:
    options.setdefault("retry", RETRY)
    options.setdefault("timeouts", QUICK)
    return PixVerseClient(KEY, base_url="http://127.0.0.1:9", clock=InstantClock(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://videos.example.com/t1.mp4", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("/videos/t1.mp4", "not an absolute URL"),
        ("https://user:pw@videos.example.com/t1.mp4", "carries credentials"),
        ("https://videos.example.com/t 1.mp4", "whitespace or a control character"),
        ("https:///t1.mp4", "no host"),
    ],
)
async def test_a_video_url_that_is_not_plain_http_is_refused_at_once(url: str, problem: str, tmp_path: Path) -> None:
    clock = InstantClock()
    async with PixVerseClient(KEY, base_url="http://127.0.0.1:9", clock=clock, retry=RETRY) as c:
        with pytest.raises(DownloadError, match=problem) as caught:
            await c.download(Video(url), tmp_path / "v.mp4")
    assert type(caught.value) is DownloadError and clock.sleeps == []  # refused, not retried
    assert "pw" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


async def test_redirects_are_followed_by_hand_without_the_key(host: VideoHost, tmp_path: Path) -> None:
    host.answer("/a", redirect("/b", 301))
    host.answer("/b", redirect(f"{host.base}/c?sig=1", 307))
    host.answer("/c", mp4)
    async with client() as c:
        saved = await c.download(Video(f"{host.base}/a"), tmp_path / "v.mp4")
    assert saved.read_bytes() == MP4
    assert host.seen == [("/a", None), ("/b", None), ("/c", None)]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("ftp://videos.example.com/t1.mp4", "unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("http://user:pw@{host}/c", "the URL carries credentials"),
    ],
)
async def test_a_redirect_is_checked_by_the_same_rules(
    host: VideoHost, tmp_path: Path, target: str, problem: str
) -> None:
    host.answer("/a", redirect(target.format(host=host.base.removeprefix("http://"))))
    host.answer("/c", mp4)
    async with client() as c:
        with pytest.raises(DownloadError, match=f"redirected to .*refused, {problem}") as caught:
            await c.download(Video(f"{host.base}/a"), tmp_path / "v.mp4")
    assert type(caught.value) is DownloadError and "pw" not in str(caught.value)
    assert [path for path, _ in host.seen] == ["/a"]  # not retried, and the target never asked
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (key, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


async def test_a_redirect_from_https_to_http_is_refused(
    host: VideoHost, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    key, cert = certificate

    async def to_plain_http(request: web.Request) -> web.Response:
        return redirect(f"{host.base}/c")()

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    host.answer("/c", mp4)
    app = web.Application()
    app.router.add_get("/a", to_plain_http)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_side)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as session:
            async with client(session=session) as c:
                with pytest.raises(DownloadError, match="from https:// to http:// is not followed"):
                    await c.download(Video(f"https://127.0.0.1:{port}/a"), tmp_path / "v.mp4")
    finally:
        await runner.cleanup()
    assert host.seen == [] and not (tmp_path / "v.mp4").exists()
    # The same redirect between two http:// hosts is followed: it is the downgrade that is refused.
    host.answer("/b", redirect(f"{host.base}/c"))
    async with client() as c:
        assert (await c.download(Video(f"{host.base}/b"), tmp_path / "v.mp4")).read_bytes() == MP4


async def test_endless_redirects_stop_after_five(host: VideoHost, tmp_path: Path) -> None:
    host.answer("/a", redirect("/a"))
    async with client() as c:
        with pytest.raises(DownloadError, match="redirected more than 5 times"):
            await c.download(Video(f"{host.base}/a"), tmp_path / "v.mp4")
    assert len(host.seen) == 6


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Access denied</body></html>", b"", b"\x00\x00\x00\x18moov", b"GIF89a" + bytes(100)],
)
async def test_a_body_that_is_not_an_mp4_file_is_not_saved(host: VideoHost, tmp_path: Path, body: bytes) -> None:
    host.answer("/a", lambda: web.Response(body=body, content_type="text/html"))
    destination = tmp_path / "v.mp4"
    async with client() as c:
        with pytest.raises(DownloadError, match="not an MP4 file") as caught:
            await c.download(Video(f"{host.base}/a"), destination)
    assert type(caught.value) is DownloadError
    assert list(tmp_path.iterdir()) == [] and len(host.seen) == 1


async def test_a_video_hosts_503_and_429_are_retried_as_download_errors(host: VideoHost, tmp_path: Path) -> None:
    host.answer("/a", status(503), status(429, {"Retry-After": "7"}), mp4)
    clock = InstantClock()
    async with PixVerseClient(KEY, base_url="http://127.0.0.1:9", clock=clock, retry=RETRY) as c:
        saved = await c.download(Video(f"{host.base}/a"), tmp_path / "v.mp4")
    assert saved.read_bytes() == MP4 and len(host.seen) == 3
    assert len(clock.sleeps) == 2 and clock.sleeps[1] == 7

    host.answer("/b", status(503))
    async with client() as c:
        with pytest.raises(DownloadError) as caught:
            await c.download(Video(f"{host.base}/b"), tmp_path / "w.mp4")
    assert isinstance(caught.value, VideoHostError) and caught.value.status_code == 503
    assert [path for path, _ in host.seen].count("/b") == RETRY.max_attempts


async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(len(MP4) * 2)})
    await response.prepare(request)
    await response.write(MP4)
    assert request.transport is not None
    request.transport.abort()
    return response


async def silent_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(len(MP4) * 2)})
    await response.prepare(request)
    await response.write(MP4)
    await anyio.sleep_forever()  # cancelled when the client gives up and hangs up
    return response


async def answer_503(request: web.Request) -> web.StreamResponse:
    return web.Response(status=503, text="upstream unavailable")


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (answer_503, VideoHostError),
        (reset_mid_body, DownloadConnectionError),
        (silent_mid_body, DownloadTimeoutError),
    ],
)
async def test_every_way_a_video_host_fails_is_a_download_error_never_an_api_error(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], expected: type[DownloadError], tmp_path: Path
) -> None:
    # A video host is not the API: its 503 is no ServerError, its broken connection no APIConnectionError, so
    # `except DownloadError` is the one handler a caller needs (and `except APIError` never swallows one).
    clock = InstantClock()
    # The read timeout is real time (aiohttp's); short, so that the silent host costs a fraction of a second.
    timeouts = Timeouts(connect=2, read=2, download_read=0.1)
    async with tiny_server(handler) as url:
        async with PixVerseClient(KEY, base_url="http://127.0.0.1:9", clock=clock, retry=RETRY, timeouts=timeouts) as c:
            with anyio.fail_after(10), pytest.raises(DownloadError) as caught:
                await c.download(Video(f"{url}/a.mp4"), tmp_path / "v.mp4")
    assert type(caught.value) is expected and not isinstance(caught.value, APIError)
    assert len(clock.sleeps) == RETRY.max_attempts - 1  # transient: retried first
    assert list(tmp_path.iterdir()) == []


async def test_a_host_that_cannot_be_reached_is_a_download_connection_error(tmp_path: Path) -> None:
    async with tiny_server(VideoHost().handle) as gone:
        pass
    async with client() as c:
        with pytest.raises(DownloadError) as caught:
            await c.download(Video(f"{gone}/a"), tmp_path / "v.mp4")
    assert isinstance(caught.value, DownloadConnectionError) and isinstance(caught.value, ConnectionError)
    assert caught.value.__cause__ is None  # an OSError cause would mean "the file cannot be written"


async def test_a_video_host_name_that_does_not_resolve_is_a_connection_error_not_a_disk_error(tmp_path: Path) -> None:
    async with client(allow_private_video_hosts=False) as c:
        with pytest.raises(DownloadConnectionError, match="cannot resolve the video host") as caught:
            await c.download(Video("https://videos.invalid/t1.mp4"), tmp_path / "v.mp4")
    assert caught.value.__cause__ is None and "cannot write" not in str(caught.value)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
async def test_private_addresses_are_refused_when_asked(host: VideoHost, tmp_path: Path, name: str) -> None:
    host.answer("/a", mp4)
    url = f"{host.base}/a".replace("127.0.0.1", name)
    async with client(allow_private_video_hosts=False) as c:
        with pytest.raises(DownloadError, match="a private address") as caught:
            await c.download(Video(url), tmp_path / "v.mp4")
    assert type(caught.value) is DownloadError and host.seen == []
    async with client() as c:  # allowed by default: the user's own storage may be private
        assert (await c.download(Video(url), tmp_path / "v.mp4")).read_bytes() == MP4


async def test_simulator_videos_still_download_and_never_see_the_key(tmp_path: Path) -> None:
    async with Simulator(time_scale=SCALE) as sim, client_for(sim) as c:
        result = await c.wait(await c.submit(ImageToVideo("p", "https://example.com/a.png")))
        saved = await c.download(result, tmp_path)
    assert saved.read_bytes() == sim.video_bytes(result.task_id)
    assert sim.counters.key_leaks_to_video_host == 0
