"""`ImageToVideo(extra_body=...)`: fields the library does not know, merged into the request, checked first."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from pixverse_async import BadRequestError, ImageToVideo, InvalidRequestError
from pixverse_async.testing import Simulator
from tests.helpers import KEY, SCALE, client_for
from tests.images import png

pytestmark = pytest.mark.anyio
URL_IMAGE = "https://example.com/frame.png"


def test_json_values_are_taken_and_copied() -> None:
    fields: dict[str, Any] = {"duration": 8, "motion_mode": "fast", "camera": {"zoom": [1.5, None, True]}}
    request = ImageToVideo("p", URL_IMAGE, extra_body=fields)
    fields["camera"]["zoom"].append("later")  # the caller's dict changing later does not change the request
    assert request.extra_body == {"duration": 8, "motion_mode": "fast", "camera": {"zoom": [1.5, None, True]}}
    assert request == ImageToVideo(
        "p", URL_IMAGE, extra_body={"duration": 8, "motion_mode": "fast", "camera": {"zoom": [1.5, None, True]}}
    )
    assert hash(request) == hash(ImageToVideo("p", URL_IMAGE, extra_body={"other": 1}))  # still hashable
    assert ImageToVideo("p", URL_IMAGE, extra_body=None).extra_body is None


@pytest.mark.parametrize("field", ["prompt", "image", "resolution", "negative_prompt", "fast_mode", "style", "seed"])
def test_a_documented_field_is_refused_and_points_to_its_argument(field: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"'{field}' is a field of ImageToVideo: pass it as {field}=") as info:
        ImageToVideo("p", URL_IMAGE, extra_body={field: "x", "duration": 8})
    assert info.value.field == "extra_body"


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


@pytest.mark.parametrize(
    ("extra_body", "problem"),
    [
        ({"x": math.nan}, "NaN or infinity"),
        ({"x": [1, math.inf]}, r"extra_body\['x'\]\[1\] is inf"),
        ({"x": {1: "a"}}, "JSON object keys are str"),
        ({"x": {"when": object()}}, "of type object"),
        ({"x": b"bytes"}, "of type bytes"),
        ({"x": {1, 2}}, "of type set"),
        (_cyclic(), "nested more than 64 deep"),
        ("duration=8", "must be a dict"),
        ([("duration", 8)], "must be a dict"),
    ],
)
def test_anything_but_json_values_is_refused(extra_body: Any, problem: str) -> None:
    with pytest.raises(InvalidRequestError, match=problem):
        ImageToVideo("p", URL_IMAGE, extra_body=extra_body)


async def test_the_fields_reach_the_server_with_the_documented_ones() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, accept_fields=("duration", "motion_mode")) as sim:
        async with client_for(sim) as client:
            task = await client.submit(
                ImageToVideo("p", png(), seed=3, extra_body={"duration": 8, "motion_mode": {"kind": "fast"}})
            )
        sent = sim.tasks[task.task_id].request
        assert sent["duration"] == 8 and sent["motion_mode"] == {"kind": "fast"}
        assert sent["seed"] == 3 and sent["prompt"] == "p" and sim.tasks[task.task_id].image.encoding == "base64"


async def test_the_simulator_refuses_unknown_fields_unless_told_to_accept_them() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, accept_fields=("duration",)) as sim:
        async with client_for(sim) as client:
            with pytest.raises(BadRequestError, match="unknown field"):
                await client.submit(ImageToVideo("p", URL_IMAGE, extra_body={"motion_mode": "fast"}))
        assert sim.counters.tasks_created == 0


async def test_extra_is_merged_with_the_webhook_and_a_clash_is_refused_before_sending() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE) as sim:
        async with client_for(sim, webhook_url="https://hooks.example/pixverse") as client:
            task = await client.submit(ImageToVideo("p", URL_IMAGE, extra_body={"extra": {"trace_id": "t-1"}}))
            for clash in ({"extra": {"webhook": {"url": "https://other.example"}}}, {"extra": "no object"}):
                with pytest.raises(InvalidRequestError, match="webhook_url") as info:
                    await client.submit(ImageToVideo("p", URL_IMAGE, extra_body=clash))
                assert info.value.field == "extra_body"
        extra = sim.tasks[task.task_id].request["extra"]
        assert extra["trace_id"] == "t-1" and set(extra) == {"trace_id", "webhook"}
        assert extra["webhook"]["url"].startswith("https://hooks.example/pixverse?pixverse_submission=")
        assert sim.counters.submit_requests == 1


async def _run_cli(*args: str, sim: Simulator) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXVERSE_")}
    env["PIXVERSE_API_KEY"] = KEY
    command = [sys.executable, "-m", "pixverse_async", *args, "--base-url", sim.base_url, "--time-scale", str(SCALE)]
    done = await anyio.run_process(command, env=env, check=False)
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def test_a_manifest_column_extra_holds_a_json_object_in_jsonl_and_csv(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text(json.dumps({"id": "j", "prompt": "from jsonl", "image": "a.png", "extra": {"duration": 8}}) + "\n")
    with (tmp_path / "jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "prompt", "image", "extra"])
        writer.writerow(["c", "from csv", "a.png", '{"duration": 5, "motion_mode": "slow"}'])
        writer.writerow(["plain", "no extra", "a.png", ""])
    async with Simulator(
        api_keys=(KEY,), time_scale=SCALE, duration=5, accept_fields=("duration", "motion_mode")
    ) as sim:
        for manifest in (jsonl, tmp_path / "jobs.csv"):
            code, output = await _run_cli("run", str(manifest), "--out", str(tmp_path / manifest.suffix[1:]), sim=sim)
            assert code == 0, output
        sent = {task.prompt: dict(task.request) for task in sim.tasks.values()}
    assert sent["from jsonl"]["duration"] == 8
    assert sent["from csv"]["duration"] == 5 and sent["from csv"]["motion_mode"] == "slow"
    assert "duration" not in sent["no extra"]


async def test_a_bad_extra_cell_is_a_manifest_problem_and_nothing_is_sent(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    with (tmp_path / "jobs.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "image", "extra"])
        writer.writerow(["not json", "a.png", "{duration: 5"])
        writer.writerow(["an array", "a.png", "[1, 2]"])
        writer.writerow(["documented", "a.png", '{"seed": 5}'])
    async with Simulator(api_keys=(KEY,), time_scale=SCALE) as sim:
        code, output = await _run_cli("run", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out"), sim=sim)
        assert sim.counters.submit_requests == 0
    assert code == 2, output
    assert "line 2: extra: a CSV cell of extra must hold a JSON object" in output
    assert "line 3: extra: must be a JSON object" in output
    assert "line 4: extra_body: 'seed' is a field of ImageToVideo" in output
