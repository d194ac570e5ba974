"""Text-to-video: `TextToVideo` checks its fields like `ImageToVideo`, goes to its own endpoint, mixes with
image jobs in one run."""

from __future__ import annotations

from typing import Any

import pytest

from pixverse_async import (
    ImageToVideo,
    InvalidRequestError,
    PixVerseClient,
    TaskStatus,
    TextToVideo,
)
from pixverse_async.testing import Simulator
from tests.helpers import KEY, SCALE, client_for
from tests.images import png

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2049}, "prompt"),
        ({"prompt": "a\x00b"}, "prompt"),
        ({"aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"aspect_ratio": None}, "aspect_ratio"),
        ({"resolution": "1080p", "fast_mode": True}, "resolution"),
        ({"resolution": "4k"}, "resolution"),
        ({"style": "noir"}, "style"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"fast_mode": 1}, "fast_mode"),
        ({"negative_prompt": "\x07"}, "negative_prompt"),
        ({"extra_body": {"aspect_ratio": "1:1"}}, "extra_body"),
        ({"extra_body": {"x": float("nan")}}, "extra_body"),
    ],
)
def test_text_to_video_refuses_what_the_api_refuses_with_the_image_jobs_errors(
    fields: dict[str, Any], field: str
) -> None:
    arguments: dict[str, Any] = {"prompt": "a lighthouse at dawn", **fields}
    with pytest.raises(InvalidRequestError) as caught:
        TextToVideo(**arguments)
    assert caught.value.field == field
    shared = {name: value for name, value in arguments.items() if name != "aspect_ratio"}
    if field not in ("aspect_ratio", "extra_body"):
        # The same rule, the same words, as the image job's.
        with pytest.raises(InvalidRequestError) as image_error:
            ImageToVideo(image="https://example.com/a.png", **shared)
        assert str(image_error.value) == str(caught.value)


def test_text_to_video_defaults() -> None:
    request = TextToVideo("a lighthouse at dawn")
    assert (request.aspect_ratio, request.resolution, request.fast_mode) == ("16:9", "540p", False)
    assert TextToVideo("x", "9:16") == TextToVideo("x", aspect_ratio="9:16")


async def test_a_text_job_goes_to_its_endpoint_and_its_result_comes_from_the_task_result_call() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10) as sim, client_for(sim) as client:
        task = await client.submit(TextToVideo("a lighthouse", "9:16", resolution="720p", seed=7, style="clay"))
        result = await client.wait(task)
    assert result.status is TaskStatus.SUCCEED and result.videos
    created = sim.tasks[task.task_id]
    assert created.is_text
    assert created.request == {
        "prompt": "a lighthouse",
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "fast_mode": False,
        "seed": 7,
        "style": "clay",
    }


async def test_the_simulator_checks_a_text_body_by_its_own_rules() -> None:
    async with Simulator(api_keys=(KEY,), time_scale=SCALE) as sim, client_for(sim) as client:
        bad = [
            {"prompt": "x", "aspect_ratio": "2:1"},
            {"prompt": "x", "image": "https://example.com/a.png"},
            {"prompt": " "},
            {"prompt": "x", "resolution": "1080p", "fast_mode": True},
        ]
        session = client._state().session
        for body in bad:
            async with session.post(
                f"{sim.base_url}/v3/async/pixverse-v4.5-t2v", json=body, headers={"Authorization": f"Bearer {KEY}"}
            ) as answer:
                assert answer.status == 400, body
                assert (await answer.json())["reason"] == "INVALID_REQUEST_BODY"
        # and the image endpoint still wants its image
        async with session.post(
            f"{sim.base_url}/v3/async/pixverse-v4.5-i2v",
            json={"prompt": "x", "aspect_ratio": "16:9"},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as answer:
            assert answer.status == 400
    assert sim.counters.tasks_created == 0


async def test_text_and_image_jobs_mix_in_one_run_with_keys() -> None:
    image = png(400, 300)
    jobs: list[tuple[str, ImageToVideo | TextToVideo]] = []
    for index in range(10):
        jobs.append((f"text-{index}", TextToVideo(f"text {index}")))
        jobs.append((f"image-{index}", ImageToVideo(f"image {index}", image)))
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE, duration=10, text_duration=30) as sim,
        client_for(sim) as client,
        client.as_completed(jobs) as results,
    ):
        seen = {str(result.key): result async for result in results}
    assert sorted(seen) == sorted(key for key, _ in jobs)
    assert all(result.ok for result in seen.values())
    assert results.counts.succeeded == 20
    for key, result in seen.items():
        assert isinstance(result.request, TextToVideo) == key.startswith("text-")
        assert result.task_id is not None
        assert sim.tasks[result.task_id].is_text == key.startswith("text-")
    assert sim.counters.tasks_created == 20


async def test_submit_refuses_what_is_not_a_request_before_sending() -> None:
    async with (
        Simulator(api_keys=(KEY,), time_scale=SCALE) as sim,
        PixVerseClient(KEY, base_url=sim.base_url) as client,
    ):
        with pytest.raises(InvalidRequestError, match="ImageToVideo or a TextToVideo"):
            await client.submit("a prompt")  # type: ignore[arg-type]
    assert sim.counters.submit_requests == 0
