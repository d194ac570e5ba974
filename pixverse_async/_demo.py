"""`pixverse-async demo`: a whole bulk run against the built-in simulator, needing no API key and no network.

It writes a few first-frame images, submits them through `as_completed`, shows progress, downloads every
video and prints a summary, leaving the frames and videos in the output folder.
"""

from __future__ import annotations

import struct
import sys
import time
import zlib
from pathlib import Path
from typing import TextIO

import anyio

from ._bulk import EventKind, JobEvent, JobResult
from ._client import PixVerseClient
from ._clock import ScaledClock
from ._exceptions import PixVerseError
from ._models import ImageToVideo
from .testing import Simulator, lognormal_durations

DEMO_KEY = "sk-demo"
_PROMPTS = (
    "a red fox running through fresh snow, cinematic",
    "waves rolling onto a rocky shore at sunset",
    "a paper boat drifting down a rainy street",
    "a hot air balloon rising over green hills",
    "city lights flickering on at dusk, timelapse",
    "a cat stretching in a sunny window",
)


def sample_frame(width: int, height: int, shade: int) -> bytes:
    """A small real PNG: a vertical gradient, so each sample looks different."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(((shade + y) % 256, (2 * y) % 256, 128) * width) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


class ProgressLine:
    """One live status line on a terminal; plain log lines elsewhere."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.live = stream.isatty()
        self.submitted = self.succeeded = self.failed = 0
        self.started = time.monotonic()

    def on_event(self, event: JobEvent) -> None:
        if event.kind is EventKind.SUBMITTED:
            self.submitted += 1
            self._log(f"submitted {event.task_id}")
        elif event.kind is EventKind.SUCCEEDED:
            self.succeeded += 1
            self._log(f"finished  {event.task_id}")
        elif event.kind is EventKind.FAILED:
            self.failed += 1
            self._log(f"failed    {event.task_id}: {event.error}")
        if self.live:
            done = self.succeeded + self.failed
            running = self.submitted - done
            elapsed = time.monotonic() - self.started
            bar = "#" * (20 * done // self.total) + "-" * (20 - 20 * done // self.total)
            self.stream.write(
                f"\r[{bar}] {done}/{self.total} done, {self.failed} failed, {running} running, "
                f"{self.total - self.submitted} queued, {elapsed:4.1f}s"
            )
            self.stream.flush()

    def _log(self, line: str) -> None:
        if not self.live:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")


async def run_demo(out: Path, count: int, *, time_scale: float = 0.02, stream: TextIO = sys.stdout) -> int:
    """Run the demo; returns the process exit code (0 when every job succeeded)."""
    frames = out / "frames"
    videos = out / "videos"
    frames.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    requests = []
    for index in range(count):
        frame = frames / f"frame-{index:02d}.png"
        frame.write_bytes(sample_frame(480, 320, shade=index * 40))
        requests.append(ImageToVideo(_PROMPTS[index % len(_PROMPTS)], frame, seed=index))
    print(f"Starting the built-in API simulator (a 40 s job takes {40 * time_scale:.1f} s here)...", file=stream)
    async with (
        Simulator(api_keys=(DEMO_KEY,), time_scale=time_scale, duration=lognormal_durations(40, 0.3), seed=1) as sim,
        PixVerseClient(DEMO_KEY, base_url=sim.base_url, clock=ScaledClock(time_scale), max_concurrency=4) as client,
    ):
        progress = ProgressLine(count, stream)
        outcomes: list[tuple[JobResult, Path | None]] = []
        async with client.as_completed(requests, on_event=progress.on_event) as results:
            async for result in results:
                saved = None
                if result.ok:
                    try:
                        saved = await client.download(
                            result.result or result.videos[0], videos / f"{result.task_id}.mp4"
                        )
                    except PixVerseError as error:
                        result = JobResult(result.request, result.task_id, result.status, result.videos, error)
                outcomes.append((result, saved))
        progress.close()
        polls = sim.counters.poll_requests
    print(f"\n{'frame':<16} {'status':<9} video", file=stream)
    for result, saved in outcomes:
        image = result.request.image if isinstance(result.request, ImageToVideo) else None
        frame_name = image.name if isinstance(image, Path) else "?"
        status = "ok" if saved is not None else "FAILED"
        print(f"{frame_name:<16} {status:<9} {saved or result.error}", file=stream)
    succeeded = sum(saved is not None for _, saved in outcomes)
    print(f"\n{succeeded}/{count} videos in {videos}  ({polls} polls for {count} tasks)", file=stream)
    return 0 if succeeded == count else 1


def main(out: Path, count: int) -> int:
    return anyio.run(run_demo, out, count)
