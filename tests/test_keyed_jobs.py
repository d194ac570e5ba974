"""Keyed jobs: `as_completed` takes `(key, job)` pairs and gives the key back on results, events and
`unfinished`; `download()` takes a `JobResult`."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import pytest

from pixverse_async import (
    DownloadError,
    EventKind,
    ImageToVideo,
    InvalidRequestError,
    JobEvent,
    Task,
)
from pixverse_async.testing import Simulator, TaskPlan
from tests.helpers import SCALE, client_for

pytestmark = pytest.mark.anyio
URL = "https://example.com/frame.png"


def plan(body: object) -> TaskPlan | None:
    words = str(body["prompt"]).split()  # type: ignore[index]
    if words[0] == "fail":
        return TaskPlan(duration=1, fail_reason="moderation")
    return TaskPlan(duration=float(words[1]))


async def test_keys_come_back_on_results_and_events() -> None:
    events: list[JobEvent] = []
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim) as client:
        earlier = await client.submit(ImageToVideo("run 3 earlier", URL))
        bare = ImageToVideo("run 2 bare", URL)
        jobs: list[ImageToVideo | Task | str | tuple[Hashable, ImageToVideo | Task | str]] = [
            ("fox", ImageToVideo("run 2 fox", URL)),
            (("csv", 7), ImageToVideo("run 4 tuple key", URL)),
            (42, earlier.task_id),  # a keyed task id: resumed, not submitted again
            bare,
            Task(earlier.task_id, key="task's own"),
            ("bad", ImageToVideo("fail moderated", URL)),
        ]
        async with client.as_completed(jobs, on_event=events.append) as results:
            by_key = {result.key: result async for result in results}
    assert set(by_key) == {"fox", ("csv", 7), 42, None, "task's own", "bad"}
    assert by_key["fox"].request is jobs[0][1] and by_key["fox"].ok  # type: ignore[index]
    assert by_key[None].request is bare
    assert by_key[42].request == earlier.task_id and by_key[42].ok
    assert by_key["bad"].error is not None and not by_key["bad"].ok
    assert sim.counters.tasks_created == 5
    kinds_by_key: dict[Hashable, set[EventKind]] = {}
    for event in events:
        kinds_by_key.setdefault(event.key, set()).add(event.kind)
    assert {EventKind.SUBMITTING, EventKind.SUBMITTED, EventKind.SUCCEEDED} <= kinds_by_key["fox"]
    assert {EventKind.SUBMITTED, EventKind.FAILED} <= kinds_by_key["bad"]
    assert EventKind.SUBMITTING not in kinds_by_key[42]  # nothing is sent for a task id
    assert set(kinds_by_key) == set(by_key)


@pytest.mark.parametrize(
    ("job", "field", "message"),
    [
        (({"not": "hashable"}, ImageToVideo("run 1 x", URL)), "key", "must be hashable, not dict"),
        ((["a list"], "some-task-id"), "key", "must be hashable, not list"),
        (("key", ImageToVideo("run 1 x", URL), "third"), "job", "must be a (key, job) pair"),
        (("key", 42), "job", "must be a (key, job) pair"),
    ],
)
async def test_a_bad_pair_fails_that_job_only_before_anything_is_sent(job: object, field: str, message: str) -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim) as client:
        async with client.as_completed([job, ("fine", ImageToVideo("run 1 fine", URL))]) as results:  # type: ignore[list-item]
            outcomes = [result async for result in results]
    failed = next(result for result in outcomes if not result.ok)
    assert isinstance(failed.error, InvalidRequestError) and failed.error.field == field
    assert message in str(failed.error) and failed.key is None and failed.task_id is None
    assert [result.key for result in outcomes if result.ok] == ["fine"]
    assert sim.counters.submit_requests == 1 and sim.counters.poll_requests >= 1


async def test_unfinished_tasks_keep_their_keys_and_give_them_back_when_resumed() -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim, max_concurrency=4) as client:
        jobs = [("quick", ImageToVideo("run 1 quick", URL))]
        jobs += [(f"slow-{i}", ImageToVideo(f"run 60 slow {i}", URL)) for i in range(3)]
        async with client.as_completed(jobs) as results:
            first = await anext(aiter(results))
        assert first.key == "quick"
        unfinished = results.unfinished
        assert sorted(str(task.key) for task in unfinished) == ["slow-0", "slow-1", "slow-2"]
        async with client.as_completed(unfinished) as resumed:
            again = {result.key: result async for result in resumed}
    assert set(again) == {"slow-0", "slow-1", "slow-2"} and all(result.ok for result in again.values())
    assert sim.counters.tasks_created == 4


async def test_download_takes_a_job_result_and_says_why_one_has_no_video(tmp_path: Path) -> None:
    async with Simulator(time_scale=SCALE, plan=plan) as sim, client_for(sim) as client:
        jobs = [("ok", ImageToVideo("run 1 ok", URL)), ("bad", ImageToVideo("fail moderated", URL))]
        async with client.as_completed(jobs) as results:
            by_key = {result.key: result async for result in results}
        path = await client.download(by_key["ok"], tmp_path)
        assert path == tmp_path / f"{by_key['ok'].task_id}.mp4"
        assert path.read_bytes() == sim.video_bytes(by_key["ok"].task_id or "")
        with pytest.raises(DownloadError, match=r"job 'bad' has no video: task .* did not succeed .*moderation"):
            await client.download(by_key["bad"], tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists()
