from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixverse_async.testing import RedisServer
from pixverse_async.testing import redis_server as start_redis_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytest_plugins = ["pytester"]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a random port, for this test only (stopped and removed after it)."""
    with start_redis_server() as server:
        yield server
