"""`run --webhook-url URL --webhook-listen HOST:PORT`: real `pixverse-async run` processes whose own receiver
gets the simulator's webhook deliveries, killed with `kill -9` and resumed.

The simulator tries a delivery again 1, 2, 4, 8 and 16 simulated seconds after each failed try: the goal run
uses `GOAL_SCALE` (0.1 real seconds per API second), so that the gap between a kill and the next run's
receiver (a process start, about a second) stays well within those 31 API seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from pixverse_async.cli.main import main
from pixverse_async.testing import Fault, Simulator, TaskPlan
from tests.cli.test_cli import COMMAND, write_jsonl
from tests.helpers import free_port
from tests.images import png

pytestmark = pytest.mark.anyio
KEY = "sk-test"
GOAL_SCALE = 0.1


def webhook_options(port: int) -> list[str]:
    return ["--webhook-url", f"http://127.0.0.1:{port}/hook", "--webhook-listen", f"127.0.0.1:{port}"]


def run_args(manifest: Path, out: Path, sim: Simulator, *extra: str) -> list[str]:
    options = ["--out", str(out), "--base-url", sim.base_url, "--time-scale", str(sim.time_scale)]
    return [*COMMAND, "run", str(manifest), *options, *extra]


def environment() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}, "PIXVERSE_API_KEY": KEY}


async def run_cli(manifest: Path, out: Path, sim: Simulator, *extra: str) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process(run_args(manifest, out, sim, *extra), env=environment(), check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def said(done: subprocess.CompletedProcess[str]) -> str:
    """A run's output with its lines unwrapped (the console wraps them at 80 columns)."""
    return " ".join(done.stdout.split())


def journal_rows(out: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(out / "pixverse-journal.sqlite") as db:
        db.row_factory = sqlite3.Row
        return {row["key"]: dict(row) for row in db.execute("SELECT * FROM rows")}


def manifest_of(tmp_path: Path, count: int, prefix: str = "row") -> Path:
    (tmp_path / "a.png").write_bytes(png(400, 300))
    rows = [{"id": f"{prefix}{index}", "prompt": f"{prefix} {index}", "image": "a.png"} for index in range(count)]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def simulator(scale: float, **options: Any) -> Simulator:
    options.setdefault("duration", 5.0)
    return Simulator(api_keys=(KEY,), time_scale=scale, seed=11, **options)


async def killed_once(args: list[str], ready: Any) -> None:
    """Start a run, wait until `ready()` is true of the journal or the simulator, and `kill -9` it."""
    async with await anyio.open_process(args, env=environment(), stdout=subprocess.DEVNULL) as run:
        with anyio.fail_after(30):
            while not ready():
                await anyio.sleep(0.01)
        run.send_signal(signal.SIGKILL)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--webhook-url", "http://127.0.0.1:1/hook"], "--webhook-url: needs --webhook-listen HOST:PORT"),
        (["--webhook-listen", "127.0.0.1:8787"], "--webhook-listen: needs --webhook-url URL"),
        (["--webhook-url", "ftp://x/h", "--webhook-listen", "127.0.0.1:1"], "--webhook-url: must be an http:// or"),
        (["--webhook-url", "http://x/h", "--webhook-listen", "127.0.0.1"], "--webhook-listen: must be HOST:PORT"),
        (["--webhook-url", "http://x/h", "--webhook-listen", "x:0"], "--webhook-listen: must be HOST:PORT with a"),
    ],
)
def test_webhook_options_are_checked_when_the_command_line_is_read(
    extra: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "m.jsonl", "--out", "o", *extra])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"pixverse-async run: {expected}") and len(error.splitlines()) == 1, error


async def test_a_listen_address_in_use_is_one_line_and_nothing_is_sent(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, 2)
    async with simulator(0.01) as sim:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = await run_cli(manifest, tmp_path / "out", sim, *webhook_options(port))
    assert done.returncode == 1
    assert f"--webhook-listen 127.0.0.1:{port}: cannot listen there" in done.stderr
    assert "nothing was sent" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sim.counters.submit_requests == 0


async def test_a_lost_answer_is_found_by_the_runs_own_receiver(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, 3)
    out = tmp_path / "out"
    async with simulator(0.01, webhook_timeout=200.0) as sim:
        sim.inject(Fault("submit", "reset"))  # the task is created, its answer lost
        done = await run_cli(manifest, out, sim, *webhook_options(free_port()))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = journal_rows(out)
    assert {row["state"] for row in rows.values()} == {"succeeded"}
    assert all(len(row["webhook_token"]) == 32 and row["sent_at"] for row in rows.values())
    assert sim.counters.tasks_created == 3 and sim.counters.webhooks_delivered >= 3


async def test_a_row_killed_on_the_wire_is_resolved_by_its_late_delivery_in_the_resumed_run(tmp_path: Path) -> None:
    manifest = manifest_of(tmp_path, 1)
    out = tmp_path / "out"
    port = free_port()
    # The task runs 300 API s (3 real seconds): its delivery comes once the resumed run listens.
    async with simulator(0.01, duration=300.0, webhook_timeout=200.0) as sim:
        sim.inject(Fault("submit", "slow", delay=10_000))  # created, its answer held back
        await killed_once(
            run_args(manifest, out, sim, *webhook_options(port)),
            lambda: sim.counters.tasks_created == 1 and (out / "pixverse-journal.sqlite").exists(),
        )
        [row] = journal_rows(out).values()
        assert row["state"] == "submitting" and len(row["webhook_token"]) == 32
        resumed = await run_cli(manifest, out, sim, *webhook_options(port))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "uncertain, awaiting its webhook delivery" in said(resumed)
    assert "its webhook delivery names task" in said(resumed)
    [row] = journal_rows(out).values()
    assert row["state"] == "succeeded" and (out / "row0.mp4").exists()
    assert sim.counters.tasks_created == sim.counters.submit_requests == 1


async def test_a_resumed_row_whose_delivery_may_have_come_while_nobody_listened_is_never_judged_not_created(
    tmp_path: Path,
) -> None:
    """Deliveries are reliable here (30 of 30), so a row without one would be judged not created; but the
    journal says that no run listened for 1000 s after it was sent: it stays unknown, and only the flag that
    accepts paying twice resubmits it."""
    manifest = manifest_of(tmp_path, 31)
    out = tmp_path / "out"
    port = free_port()
    async with simulator(0.01, webhook_timeout=200.0) as sim:
        # A 500 after the body was read: nothing is created, which the client cannot know. The run (one row at a
        # time) awaits its delivery, holding its one slot, until it is killed.
        sim.inject(Fault("submit", "server_error", create_task=False))
        await killed_once(
            run_args(manifest, out, sim, "--concurrency", "1", *webhook_options(port)),
            lambda: sim.counters.submit_requests >= 1,
        )
        assert sim.counters.submit_requests == 1 and journal_rows(out)["row0"]["state"] == "submitting"
        with sqlite3.connect(out / "pixverse-journal.sqlite") as db:  # as if the resume came 1000 s later
            db.execute("UPDATE rows SET sent_at = sent_at - 1000 WHERE sent_at IS NOT NULL")
            db.execute("UPDATE listeners SET started = started - 1000, alive = alive - 1000")
        resumed = await run_cli(manifest, out, sim, "--concurrency", "8", *webhook_options(port))
        assert resumed.returncode == 1, resumed.stdout + resumed.stderr
        lost = journal_rows(out)["row0"]
        assert lost["state"] == "uncertain" and lost["likely_created"] is None, lost
        assert "no run listened for" in said(resumed) and "nobody listened" in lost["reason"]
        assert sim.counters.tasks_created == 30

        status = await anyio.run_process(
            [*COMMAND, "status", "--journal", str(out / "pixverse-journal.sqlite"), "--json"], env=environment()
        )
        shown = {row["key"]: row for row in json.loads(status.stdout)}
        assert shown["row0"]["likely_created"] is None and shown["row0"]["verdict"] == "unknown"

        left = await run_cli(manifest, out, sim, "--resubmit-uncertain", *webhook_options(port))
        assert left.returncode == 1 and sim.counters.tasks_created == 30
        assert "created or not unknown, left alone (--resubmit-unknown-may-pay-twice" in said(left)
        paid = await run_cli(manifest, out, sim, "--resubmit-unknown-may-pay-twice", *webhook_options(port))
    assert paid.returncode == 0, paid.stdout + paid.stderr
    assert sim.counters.tasks_created == 31


GOAL_ROWS = 300


async def test_goal_three_kills_and_a_resume_with_webhooks_leave_no_row_unresolved_and_pay_nothing_twice(
    tmp_path: Path,
) -> None:
    """Issue 23's goal: 300 rows, three runs killed with `kill -9` while they submit, a resume with webhooks:
    every row whose task was created is found (by its late delivery), every other is judged not created, and
    `--resubmit-uncertain` then pays for those once. The second run's first submission is lost before the API
    created anything: that row is awaited by the second run, then the third (both killed), then the resume,
    which judges it. Each killed run listens 2.6 s or more (26 API s, past the
    router's longest wait between two tries) and the next starts at once (its gap about 1 s, 10 API s)."""
    manifest = manifest_of(tmp_path, GOAL_ROWS)
    out = tmp_path / "out"
    port = free_port()
    figures: list[str] = []

    def tally(after: str) -> None:
        states = Counter(row["state"] for row in journal_rows(out).values())
        figures.append(
            f"{after} ({anyio.current_time() - started:.1f} s): {sim.counters.tasks_created} tasks created for"
            f" {GOAL_ROWS} rows;"
            f" rows {dict(sorted(states.items()))}"
        )

    started = anyio.current_time()
    async with simulator(GOAL_SCALE) as sim:
        for kill in range(3):
            if kill == 1:  # a 500 to the second run's first submission, which created nothing
                sim.inject(Fault("submit", "server_error", create_task=False))
            args = run_args(manifest, out, sim, "--concurrency", "10", *webhook_options(port))
            async with await anyio.open_process(args, env=environment(), stderr=subprocess.DEVNULL) as run:
                assert run.stdout is not None
                output = BufferedByteReceiveStream(run.stdout)
                with anyio.fail_after(60):
                    while b"listening for webhook deliveries" not in await output.receive_until(b"\n", 100_000):
                        pass
                    listening_at = anyio.current_time()
                    while anyio.current_time() - listening_at < 2.6 + 0.3 * kill:
                        await output.receive_until(b"\n", 100_000)
                run.send_signal(signal.SIGKILL)
            tally(f"after kill {kill + 1}")
        resumed = await run_cli(manifest, out, sim, "--concurrency", "10", *webhook_options(port))
        tally("after the resume")
        rows = journal_rows(out)
        uncertain = {key: row for key, row in rows.items() if row["state"] == "uncertain"}
        figures.append(
            f"after the resume: {len(uncertain)} rows uncertain, verdicts"
            f" {dict(Counter(row['likely_created'] for row in uncertain.values()))}"
        )
        figures.extend(f"  {key}: {row['reason'].rpartition('; no webhook')[2]}" for key, row in uncertain.items())
        resubmitted = await run_cli(manifest, out, sim, "--resubmit-uncertain", *webhook_options(port))
        tally("after --resubmit-uncertain")
    print("\n".join(figures))
    # Every uncertain row of the resume was judged not created (none unknown), and it was not: its prompt
    # made no task.
    assert uncertain and all(row["likely_created"] == 0 for row in uncertain.values()), (figures, uncertain)
    created = sim.counters.tasks_created_by_prompt
    assert resumed.returncode == (1 if uncertain else 0), said(resumed)
    assert resubmitted.returncode == 0, said(resubmitted)
    assert {row["state"] for row in journal_rows(out).values()} == {"succeeded"}
    assert sim.counters.tasks_created == GOAL_ROWS and max(created.values()) == 1, figures


async def test_a_late_delivery_for_a_row_left_alone_is_journaled_all_the_same(tmp_path: Path) -> None:
    """A row judged after a full wait is not awaited again, but a delivery naming it (a task longer than the
    wait) still lands in the journal, written before the delivery is answered: the next run polls its task."""
    (tmp_path / "a.png").write_bytes(png(400, 300))
    manifest = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"id": "late", "prompt": "late", "image": "a.png"}, {"id": "long", "prompt": "long", "image": "a.png"}],
    )
    out = tmp_path / "out"
    port = free_port()
    durations = {"late": 300.0, "long": 600.0}  # API s: "long" keeps the second run listening past "late"'s end
    async with simulator(0.01, webhook_timeout=200.0, plan=lambda body: TaskPlan(durations[body["prompt"]])) as sim:
        sim.inject(Fault("submit", "slow", delay=10_000))  # "late" is created, its answer held back
        await killed_once(
            run_args(manifest, out, sim, "--concurrency", "1", *webhook_options(port)),
            lambda: sim.counters.tasks_created == 1,
        )
        with sqlite3.connect(out / "pixverse-journal.sqlite") as db:  # as a run that judged it leaves it
            db.execute("UPDATE rows SET state = 'uncertain', reason = 'judged: unknown' WHERE key = 'late'")
        second = await run_cli(manifest, out, sim, *webhook_options(port))
        late = journal_rows(out)["late"]
        assert late["state"] == "submitted" and late["task_id"] in sim.tasks, late
        assert "uncertain, created or not unknown, left alone" in said(second)
        assert "row late: its webhook delivery names task" in said(second)
        third = await run_cli(manifest, out, sim, *webhook_options(port))
    assert third.returncode == 0, said(third)
    assert journal_rows(out)["late"]["state"] == "succeeded" and sim.counters.tasks_created == 2
