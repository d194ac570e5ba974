"""A manifest row is read into an `ImageToVideo` field by field: every field's problem is listed, each on its
own line of the error, for JSON Lines and CSV alike (a dry run shows them; nothing is sent)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.images import png

pytestmark = pytest.mark.anyio


async def dry_run(manifest: Path) -> tuple[int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
    out = manifest.parent / "out"
    command = [sys.executable, "-m", "pixverse_async", "run", str(manifest), "--out", str(out), "--dry-run"]
    done = await anyio.run_process(command, env=env, check=False)
    lines = [line.strip() for line in done.stderr.decode().splitlines() if line.strip().startswith("line ")]
    return done.returncode, lines


async def test_every_bad_field_of_a_row_is_listed_in_jsonl_and_csv(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    good = {"id": "good", "prompt": "a fox", "image": "a.png"}
    bad = {"id": "bad", "prompt": " ", "image": "missing.png", "resolution": "4k", "style": "oil", "seed": -1}
    (tmp_path / "jobs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({**bad, "extra": [1]}) + "\n")
    with (tmp_path / "jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*bad, "fast_mode", "extra"])
        writer.writerow([*good.values(), "", "", "", "", ""])
        writer.writerow([*bad.values(), "maybe", "[1]"])

    returncode, problems = await dry_run(tmp_path / "jobs.jsonl")
    assert returncode == 2
    assert [problem.split(": ")[1] for problem in problems] == [
        "prompt",
        "image",
        "resolution",
        "style",
        "seed",
        "extra",
    ], problems
    assert all(problem.startswith("line 2: ") for problem in problems)
    assert "missing.png: no such file" in problems[1]

    returncode, problems = await dry_run(tmp_path / "jobs.csv")
    assert returncode == 2
    fields = [problem.split(": ")[1] for problem in problems]
    assert fields == ["prompt", "image", "resolution", "fast_mode", "style", "seed", "extra"], problems
    assert all(problem.startswith("line 3: ") for problem in problems)
    assert "'-1' is not a whole number written in the digits 0-9" in problems[5]


async def test_a_missing_prompt_is_named_with_every_other_problem_of_its_row(tmp_path: Path) -> None:
    # No image: a text-to-video row, which needs no image (it was "image: is required" before).
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"id": "x", "seed": "12"}) + "\n")
    returncode, problems = await dry_run(tmp_path / "jobs.jsonl")
    assert returncode == 2
    assert problems == [
        "line 1: prompt: is required",
        "line 1: seed: must be an int from 0 to 2147483647, not str",
    ]
