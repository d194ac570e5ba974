"""Shared pieces of the benchmarks: the simulator in a child process, tables, percentiles, memory readings.

The simulator runs in its own process (``multiprocessing`` with the ``spawn`` context) so that the benchmark
process's CPU time (``time.process_time()``) and memory belong to the client alone, and so that the client's
event loop does not share its thread with the server's. The two processes talk over a pipe: the child sends
its base URL and a reading of its clock once started, then answers requests for counters and task times.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Self

from pixverse_async.testing import Simulator, TaskPlan

API_KEY = "sk-bench"
#: A URL image: sent as is, never fetched, so a job costs no image encoding on either side.
IMAGE_URL = "https://example.com/first-frame.png"
SUBMIT_PATH = "/v3/async/pixverse-v4.5-i2v"
TASK_RESULT_PATH = "/v3/async/task-result"
TERMINAL_STATUSES = frozenset({"TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"})

_STARTUP_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- command line ---------------------------------------------------------------------------------------------


def parse_quick_flag(description: str, argv: Sequence[str] | None = None) -> bool:
    """The one option every benchmark takes: `--quick` shrinks the sizes about 10x for a smoke run."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes about 10x smaller, for a smoke run")
    return bool(parser.parse_args(argv).quick)


# -- the simulator in a child process -------------------------------------------------------------------------


@dataclass(frozen=True)
class LogNormal:
    """Log-normal task durations (simulated seconds), picklable unlike `Simulator.lognormal(...)`."""

    median: float
    sigma: float


@dataclass(frozen=True)
class Uniform:
    """Task durations drawn uniformly between `low` and `high` simulated seconds (by prompt, see SimConfig)."""

    low: float
    high: float


@dataclass(frozen=True)
class SimConfig:
    """What the child process passes to `Simulator(...)`.

    With `duration_by_prompt`, a task's duration is drawn from a generator seeded by its prompt, so that every
    contender submitting the same prompts gets the same durations (a fair comparison of polling).
    """

    time_scale: float
    duration: float | LogNormal | Uniform
    max_running_per_key: int | None = None
    seed: int = 1
    duration_by_prompt: bool = False
    webhook_timeout: float = 5.0
    webhook_drop_rate: float = 0.0
    #: The simulator's hint modes (see "Hints" in its documentation) and a busy account's queue.
    eta: str = "exact"
    eta_noise: float = 0.35
    progress: str = "linear"
    progress_step: int = 25
    max_processing_per_key: int | None = None
    #: Any other `Simulator` keyword arguments (rate limits, random 429s, random faults), as (name, value) pairs.
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class ServerStats:
    """The simulator's counters since the last reset, and the CPU time its process spent meanwhile."""

    submit_requests: int
    tasks_created: int
    poll_requests: int
    polls_after_terminal: int
    rate_limited: int
    max_running: int
    server_cpu_seconds: float
    #: The highest request rate (submits and polls) over any 0.25 s of real time.
    peak_requests_per_second: float
    #: Webhook deliveries the receiver answered 2xx.
    webhooks_delivered: int = 0
    #: Webhook deliveries lost on purpose (`webhook_drop_rate`): never sent.
    webhooks_dropped: int = 0
    #: The simulator's `faults_applied`: how many requests each fault struck ("submit:reset": ...).
    faults_applied: Mapping[str, int] = field(default_factory=dict)
    #: The simulator's `rate_limited_by`: which limit answered each 429.
    rate_limited_by: Mapping[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.submit_requests + self.poll_requests


@dataclass(frozen=True)
class CreatedTask:
    """What the simulator kept of a task's submission: its prompt and the webhook URL it named (or None)."""

    prompt: str
    webhook_url: str | None


@dataclass(frozen=True)
class TaskTimes:
    """When the simulator created a task and when it became terminal, on the simulator's clock."""

    submitted_at: float
    ends_at: float


class SimulatorProcess:
    """`Simulator` running in a child process; use as `with SimulatorProcess(config) as sim:`.

    `sim_now()` reads the simulator's clock from this process: the child sends one reading of `sim.now()`
    taken together with `time.monotonic()`, which is the same clock in every process on Linux, so the
    simulated time follows from the local monotonic clock without asking the child.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.api_key = API_KEY
        self.base_url = ""
        self._sim_clock_reading = 0.0
        self._monotonic_reading = 0.0
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> Self:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(target=_child_main, args=(theirs, self.config), daemon=True)
        self._process.start()
        theirs.close()
        self._connection = ours
        try:
            if not ours.poll(_STARTUP_TIMEOUT_SECONDS):
                raise RuntimeError("the simulator process did not start in time")
            self.base_url, self._sim_clock_reading, self._monotonic_reading = ours.recv()
        except EOFError:
            self._stop()
            raise RuntimeError("the simulator process exited while starting (its traceback is above)") from None
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.send(("stop",))
                if connection.poll(_STOP_TIMEOUT_SECONDS):
                    connection.recv()
            except (OSError, EOFError):
                pass
            connection.close()
        process, self._process = self._process, None
        if process is not None:
            process.join(timeout=_STOP_TIMEOUT_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join()

    def _ask(self, *request: Any) -> Any:
        if self._connection is None:
            raise RuntimeError("the simulator process is not running")
        self._connection.send(request)
        return self._connection.recv()

    @property
    def time_scale(self) -> float:
        return self.config.time_scale

    def sim_now(self) -> float:
        """The simulator's clock (`Simulator.now()`), read locally."""
        return self._sim_clock_reading + (time.monotonic() - self._monotonic_reading) / self.config.time_scale

    def reset_counters(self) -> None:
        """Zero the counters and the server CPU reading (tasks are kept)."""
        self._ask("reset")

    def stats(self) -> ServerStats:
        stats: ServerStats = self._ask("stats")
        return stats

    def created_tasks(self) -> dict[str, CreatedTask]:
        """Every task the simulator created (and billed) so far, by id: the ground truth of what was paid."""
        tasks: dict[str, CreatedTask] = self._ask("created_tasks")
        return tasks

    def task_times(self, task_ids: Iterable[str]) -> dict[str, TaskTimes]:
        """Creation and end times of these tasks (unknown ids are left out)."""
        times: dict[str, TaskTimes] = self._ask("task_times", list(task_ids))
        return times


@dataclass(frozen=True)
class _DurationFromPrompt:
    """A `Simulator(plan=...)` giving each prompt its own duration, the same in every run."""

    durations: float | LogNormal | Uniform
    seed: int

    def __call__(self, body: Mapping[str, Any]) -> TaskPlan:
        return TaskPlan(duration=duration_of(self.durations, self.seed, str(body["prompt"])))


def duration_of(durations: float | LogNormal | Uniform, seed: int, prompt: str) -> float:
    """The duration `SimConfig(duration_by_prompt=True)` gives the task of `prompt` (simulated seconds)."""
    if isinstance(durations, int | float):
        return float(durations)
    draw = random.Random(f"{seed}:{prompt}")
    if isinstance(durations, Uniform):
        return draw.uniform(durations.low, durations.high)
    return draw.lognormvariate(math.log(durations.median), durations.sigma)


class _PeakRequestRate:
    """Samples the simulator's request counters and keeps the highest rate seen since the last reset."""

    interval = 0.25

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self.peak = 0.0
        self._last_count = 0

    def _count(self) -> int:
        return self._sim.counters.submit_requests + self._sim.counters.poll_requests

    def reset(self) -> None:
        self.peak = 0.0
        self._last_count = self._count()

    async def sample_forever(self) -> None:
        last_time = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            now, count = time.monotonic(), self._count()
            # A reset in between makes the count go back: that window is skipped.
            if count >= self._last_count:
                self.peak = max(self.peak, (count - self._last_count) / (now - last_time))
            last_time, self._last_count = now, count


def _child_main(connection: Connection, config: SimConfig) -> None:
    asyncio.run(_serve(connection, config))


async def _serve(connection: Connection, config: SimConfig) -> None:
    duration: Any = config.duration
    if isinstance(duration, LogNormal):
        duration = Simulator.lognormal(duration.median, duration.sigma)
    if isinstance(duration, Uniform):
        low, high = duration.low, duration.high
        duration = lambda rng: rng.uniform(low, high)  # noqa: E731 - a one-line draw
    plan = _DurationFromPrompt(config.duration, config.seed) if config.duration_by_prompt else None
    async with Simulator(
        api_keys=(API_KEY,),
        time_scale=config.time_scale,
        duration=duration,
        plan=plan,
        max_running_per_key=config.max_running_per_key,
        seed=config.seed,
        webhook_timeout=config.webhook_timeout,
        webhook_drop_rate=config.webhook_drop_rate,
        eta=config.eta,  # type: ignore[arg-type]  # checked by the simulator
        eta_noise=config.eta_noise,
        progress=config.progress,  # type: ignore[arg-type]
        progress_step=config.progress_step,
        max_processing_per_key=config.max_processing_per_key,
        **dict(config.options),
    ) as sim:
        connection.send((sim.base_url, sim.now(), time.monotonic()))
        cpu_at_reset = time.process_time()
        peak_rate = _PeakRequestRate(sim)
        sampling = asyncio.create_task(peak_rate.sample_forever())
        while True:
            # Waiting in a thread keeps the event loop free to serve requests meanwhile.
            request = await asyncio.to_thread(connection.recv)
            command = request[0]
            if command == "stop":
                sampling.cancel()
                connection.send(None)
                return
            if command == "reset":
                sim.reset_counters()
                cpu_at_reset = time.process_time()
                peak_rate.reset()
                connection.send(None)
            elif command == "stats":
                counters = sim.counters
                connection.send(
                    ServerStats(
                        submit_requests=counters.submit_requests,
                        tasks_created=counters.tasks_created,
                        poll_requests=counters.poll_requests,
                        polls_after_terminal=counters.polls_after_terminal,
                        rate_limited=counters.rate_limited,
                        max_running=max(counters.max_running_by_key.values(), default=0),
                        server_cpu_seconds=time.process_time() - cpu_at_reset,
                        peak_requests_per_second=peak_rate.peak,
                        webhooks_delivered=counters.webhooks_delivered,
                        webhooks_dropped=counters.webhooks_dropped,
                        faults_applied=dict(counters.faults_applied),
                        rate_limited_by=dict(counters.rate_limited_by),
                    )
                )
            elif command == "created_tasks":
                connection.send(
                    {task_id: CreatedTask(task.prompt, task.webhook_url) for task_id, task in sim.tasks.items()}
                )
            elif command == "task_times":
                tasks = sim.tasks
                connection.send(
                    {
                        task_id: TaskTimes(tasks[task_id].submitted_at, tasks[task_id].ends_at)
                        for task_id in request[1]
                        if task_id in tasks
                    }
                )
            else:
                connection.send(ValueError(f"unknown command {command!r}"))


# -- statistics and tables ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` (0..1) quantile, interpolated linearly between the two nearest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


Cell = str | int | float | None


def format_cell(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return value


@dataclass
class Table:
    """A plain-text table: first column left-aligned, the others right-aligned."""

    title: str
    headers: Sequence[str]
    rows: list[Sequence[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        text_rows = [[format_cell(cell) for cell in row] for row in self.rows]
        widths = [len(header) for header in self.headers]
        for row in text_rows:
            for index, cell in enumerate(row):
                widths[index] = max(widths[index], len(cell))

        def line(cells: Sequence[str]) -> str:
            parts = [cells[0].ljust(widths[0])]
            parts.extend(cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return "  ".join(parts)

        rule = "-" * len(line(list(self.headers)))
        output = [self.title, rule, line(list(self.headers)), rule]
        output.extend(line(row) for row in text_rows)
        output.append(rule)
        output.extend(self.notes)
        return "\n".join(output)

    def print(self) -> None:
        print(self.render(), flush=True)
        print(flush=True)


def goal_text(met: bool) -> str:
    return "MET" if met else "NOT MET"


# -- memory ---------------------------------------------------------------------------------------------------


def current_rss_bytes() -> int:
    """This process's resident set size now, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def high_water_rss_bytes() -> int:
    """The largest RSS this process has had so far (`VmHWM` of /proc/self/status).

    Not `ru_maxrss`: Linux carries it across `execve`, so in a spawned child it starts at the parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def open_file_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


class PeakRssSampler:
    """Samples the current RSS from a thread every `interval` seconds and keeps the peak.

    Unlike the high-water mark, which only ever grows over the life of the process, this gives the peak of
    one run.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            self.samples += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


MIB = 1024 * 1024
