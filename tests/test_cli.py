"""The `pixverse-async` command, run for real in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pixverse_async import ImageToVideo, PixVerseClient, TaskStatus
from pixverse_async.testing import ScaledClock


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pixverse_async", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_demo_runs_end_to_end_and_leaves_the_videos(tmp_path: Path) -> None:
    done = run_cli("demo", "--count", "3", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    videos = sorted((tmp_path / "out" / "videos").glob("*.mp4"))
    frames = sorted((tmp_path / "out" / "frames").glob("*.png"))
    assert len(videos) == 3 and len(frames) == 3
    assert all(video.read_bytes()[4:8] == b"ftyp" for video in videos)
    assert "3/3 videos" in done.stdout


def test_help_shows_examples(tmp_path: Path) -> None:
    for command in ("demo", "simulate"):
        shown = run_cli(command, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and "examples:" in shown.stdout


def test_bad_arguments_give_one_clear_line(tmp_path: Path) -> None:
    refused = run_cli("demo", "--count", "0", cwd=tmp_path)
    assert refused.returncode == 2 and "must be at least 1" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.anyio
async def test_simulate_serves_the_api_for_other_programs() -> None:
    command = [sys.executable, "-m", "pixverse_async", "simulate", "--port", "0", "--time-scale", "0.001"]
    async with await anyio.open_process([*command, "--duration", "2"], stderr=None) as server:
        assert server.stdout is not None
        output = BufferedByteReceiveStream(server.stdout)
        with anyio.fail_after(30):
            lines = [(await output.receive_until(b"\n", 4096)).decode() for _ in range(3)]
        base_url = next(line.split()[-1] for line in lines if "API base URL" in line)
        try:
            async with PixVerseClient("sk-test", base_url=base_url, clock=ScaledClock(0.001)) as client:
                task = await client.submit(ImageToVideo("a test", "https://example.com/a.png"))
                assert (await client.wait(task, timeout=60)).status is TaskStatus.SUCCEED
        finally:
            server.terminate()
