"""`pixverse-async run --dry-run`: the manifest and the journal checked as a run checks them, the plan
printed, nothing sent, nothing written."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixverse_async.testing import Simulator, TaskPlan
from tests.images import png

pytestmark = pytest.mark.anyio
SCALE = 0.001
COMMAND = [sys.executable, "-m", "pixverse_async"]


def plan(body: Mapping[str, Any]) -> TaskPlan | None:
    if str(body["prompt"]).startswith("fail"):
        return TaskPlan(duration=5, fail_reason="moderation")
    return TaskPlan(duration=10)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE, plan=plan, seed=11) as simulator:
        yield simulator


async def cli(*args: str, base_url: str | None, key: str | None = "sk-test") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
    if key is not None:
        env["PIXVERSE_API_KEY"] = key
    extra = ["--base-url", base_url, "--time-scale", str(SCALE)] if base_url is not None else []
    done = await anyio.run_process([*COMMAND, *args, *extra], env=env, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def planned(output: str) -> dict[str, int]:
    """The dry run's table as {action: rows}."""
    return {
        label.strip(): int(count) for label, count in re.findall(r"^│ (.+?)\s*│\s*(\d+) │$", output, flags=re.MULTILINE)
    }


def journal(path: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(path) as db:
        return {key: (state, task_id) for key, state, task_id in db.execute("SELECT key, state, task_id FROM rows")}


async def test_the_plan_matches_what_the_run_then_does_and_nothing_is_sent(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    first: list[dict[str, Any]] = [
        {"id": "done", "prompt": "a fox", "image": "a.png"},
        {"id": "gone", "prompt": "a cat", "image": "a.png"},
        {"id": "failed", "prompt": "fail: moderated", "image": "a.png"},
        {"id": "submitted", "prompt": "a boat", "image": "a.png"},
        {"id": "died-sending", "prompt": "a car", "image": "a.png"},
    ]
    manifest = write_jsonl(tmp_path / "jobs.jsonl", first)
    out = tmp_path / "out"
    assert (await cli("run", str(manifest), "--out", str(out), base_url=sim.base_url)).returncode == 1
    journal_path = out / "pixverse-journal.sqlite"
    with sqlite3.connect(journal_path) as db:  # as a run killed at two different moments leaves it
        db.execute("UPDATE rows SET state = 'submitted' WHERE key = 'submitted'")
        db.execute("UPDATE rows SET state = 'submitting', task_id = NULL WHERE key = 'died-sending'")
    (out / "gone.mp4").unlink()
    new: list[dict[str, Any]] = [
        {"id": "n1", "prompt": "p1", "image": "a.png"},
        {"id": "n2", "prompt": "p2", "image": "a.png", "resolution": "720p", "fast_mode": True},
        {"id": "n3", "prompt": "p3", "image": "a.png", "resolution": "720p", "fast_mode": True},
        {"id": "n4", "prompt": "p4", "image": "a.png", "resolution": "1080p"},
    ]
    write_jsonl(manifest, first + new)
    before = journal(journal_path)
    sim.reset_counters()

    dry = await cli("run", str(manifest), "--out", str(out), "--dry-run", base_url=sim.base_url)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert planned(dry.stdout) == {
        "submit (paid)": 4,
        "540p": 1,
        "720p, fast mode": 2,
        "1080p": 1,
        "poll (submitted earlier)": 1,
        "fetch again (file missing)": 1,
        "already done": 1,
        "left alone: uncertain (see below)": 1,
        "left alone: failed (--retry-failed)": 1,
        "total": 9,
    }, dry.stdout
    assert "row died-sending (line 5): uncertain, created or not unknown, left alone" in " ".join(dry.stdout.split())
    assert sim.counters.submit_requests == sim.counters.poll_requests == sim.counters.video_requests == 0
    assert journal(journal_path) == before  # read, never written: `submitting` is still there
    assert not (out / "gone.mp4").exists()

    real = await cli("run", str(manifest), "--out", str(out), base_url=sim.base_url)
    assert real.returncode == 1  # the failed and the uncertain rows
    assert sim.counters.tasks_created == 4  # the four new rows, as planned; nothing else paid for
    assert set(sim.counters.polls_by_task) >= {before["submitted"][1], before["gone"][1]}
    states = journal(journal_path)
    assert {key: state for key, (state, _) in states.items()} == {
        "done": "succeeded",
        "gone": "succeeded",
        "failed": "failed",
        "submitted": "succeeded",
        "died-sending": "uncertain",
        "n1": "succeeded",
        "n2": "succeeded",
        "n3": "succeeded",
        "n4": "succeeded",
    }


async def test_a_dry_run_needs_no_key_no_network_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "p", "image": "a.png", "fast_mode": True}])
    out = tmp_path / "out"
    dry = await cli(
        "run",
        str(manifest),
        "--out",
        str(out),
        "--dry-run",
        "--base-url",
        "http://127.0.0.1:9",
        base_url=None,
        key=None,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert planned(dry.stdout)["submit (paid)"] == 1 and planned(dry.stdout)["540p, fast mode"] == 1
    assert "no API key" in dry.stdout and "http://127.0.0.1:9" in dry.stdout
    assert not out.exists()
    # The options are still checked as a run checks them.
    bad_url = await cli("run", str(manifest), "--out", str(out), "--dry-run", "--base-url", "ftp://x", base_url=None)
    assert bad_url.returncode == 2 and "--base-url" in bad_url.stderr  # refused at parse time, as by run


async def test_a_dry_run_refuses_what_the_run_refuses(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "r", "prompt": "a fox", "image": "a.png"}])
    out = tmp_path / "out"
    assert (await cli("run", str(manifest), "--out", str(out), base_url=sim.base_url)).returncode == 0
    write_jsonl(manifest, [{"id": "r", "prompt": "a different fox", "image": "a.png"}])
    for extra in ((), ("--dry-run",)):
        refused = await cli("run", str(manifest), "--out", str(out), *extra, base_url=sim.base_url)
        assert refused.returncode == 1 and "changed since it was submitted" in refused.stderr
    write_jsonl(manifest, [{"id": "r", "prompt": "a fox", "image": "missing.png"}])
    bad = await cli("run", str(manifest), "--out", str(out), "--dry-run", base_url=sim.base_url)
    assert bad.returncode == 2 and "missing.png" in bad.stderr
    assert sim.counters.tasks_created == 1


async def test_a_dry_run_refuses_a_journal_of_another_manifest_as_the_run_does(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    first = write_jsonl(tmp_path / "first.jsonl", [{"id": "a", "prompt": "a fox", "image": "a.png"}])
    out = tmp_path / "out"
    assert (await cli("run", str(first), "--out", str(out), base_url=sim.base_url)).returncode == 0
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "x", "prompt": "another batch", "image": "a.png"}])
    sim.reset_counters()
    dry = await cli("run", str(other), "--out", str(out), "--dry-run", base_url=sim.base_url)
    assert dry.returncode == 1 and "belongs to another manifest" in dry.stderr, dry.stdout + dry.stderr
    assert sim.counters.submit_requests == sim.counters.poll_requests == 0
