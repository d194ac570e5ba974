"""`client.download()`: a finished video streamed to a file, fetched only from where it should be.

Every failure is a `DownloadError` (see `_exceptions.py`): the video host is not the API, so its 5xx, a broken
connection or a timeout on it are never `ServerError` or `APIConnectionError`. Transient ones are retried first,
by the same rule as polls (`_retry.py`).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import final
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
import yarl

from ._environment import Proxy
from ._exceptions import (
    DownloadConnectionError,
    DownloadError,
    DownloadTimeoutError,
    InvalidRequestError,
    PixVerseError,
    VideoExpiredError,
    VideoHostError,
)
from ._models import JobResult, TaskResult, Video
from ._retry import parse_retry_after
from ._transport import Secret, Timeouts, redact, shorten

_DOWNLOAD_BUFFER_BYTES = 1 << 20
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MP4_HEAD_BYTES = 8
Retrying = Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]


@final
class Downloader:
    """Downloads for one client: `session` gives the open client's session (it raises when the client is closed),
    `retrying` runs one try again while its failure is transient."""

    def __init__(
        self,
        *,
        api_key: Secret,
        timeouts: Timeouts,
        allow_private_video_hosts: bool,
        session: Callable[[], aiohttp.ClientSession],
        retrying: Retrying,
        proxy_for: Callable[[str], Proxy | None] = lambda url: None,
    ) -> None:
        self._api_key = api_key
        self._timeouts = timeouts
        self._allow_private_video_hosts = allow_private_video_hosts
        self._session = session
        self._retrying = retrying
        self._proxy_for = proxy_for

    async def download(self, video: JobResult | TaskResult | Video, path: str | os.PathLike[str]) -> Path:
        """`PixVerseClient.download()`: the file's path, or a `DownloadError` saying why not."""
        chosen = _video_of(video)
        problem = _video_url_problem(chosen.url)
        if problem is not None:
            raise DownloadError(f"refused to download {_shown_url(chosen.url)}: {problem}")
        destination = Path(path)
        if await anyio.Path(destination).is_dir():
            destination = destination / _file_name_for(chosen, video)
        session = self._session()
        await self._retrying(lambda: self._download_once(session, chosen, destination))
        return destination

    async def _download_once(self, session: aiohttp.ClientSession, video: Video, destination: Path) -> None:
        partial = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
        url = video.url
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if not self._allow_private_video_hosts:
                    await _refuse_private_host(url)
                # No Authorization header: the video host is not the API and must never see the key. Redirects
                # by hand, so that each target is checked before anything is sent to it.
                proxy = self._proxy_for(url)
                async with session.get(
                    url,
                    timeout=self._timeouts.for_download(),
                    allow_redirects=False,
                    proxy=None if proxy is None else proxy.url,
                    proxy_auth=None if proxy is None else proxy.auth,
                ) as response:
                    if not self._allow_private_video_hosts:
                        _refuse_private_peer(response, url)
                    if response.status in _REDIRECT_STATUSES:
                        url = _redirect_target(response, url)
                        continue
                    if response.status != 200:
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        text = redact((await response.read())[:2048].decode("utf-8", "replace"), self._api_key)
                        raise _download_error(response.status, video, text, retry_after)
                    expected = response.content_length
                    written = await _stream_to_file(response, partial)
                if expected is not None and written != expected:
                    raise DownloadConnectionError(f"video download was cut short: got {written} of {expected} bytes")
                partial.replace(destination)
                return
            raise DownloadError(f"the video host redirected more than {_MAX_REDIRECTS} times")
        except aiohttp.ClientError as error:
            # Not chained (`from None`): aiohttp's errors are OSErrors at times, and a cause that is an OSError
            # means the file could not be written.
            detail = redact(str(error), self._api_key) or type(error).__name__
            if isinstance(error, TimeoutError):
                raise DownloadTimeoutError(f"video download timed out: {detail}") from None
            raise DownloadConnectionError(f"video download failed: {detail}") from None
        except DownloadError:
            raise  # DownloadConnectionError is an OSError too, but not one of the file's
        except OSError as error:
            raise DownloadError(f"cannot write {destination}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)


async def _stream_to_file(response: aiohttp.ClientResponse, partial: Path) -> int:
    written = 0
    buffer = bytearray()
    checked = False
    async with await anyio.open_file(partial, "wb") as file:
        async for chunk in response.content.iter_chunked(1 << 16):
            buffer += chunk
            if not checked and len(buffer) >= _MP4_HEAD_BYTES:
                _check_mp4_head(bytes(buffer[:_MP4_HEAD_BYTES]), response)
                checked = True
            if len(buffer) >= _DOWNLOAD_BUFFER_BYTES:
                written += await file.write(bytes(buffer))
                buffer.clear()
        if not checked:
            _check_mp4_head(bytes(buffer), response)
        written += await file.write(bytes(buffer))
    return written


def _check_mp4_head(head: bytes, response: aiohttp.ClientResponse) -> None:
    """An MP4 (ISO base media) file opens with its `ftyp` box: a 4-byte size, then `ftyp`. Anything else (an
    HTML error page served with 200, an empty body) is not saved."""
    if len(head) < _MP4_HEAD_BYTES or head[4:8] != b"ftyp":
        kind = response.headers.get("Content-Type", "no Content-Type")
        raise DownloadError(
            f"the video host sent something that is not an MP4 file ({kind[:80]}, starting {head[:16]!r})"
        )


def _download_error(status: int, video: Video, body: str, retry_after: float | None) -> PixVerseError:
    if status in (401, 403, 410):
        expiry = f" (it expired at {video.expires_at:%Y-%m-%d %H:%M:%S} UTC)" if video.expires_at else ""
        return VideoExpiredError(
            f"the video link was refused with {status}{expiry}: it has expired; "
            "call get_task() on the task for a fresh link"
        )
    if status >= 500 or status == 429:
        return VideoHostError(status, retry_after)
    return DownloadError(f"the video host answered {status}: {shorten(body)}")


def _video_url_problem(url: str) -> str | None:
    """Why a video URL (or a redirect's target) is not fetched, or None. Parsed by yarl, as aiohttp will."""
    try:
        parsed = yarl.URL(url)
    except (TypeError, ValueError):
        return "it is not a valid URL"
    if parsed.scheme not in ("http", "https"):
        return f"unsupported URL scheme {parsed.scheme!r}" if parsed.scheme else "it is not an absolute URL"
    if not parsed.host:
        return "the URL has no host"
    if parsed.user is not None or parsed.password is not None:
        return "the URL carries credentials (user:password@), which are never sent"
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        return "the URL holds whitespace or a control character"
    return None


def _redirect_target(response: aiohttp.ClientResponse, url: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise DownloadError(f"the video host answered {response.status} without a Location to go to")
    try:
        target = str(yarl.URL(url).join(yarl.URL(location)))
    except (TypeError, ValueError):
        raise DownloadError(f"the video host redirected to {_shown_url(location)}: not a valid URL") from None
    problem = _video_url_problem(target)
    if problem is None and yarl.URL(url).scheme == "https" and yarl.URL(target).scheme == "http":
        # The signed query would then cross the network in clear.
        problem = "a redirect from https:// to http:// is not followed"
    if problem is not None:
        raise DownloadError(f"the video host redirected to {_shown_url(target)}: refused, {problem}")
    return target


def _shown_url(url: str) -> str:
    """A URL for a message: no credentials, no query (a signature), cut short."""
    try:
        parsed = yarl.URL(url)
        shown = str(parsed.with_user(None).with_query(None).with_fragment(None)) if parsed.absolute else url
    except (TypeError, ValueError):
        shown = url
    return repr(shown.split("?", 1)[0][:100])


def _is_refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Not global: loopback, RFC 1918, link-local, ULA, shared (CGNAT), reserved, documentation ranges.
    return not address.is_global or address.is_multicast


async def _refuse_private_host(url: str) -> None:
    """With `allow_private_video_hosts=False`: refuse a host that is, or resolves to, a non-global address
    (every address it resolves to is checked)."""
    parsed = yarl.URL(url)
    host = parsed.host or ""
    try:
        addresses = [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        try:
            infos = await anyio.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise DownloadConnectionError(f"cannot resolve the video host {host!r}: {error}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if _is_refused_address(address):
            raise DownloadError(
                f"the video host {host!r} is at {address}, a private address "
                "(refused with allow_private_video_hosts=False)"
            )


def _refuse_private_peer(response: aiohttp.ClientResponse, url: str) -> None:
    """The address actually connected to, checked too: a name may resolve differently a moment later."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return
    address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    if _is_refused_address(address):
        raise DownloadError(
            f"the video host {yarl.URL(url).host!r} is at {address}, a private address "
            "(refused with allow_private_video_hosts=False)"
        )


def _video_of(video: JobResult | TaskResult | Video) -> Video:
    if isinstance(video, Video):
        return video
    if isinstance(video, TaskResult):
        if not video.videos:
            raise DownloadError(f"task {video.task_id} has no video (status {video.status.name})")
        return video.videos[0]
    if isinstance(video, JobResult):
        if not video.videos:
            job = f"job {video.key!r}" if video.key is not None else "the job"
            if video.task_id is None:
                why = f"it was never submitted ({video.error})"
            elif video.error is not None:
                why = f"task {video.task_id} did not succeed ({video.error})"
            else:
                why = f"task {video.task_id} ended {video.status.name if video.status else 'without a status'}"
            raise DownloadError(f"{job} has no video: {why}")
        return video.videos[0]
    raise InvalidRequestError("video", f"must be a JobResult, a TaskResult or a Video, not {type(video).__name__}")


def _file_name_for(video: Video, source: JobResult | TaskResult | Video) -> str:
    if isinstance(source, TaskResult | JobResult) and source.task_id:
        stem = source.task_id
    else:
        stem = PurePosixPath(unquote(urlsplit(video.url).path)).stem or "video"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).lstrip(".") or "video"
    return f"{safe}.{video.type or 'mp4'}"
