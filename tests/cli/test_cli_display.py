"""What `pixverse-async run` and `status` print: a live display that fits the terminal, plain lines elsewhere,
tables; and `import pixverse_async` does not import rich."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from rich.cells import cell_len

from pixverse_async.testing import Simulator, TaskPlan
from tests.images import png

pytestmark = pytest.mark.anyio
SCALE = 0.001
COMMAND = [sys.executable, "-m", "pixverse_async"]
# CSI (cursor moves, erases, colours, ?25l), OSC (titles, links) and two-character escapes.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def plan(body: Mapping[str, Any]) -> TaskPlan | None:
    # Spread over 0.1 to 0.6 real seconds, so that the live display redraws while rows finish.
    return TaskPlan(duration=100 + 50 * (int(str(body["prompt"]).split()[-1]) % 11))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=("sk-test",), time_scale=SCALE, plan=plan, seed=3) as simulator:
        yield simulator


def manifest(tmp_path: Path, count: int = 12) -> Path:
    (tmp_path / "frame.png").write_bytes(png())
    path = tmp_path / "jobs.jsonl"
    rows = [
        {"id": f"a-rather-long-row-identifier-{i:02d}", "prompt": f"a fox in the snow {i}", "image": "frame.png"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def environment() -> dict[str, str]:
    ignored = ("PIXVERSE_", "COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_", "TERM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ignored)}
    return {**env, "PIXVERSE_API_KEY": "sk-test", "TERM": "xterm-256color"}


async def run_in_terminal(*args: str, columns: int) -> tuple[int, str]:
    """Run the command on a pseudo-terminal `columns` wide; its exit code and everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []

    def read_all() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every end of the terminal's other side is closed
                return
            if not data:
                return
            chunks.append(data)

    try:
        process = await anyio.open_process(
            [*COMMAND, *args], stdin=slave, stdout=slave, stderr=slave, env=environment()
        )
    finally:
        os.close(slave)
    try:
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(read_all, abandon_on_cancel=True)
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def screen_lines(output: str) -> list[str]:
    """What the terminal shows, line by line: control sequences removed, each carriage return a new start."""
    text = _CONTROL.sub("", output)
    return [segment for line in text.replace("\r\n", "\n").split("\n") for segment in line.split("\r")]


async def test_the_live_display_fits_a_60_column_terminal_and_the_run_finishes(sim: Simulator, tmp_path: Path) -> None:
    jobs = manifest(tmp_path)
    out = tmp_path / "a-fairly-deep-output-folder" / "with-videos-in-it"
    code, output = await run_in_terminal(
        "run", str(jobs), "--out", str(out), "--base-url", sim.base_url, "--time-scale", str(SCALE), columns=60
    )
    lines = screen_lines(output)
    assert code == 0, output
    widest = max(lines, key=cell_len)
    assert cell_len(widest) <= 60, widest
    assert "\x1b[" in output  # drawn live: cursor moves and erases, not plain lines
    text = "\n".join(lines)
    assert "12 done · 0 failed · 0 running · 0 queued" in text  # the counts, last drawn when the run ended
    assert "100%" in text and "/min" in text
    assert "succeeded" in text and "total" in text  # the summary table
    assert len(list(out.glob("*.mp4"))) == 12 and sim.counters.tasks_created == 12


async def test_counts_are_drawn_while_the_run_goes_on(sim: Simulator, tmp_path: Path) -> None:
    code, output = await run_in_terminal(
        "run", str(manifest(tmp_path)), "--out", str(tmp_path / "out"), "--concurrency", "4",
        "--base-url", sim.base_url, "--time-scale", str(SCALE), columns=100,
    )  # fmt: skip
    assert code == 0, output
    pattern = r"(\d+) done · (\d+) failed · (\d+) running(?: · (\d+) downloading)? · (\d+) queued"
    counts = [[int(n or 0) for n in drawn] for drawn in re.findall(pattern, "\n".join(screen_lines(output)))]
    assert any(queued > 0 for *_, queued in counts), counts  # seen mid-run, not only at the end
    assert any(running > 0 for _, _, running, _, _ in counts), counts
    assert all(sum(drawn) == 12 for drawn in counts), counts
    assert all(running <= 4 for _, _, running, _, _ in counts), counts  # --concurrency 4
    assert counts[-1] == [12, 0, 0, 0, 0]


async def test_no_progress_and_pipes_get_plain_lines(sim: Simulator, tmp_path: Path) -> None:
    jobs = manifest(tmp_path, count=3)
    on_terminal = await run_in_terminal(
        "run", str(jobs), "--out", str(tmp_path / "a"), "--no-progress",
        "--base-url", sim.base_url, "--time-scale", str(SCALE), columns=60,
    )  # fmt: skip
    piped = await anyio.run_process(
        [
            *COMMAND,
            "run",
            str(jobs),
            "--out",
            str(tmp_path / "b"),
            "--base-url",
            sim.base_url,
            "--time-scale",
            str(SCALE),
        ],
        env=environment(),
        check=False,
    )
    for code, output in (on_terminal, (piped.returncode, piped.stdout.decode())):
        assert code == 0, output
        assert "\x1b[1A" not in output and "\x1b[2K" not in output  # nothing redrawn
        assert " queued" not in output  # no progress bar
        assert output.count("done: ") == 3 and output.count("submitted row ") == 3
    assert max(map(cell_len, screen_lines(on_terminal[1]))) <= 60


async def test_status_is_a_table(sim: Simulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = await anyio.run_process(
        [*COMMAND, "run", str(manifest(tmp_path, count=2)), "--out", str(out), "--base-url", sim.base_url,
         "--time-scale", str(SCALE)],
        env=environment(),
        check=False,
    )  # fmt: skip
    assert run.returncode == 0
    code, output = await run_in_terminal("status", "--journal", str(out / "pixverse-journal.sqlite"), columns=60)
    lines = screen_lines(output)
    assert code == 0 and max(map(cell_len, lines)) <= 60
    rows = [line for line in lines if "succeeded" in line]
    assert len(rows) == 2 and all(line.startswith("│") for line in rows), lines


def test_importing_the_library_does_not_import_rich() -> None:
    probe = (
        "import sys, pixverse_async, pixverse_async.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('rich')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    cli = "import sys, pixverse_async.cli.main, pixverse_async.cli.run; print('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, check=True).stdout == "True\n"


async def test_the_demo_fits_a_60_column_terminal_too(tmp_path: Path) -> None:
    code, output = await run_in_terminal(
        "demo", "--count", "2", "--out", str(tmp_path / "a-long-demo-folder"), columns=60
    )
    lines = screen_lines(output)
    assert code == 0, output
    assert max(map(cell_len, lines)) <= 60, max(lines, key=cell_len)
    assert any("2 done · 0 failed · 0 running · 0 queued" in line for line in lines)
