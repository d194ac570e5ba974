"""Validation of submissions."""

from __future__ import annotations

from typing import Any

import pytest

from pixverse_async.testing import (
    SubmittedImage,
)
from tests.images import jpeg, png
from tests.testing.sim_harness import (
    KEY,
    URL_IMAGE,
    b64,
    running,
)

VALIDATION_CASES: list[tuple[str, Any, str]] = [
    ("body is a list", ["prompt"], "INVALID_REQUEST_BODY"),
    ("missing prompt", {"image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("empty prompt", {"prompt": "", "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("blank prompt", {"prompt": "   ", "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("prompt too long", {"prompt": "x" * 2049, "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("prompt not a string", {"prompt": 3, "image": URL_IMAGE}, "INVALID_REQUEST_BODY"),
    ("missing image", {"prompt": "p"}, "INVALID_REQUEST_BODY"),
    ("image not a string", {"prompt": "p", "image": 5}, "INVALID_REQUEST_BODY"),
    ("empty image", {"prompt": "p", "image": ""}, "INVALID_REQUEST_BODY"),
    ("bad resolution", {"prompt": "p", "image": URL_IMAGE, "resolution": "4k"}, "INVALID_REQUEST_BODY"),
    (
        "1080p in fast mode",
        {"prompt": "p", "image": URL_IMAGE, "resolution": "1080p", "fast_mode": True},
        "INVALID_REQUEST_BODY",
    ),
    ("fast_mode not bool", {"prompt": "p", "image": URL_IMAGE, "fast_mode": "yes"}, "INVALID_REQUEST_BODY"),
    (
        "negative_prompt too long",
        {"prompt": "p", "image": URL_IMAGE, "negative_prompt": "n" * 2049},
        "INVALID_REQUEST_BODY",
    ),
    ("bad style", {"prompt": "p", "image": URL_IMAGE, "style": "noir"}, "INVALID_REQUEST_BODY"),
    ("seed is bool", {"prompt": "p", "image": URL_IMAGE, "seed": True}, "INVALID_REQUEST_BODY"),
    ("seed negative", {"prompt": "p", "image": URL_IMAGE, "seed": -1}, "INVALID_REQUEST_BODY"),
    ("seed too big", {"prompt": "p", "image": URL_IMAGE, "seed": 2_147_483_648}, "INVALID_REQUEST_BODY"),
    ("seed float", {"prompt": "p", "image": URL_IMAGE, "seed": 1.5}, "INVALID_REQUEST_BODY"),
    ("null field", {"prompt": "p", "image": URL_IMAGE, "style": None}, "INVALID_REQUEST_BODY"),
    ("unknown key", {"prompt": "p", "image": URL_IMAGE, "duration": 5}, "INVALID_REQUEST_BODY"),
    ("extra not object", {"prompt": "p", "image": URL_IMAGE, "extra": "x"}, "INVALID_REQUEST_BODY"),
    ("bad base64", {"prompt": "p", "image": "not base64 at all!"}, "INVALID_REQUEST_BODY"),
    ("bad data uri", {"prompt": "p", "image": "data:text/plain,hello"}, "INVALID_REQUEST_BODY"),
    ("gif data uri", {"prompt": "p", "image": "data:image/gif;base64," + b64(b"GIF89a")}, "INVALID_IMAGE_FORMAT"),
    ("not an image", {"prompt": "p", "image": b64(b"GIF89a" + bytes(100))}, "INVALID_IMAGE_FORMAT"),
    ("too small", {"prompt": "p", "image": b64(png(299, 400))}, "INVALID_IMAGE_SIZE"),
    ("too wide", {"prompt": "p", "image": b64(jpeg(1000, 300))}, "IMAGE_EXCEEDS_MAX_RESOLUTION"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"), [case[1:] for case in VALIDATION_CASES], ids=[case[0] for case in VALIDATION_CASES]
)
async def test_invalid_submissions_are_refused_with_the_api_reason(body: Any, reason: str) -> None:
    async with running() as h:
        reply = await h.submit(body)
        assert reply.status == 400
        assert reply.json() == {"code": 400, "reason": reason, "message": reply.json()["message"], "metadata": {}}
        assert reply.json()["message"]
        assert h.sim.counters.tasks_created == 0
        assert h.sim.counters.errors_by_reason == {reason: 1}


@pytest.mark.anyio
async def test_oversized_image_is_refused() -> None:
    big = png(300, 300) + bytes(10 * 1024 * 1024)
    async with running() as h:
        reply = await h.submit({"prompt": "p", "image": b64(big)})
        assert (reply.status, reply.reason) == (400, "IMAGE_FILE_EXCEEDS_MAX_SIZE")


@pytest.mark.anyio
async def test_invalid_json_and_wrong_content_type_are_refused() -> None:
    async with running() as h:
        url = h.sim.base_url + "/v3/async/pixverse-v4.5-i2v"
        auth = {"Authorization": f"Bearer {KEY}"}
        broken = await h.request("POST", url, data=b'{"prompt": ', headers={**auth, "Content-Type": "application/json"})
        assert (broken.status, broken.reason) == (400, "INVALID_REQUEST_BODY")
        form = await h.request("POST", url, data={"prompt": "p", "image": URL_IMAGE}, headers=auth)
        assert (form.status, form.reason) == (400, "INVALID_REQUEST_BODY")


@pytest.mark.anyio
async def test_valid_images_and_options_are_accepted() -> None:
    async with running() as h:
        raw = await h.create(image=b64(png(400, 300)))
        uri = await h.create(image="data:image/jpeg;base64," + b64(jpeg(300, 750)))  # exactly 1:2.5
        jpg = await h.create(image="data:image/jpg;base64," + b64(jpeg(640, 480)))
        http = await h.create(image="http://example.com/a.jpg")
        full = await h.create(
            resolution="1080p",
            fast_mode=False,
            negative_prompt="blur",
            style="anime",
            seed=2_147_483_647,
            extra={"webhook": {"url": "https://example.com/hook"}},
        )
        fast = await h.create(resolution="720p", fast_mode=True, seed=0)
        await h.create(prompt="x" * 2048, negative_prompt="n" * 2048)
        tasks = h.sim.tasks
        assert tasks[raw].image == SubmittedImage(
            "base64", format="png", width=400, height=300, byte_size=len(png(400, 300))
        )
        assert (tasks[uri].image.encoding, tasks[uri].image.format) == ("data_uri", "jpeg")
        assert tasks[jpg].image.width == 640
        assert tasks[http].image.url == "http://example.com/a.jpg"
        assert tasks[full].seed == 2_147_483_647
        assert tasks[fast].seed == 0
        assert (await h.task(full))["extra"]["seed"] == "2147483647"
        assert h.sim.counters.tasks_created == 7


@pytest.mark.anyio
async def test_random_seed_is_reported_when_none_was_sent() -> None:
    async with running() as h:
        task_id = await h.create()
        seed = (await h.task(task_id))["extra"]["seed"]
        assert isinstance(seed, str)
        assert 0 <= int(seed) <= 2_147_483_647
