"""One contract, two journals: every scenario runs against `SQLiteJournal` (a file) and `RedisJournal` (a real
redis-server), through what a run calls (join, the records, work, entries), and expects the same rows.

The rows expected are written out here, not read from `transitions.TRANSITIONS`: a change to the table shows
up as a change to these expectations, and a journal that strays from the table (its own column list, a Lua
script that drops a field) fails for itself alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pixverse_async.cli.journal import JournalError, JournalRow, RunJournal, SQLiteJournal, Work
from pixverse_async.cli.manifest import ManifestRow, read_manifest
from pixverse_async.cli.redis_journal import RedisJournal
from pixverse_async.testing import RedisServer
from tests.cli.test_cli import write_jsonl
from tests.images import png

pytestmark = pytest.mark.anyio
MakeJournal = Callable[[], RunJournal]


@pytest.fixture(params=["sqlite", "redis"])
def make_journal(request: pytest.FixtureRequest, tmp_path: Path) -> MakeJournal:
    if request.param == "sqlite":
        return lambda: SQLiteJournal(tmp_path / "journal.sqlite")
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: RedisJournal(server.url, out=tmp_path / "out", concurrency=4, run_name="jobs.jsonl", lease=30)


@pytest.fixture
def rows(tmp_path: Path) -> list[ManifestRow]:
    (tmp_path / "a.png").write_bytes(png())
    return read_manifest(write_jsonl(tmp_path / "jobs.jsonl", [{"id": "r1", "prompt": "a fox", "image": "a.png"}]))


@pytest.fixture
async def journal(make_journal: MakeJournal, rows: list[ManifestRow]) -> AsyncIterator[RunJournal]:
    """A journal joined by a run of `rows`, its one row planned to submit and taken (as `ManifestRun.plan`
    and `_jobs` do), ready for the records of a submission."""
    opened = make_journal()
    try:
        found = await opened.join("/manifests/jobs.jsonl", "rows-digest", rows)
        row = rows[0]
        if not found:
            opened.add(row.key, row.line, row.fingerprint)
        opened.reset(row.key, row.fingerprint)
        work = opened.work([Work(row.key)])
        assert await anext(work) == Work(row.key)
        yield opened
    finally:
        await opened.aclose(flush_timeout=5)


async def entry_of(journal: RunJournal) -> dict[str, Any]:
    if isinstance(journal, RedisJournal):
        await journal._flush()  # what keep_alive does beside a run
    (entry,) = await journal.entries()
    assert isinstance(entry, JournalRow)
    return {name: getattr(entry, name) for name in ("state", *NOTHING)}


NOTHING = {
    "task_id": None,
    "file": None,
    "size": None,
    "sha256": None,
    "reason": None,
    "webhook_token": None,
    "sent_at": None,
    "likely_created": None,
}
TOKEN = "5e" * 16
SENT_AT = 1700000000.25
SENT = ("submitting", (None, SENT_AT))
SENT_WITH_TOKEN = ("submitting", (TOKEN, SENT_AT))
SCENARIOS: dict[str, tuple[list[tuple[str, tuple[Any, ...]]], dict[str, Any]]] = {
    "submitted": ([SENT, ("submitted", ("t1",))], {"state": "submitted", "task_id": "t1", "sent_at": SENT_AT}),
    "succeeded": (
        [
            SENT,
            ("submitted", ("t1",)),
            ("not_downloaded", ("link expired",)),
            ("succeeded", ("r1.mp4", 5, "ab")),
        ],
        {"state": "succeeded", "task_id": "t1", "file": "r1.mp4", "size": 5, "sha256": "ab", "sent_at": SENT_AT},
    ),
    "refetched": (
        [SENT, ("submitted", ("t1",)), ("succeeded", ("r1.mp4", 5, "ab")), ("refetch", ("file gone",))],
        {"state": "submitted", "task_id": "t1", "reason": "file gone", "sent_at": SENT_AT},
    ),
    "not downloaded": (
        [SENT, ("submitted", ("t1",)), ("not_downloaded", ("link expired",))],
        {"state": "submitted", "task_id": "t1", "reason": "link expired", "sent_at": SENT_AT},
    ),
    "failed, the task id kept": (
        [SENT, ("submitted", ("t1",)), ("failed", ("moderated",))],
        {"state": "failed", "task_id": "t1", "reason": "moderated", "sent_at": SENT_AT},
    ),
    "failed with its task id": (
        [SENT, ("failed", ("moderated", "t2"))],
        {"state": "failed", "task_id": "t2", "reason": "moderated", "sent_at": SENT_AT},
    ),
    "uncertain": (
        [SENT, ("uncertain", ("answer lost",))],
        {"state": "uncertain", "reason": "answer lost", "sent_at": SENT_AT},
    ),
    "sent with a webhook token": (
        [SENT_WITH_TOKEN],
        {"state": "submitting", "webhook_token": TOKEN, "sent_at": SENT_AT},
    ),
    "uncertain, judged not created": (
        [SENT_WITH_TOKEN, ("uncertain", ("no delivery", False))],
        {
            "state": "uncertain",
            "reason": "no delivery",
            "webhook_token": TOKEN,
            "sent_at": SENT_AT,
            "likely_created": False,
        },
    ),
    "uncertain, then found by its delivery": (
        [SENT_WITH_TOKEN, ("uncertain", ("no delivery", False)), ("submitted", ("t1",))],
        {
            "state": "submitted",
            "task_id": "t1",
            "reason": "no delivery",
            "webhook_token": TOKEN,
            "sent_at": SENT_AT,
        },
    ),
    "reset after an uncertain submission": (
        [SENT_WITH_TOKEN, ("uncertain", ("no delivery", False)), ("reset", ("fp-2",))],
        {"state": "todo"},
    ),
    "reset after a failure": (
        [SENT, ("submitted", ("t1",)), ("failed", ("moderated",)), ("reset", ("fp-2",))],
        {"state": "todo"},
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_records_set_and_clear_the_same_fields_in_both_journals(journal: RunJournal, scenario: str) -> None:
    records, expected = SCENARIOS[scenario]
    for record, arguments in records:
        getattr(journal, record)("r1", *arguments)
    assert await entry_of(journal) == {**NOTHING, **expected}


@pytest.mark.parametrize(
    ("path", "digest", "same"),
    [
        ("/manifests/jobs.jsonl", "rows-digest", True),
        ("/manifests/jobs.jsonl", "edited", True),  # the same file, edited
        ("/elsewhere/jobs.jsonl", "rows-digest", True),  # the same rows, moved
        ("/elsewhere/jobs.jsonl", "edited", False),
    ],
)
async def test_both_journals_keep_one_same_manifest_rule_and_one_message(
    make_journal: MakeJournal, rows: list[ManifestRow], path: str, digest: str, same: bool
) -> None:
    first = make_journal()
    try:
        await first.join("/manifests/jobs.jsonl", "rows-digest", rows)
    finally:
        await first.aclose(flush_timeout=5)
    second = make_journal()
    try:
        if same:
            await second.join(path, digest, rows)
        else:
            with pytest.raises(JournalError) as refused:
                await second.join(path, digest, rows)
            message = str(refused.value)
            assert message.startswith(f"the journal {second.where} belongs to another manifest (/manifests/jobs.jsonl)")
            assert "; nothing was sent (" in message
    finally:
        await second.aclose(flush_timeout=5)
