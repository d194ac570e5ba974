"""Shared runs (`run --journal redis://...`): real `pixverse-async run` processes on one manifest, one simulator
in the test process, and a real redis-server that the tests stop, restart and outlive workers on."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from pixverse_async.cli.redis_journal import run_keys
from pixverse_async.testing import Fault, RedisServer, Simulator, TaskPlan
from tests.cli.test_cli import COMMAND, SCALE, cli, write_jsonl
from tests.helpers import eventually
from tests.images import png

pytestmark = pytest.mark.anyio
KEY = "sk-test"
LEASE = "1"  # real seconds: a killed worker's rows are taken over quickly


def plan(body: Mapping[str, Any]) -> TaskPlan | None:
    if str(body["prompt"]).startswith("hold"):
        return TaskPlan(duration=1_000_000)  # runs until the test moves the simulator's clock
    return TaskPlan(duration=200)  # 0.2 s of real time: several rounds of claims in a run


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, plan=plan, seed=3) as simulator:
        yield simulator


class Worker:
    """One `pixverse-async run` process, its output read line by line as it comes."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        output = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                self.lines.append((await output.receive_until(b"\n", 100_000)).decode())
                self._changed.set()
                self._changed = anyio.Event()
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._changed.set()
        except anyio.get_cancelled_exc_class():
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()  # the test failed: no worker outlives it
            raise

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, times: int = 1) -> None:
        with anyio.fail_after(30):
            while self.count(text) < times:
                if self.process.returncode is not None and self.count(text) < times:
                    raise AssertionError(f"the worker ended before saying {text!r}: {self.lines}")
                await self._changed.wait()

    async def ended(self) -> int:
        with anyio.fail_after(60):
            return await self.process.wait()


async def start_worker(
    group: TaskGroup,
    manifest: Path,
    out: Path,
    url: str,
    sim: Simulator,
    lease: str = LEASE,
    concurrency: int = 4,
    *options: str,
) -> Worker:
    args = [*COMMAND, "run", str(manifest), "--out", str(out), "--journal", url, "--concurrency", str(concurrency)]
    args += ["--lease", lease, "--base-url", sim.base_url, "--time-scale", str(SCALE), "--no-progress", *options]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
    env.update(PIXVERSE_API_KEY=KEY, COLUMNS="500")  # a line per event, not folded at 80 columns
    worker = Worker(await anyio.open_process(args, env=env, stderr=subprocess.STDOUT))
    group.start_soon(worker.read)
    return worker


def shared_rows(url: str, run_name: str = "jobs.jsonl") -> dict[str, dict[str, Any]]:
    """The rows of a shared run (by default, of a manifest named jobs.jsonl), as Redis holds them."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        found: dict[str, str] = client.hgetall(run_keys(run_name)[1])  # type: ignore[assignment]
    finally:
        client.close()
    return {key: json.loads(raw) for key, raw in found.items()}


def manifest_of(tmp_path: Path, count: int, *, held: int = 0) -> Path:
    """`count` rows; the first `held` of them run until the test moves the simulator's clock."""
    (tmp_path / "a.png").write_bytes(png())
    rows = [
        {"id": f"r{i:02d}", "prompt": f"{'hold' if i < held else 'row'} {i}", "image": "a.png"} for i in range(count)
    ]
    return write_jsonl(tmp_path / "jobs.jsonl", rows)


def check_every_row_done_once(sim: Simulator, out: Path, rows: dict[str, dict[str, Any]]) -> set[str]:
    """Every row succeeded with its own task's video, or is uncertain; no prompt was paid twice. The uncertain."""
    assert max(sim.counters.tasks_created_by_prompt.values()) == 1, sim.counters.tasks_created_by_prompt
    uncertain = {key for key, row in rows.items() if row["state"] == "uncertain"}
    for key, row in rows.items():
        if key in uncertain:
            continue
        assert row["state"] == "succeeded", (key, row)
        assert (out / f"{key}.mp4").read_bytes() == sim.video_bytes(row["task_id"])
    return uncertain


async def test_workers_share_one_run_two_killed_and_one_rerun_pay_each_row_once(
    sim: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, out = manifest_of(tmp_path, 16), tmp_path / "out"
    # The first submission of the run hangs on the wire (the task is created, and billed, at once). Its worker
    # keeps a budget of its own (`--local-budget`): the others' shared one would wait, as one client does, for
    # that first answer before it widens its slow start.
    sim.inject(Fault("submit", "slow", delay=30_000))
    async with anyio.create_task_group() as group:
        first = await start_worker(group, manifest, out, redis_server.url, sim, LEASE, 4, "--local-budget")
        await eventually(lambda: sim.counters.faults_applied["submit:slow"] == 1)
        second = await start_worker(group, manifest, out, redis_server.url, sim)
        await second.wait_for("submitted row")
        third = await start_worker(group, manifest, out, redis_server.url, sim)
        # Both die holding rows: the first with its hung submission on the wire (its client sends no other
        # before the first is answered), the second with tasks running; the third takes over.
        first.process.send_signal(signal.SIGKILL)
        second.process.send_signal(signal.SIGKILL)
        await first.ended()
        await second.ended()
        survivor = await third.ended()
    # The first worker's hung row is uncertain; so is any row the second was sending when it was killed.
    rows = shared_rows(redis_server.url)
    uncertain = {key for key, row in rows.items() if row["state"] == "uncertain"}
    assert len([key for key in uncertain if f":{first.process.pid}:" in rows[key]["reason"]]) == 1, rows
    assert survivor == 1, third.lines  # an uncertain row is not a success
    for key in uncertain:
        assert third.count(f"row {key}: UNCERTAIN, its worker") == 1, third.lines

    rerun = await cli("run", str(manifest), "--out", str(out), "--journal", redis_server.url, "--lease", LEASE, sim=sim)
    rows = shared_rows(redis_server.url)
    assert check_every_row_done_once(sim, out, rows) == uncertain
    assert rerun.returncode == 1
    assert all(re.search(rf"row {key} .*uncertain", rerun.stdout) for key in uncertain), rerun.stdout
    # Paid for and reported, never bought again: the hung one surely, the second's if its request arrived.
    assert 16 - len(uncertain) + 1 <= sim.counters.tasks_created <= 16
    # --concurrency bounds the whole run, not each worker: the second worker (4 at most of its own) never ran
    # more than 3 beside the first one's hung task, nor the third more than 4 beside the others' tasks.
    assert sim.counters.max_running_by_key[KEY] <= 4

    status = await cli("status", "--journal", redis_server.url, "--json")
    assert status.returncode == 0, status.stderr
    by_key = {row["key"]: row for row in json.loads(status.stdout)}
    assert {key for key, row in by_key.items() if row["state"] == "uncertain"} == uncertain and len(by_key) == 16

    # Only when asked are the uncertain rows bought again (without webhooks, whether they were created is
    # unknown: only the flag that accepts paying twice resubmits them).
    created = sim.counters.tasks_created
    again = await cli(
        "run",
        str(manifest),
        "--out",
        str(out),
        "--journal",
        redis_server.url,
        "--resubmit-unknown-may-pay-twice",
        sim=sim,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert sim.counters.tasks_created == created + len(uncertain)
    assert {row["state"] for row in shared_rows(redis_server.url).values()} == {"succeeded"}


async def test_redis_stopped_and_restarted_mid_run_stops_submitting_then_goes_on(
    sim: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, out = manifest_of(tmp_path, 16, held=4), tmp_path / "out"
    async with anyio.create_task_group() as group:
        # Two workers hold two of the four held rows each (the first claims while fewer than 2 are claimed).
        first = await start_worker(group, manifest, out, redis_server.url, sim, concurrency=2)
        await first.wait_for("submitted row", 2)
        second = await start_worker(group, manifest, out, redis_server.url, sim)
        await second.wait_for("submitted row", 2)
        redis_server.stop()  # nothing kept: it comes back empty, as after a crash
        for worker in (first, second):
            await worker.wait_for("unreachable")
        submitted = sim.counters.submit_requests
        # The held tasks end, and their videos are saved, while Redis is away: nothing new is sent meanwhile.
        sim.advance(1_000_000)
        for worker in (first, second):
            await worker.wait_for(" done: ", 2)
        assert sim.counters.submit_requests == submitted == 4
        redis_server.start()
        codes = [await worker.ended() for worker in (first, second)]
    lines = first.lines + second.lines
    assert codes == [0, 0], "\n".join(lines)
    assert any("no longer holds this run" in line for line in lines)
    rows = shared_rows(redis_server.url)
    assert check_every_row_done_once(sim, out, rows) == set() and len(rows) == 16
    assert sim.counters.tasks_created == 16


async def test_a_worker_without_redis_for_twenty_leases_stops_having_sent_nothing_meanwhile(
    sim: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, out = manifest_of(tmp_path, 8), tmp_path / "out"
    async with anyio.create_task_group() as group:
        worker = await start_worker(group, manifest, out, redis_server.url, sim, lease="0.1")
        await worker.wait_for("submitted row")
        redis_server.stop()
        await worker.wait_for("unreachable")
        submitted = sim.counters.submit_requests
        code = await worker.ended()
    assert code == 1 and worker.count("has been unreachable for 20 leases") == 1, worker.lines
    assert sim.counters.submit_requests == submitted
    log = next((out / ".pixverse-workers").glob("*.jsonl"))
    assert any(line.startswith("pixverse-async: error:") and str(log) in line for line in worker.lines)


async def test_an_unreachable_redis_at_the_start_is_one_clear_line_and_nothing_is_sent(
    sim: Simulator, tmp_path: Path
) -> None:
    manifest = manifest_of(tmp_path, 2)
    url = "redis://127.0.0.1:9/0"  # the discard port: nothing listens there
    done = await cli("run", str(manifest), "--out", str(tmp_path / "out"), "--journal", url, sim=sim)
    assert done.returncode == 1 and f"cannot reach the Redis journal {url}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and sim.counters.submit_requests == 0


async def test_runs_of_several_manifests_share_a_database_and_a_name_taken_is_refused(
    sim: Simulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    manifest, out = manifest_of(tmp_path, 2), tmp_path / "out"
    done = await cli("run", str(manifest), "--out", str(out), "--journal", redis_server.url, sim=sim)
    assert done.returncode == 0, done.stdout + done.stderr
    # A manifest of another name is a run of its own in the same database.
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "x", "prompt": "other", "image": "a.png"}])
    again = await cli("run", str(other), "--out", str(out), "--journal", redis_server.url, sim=sim)
    assert again.returncode == 0 and sim.counters.submit_requests == 3, again.stdout + again.stderr
    assert set(shared_rows(redis_server.url, "other.jsonl")) == {"x"} and len(shared_rows(redis_server.url)) == 2
    # Another manifest of the same file name meets the first run's keys: refused, nothing sent, unless named.
    (tmp_path / "elsewhere").mkdir()
    same_name = write_jsonl(tmp_path / "elsewhere" / "jobs.jsonl", [{"id": "y", "prompt": "y", "image": "../a.png"}])
    refused = await cli("run", str(same_name), "--out", str(out), "--journal", redis_server.url, sim=sim)
    assert refused.returncode == 1 and "belongs to another manifest" in refused.stderr, refused.stderr
    assert "--run-name" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert sim.counters.submit_requests == 3
    named = await cli(
        "run", str(same_name), "--out", str(out), "--journal", redis_server.url, "--run-name", "y-run", sim=sim
    )
    assert named.returncode == 0 and sim.counters.submit_requests == 4, named.stdout + named.stderr
    dry = await cli("run", str(manifest), "--out", str(out), "--journal", redis_server.url, "--dry-run")
    assert dry.returncode == 0 and "already done" in dry.stdout, dry.stdout + dry.stderr
    # `status` names the run when the database holds several.
    unnamed = await cli("status", "--journal", redis_server.url)
    assert (
        unnamed.returncode == 1
        and "several runs" in unnamed.stderr
        and "jobs.jsonl, other.jsonl, y-run" in unnamed.stderr
    ), unnamed.stderr
    status = await cli("status", "--journal", redis_server.url, "--run-name", "jobs.jsonl")
    assert status.returncode == 0 and status.stdout.count("succeeded") == 2, status.stdout


def test_a_redis_journal_without_the_redis_package_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "p", "image": "a.png"}])
    probe = (
        "import sys; sys.modules['redis'] = None\n"
        "from pixverse_async.cli.main import main\n"
        f"sys.exit(main(['run', {str(manifest)!r}, '--out', {str(tmp_path / 'out')!r},"
        " '--journal', 'redis://127.0.0.1:1/0']))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "pip install 'pixverse-async[redis]'" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    # The rest of the command line does not need it.
    sqlite = probe.replace(", '--journal', 'redis://127.0.0.1:1/0'", ", '--dry-run'")
    done = subprocess.run([sys.executable, "-c", sqlite], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "dry run: nothing was sent" in done.stdout, done.stdout + done.stderr
