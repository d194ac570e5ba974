"""The `pixverse-async` command, run for real in a subprocess against a simulator in the test process."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pixverse_async import ImageToVideo, PixVerseClient, TaskStatus
from pixverse_async.cli.main import main
from pixverse_async.testing import Fault, ScaledClock, Simulator, TaskPlan
from tests.images import jpeg, png

pytestmark = pytest.mark.anyio
SCALE = 0.001
COMMAND = [sys.executable, "-m", "pixverse_async"]


def plan(body: Mapping[str, Any]) -> TaskPlan | None:
    prompt = str(body["prompt"])
    if prompt.startswith("fail"):
        return TaskPlan(duration=5, fail_reason="moderation")
    if prompt.startswith("slow"):
        return TaskPlan(duration=300)
    return TaskPlan(duration=10)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE, plan=plan, seed=5) as simulator:
        yield simulator


async def cli(
    *args: str, sim: Simulator | None = None, key: str | None = "sk-test"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
    if key is not None:
        env["PIXVERSE_API_KEY"] = key
    extra = ["--base-url", sim.base_url, "--time-scale", str(SCALE)] if sim is not None else []
    done = await anyio.run_process([*COMMAND, *args, *extra], env=env, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def journal_states(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, state FROM rows"))


async def test_a_mixed_manifest_makes_the_right_files_and_exit_code(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(png(400, 300))
    (tmp_path / "frames" / "b.jpg").write_bytes(jpeg(640, 480))
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "fox", "prompt": "a fox", "image": "frames/a.png", "resolution": "720p", "seed": 3},
            {"prompt": "a boat", "image": "frames/b.jpg", "fast_mode": True},
            {"id": "remote", "prompt": "a city", "image": "https://example.com/city.png"},
            {"id": "bad", "prompt": "fail: moderated", "image": "frames/a.png"},
        ],
    )
    out = tmp_path / "out"
    done = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert done.returncode == 1, done.stderr
    for name in ("fox", "2", "remote"):
        video = out / f"{name}.mp4"
        task_id = next(t for t, task in sim.tasks.items() if video.read_bytes() == sim.video_bytes(t))
        assert sim.tasks[task_id].status_at(sim.now()) == "TASK_STATUS_SUCCEED"
    assert not (out / "bad.mp4").exists()
    assert journal_states(out / "pixverse-journal.sqlite") == {
        "fox": "succeeded",
        "2": "succeeded",
        "remote": "succeeded",
        "bad": "failed",
    }
    assert "moderation" in done.stdout and "failed" in done.stdout
    assert sim.counters.tasks_created == 4 and sim.counters.key_leaks_to_video_host == 0

    status = await cli("status", "--journal", str(out / "pixverse-journal.sqlite"), "--json")
    rows = {row["key"]: row for row in json.loads(status.stdout)}
    assert rows["fox"]["size"] == len((out / "fox.mp4").read_bytes()) and len(rows["fox"]["sha256"]) == 64
    assert rows["bad"]["reason"].endswith("moderation")

    again = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert again.returncode == 1 and sim.counters.tasks_created == 4  # nothing paid twice


async def test_csv_manifests_work_too(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    with (tmp_path / "jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "prompt", "image", "fast_mode", "seed", "style"])
        writer.writerow(["one", "a fox", "a.png", "false", "7", ""])
        writer.writerow(["two", "a cat", "a.png", "true", "", "anime"])
    done = await cli("run", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in (tmp_path / "out").glob("*.mp4")} == {"one.mp4", "two.mp4"}
    seeds = sorted(task.seed for task in sim.tasks.values())
    assert 7 in seeds


async def test_a_bad_manifest_names_every_bad_line_and_submits_nothing(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    (tmp_path / "small.png").write_bytes(png(100, 100))
    good = {"prompt": "fine", "image": "a.png"}
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            good,
            {**good, "colour": "red"},
            {**good, "resolution": "4k"},
            {"prompt": "x", "image": "missing.png"},
            {**good, "id": "../escape"},
            {**good, "id": "/etc/passwd"},
            {"prompt": "tiny", "image": "small.png"},
            {**good, "id": "dup"},
            {**good, "id": "dup"},
            {**good, "fast_mode": True, "resolution": "1080p"},
        ],
    )
    with manifest.open("a") as file:
        file.write("{not json\n")
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), sim=sim)
    assert done.returncode == 2
    for line, words in [
        (2, "colour"),
        (3, "resolution"),
        (4, "no such file"),
        (5, "cannot name a file"),
        (6, "cannot name a file"),
        (7, "100x100"),
        (9, "already used on line 8"),
        (10, "fast_mode"),
        (11, "JSON"),
    ]:
        assert any(f"line {line}:" in text and words in text for text in done.stderr.splitlines()), (line, words)
    assert "line 1:" not in done.stderr and "Traceback" not in done.stderr
    assert sim.counters.submit_requests == 0
    assert not (tmp_path / "out").exists()


async def test_killed_mid_run_and_run_again_submits_every_row_once(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl", [{"id": f"r{i}", "prompt": f"slow {i}", "image": "a.png"} for i in range(10)]
    )
    out = tmp_path / "out"
    args = [*COMMAND, "run", str(manifest), "--out", str(out), "--concurrency", "4"]
    args += ["--base-url", sim.base_url, "--time-scale", str(SCALE)]
    env = {**os.environ, "PIXVERSE_API_KEY": "sk-test"}
    async with await anyio.open_process(args, env=env, stderr=subprocess.DEVNULL) as first_run:
        assert first_run.stdout is not None
        output = BufferedByteReceiveStream(first_run.stdout)
        submitted = 0
        with anyio.fail_after(30):
            while submitted < 4:
                submitted += b"submitted row" in await output.receive_until(b"\n", 10_000)
        # All four slots hold 300-second tasks: nothing else can be on the wire now.
        first_run.send_signal(signal.SIGKILL)
    assert sim.counters.tasks_created == 4
    states = journal_states(out / "pixverse-journal.sqlite")
    assert sorted(states.values()) == ["submitted"] * 4 + ["todo"] * 6

    done = await cli("run", str(manifest), "--out", str(out), "--concurrency", "4", sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sim.counters.tasks_created == 10
    assert set(sim.counters.tasks_created_by_prompt.values()) == {1}
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"r{i}.mp4" for i in range(10))


async def test_a_kill_at_any_moment_never_pays_twice(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": f"quick {i}", "image": "a.png"} for i in range(40)])
    out = tmp_path / "out"
    args = [*COMMAND, "run", str(manifest), "--out", str(out), "--concurrency", "8"]
    args += ["--base-url", sim.base_url, "--time-scale", str(SCALE)]
    async with await anyio.open_process(args, env={**os.environ, "PIXVERSE_API_KEY": "sk-test"}) as run:
        assert run.stdout is not None
        output = BufferedByteReceiveStream(run.stdout)
        with anyio.fail_after(30):
            while b"done:" not in await output.receive_until(b"\n", 10_000):
                pass
        run.send_signal(signal.SIGKILL)
    done = await cli("run", str(manifest), "--out", str(out), "--concurrency", "8", sim=sim)
    states = journal_states(out / "pixverse-journal.sqlite")
    assert max(sim.counters.tasks_created_by_prompt.values()) == 1
    uncertain = [key for key, state in states.items() if state == "uncertain"]
    assert set(states.values()) <= {"succeeded", "uncertain"}
    # Without webhooks, as before: a row killed on the wire is uncertain, unknown, with no token to match.
    with sqlite3.connect(out / "pixverse-journal.sqlite") as db:
        kept = db.execute("SELECT webhook_token, likely_created FROM rows WHERE state = 'uncertain'").fetchall()
    assert kept == [(None, None)] * len(uncertain)
    assert done.returncode == (1 if uncertain else 0)
    assert len(list(out.glob("*.mp4"))) == 40 - len(uncertain)


async def test_expired_links_and_missing_files_are_fetched_again_without_resubmitting(
    sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "v", "prompt": "a fox", "image": "a.png"}])
    out = tmp_path / "out"
    sim.inject(Fault("video", "expired"))
    first = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert first.returncode == 0, first.stdout + first.stderr
    assert sim.counters.video_expired == 1 and (out / "v.mp4").exists()
    (out / "v.mp4").unlink()
    second = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert second.returncode == 0 and (out / "v.mp4").exists()
    assert sim.counters.tasks_created == 1


async def test_uncertain_rows_are_left_alone_unless_asked(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "u", "prompt": "lost", "image": "a.png"}])
    out = tmp_path / "out"
    sim.inject(Fault("submit", "reset"))
    first = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert first.returncode == 1 and "uncertain" in first.stdout.lower()
    second = await cli("run", str(manifest), "--out", str(out), sim=sim)
    assert second.returncode == 1 and sim.counters.submit_requests == 1
    # Without webhooks nothing judges the row: whether it was created is unknown, and --resubmit-uncertain
    # (rows judged not created) leaves it alone; only the flag that accepts paying twice resubmits it.
    third = await cli("run", str(manifest), "--out", str(out), "--resubmit-uncertain", sim=sim)
    assert third.returncode == 1 and sim.counters.submit_requests == 1
    assert "created or not unknown, left alone" in " ".join(third.stdout.split())
    status = await cli("status", "--journal", str(out / "pixverse-journal.sqlite"), "--json")
    [row] = json.loads(status.stdout)
    assert row["state"] == "uncertain" and row["verdict"] == "unknown" and row["webhook_token"] is None
    fourth = await cli("run", str(manifest), "--out", str(out), "--resubmit-unknown-may-pay-twice", sim=sim)
    assert fourth.returncode == 0 and sim.counters.tasks_created == 2 and (out / "u.mp4").exists()


async def test_missing_key_and_unreachable_host_give_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "p", "image": "a.png"}])
    no_key = await cli("run", str(manifest), "--out", str(tmp_path / "out"), key=None)
    assert no_key.returncode == 1 and "PIXVERSE_API_KEY" in no_key.stderr
    assert len(no_key.stderr.strip().splitlines()) == 1
    unreachable = await cli("run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and "sk-test" not in unreachable.stderr
    assert journal_states(tmp_path / "out" / "pixverse-journal.sqlite") == {"1": "todo"}


async def test_demo_runs_end_to_end_and_leaves_videos_and_journal(tmp_path: Path) -> None:
    done = await anyio.run_process([*COMMAND, "demo", "--count", "3", "--out", str(tmp_path / "demo")], check=False)
    assert done.returncode == 0, done.stderr
    videos = sorted((tmp_path / "demo").glob("*.mp4"))
    assert len(videos) == 3 and all(video.read_bytes()[4:8] == b"ftyp" for video in videos)
    assert journal_states(tmp_path / "demo" / "pixverse-journal.sqlite") == {
        "video-01": "succeeded",
        "video-02": "succeeded",
        "video-03": "succeeded",
    }


async def test_help_shows_examples() -> None:
    for command in ("run", "status", "demo", "simulate"):
        shown = await cli(command, "--help")
        assert shown.returncode == 0 and "examples:" in shown.stdout


async def test_bad_arguments_give_one_clear_line() -> None:
    refused = await cli("demo", "--count", "0")
    assert refused.returncode == 2 and "--count: must be a whole number >= 1" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_simulate_serves_the_api_for_other_programs() -> None:
    command = [*COMMAND, "simulate", "--port", "0", "--time-scale", str(SCALE), "--duration", "2"]
    async with await anyio.open_process(command, stderr=None) as server:
        assert server.stdout is not None
        output = BufferedByteReceiveStream(server.stdout)
        with anyio.fail_after(30):
            lines = [(await output.receive_until(b"\n", 4096)).decode() for _ in range(3)]
        base_url = next(line.split()[-1] for line in lines if "API base URL" in line)
        try:
            async with PixVerseClient("sk-test", base_url=base_url, clock=ScaledClock(SCALE)) as client:
                task = await client.submit(ImageToVideo("a test", "https://example.com/a.png"))
                assert (await client.wait(task, timeout=60)).status is TaskStatus.SUCCEED
        finally:
            server.terminate()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "m.jsonl", "--out", "o", "--concurrency", "0"], "--concurrency: must be a whole number >= 1, not '0'"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", "-3"], "--concurrency: must be a whole number >= 1"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", "1.5"], "--concurrency: must be a whole number >= 1"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", "\u0661\u0662"], "--concurrency: must be a whole number"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", "1_6"], "--concurrency: must be a whole number"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", " 16"], "--concurrency: must be a whole number"),
        (["run", "m.jsonl", "--out", "o", "--concurrency", "9" * 5000], "--concurrency: must be a whole number"),
        (["run", "m.jsonl", "--out", "o", "--time-scale", "-1"], "--time-scale: must be a number > 0"),
        (["run", "m.jsonl", "--out", "o", "--time-scale", "0"], "--time-scale: must be a number > 0"),
        (["run", "m.jsonl", "--out", "o", "--time-scale", "nan"], "--time-scale: must be a number > 0, not 'nan'"),
        (["run", "m.jsonl", "--out", "o", "--time-scale", "inf"], "--time-scale: must be a number > 0"),
        (["run", "m.jsonl", "--out", "o", "--time-scale", "1e999"], "--time-scale: must be a number > 0"),
        (["run", "m.jsonl", "--out", "o", "--base-url", "ftp://example.com"], "--base-url: must be an http:// or"),
        (["run", "m.jsonl", "--out", "o", "--base-url", "https://"], "--base-url: must be an http:// or"),
        (["run", "m.jsonl", "--out", "o", "--base-url", "http://[::1"], "--base-url: must be an http:// or"),
        (["run", "m.jsonl", "--out", "o", "--base-url", "api.example.com"], "--base-url: must be an http:// or"),
        (["demo", "--count", "0"], "--count: must be a whole number >= 1, not '0'"),
        (["simulate", "--port", "70000"], "--port: must be a whole number from 0 to 65535"),
        (["simulate", "--port", "http"], "--port: must be a whole number from 0 to 65535"),
        (["simulate", "--time-scale", "0"], "--time-scale: must be a number > 0"),
        (["simulate", "--duration", "nan"], "--duration: must be a number > 0"),
        (["simulate", "--failure-rate", "1.5"], "--failure-rate: must be a number from 0 to 1"),
        (["simulate", "--failure-rate", "nan"], "--failure-rate: must be a number from 0 to 1"),
        (["simulate", "--max-running-per-key", "-1"], "--max-running-per-key: must be a whole number >= 0"),
        (["simulate", "--api-key", "sk test"], "--api-key: must be a key without spaces or control characters"),
        (["simulate", "--api-key", "sk\x1btest"], "--api-key: must be a key without spaces or control characters"),
    ],
)
def test_every_option_is_checked_at_parse_time_in_one_line_of_the_users_words(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    command = f"pixverse-async {args[0]}"
    assert error.startswith(f"{command}: {expected}") and error.endswith(f"(see {command} --help)\n"), error
    assert len(error.splitlines()) == 1 and "invalid" not in error and "Traceback" not in error


async def test_text_and_image_rows_run_together_and_status_tells_kinds_and_refusals_apart(
    sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"id": "t1", "prompt": "a lighthouse", "aspect_ratio": "9:16"},
            {"id": "t2", "prompt": "a harbour"},
            {"id": "i1", "prompt": "a cat", "image": "a.png"},
            {"id": "i2", "prompt": "a dog", "image": "a.png"},
        ],
    )
    out = tmp_path / "out"
    sim.inject(Fault("submit", "illegal_prompt"))  # the first submission, whichever row it is
    done = await cli("run", str(manifest), "--out", str(out), "--concurrency", "1", sim=sim)
    assert done.returncode == 1, done.stderr
    assert "refused" in done.stdout and "text" in done.stdout and "image" in done.stdout
    assert sim.counters.tasks_created == 3
    status = await cli("status", "--journal", str(out / "pixverse-journal.sqlite"), "--json")
    rows = {row["key"]: row for row in json.loads(status.stdout)}
    assert {key: row["kind"] for key, row in rows.items()} == {"t1": "text", "t2": "text", "i1": "image", "i2": "image"}
    outcomes = sorted(row["outcome"] for row in rows.values())
    assert outcomes == ["refused", "succeeded", "succeeded", "succeeded"]
    refused = next(row for row in rows.values() if row["outcome"] == "refused")
    assert refused["state"] == "failed" and refused["task_id"] is None  # nothing was created or billed
    table = await cli("status", "--journal", str(out / "pixverse-journal.sqlite"))
    assert "refused" in table.stdout and "text" in table.stdout
