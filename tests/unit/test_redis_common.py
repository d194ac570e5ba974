"""The Redis plumbing shared by `RedisBudget` and the shared run's journal: one rule each."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from pixverse_async._redis_common import (
    OUTAGE_FIRST_WAIT_REAL_SECONDS,
    OUTAGE_LONGEST_WAIT_REAL_SECONDS,
    is_redis_url,
    namespace,
    outage_wait,
    process_id,
    redis_asyncio,
    shown_url,
)
from pixverse_async.cli.redis_journal import default_run_name, run_keys
from pixverse_async.redis import RedisBudget


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://host:6379/0"),
        ("redis://admin:s3cret@host:6379/0", "redis://host:6379/0"),
        ("rediss://token@host/1", "rediss://host/1"),  # a user alone may be the secret (an ACL token)
        ("redis://host:6379/2", "redis://host:6379/2"),
        ("redis://[::1", "<unparsable URL>"),
    ],
)
def test_a_shown_url_has_neither_user_nor_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_the_budget_shows_its_url_by_that_rule() -> None:
    budget = RedisBudget("redis://admin:s3cret@host:6379/0")
    assert "admin" not in repr(budget) and "s3cret" not in repr(budget) and "redis://host:6379/0" in repr(budget)


def test_redis_urls_are_known_by_scheme() -> None:
    assert all(is_redis_url(url) for url in ("redis://h/0", "rediss://h/0", "unix:///tmp/redis.sock"))
    assert not any(is_redis_url(url) for url in ("http://h/0", "journal.sqlite", "redis"))


def test_outage_waits_double_up_to_the_longest_with_jitter() -> None:
    rng = random.Random(21)
    for failures in range(1, 20):
        ceiling = min(OUTAGE_LONGEST_WAIT_REAL_SECONDS, OUTAGE_FIRST_WAIT_REAL_SECONDS * 2 ** (failures - 1))
        waits = [outage_wait(failures, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
        assert len(set(waits)) > 1  # jittered: workers cut off together do not come back in step
    assert max(outage_wait(50, longest=0.1, rng=rng) for _ in range(50)) <= 0.1


def test_process_ids_are_unique_and_name_the_host_and_pid() -> None:
    first, second = process_id(), process_id()
    assert first != second and first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]
    assert first.split(":")[1].isdigit()


def test_keys_of_a_run_share_one_hash_tag_per_run() -> None:
    keys = run_keys("jobs.csv")
    assert keys == [f"pixverse-async:{{run:jobs.csv}}:{part}" for part in ("meta", "rows", "claims", "leases", "queue")]
    assert namespace("pixverse-async", "key-ab") == "pixverse-async:{key-ab}"
    assert default_run_name(Path("/mnt/a/my jobs.csv")) == "my_jobs.csv"


def test_the_import_guard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"a thing needs the redis package: pip install 'pixverse-async\[redis\]'"):
        redis_asyncio("a thing")
