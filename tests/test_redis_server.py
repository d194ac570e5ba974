"""The test Redis server itself: found on a fresh machine, on a random port, and restartable on it."""

from __future__ import annotations

import redis

from pixverse_async.testing import RedisServer, find_redis_server


def test_a_redis_server_binary_is_found() -> None:
    assert find_redis_server()


def test_the_server_answers_and_comes_back_empty_after_a_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
        redis_server.stop()
        assert not redis_server.running
        redis_server.start()
        assert client.get("k") is None  # nothing kept on disk: a restart is a crash
    finally:
        client.close()
