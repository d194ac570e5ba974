"""A real HTTP forward proxy on a loopback port, for tests: plain requests in absolute form are forwarded as
they are, `CONNECT host:port` opens a tunnel; everything the proxy receives from its clients is kept, as a
proxy's log (or a capture on its wire) would show it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import attrs


@attrs.define
class ProxyLog:
    """What passed through the proxy: `url` to point HTTPS_PROXY/HTTP_PROXY at, each request line it was asked
    (`CONNECT host:port HTTP/1.1`, `GET http://... HTTP/1.1`), and every byte its clients sent."""

    url: str = ""
    request_lines: list[str] = attrs.Factory(list)
    received: bytearray = attrs.Factory(bytearray)

    @property
    def connects(self) -> list[str]:
        return [line.split()[1] for line in self.request_lines if line.startswith("CONNECT ")]


async def _pipe(source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, log: ProxyLog | None) -> None:
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        async for chunk in source:
            if log is not None:
                log.received += chunk
                _note_request_lines(log, chunk)
            await sink.send(chunk)
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await sink.send_eof()


_ABSOLUTE_REQUEST_LINE = re.compile(rb"(?m)^[A-Z]+ https?://\S+ HTTP/1\.1\r$")


def _note_request_lines(log: ProxyLog, chunk: bytes) -> None:
    # Later requests in absolute form on a kept-alive connection: each starts a line of its own.
    log.request_lines += [
        match.group().decode("latin-1").rstrip("\r") for match in _ABSOLUTE_REQUEST_LINE.finditer(chunk)
    ]


async def _serve_client(client: anyio.abc.SocketStream, log: ProxyLog) -> None:
    async with client:
        head = b""
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in head:
                head += await client.receive()
        log.received += head
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        log.request_lines.append(request_line)
        method, target, _ = request_line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            rest = head.split(b"\r\n\r\n", 1)[1]
            upstream = await anyio.connect_tcp(host.strip("[]"), int(port))
            await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                await upstream.send(rest)
        else:
            authority = target.split("://", 1)[1].split("/", 1)[0]
            host, _, port = authority.rpartition(":")
            upstream = await anyio.connect_tcp(host.strip("[]"), int(port or 80))
            await upstream.send(head)  # absolute form: the simulator's aiohttp server takes it as it is
        async with upstream, anyio.create_task_group() as group:
            group.start_soon(_pipe, client, upstream, log)
            await _pipe(upstream, client, None)
            group.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def http_proxy() -> AsyncIterator[ProxyLog]:
    """Run the proxy on a random loopback port while the block runs."""
    log = ProxyLog()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    log.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, lambda stream: _serve_client(stream, log))
        try:
            yield log
        finally:
            group.cancel_scope.cancel()
