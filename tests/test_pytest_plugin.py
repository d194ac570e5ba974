"""The pytest plugin, exercised the way users meet it: a test file of theirs that uses only its fixtures."""

from __future__ import annotations

import pytest

USER_TESTS = """
import anyio
import pytest
import urllib.request
import json

from pixverse_async import ImageToVideo, TaskFailedError, TaskStatus, TextToVideo
from pixverse_async.testing import DEFAULT_FAIL_REASON, Fault


def test_a_plain_synchronous_test_can_talk_to_the_simulator(pixverse_simulator):
    request = urllib.request.Request(
        pixverse_simulator.base_url + "/v3/async/pixverse-v4.5-i2v",
        data=json.dumps({"prompt": "p", "image": "https://example.com/a.png"}).encode(),
        headers={"Authorization": "Bearer " + pixverse_simulator.api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        assert "task_id" in json.load(answer)
    assert pixverse_simulator.counters.tasks_created == 1


@pytest.mark.anyio
async def test_an_async_test_uses_the_bound_client(pixverse_client, pixverse_simulator):
    pixverse_simulator.inject(Fault("submit", "rate_limit", retry_after=1))
    async with pixverse_client as client:
        task = await client.submit(ImageToVideo("p", "https://example.com/a.png"))
        result = await client.wait(task)
    assert result.status is TaskStatus.SUCCEED
    assert pixverse_simulator.counters.rate_limited == 1


def test_advance_moves_simulated_time_from_a_sync_test(pixverse_simulator):
    before = pixverse_simulator.simulator.now()
    pixverse_simulator.advance(3600)
    assert pixverse_simulator.simulator.now() - before >= 3600


@pytest.mark.pixverse_simulator(failure_rate=1.0)
def test_a_marker_sets_simulator_options(pixverse_simulator):
    async def run():
        async with pixverse_simulator.client() as client:
            task = await client.submit(ImageToVideo("p", "https://example.com/a.png"))
            with pytest.raises(TaskFailedError) as failed:
                await client.wait(task, timeout=600)
            return task, failed.value

    assert pixverse_simulator.simulator.failure_rate == 1.0
    task, error = anyio.run(run)
    assert error.task_id == task.task_id
    assert error.reason == DEFAULT_FAIL_REASON
    assert pixverse_simulator.tasks[task.task_id].fail_reason == DEFAULT_FAIL_REASON


@pytest.mark.anyio
@pytest.mark.pixverse_simulator(duration=40.0, text_duration=15.0)
async def test_text_jobs_go_through_the_fixture_with_their_own_durations(pixverse_client, pixverse_simulator):
    async with pixverse_client as client:
        text = await client.wait(await client.submit(TextToVideo("a lighthouse", "1:1")))
        image = await client.wait(await client.submit(ImageToVideo("p", "https://example.com/a.png")))
    assert text.status is image.status is TaskStatus.SUCCEED
    by_id = pixverse_simulator.tasks
    assert by_id[text.task_id].is_text and not by_id[image.task_id].is_text
    assert by_id[text.task_id].ends_at - by_id[text.task_id].submitted_at == 15.0
    assert by_id[image.task_id].ends_at - by_id[image.task_id].submitted_at == 40.0


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def test_users_get_working_fixtures_from_the_installed_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    outcome.assert_outcomes(passed=5)


UNCHANGED_APP_TESTS = """
import os
import time

import anyio
import pytest

from pixverse_async import ImageToVideo, PixVerseClient, SystemClock, TaskStatus
from pixverse_async.testing import ScaledClock


async def make_video():  # application code, as it runs in production: key and host from the environment
    async with PixVerseClient() as client:
        task = await client.submit(ImageToVideo("a fox", "https://example.com/fox.png"))
        return await client.wait(task, timeout=600)


@pytest.mark.pixverse_simulator(duration=40.0)
def test_unchanged_code_runs_against_the_fixture_at_its_time_scale(pixverse_simulator):
    assert os.environ["PIXVERSE_API_KEY"] == pixverse_simulator.api_key
    assert os.environ["PIXVERSE_BASE_URL"] == pixverse_simulator.base_url
    started = time.monotonic()
    result = anyio.run(make_video)
    elapsed = time.monotonic() - started
    simulated = pixverse_simulator.tasks[result.task_id]
    assert result.status is TaskStatus.SUCCEED
    assert simulated.ends_at - simulated.submitted_at == 40.0
    assert elapsed < 5, elapsed  # 40 simulated seconds at time_scale 0.001: tens of milliseconds
    assert pixverse_simulator.counters.polls_by_task[result.task_id] <= 10
    # What makes it fast whatever the machine's load: the client keeps the simulator's time.
    assert PixVerseClient().clock == ScaledClock(pixverse_simulator.time_scale)


@pytest.mark.anyio
@pytest.mark.pixverse_simulator(duration=40.0)
async def test_and_from_an_async_test(pixverse_simulator):
    with anyio.fail_after(5):
        result = await make_video()
    assert result.status is TaskStatus.SUCCEED


def test_the_environment_and_clock_are_restored_afterwards():
    assert os.environ["PIXVERSE_API_KEY"] == "sk-outer"
    assert os.environ["PIXVERSE_BASE_URL"] == "https://outer.example"
    assert isinstance(PixVerseClient().clock, SystemClock)


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def test_the_fixture_points_unchanged_code_at_the_simulator_and_restores_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXVERSE_API_KEY", "sk-outer")
    monkeypatch.setenv("PIXVERSE_BASE_URL", "https://outer.example")
    pytester.makepyfile(test_app=UNCHANGED_APP_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    outcome.assert_outcomes(passed=3)
