"""The task lifecycle and the hint modes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from pixverse_async.testing import (
    DEFAULT_FAIL_REASON,
    Simulator,
    SubmittedImage,
    TaskPlan,
    lognormal_durations,
)
from tests.testing.sim_harness import (
    URL_IMAGE,
    Harness,
    mp4_boxes,
    running,
    wait_for_status,
)

# --------------------------------------------------------------------------------------------------------
# Task lifecycle


@pytest.mark.anyio
async def test_lifecycle_queued_processing_succeed_with_eta_progress_and_video() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.1) as h:
        reply = await h.submit(seed=42, resolution="720p")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        task_id = reply.json()["task_id"]
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", task_id)
        assert reply.json() == {"task_id": task_id}

        queued = await h.task(task_id)
        assert queued["task"] == {
            "task_id": task_id,
            "status": "TASK_STATUS_QUEUED",
            "reason": "",
            "task_type": "PIXVERSE_V4_5_I2V",
            "eta": 100,
            "progress_percent": 0,
        }
        assert queued["extra"]["seed"] == "42"
        assert set(queued["extra"]["debug_info"]) == {
            "request_info",
            "submit_time_ms",
            "execute_time_ms",
            "complete_time_ms",
        }
        assert queued["extra"]["debug_info"]["execute_time_ms"] == ""
        assert (queued["images"], queued["audios"], queued["videos"]) == ([], [], [])

        h.sim.advance(55.0)  # 10 s queued + 45 of 90 s processing
        processing = await h.task(task_id)
        assert processing["task"]["status"] == "TASK_STATUS_PROCESSING"
        assert processing["task"]["eta"] == 45
        assert 49 <= processing["task"]["progress_percent"] <= 51
        assert processing["extra"]["debug_info"]["execute_time_ms"] != ""
        assert processing["videos"] == []

        h.sim.advance(45.0)
        done = await h.task(task_id)
        assert done["task"]["status"] == "TASK_STATUS_SUCCEED"
        assert (done["task"]["eta"], done["task"]["progress_percent"], done["task"]["reason"]) == (0, 100, "")
        assert done["extra"]["debug_info"]["complete_time_ms"] != ""
        [video] = done["videos"]
        assert video["video_url_ttl"] == "3600"
        assert video["video_type"] == "mp4"
        assert video["video_url"].startswith(f"{h.sim.video_base_url}/videos/{task_id}.mp4?expires=")
        assert h.sim.video_base_url != h.sim.base_url

        download = await h.request("GET", video["video_url"])
        assert download.status == 200
        assert download.headers["Content-Type"] == "video/mp4"
        assert int(download.headers["Content-Length"]) == len(download.body)
        assert download.body == h.sim.video_bytes(task_id)
        assert [kind for kind, _ in mp4_boxes(download.body)] == [b"ftyp", b"moov", b"mdat"]
        assert task_id.encode() in download.body

        task = h.sim.tasks[task_id]
        assert task.request == {"prompt": "a cat surfing", "seed": 42, "resolution": "720p"}
        assert task.image == SubmittedImage(encoding="url", url=URL_IMAGE)
        assert h.sim.task_status(task_id) == "TASK_STATUS_SUCCEED"


@pytest.mark.anyio
async def test_lifecycle_in_scaled_real_time() -> None:
    async with running(time_scale=0.001, duration=30.0) as h:  # 30 ms of real time
        task_id = await h.create()
        seen = await wait_for_status(h, task_id, "TASK_STATUS_SUCCEED")
        order = ["TASK_STATUS_QUEUED", "TASK_STATUS_PROCESSING", "TASK_STATUS_SUCCEED"]
        assert [order.index(status) for status in seen] == sorted(order.index(status) for status in seen)


@pytest.mark.anyio
async def test_video_bytes_differ_per_task() -> None:
    async with running() as h:
        first, second = await h.create(), await h.create()
        assert h.sim.video_bytes(first) != h.sim.video_bytes(second)
        assert h.sim.video_bytes(first) == h.sim.video_bytes(first)
        assert len(h.sim.video_bytes(first)) < 8192


@pytest.mark.anyio
async def test_failure_rate_fails_tasks_with_a_reason() -> None:
    async with running(time_scale=1.0, duration=10.0, failure_rate=1.0) as h:
        task_id = await h.create()
        h.sim.advance(10.0)
        result = await h.task(task_id)
        assert result["task"]["status"] == "TASK_STATUS_FAILED"
        assert result["task"]["reason"] == DEFAULT_FAIL_REASON
        assert result["task"]["eta"] == 0
        assert result["videos"] == []


@pytest.mark.anyio
async def test_plan_overrides_duration_and_outcome_per_submission() -> None:
    def plan(body: Mapping[str, Any]) -> TaskPlan | None:
        return TaskPlan(duration=5.0, fail_reason="boom") if "fail" in body["prompt"] else None

    async with running(time_scale=1.0, duration=100.0, plan=plan) as h:
        failing = await h.create(prompt="please fail")
        normal = await h.create(prompt="a dog")
        h.sim.advance(5.0)
        result = await h.task(failing)
        assert (result["task"]["status"], result["task"]["reason"]) == ("TASK_STATUS_FAILED", "boom")
        assert (await h.task(normal))["task"]["status"] == "TASK_STATUS_QUEUED"  # 10 s of queue by default


@pytest.mark.anyio
async def test_lognormal_durations_are_seeded_and_positive() -> None:
    assert Simulator.lognormal is lognormal_durations
    async with running(time_scale=1.0, duration=Simulator.lognormal(median=40.0, sigma=0.5), seed=7) as h:
        ids = [await h.create() for _ in range(50)]
        durations = sorted(h.sim.tasks[i].ends_at - h.sim.tasks[i].submitted_at for i in ids)
        assert all(d > 0 for d in durations)
        assert 20.0 < durations[25] < 80.0
        assert len(set(durations)) == 50
    with pytest.raises(ValueError, match="median"):
        lognormal_durations(median=0.0)


# --------------------------------------------------------------------------------------------------------
# Hint modes


async def hints(h: Harness, task_id: str) -> tuple[str, int, int]:
    task = (await h.task(task_id))["task"]
    return task["status"], task["eta"], task["progress_percent"]


@pytest.mark.anyio
async def test_eta_absent_is_zero_while_running_and_noisy_is_consistently_off_per_task() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, eta="absent") as h:
        task_id = await h.create()
        h.sim.advance(30)
        assert await hints(h, task_id) == ("TASK_STATUS_PROCESSING", 0, 30)
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, eta="noisy", eta_noise=0.5) as h:
        ids = [await h.create() for _ in range(20)]
        h.sim.advance(20)
        first = [(await hints(h, task_id))[1] for task_id in ids]
        h.sim.advance(40)
        second = [(await hints(h, task_id))[1] for task_id in ids]
    factors = [h.sim.tasks[task_id].eta_factor for task_id in ids]
    assert len(set(factors)) == 20 and min(factors) < 0.9 and max(factors) > 1.1
    for eta_then, eta_now, factor in zip(first, second, factors, strict=True):
        assert abs(eta_then - factor * 80) <= 1  # rounded up to whole seconds
        assert abs((eta_then - eta_now) - factor * 40) <= 1  # counts down `factor` times as fast


@pytest.mark.anyio
async def test_noisy_eta_draws_shift_no_task_ids_or_durations() -> None:
    async with running(time_scale=1.0, duration=Simulator.lognormal(40, 0.3)) as plain:
        plain_ids = [await plain.create() for _ in range(5)]
    async with running(time_scale=1.0, duration=Simulator.lognormal(40, 0.3), eta="noisy") as noisy:
        noisy_ids = [await noisy.create() for _ in range(5)]
    assert plain_ids == noisy_ids
    assert [plain.sim.tasks[i].ends_at - plain.sim.tasks[i].submitted_at for i in plain_ids] == pytest.approx(
        [noisy.sim.tasks[i].ends_at - noisy.sim.tasks[i].submitted_at for i in noisy_ids]
    )


@pytest.mark.anyio
async def test_progress_in_steps_or_absent() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, progress="steps", progress_step=25) as h:
        task_id = await h.create()
        seen = []
        for _ in range(4):
            h.sim.advance(20)
            seen.append((await hints(h, task_id))[2])
        assert seen == [0, 25, 50, 75]
        h.sim.advance(30)
        assert await hints(h, task_id) == ("TASK_STATUS_SUCCEED", 0, 100)
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, progress="absent") as h:
        task_id = await h.create()
        h.sim.advance(90)
        assert (await hints(h, task_id))[2] == 0


@pytest.mark.anyio
async def test_a_busy_account_queues_tasks_without_progress_until_a_place_frees() -> None:
    async with running(time_scale=1.0, duration=100.0, queue_fraction=0.0, max_processing_per_key=2) as h:
        first, _, third = [await h.create() for _ in range(3)]
        h.sim.advance(50)
        assert (await hints(h, first))[0] == "TASK_STATUS_PROCESSING"
        assert await hints(h, third) == ("TASK_STATUS_QUEUED", 150, 0)  # waits 50 s more, then runs 100 s
        h.sim.advance(60)
        assert (await hints(h, first))[0] == "TASK_STATUS_SUCCEED"
        assert await hints(h, third) == ("TASK_STATUS_PROCESSING", 90, 10)


def test_hint_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="eta"):
        Simulator(eta="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress"):
        Simulator(progress="jumpy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress_step"):
        Simulator(progress_step=0)
    with pytest.raises(ValueError, match="max_processing_per_key"):
        Simulator(max_processing_per_key=0)
