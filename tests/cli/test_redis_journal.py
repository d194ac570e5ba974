"""Taking over a dead worker's row (`RedisJournal` against a real redis-server): what the dead worker's own log
says decides, not the state Redis last heard."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from pixverse_async.cli.journal import Work
from pixverse_async.cli.manifest import ManifestRow, read_manifest
from pixverse_async.cli.redis_journal import RedisJournal
from pixverse_async.cli.run import manifest_identity
from pixverse_async.testing import RedisServer
from tests.cli.test_cli import write_jsonl
from tests.images import png

pytestmark = pytest.mark.anyio


def one_row(tmp_path: Path) -> tuple[Path, list[ManifestRow]]:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "only", "prompt": "a fox", "image": "a.png"}])
    return manifest, read_manifest(manifest)


def end_lease(url: str, worker: str) -> None:
    """As if `worker` had died a lease ago: the next claim or start sweeps its rows."""
    client = redis.Redis.from_url(url)
    try:
        client.zadd("pixverse-async:run:leases", {worker: 0})
    finally:
        client.close()


@pytest.mark.parametrize(
    ("what_it_did", "then"),
    [
        ("claimed", "to do"),  # it died before the request went out: nothing was bought
        ("sent", "uncertain"),  # the request was on the wire: never bought again unless asked
        ("answered", "polled"),  # its answer reached the log but not Redis: the paid task is followed
    ],
)
async def test_a_dead_workers_row_is_taken_over_by_what_its_log_says(
    redis_server: RedisServer, tmp_path: Path, what_it_did: str, then: str
) -> None:
    manifest, rows = one_row(tmp_path)
    identity = manifest_identity(manifest, rows)
    said: list[str] = []
    dead = RedisJournal(redis_server.url, out=tmp_path / "out", concurrency=4, lease=30, say=said.append)
    await dead.join(*identity, rows)
    claims = dead.work([])
    assert await anext(claims) == Work("only")  # Redis now says `submitting`, whatever happens next
    if what_it_did in ("sent", "answered"):
        dead.submitting("only")
    if what_it_did == "answered":
        dead.submitted("only", "task-1")  # in the log; the outbox is never written: the worker dies now
    end_lease(redis_server.url, dead.worker)

    heir = RedisJournal(redis_server.url, out=tmp_path / "out", concurrency=4, lease=30, say=said.append)
    try:
        (entry,) = await heir.join(*identity, rows)
        taken = [work async for work in heir.work([])]
    finally:
        await heir.aclose(flush_timeout=5)
        await dead.aclose(flush_timeout=5)
    if then == "to do":
        assert entry.state == "todo" and taken == [Work("only")]
    elif then == "uncertain":
        assert entry.state == "uncertain" and taken == []
        assert any(line.startswith("row only: UNCERTAIN, its worker") for line in said), said
    else:
        assert entry.state == "submitted" and entry.task_id == "task-1" and taken == [Work("only", "task-1")]
