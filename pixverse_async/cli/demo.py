"""`pixverse-async demo`: the whole `run` command against the built-in simulator, needing no key and no network.

It writes a few first-frame images and a manifest into the output folder, starts the simulator, and runs the
manifest with the progress display, leaving the videos and the journal in that folder.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path
from typing import TextIO

from rich.text import Text

from .._client import PixVerseClient
from .._clock import ScaledClock
from ..testing import Simulator, lognormal_durations
from .progress import console_for
from .run import DEFAULT_JOURNAL_NAME, RunOptions, run_manifest

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
    """A small real PNG: a colour gradient, different for each `shade`."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(((shade + y) % 256, (2 * y) % 256, 128) * width) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_demo_manifest(out: Path, count: int) -> Path:
    frames = out / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as lines:
        for index in range(count):
            frame = frames / f"frame-{index + 1:02d}.png"
            frame.write_bytes(sample_frame(480, 320, shade=index * 40))
            row = {
                "id": f"video-{index + 1:02d}",
                "prompt": _PROMPTS[index % len(_PROMPTS)],
                "image": f"frames/{frame.name}",
                "seed": index,
            }
            lines.write(json.dumps(row) + "\n")
    return manifest


async def run_demo(out: Path, count: int, *, time_scale: float = 0.02, stream: TextIO = sys.stdout) -> int:
    """Run the demo; returns the exit code of `run` (0 when every video was made)."""
    # The simulator lives only as long as the demo: a journal from an earlier demo names tasks it never had.
    (out / DEFAULT_JOURNAL_NAME).unlink(missing_ok=True)
    manifest = write_demo_manifest(out, count)
    console = console_for(stream)

    def say(line: str) -> None:  # fitted to the terminal like the run's own lines
        console.print(Text(line, overflow="fold"))

    say(f"Wrote {count} first frames and {manifest}.")
    say(f"Starting the built-in API simulator (a 40 s job takes {40 * time_scale:.1f} s here)...")
    async with (
        Simulator(api_keys=(DEMO_KEY,), time_scale=time_scale, duration=lognormal_durations(40, 0.3), seed=1) as sim,
        PixVerseClient(DEMO_KEY, base_url=sim.base_url, clock=ScaledClock(time_scale), max_concurrency=4) as client,
    ):
        say(f"Running: pixverse-async run {manifest} --out {out} --concurrency 4\n")
        code = await run_manifest(RunOptions(manifest=manifest, out=out, concurrency=4), client, stream)
        say(f"({sim.counters.poll_requests} polls for {sim.counters.tasks_created} tasks)")
    return code
