"""Taking over a dead worker's row (`RedisJournal` against a real redis-server): what the dead worker's own log
says decides, not the state Redis last heard."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from pixverse_async.cli.journal import Work
from pixverse_async.cli.manifest import ManifestRow, read_manifest
from pixverse_async.cli.redis_journal import RedisJournal, RedisJournalError, read_run, run_keys
from pixverse_async.cli.run import manifest_identity
from pixverse_async.testing import InstantClock, RedisServer
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
        client.zadd(run_keys("jobs.jsonl")[3], {worker: 0})
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
    dead = RedisJournal(
        redis_server.url, out=tmp_path / "out", concurrency=4, run_name="jobs.jsonl", lease=30, say=said.append
    )
    await dead.join(*identity, rows)
    claims = dead.work([])
    assert await anext(claims) == Work("only")  # Redis now says `submitting`, whatever happens next
    if what_it_did in ("sent", "answered"):
        dead.submitting("only", None, 0.0)
    if what_it_did == "answered":
        dead.submitted("only", "task-1")  # in the log; the outbox is never written: the worker dies now
    end_lease(redis_server.url, dead.worker)

    heir = RedisJournal(
        redis_server.url, out=tmp_path / "out", concurrency=4, run_name="jobs.jsonl", lease=30, say=said.append
    )
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


async def test_a_worker_that_stalled_past_half_its_lease_does_not_send_the_row(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, rows = one_row(tmp_path)
    clock = InstantClock()
    journal = RedisJournal(
        redis_server.url, out=tmp_path / "out", concurrency=4, run_name="jobs.jsonl", lease=30, clock=clock
    )
    try:
        await journal.join(*manifest_identity(manifest, rows), rows)
        assert await anext(journal.work([])) == Work("only")
        clock.current += 16  # frozen for more than half a lease since the claim: another worker may own it now
        with pytest.raises(RedisJournalError, match="lease may have lapsed"):
            journal.submitting("only", None, 0.0)
    finally:
        await journal.aclose(flush_timeout=5)
    (entry,) = (await read_run(redis_server.url, "jobs.jsonl"))[0]
    assert entry.state == "todo"  # given back: it was never sent


async def test_a_worker_sends_a_row_it_has_just_claimed(redis_server: RedisServer, tmp_path: Path) -> None:
    manifest, rows = one_row(tmp_path)
    clock = InstantClock()
    journal = RedisJournal(
        redis_server.url, out=tmp_path / "out", concurrency=4, run_name="jobs.jsonl", lease=30, clock=clock
    )
    try:
        await journal.join(*manifest_identity(manifest, rows), rows)
        assert await anext(journal.work([])) == Work("only")
        clock.current += 14  # less than half a lease
        journal.submitting("only", None, 0.0)
        journal.submitted("only", "task-1")
    finally:
        await journal.aclose(flush_timeout=5)
    (entry,) = (await read_run(redis_server.url, "jobs.jsonl"))[0]
    assert entry.state == "submitted" and entry.task_id == "task-1"


async def test_a_run_redis_lost_is_made_again_from_the_logs_of_its_own_manifest_only(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, rows = one_row(tmp_path)
    out = tmp_path / "out"
    worker = RedisJournal(redis_server.url, out=out, concurrency=4, run_name="jobs.jsonl", lease=30)
    try:
        await worker.join(*manifest_identity(manifest, rows), rows)
        assert await anext(worker.work([])) == Work("only")
        worker.submitting("only", None, 0.0)
        worker.submitted("only", "task-1")
        worker.succeeded("only", "only.mp4", 10, "0" * 64)
    finally:
        await worker.aclose(flush_timeout=5)
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()  # Redis lost everything
    client.close()

    # Another manifest sharing OUT (the same row key, other content) starts from nothing...
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "only", "prompt": "a cat", "image": "a.png"}])
    other_rows = read_manifest(other)
    stranger = RedisJournal(redis_server.url, out=out, concurrency=4, run_name="jobs.jsonl", lease=30)
    try:
        (entry,) = await stranger.join(*manifest_identity(other, other_rows), other_rows)
    finally:
        await stranger.aclose(flush_timeout=5)
    assert entry.state == "todo" and entry.task_id is None
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()

    # ...while this manifest's run comes back as its worker left it: nothing to buy again.
    heir = RedisJournal(redis_server.url, out=out, concurrency=4, run_name="jobs.jsonl", lease=30)
    try:
        (entry,) = await heir.join(*manifest_identity(manifest, rows), rows)
    finally:
        await heir.aclose(flush_timeout=5)
    assert (entry.state, entry.task_id, entry.file, entry.size) == ("succeeded", "task-1", "only.mp4", 10)
