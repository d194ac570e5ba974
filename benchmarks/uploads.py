"""Real first frames over a slow shared uplink: memory, task starts and wall time against the link's limits.

Each row runs the default client (`PixVerseClient()` with its defaults) in a process of its own and reads its
peak RSS there (`VmHWM` of that process: the simulator runs in yet another process, so its buffers are not
counted). The frame is an 8.7 MB incompressible PNG (random pixels, stored with zlib level 0, a proper IEND),
sent from disk; the simulator's uplink (`uplink_mbps`) carries every body, in simulated time.

- "64 x 8.7 MB @ 100 Mbit/s": the memory goal (<= 200 MB peak RSS) and task starts.
- "16 x 8.7 MB @ 20 Mbit/s": every job succeeds with the default `Timeouts`, with and without the cap told
  (`RateLimits(max_running=64)`: a reference row, the library is never told the workload otherwise).
- "64 ... cap told": a reference row without the slow start of an unknown cap (see the README); "cap told,
  no lane" (`max_upload_bytes_in_flight=None`): every body at once, as the issue's told client sent them.
- "640 x 8.7 MB @ 100 Mbit/s": the memory goal at 10x the size (<= 1.2x the 64-job figure), the link scaled
  (time_scale 0.25: real bytes through loopback, four times faster).

Per row: outcomes, peak RSS, mean task start (when the client heard each task id) over the time the link
needs for all bodies (one after another gives about 0.5, all at once about 1.0; goal <= 0.75), and wall time
over the link's limit (all bytes over the bandwidth plus the last task's work; goal <= 1.2).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import resource
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from benchmarks._common import SimConfig, SimulatorProcess, Table, parse_quick_flag

TASK_SECONDS = 5.0
SIDE = 1700  # 1700 x 1700 RGB, stored: about 8.7 MB


def incompressible_png(path: Path, side: int = SIDE, seed: int = 7) -> int:
    """A valid PNG of random pixels, its IDAT stored uncompressed (zlib level 0), ending with IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return len(data)


@dataclass(frozen=True)
class Row:
    name: str
    jobs: int
    mbps: float
    time_scale: float
    told_cap: bool = False
    reference: bool = False
    #: `max_upload_bytes_in_flight=None` (no upload lane): a reference row, to show what the lane does.
    no_lane: bool = False


@dataclass(frozen=True)
class Outcome:
    succeeded: int
    failures: dict[str, int]
    peak_rss_mb: float
    mean_start: float
    wall: float
    starts: tuple[float, ...] = ()


def _peak_rss_mb() -> float:
    """This process's own peak RSS: `VmHWM` (reset by exec). Not `ru_maxrss`, which Linux carries over from
    the forked copy of the parent, so that a child never reads below the parent's RSS at the fork."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _client_main(base_url: str, api_key: str, frame: str, row: Row, connection: object) -> None:
    from pixverse_async import ImageToVideo, PixVerseClient, RateLimits
    from pixverse_async._client import DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT
    from pixverse_async.testing import ScaledClock

    async def run() -> Outcome:
        limits = RateLimits(max_running=64) if row.told_cap else RateLimits()
        starts: list[float] = []
        failures: dict[str, int] = {}
        succeeded = 0
        began = time.monotonic()

        def on_event(event: object) -> None:
            if getattr(event, "kind", None) is not None and event.kind.name == "SUBMITTED":  # type: ignore[attr-defined]
                starts.append(time.monotonic() - began)

        # The client's own waiting runs at the simulator's scale; its network timeouts stay real seconds.
        async with PixVerseClient(
            api_key,
            base_url=base_url,
            clock=ScaledClock(row.time_scale),
            rate_limits=limits,
            max_upload_bytes_in_flight=None if row.no_lane else DEFAULT_MAX_UPLOAD_BYTES_IN_FLIGHT,
        ) as client:
            jobs = [ImageToVideo(f"frame {number}", Path(frame)) for number in range(row.jobs)]
            async with client.as_completed(jobs, on_event=on_event) as results:
                async for result in results:
                    if result.error is None:
                        succeeded += 1
                    else:
                        name = type(result.error).__name__
                        failures[name] = failures.get(name, 0) + 1
        wall = time.monotonic() - began
        peak = _peak_rss_mb()
        return Outcome(succeeded, failures, peak, sum(starts) / max(1, len(starts)), wall, tuple(starts))

    connection.send(asyncio.run(run()))  # type: ignore[attr-defined]


def measure(row: Row, frame: Path, frame_bytes: int) -> tuple[Outcome, float, float]:
    body_bytes = 4 * ((frame_bytes + 2) // 3) + 60
    link = row.jobs * body_bytes * 8 / (row.mbps * 1e6) * row.time_scale
    limit = link + TASK_SECONDS * row.time_scale
    config = SimConfig(
        time_scale=row.time_scale, duration=TASK_SECONDS, options=(("uplink_mbps", row.mbps), ("submit_latency", 0.5))
    )
    with SimulatorProcess(config) as sim:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_client_main, args=(sim.base_url, sim.api_key, str(frame), row, theirs))
        process.start()
        theirs.close()
        try:
            outcome: Outcome = ours.recv()  # EOFError if the client process died
        finally:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return outcome, link, limit


def rows_for(quick: bool) -> list[Row]:
    if quick:
        return [Row("8 x 8.7 MB @ 100 Mbit/s", 8, 100.0, 1.0), Row("64 x 8.7 MB @ 100 Mbit/s (x0.25)", 64, 100.0, 0.25)]
    return [
        Row("64 x 8.7 MB @ 100 Mbit/s", 64, 100.0, 1.0),
        Row("64 x 8.7 MB @ 100 Mbit/s, cap told", 64, 100.0, 1.0, told_cap=True, reference=True),
        Row("16 x 8.7 MB @ 20 Mbit/s", 16, 20.0, 1.0),
        Row("16 x 8.7 MB @ 20 Mbit/s, cap told", 16, 20.0, 1.0, told_cap=True, reference=True),
        Row("16 x 8.7 MB @ 20 Mbit/s, cap told, no lane", 16, 20.0, 1.0, told_cap=True, reference=True, no_lane=True),
        Row("640 x 8.7 MB @ 100 Mbit/s (x0.25)", 640, 100.0, 0.25),
    ]


def measure_all(quick: bool) -> list[Table]:
    with tempfile.TemporaryDirectory() as folder:
        frame = Path(folder) / "frame.png"
        size = incompressible_png(frame)
        table = Table(
            f"Uploads: an {size / 1e6:.2f} MB PNG ({SIDE}x{SIDE}, random pixels) per job, tasks of {TASK_SECONDS:g} s,"
            " submit latency 0.5 s (simulated)",
            ("row", "ok", "failed", "peak RSS MB", "start/link", "wall/limit", "link s", "limit s"),
        )
        first_peak: float | None = None
        for row in rows_for(quick):
            outcome, link, limit = measure(row, frame, size)
            failed = ", ".join(f"{name} {count}" for name, count in outcome.failures.items()) or "-"
            name = row.name + (" [reference]" if row.reference else "")
            table.add(
                name,
                outcome.succeeded,
                failed,
                outcome.peak_rss_mb,
                outcome.mean_start / link,
                outcome.wall / limit,
                link,
                limit,
            )
            if first_peak is None:
                first_peak = outcome.peak_rss_mb
            elif row.jobs >= 10 * rows_for(quick)[0].jobs:
                table.notes.append(
                    f"peak RSS of {row.name}: {outcome.peak_rss_mb / first_peak:.2f}x the first row's (goal <= 1.2x)"
                )
            print(f"  measured: {name}", flush=True)
        table.notes.append(
            "Goals (default client): peak RSS <= 200 MB at 64 jobs; every job succeeds at 20 Mbit/s;"
            " start/link <= 0.75; wall/limit <= 1.2."
        )
    return [table]


async def run(quick: bool) -> list[Table]:
    tables = await anyio.to_thread.run_sync(measure_all, quick)
    for table in tables:
        table.print()
    return tables


def main(argv: list[str] | None = None) -> None:
    asyncio.run(run(parse_quick_flag(__doc__ or "", argv)))


if __name__ == "__main__":
    main()
