"""What a run checks before paying (one writer per journal, its manifest, an output folder that takes files) and
after (a succeeded row has its file, with the size and sha256 the journal recorded). Real processes, real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pixverse_async.testing import Fault, Simulator, TaskPlan
from tests.cli.test_cli import COMMAND, SCALE, cli, journal_states, write_jsonl
from tests.images import png


def journal_reasons(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return {key: reason or "" for key, reason in db.execute("SELECT key, reason FROM rows")}


pytestmark = pytest.mark.anyio
UNREACHABLE = ("--base-url", "http://127.0.0.1:9", "--time-scale", str(SCALE))


def plan(body: Mapping[str, Any]) -> TaskPlan | None:
    if str(body["prompt"]).startswith("hold"):
        return TaskPlan(duration=1_000_000)  # runs until the test moves the simulator's clock
    return TaskPlan(duration=10)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE, plan=plan, seed=7) as simulator:
        yield simulator


@pytest.fixture
def frame(tmp_path: Path) -> str:
    (tmp_path / "a.png").write_bytes(png())
    return "a.png"


def rows(*keys: str, prompt: str = "a fox", image: str = "a.png") -> list[dict[str, Any]]:
    return [{"id": key, "prompt": f"{prompt} {key}", "image": image} for key in keys]


def video_of(sim: Simulator, prompt: str) -> bytes:
    (task_id,) = [task_id for task_id, task in sim.tasks.items() if task.prompt == prompt]
    return sim.video_bytes(task_id)


async def test_a_second_run_of_a_journal_in_use_is_refused_and_pays_nothing(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("r1", prompt="hold") + rows("r2", "r3", "r4"))
    out = tmp_path / "out"
    args = [*COMMAND, "run", str(manifest), "--out", str(out), "--concurrency", "1"]
    args += ["--base-url", sim.base_url, "--time-scale", str(SCALE)]
    env = {**os.environ, "PIXVERSE_API_KEY": "sk-test"}
    async with await anyio.open_process(args, env=env, stderr=subprocess.DEVNULL) as first:
        assert first.stdout is not None
        output = BufferedByteReceiveStream(first.stdout)
        with anyio.fail_after(30):
            while b"submitted row" not in await output.receive_until(b"\n", 10_000):
                pass
        # The first run holds one endless task; three rows are still to do, and a second writer would buy them.
        try:
            with anyio.fail_after(60):  # a second writer would poll the endless task too, and never end
                second = await cli("run", str(manifest), "--out", str(out), "--concurrency", "4", sim=sim)
                journal = str(out / "pixverse-journal.sqlite")
                other_out = await cli(
                    "run", str(manifest), "--out", str(tmp_path / "other"), "--journal", journal, sim=sim
                )
        finally:
            first.send_signal(signal.SIGKILL)
    for refused in (second, other_out):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"in use by another run (pid {first.pid})" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert sim.counters.submit_requests == 1 and sim.counters.tasks_created == 1

    # kill -9 left no stale lock: the next run takes the journal, resumes the paid task and buys the rest once.
    sim.advance(1_000_000)
    with anyio.fail_after(60):
        third = await cli("run", str(manifest), "--out", str(out), "--concurrency", "4", sim=sim)
    assert third.returncode == 0, third.stdout + third.stderr
    assert sim.counters.tasks_created == 4 and set(sim.counters.tasks_created_by_prompt.values()) == {1}


@contextlib.asynccontextmanager
async def a_run_holding_its_journal(sim: Simulator, manifest: Path, out: Path) -> AsyncIterator[anyio.abc.Process]:
    """A `run` of `manifest` at concurrency 1, once it has submitted its first row (a task that never ends):
    from then on it holds its journal in `out` until it is killed."""
    args = [*COMMAND, "run", str(manifest), "--out", str(out), "--concurrency", "1"]
    args += ["--base-url", sim.base_url, "--time-scale", str(SCALE)]
    env = {**os.environ, "PIXVERSE_API_KEY": "sk-test"}
    async with await anyio.open_process(args, env=env, stderr=subprocess.DEVNULL) as first:
        assert first.stdout is not None
        output = BufferedByteReceiveStream(first.stdout)
        with anyio.fail_after(30):
            while b"submitted row" not in await output.receive_until(b"\n", 10_000):
                pass
        yield first


async def test_a_journal_reached_by_another_name_is_the_same_journal_and_pays_nothing_twice(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    """The lock is on the journal itself: a hard link, a symlink or `--journal` beside another `--out` reach the
    same file, so a second run through any of them is refused while the first holds it."""
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("r1", prompt="hold") + rows("r2", "r3", "r4"))
    out = tmp_path / "out"
    journal = out / "pixverse-journal.sqlite"
    async with a_run_holding_its_journal(sim, manifest, out) as first:
        (tmp_path / "elsewhere").mkdir()
        symlinked = tmp_path / "elsewhere" / "symlinked.sqlite"
        symlinked.symlink_to(journal)
        refused = []
        try:
            # A run that proceeds buys rows the first run owns, then polls the endless task and never ends.
            with anyio.fail_after(60):
                for other_out, other_journal in (
                    (tmp_path / "out-symlinked", symlinked),
                    (tmp_path / "out-beside", tmp_path / "out" / ".." / "out" / "pixverse-journal.sqlite"),
                ):
                    command = ("run", str(manifest), "--out", str(other_out), "--journal", str(other_journal))
                    refused.append(await cli(*command, "--concurrency", "4", sim=sim))
        finally:
            first.send_signal(signal.SIGKILL)
    for run in refused:
        assert run.returncode == 1, run.stdout + run.stderr
        assert f"in use by another run (pid {first.pid})" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    assert sim.counters.submit_requests == 1 and sim.counters.tasks_created == 1


async def test_a_hard_linked_journal_is_refused_by_every_name_and_pays_nothing_twice(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    """SQLite names its write-ahead log after the path it was opened by: a run through a hard link would not see
    the rows a killed run left in the log of the other name (and would pay for them again), so a journal with
    more than one name is refused."""
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("r1", prompt="hold") + rows("r2", "r3", "r4"))
    out = tmp_path / "out"
    journal = out / "pixverse-journal.sqlite"
    async with a_run_holding_its_journal(sim, manifest, out) as first:
        hard_linked = tmp_path / "hard-linked.sqlite"
        os.link(journal, hard_linked)
        try:
            with anyio.fail_after(60):  # a run that proceeds polls the endless task and never ends
                through_link = await cli(
                    "run",
                    str(manifest),
                    "--out",
                    str(tmp_path / "out-linked"),
                    "--journal",
                    str(hard_linked),
                    "--concurrency",
                    "4",
                    sim=sim,
                )
        finally:
            first.send_signal(signal.SIGKILL)
    # The first run was killed with its records in the log of its own name: by either name, a run is refused.
    for refused in (through_link, await cli("run", str(manifest), "--out", str(out), sim=sim)):
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "has 2 names (hard links)" in refused.stderr and "nothing was sent" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert sim.counters.submit_requests == 1
    hard_linked.unlink()
    sim.advance(1_000_000)
    with anyio.fail_after(60):
        resumed = await cli("run", str(manifest), "--out", str(out), "--concurrency", "4", sim=sim)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sim.counters.tasks_created == 4 and set(sim.counters.tasks_created_by_prompt.values()) == {1}


async def test_an_output_folder_that_refuses_files_is_found_before_paying(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    refusing = Path("/sys")  # refuses new files even for root, unlike a folder made read-only with chmod
    try:
        (refusing / ".pixverse-test").touch()
    except OSError:
        pass
    else:
        (refusing / ".pixverse-test").unlink()
        pytest.skip("/sys takes files here")
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("a", "b", "c"))
    journal = tmp_path / "journal.sqlite"
    (tmp_path / "file").write_text("a file where a folder should be")
    for out in (refusing, tmp_path / "file" / "videos", tmp_path / "file"):
        done = await cli("run", str(manifest), "--out", str(out), "--journal", str(journal), sim=sim)
        assert sim.counters.submit_requests == 0 and done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.startswith(f"pixverse-async: error: --out {out}: ") and "nothing was sent" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert sim.counters.submit_requests == 0 and not journal.exists()
    assert not list(tmp_path.glob("**/.pixverse-probe-*"))


async def test_a_journal_where_no_file_can_be_written_is_refused_in_one_line(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    """A read-only file system (here /sys, which refuses new files even to root) names the journal, not its
    lock file, and says nothing was sent."""
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("a"))
    journal = Path("/sys/pixverse-journal.sqlite")
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), "--journal", str(journal), sim=sim)
    assert done.returncode == 1 and sim.counters.submit_requests == 0, done.stdout + done.stderr
    assert done.stderr.startswith(f"pixverse-async: error: the journal {journal} cannot be opened for writing: ")
    assert done.stderr.endswith("; nothing was sent\n") and len(done.stderr.splitlines()) == 1
    assert "Errno" not in done.stderr and ".lock" not in done.stderr


async def test_a_missing_or_changed_video_is_not_reported_as_succeeded(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("a", "b", "c"))
    out = tmp_path / "out"
    assert (await cli("run", str(manifest), "--out", str(out), sim=sim)).returncode == 0
    (out / "b.mp4").unlink()
    corrupted = bytearray((out / "c.mp4").read_bytes())
    corrupted[-1] ^= 0xFF  # same size, other content: only the sha256 can tell
    (out / "c.mp4").write_bytes(corrupted)

    offline = await cli("run", str(manifest), "--out", str(out), *UNREACHABLE)
    assert offline.returncode == 1, offline.stdout + offline.stderr
    # The summary's tables: the counts by state, and the rows that did not succeed (with why, in the journal).
    assert re.search(r"succeeded\W+1\b", offline.stdout) and re.search(r"submitted\W+2\b", offline.stdout)
    assert "rows that did not succeed" in offline.stdout
    reasons = journal_reasons(out / "pixverse-journal.sqlite")
    assert "b.mp4 is missing; not fetched again" in reasons["b"]
    assert "c.mp4 is not the video downloaded" in reasons["c"] and "not fetched again" in reasons["c"]
    assert journal_states(out / "pixverse-journal.sqlite") == {"a": "succeeded", "b": "submitted", "c": "submitted"}
    status = await cli("status", "--journal", str(out / "pixverse-journal.sqlite"), "--json")
    (row_b,) = [row for row in json.loads(status.stdout) if row["key"] == "b"]
    assert "b.mp4 is missing; not fetched again" in row_b["reason"]

    online = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert online.returncode == 0, online.stdout + online.stderr
    for key in ("a", "b", "c"):
        assert (out / f"{key}.mp4").read_bytes() == video_of(sim, f"a fox {key}")
    assert sim.counters.tasks_created == 3


async def test_a_journal_of_an_earlier_version_is_migrated_and_its_files_checked(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("a", "b"))
    out = tmp_path / "out"
    assert (await cli("run", str(manifest), "--out", str(out), sim=sim)).returncode == 0
    path = out / "pixverse-journal.sqlite"
    with sqlite3.connect(path) as db:  # the journal as a version without size, sha256 and meta would have it
        db.execute("DROP TABLE IF EXISTS meta")
        db.execute("ALTER TABLE rows DROP COLUMN size")
        db.execute("ALTER TABLE rows DROP COLUMN sha256")
    (out / "b.mp4").write_bytes(b"not the video")
    again = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert again.returncode == 0, again.stdout + again.stderr
    with sqlite3.connect(path) as db:
        recorded = dict(db.execute("SELECT key, sha256 FROM rows"))
    assert all(len(digest) == 64 for digest in recorded.values())
    assert (out / "b.mp4").read_bytes() == video_of(sim, "a fox b") and sim.counters.tasks_created == 2


async def test_a_journal_made_from_another_manifest_is_refused(sim: Simulator, tmp_path: Path, frame: str) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", rows("a", "b"))
    out = tmp_path / "out"
    assert (await cli("run", str(first), "--out", str(out), sim=sim)).returncode == 0

    other = write_jsonl(tmp_path / "other.jsonl", rows("x", "y", prompt="another batch"))
    refused = await cli("run", str(other), "--out", str(out), sim=sim)
    assert refused.returncode == 1
    assert f"belongs to another manifest ({first})" in refused.stderr and "--journal" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and sim.counters.submit_requests == 2

    own = await cli("run", str(other), "--out", str(out), "--journal", str(tmp_path / "other.sqlite"), sim=sim)
    assert own.returncode == 0 and sim.counters.tasks_created == 4

    # The same manifest moved (same rows), or edited in place (same file), is still the journal's own.
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.png").write_bytes(png())
    moved = tmp_path / "moved" / "first.jsonl"
    moved.write_bytes(first.read_bytes())
    assert (await cli("run", str(moved), "--out", str(out), sim=sim)).returncode == 0
    assert sim.counters.tasks_created == 4
    write_jsonl(moved, rows("b", "c"))  # a dropped, c added
    edited = await cli("run", str(moved), "--out", str(out), sim=sim)
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert sim.counters.tasks_created == 5 and re.search(r"total\W+2\b", edited.stdout)  # only this manifest's rows


async def test_a_video_whose_fresh_link_fails_too_is_named_in_the_summary(
    sim: Simulator, tmp_path: Path, frame: str
) -> None:
    manifest = write_jsonl(tmp_path / "jobs.jsonl", rows("v"))
    out = tmp_path / "out"
    sim.inject(Fault("video", "expired", times=2))  # the link from task-result expires too
    first = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert first.returncode == 1, first.stdout + first.stderr
    assert journal_states(out / "pixverse-journal.sqlite") == {"v": "submitted"}
    assert "video not downloaded" in journal_reasons(out / "pixverse-journal.sqlite")["v"]
    assert "rows that did not succeed" in first.stdout and not (out / "v.mp4").exists()
    again = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert again.returncode == 0 and (out / "v.mp4").read_bytes() == video_of(sim, "a fox v")
    assert sim.counters.tasks_created == 1
