"""The video site: signed links, their expiry, its faults."""

from __future__ import annotations

import struct
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from pixverse_async.testing import (
    Fault,
    Simulator,
)
from tests.testing.sim_harness import (
    KEY,
    running,
)


@pytest.mark.anyio
async def test_signed_url_expires_and_polling_again_refreshes_it() -> None:
    async with running(time_scale=1.0, duration=1.0, video_ttl=10.0) as h:
        task_id = await h.create()
        h.sim.advance(1.0)
        result = await h.task(task_id)
        assert result["videos"][0]["video_url_ttl"] == "10"
        old_url = result["videos"][0]["video_url"]
        assert (await h.request("GET", old_url)).status == 200
        h.sim.advance(11.0)
        expired = await h.request("GET", old_url)
        assert expired.status == 403
        assert b"Request has expired" in expired.body
        new_url = await h.video_url(task_id)
        assert new_url != old_url
        fresh = await h.request("GET", new_url)
        assert (fresh.status, fresh.body) == (200, h.sim.video_bytes(task_id))
        assert h.sim.counters.video_expired == 1
        assert h.sim.counters.videos_served == 2


@pytest.mark.anyio
async def test_signature_is_checked() -> None:
    async with running(time_scale=1.0, duration=0.0) as h:
        task_id = await h.create()
        url = await h.video_url(task_id)
        parts = urlsplit(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        base = f"{parts.scheme}://{parts.netloc}"
        other_task = await h.create()
        tampered = [
            f"{base}{parts.path}?expires={query['expires']}&signature={'0' * 64}",
            f"{base}{parts.path}?expires={int(query['expires']) + 1000}&signature={query['signature']}",
            f"{base}/videos/{other_task}.mp4?{parts.query}",
            f"{base}{parts.path}",
            f"{base}{parts.path}?expires={query['expires']}&signature=%C3%A9",
        ]
        for bad in tampered:
            reply = await h.request("GET", bad)
            assert reply.status == 403, bad
            assert b"SignatureDoesNotMatch" in reply.body
        assert (await h.request("GET", f"{base}/elsewhere")).status == 404
        assert h.sim.counters.video_bad_signature == len(tampered)
        assert h.sim.counters.video_requests == len(tampered) + 1


@pytest.mark.anyio
async def test_api_key_sent_to_the_video_host_is_counted_but_served() -> None:
    async with running(time_scale=1.0, duration=0.0) as h:
        url = await h.video_url(await h.create())
        reply = await h.request("GET", url, headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status == 200
        assert h.sim.counters.key_leaks_to_video_host == 1
        await h.request("GET", url)
        assert h.sim.counters.key_leaks_to_video_host == 1


@pytest.mark.anyio
async def test_video_faults() -> None:
    async with running(time_scale=0.001, duration=0.0) as h:
        task_id = await h.create()
        url = await h.video_url(task_id)

        h.sim.inject(Fault("video", "reset", times=2))  # twice: aiohttp retries a GET once by itself
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await h.request("GET", url)

        h.sim.inject(Fault("video", "truncated_json"))
        with pytest.raises(aiohttp.ClientPayloadError):
            await h.request("GET", url)

        h.sim.inject(Fault("video", "server_error"))
        assert (await h.request("GET", url)).status == 500
        h.sim.inject(Fault("video", "rate_limit", retry_after=1))
        limited = await h.request("GET", url)
        assert (limited.status, limited.headers["Retry-After"]) == (429, "1")
        h.sim.inject(Fault("video", "html_error"))
        assert (await h.request("GET", url)).status == 502
        h.sim.inject(Fault("video", "empty_error"))
        assert (await h.request("GET", url)).status == 503
        h.sim.inject(Fault("video", "slow", delay=30.0))
        assert (await h.request("GET", url)).body == h.sim.video_bytes(task_id)
        assert h.sim.counters.video_requests == 8
        assert h.sim.counters.rate_limited == 1


@pytest.mark.anyio
async def test_expired_fault_refuses_one_valid_video_link() -> None:
    async with Simulator(time_scale=0.001, duration=0.0) as sim, aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-test"}
        async with session.post(
            sim.base_url + "/v3/async/pixverse-v4.5-i2v",
            json={"prompt": "p", "image": "https://example.com/a.png"},
            headers=headers,
        ) as answer:
            task_id = (await answer.json())["task_id"]
        async with session.get(
            sim.base_url + "/v3/async/task-result", params={"task_id": task_id}, headers=headers
        ) as r:
            url = (await r.json())["videos"][0]["video_url"]
        sim.inject(Fault("video", "expired"))
        async with session.get(url) as refused:
            assert refused.status == 403 and "Request has expired" in await refused.text()
        async with session.get(url) as served:
            assert served.status == 200
    assert sim.counters.video_expired == 1
    with pytest.raises(ValueError, match="video endpoint only"):
        Fault("poll", "expired")


def find_box(data: bytes, path: list[bytes], start: int = 0, end: int | None = None) -> tuple[int, int]:
    """The payload (start, end) of the box at `path` (container box types, then the one wanted)."""
    end = len(data) if end is None else end
    position = start
    while position < end:
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        assert size >= 8
        if kind == path[0]:
            body_start = position + 8
            if len(path) == 1:
                return body_start, position + size
            skip = {b"stsd": 8, b"avc1": 78}.get(kind, 0)  # fields before the boxes these contain
            return find_box(data, path[1:], body_start + skip, position + size)
        position += size
    raise AssertionError(f"no {path[0]!r} box")


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an MP4 sample (each after its 4-byte length)."""
    units, position = [], 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        units.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    assert position == len(data)
    return units


@pytest.mark.anyio
async def test_the_video_is_an_mp4_of_one_h264_frame_that_names_its_task() -> None:
    async with running(time_scale=1.0, duration=0.0) as h:
        task_id = await h.create()
        video = (await h.request("GET", await h.video_url(task_id))).body
    assert len(video) < 8192
    stbl = [b"moov", b"trak", b"mdia", b"minf", b"stbl"]
    # One sample, in one chunk, lasting the whole (1 s) track...
    start, _ = find_box(video, [*stbl, b"stsz"])
    assert struct.unpack(">III", video[start + 4 : start + 16])[1] == 1
    (sample_size,) = struct.unpack(">I", video[start + 12 : start + 16])
    start, _ = find_box(video, [*stbl, b"stco"])
    assert struct.unpack(">II", video[start + 4 : start + 12])[0] == 1
    (sample_offset,) = struct.unpack(">I", video[start + 8 : start + 12])
    # ... that is the whole mdat payload: an SEI message naming the task, then one IDR picture.
    assert find_box(video, [b"mdat"]) == (sample_offset, sample_offset + sample_size)
    sei, idr = nal_units(video[sample_offset : sample_offset + sample_size])
    assert (sei[0] & 0x1F, idr[0] & 0x1F) == (6, 5)
    assert task_id.encode() in sei and task_id.encode() not in idr
    assert len(idr) > 12 * 384  # 4 x 3 macroblocks of raw 4:2:0 samples
    # The decoder's set-up: an avc1 sample entry of 64x36 whose avcC holds one SPS and one PPS.
    start, _ = find_box(video, [*stbl, b"stsd", b"avc1"])
    assert struct.unpack(">HH", video[start + 24 : start + 28]) == (64, 36)
    start, end = find_box(video, [*stbl, b"stsd", b"avc1", b"avcC"])
    avcc = video[start:end]
    assert (avcc[0], avcc[1], avcc[4] & 3, avcc[5] & 0x1F) == (1, 66, 3, 1)  # v1, Baseline, 4-byte lengths
    (sps_length,) = struct.unpack(">H", avcc[6:8])
    assert avcc[8] & 0x1F == 7  # the SPS
    assert avcc[8 + sps_length] == 1 and avcc[8 + sps_length + 3] & 0x1F == 8  # one PPS
    other = h.sim.video_bytes("another-task")
    assert other != video and b"another-task" in other
